"""A toy sharded model behind engine/interface.py's Model, for the tensor-parallel plumbing
tests: each rank holds a column block of A and the row block of B, every "layer" all-reduces
its partial product, as the sharded CodeGen does.  Also a rank-0 script (`python tp_toy.py`)."""
from __future__ import annotations

import json
import os
import sys

import numpy as np

from engine.config import config_from_dict
from engine.interface import KVCache, Prefill
from engine.variants import TINY

E, H, V, LAYERS = 8, 16, 32, 3


class Toy:
    def __init__(self, rank: int, world: int, reduce):
        rng = np.random.default_rng(0)
        self.config = config_from_dict(TINY.arch.config_dict(), "toy")
        self.emb = rng.standard_normal((V, E)).astype(np.float32)
        a, b = rng.standard_normal((LAYERS, E, H)), rng.standard_normal((LAYERS, H, E))
        block = slice(rank * H // world, (rank + 1) * H // world)
        self.a, self.b = a[:, :, block] * 0.3, b[:, block, :] * 0.3
        self.out = rng.standard_normal((E, V)).astype(np.float32)
        self.reduce = reduce or (lambda x: x)
        self.rank, self.live = rank, set()
        if os.environ.get("TOY_HANG_RANK") == str(rank):
            self.hang_on = int(os.environ.get("TOY_HANG_AT", "3"))
        else:
            self.hang_on = None
        self.calls = 0

    def _layers(self, x, cancel=None, first=0):
        for i in range(first, LAYERS):
            if cancel is not None and cancel.is_set():
                return None, i
            x = x + self.reduce(np.tanh(x @ self.a[i]) @ self.b[i])
        return x, LAYERS

    def new_cache(self):
        cache = KVCache(data=[], bytes_per_position=4)
        self.live.add(id(cache))
        return cache

    def _hang(self):
        self.calls += 1
        if self.hang_on is not None and self.calls >= self.hang_on:
            import time
            time.sleep(3600)
        if os.environ.get("TOY_FAIL_RANK") == str(self.rank) and self.calls >= 3:
            raise RuntimeError("injected failure on one rank")

    def prefill(self, cache, tokens, cancel=None, resume=None):
        self._hang()
        x = self.emb[tokens].mean(0, keepdims=True) + len(cache.data)
        first = 0
        if resume is not None:
            x, first = resume
        x, done = self._layers(x, cancel, first)
        if x is None:
            return Prefill(None, (self.emb[tokens].mean(0, keepdims=True) + len(cache.data), 0)
                           if done == 0 else None)
        cache.data = cache.data + list(tokens)
        cache.length = len(cache.data)
        return Prefill((x @ self.out)[0])

    def decode(self, tokens, caches):
        self._hang()
        rows = np.stack([self.emb[t] + len(c.data) for t, c in zip(tokens, caches)])
        x, _ = self._layers(rows.astype(np.float64))
        for t, c in zip(tokens, caches):
            c.data = c.data + [int(t)]
            c.length = len(c.data)
        return x @ self.out

    def fork(self, cache, upto, room=0):
        new = self.new_cache()
        new.data, new.length = cache.data[:upto], upto
        return new

    def trim(self, cache, length):
        cache.data, cache.length = cache.data[:length], length

    def reserve(self, cache, tokens):
        cache.capacity = cache.length + tokens

    def release(self, cache):
        self.live.discard(id(cache))

    def kv_bytes_per_token(self):
        return 4

    def param_count(self):
        return 0

    def logits(self, ids):
        return np.stack([self.prefill(self.new_cache(), ids[:i + 1]).logits for i in range(len(ids))])


def build(job, rank, world, reduce):
    return Toy(rank, world, reduce)


def script(model) -> dict:
    """The same calls on any Model; returns what they gave."""
    import threading

    out = {}
    a = model.new_cache()
    out["prefill"] = model.prefill(a, [1, 2, 3]).logits.tolist()
    b = model.fork(a, 2, room=4)
    out["decode"] = model.decode(np.array([4, 5]), [a, b]).tolist()
    model.trim(a, 1)
    model.reserve(a, 8)
    out["after_trim"] = model.decode(np.array([6]), [a]).tolist()
    stop = threading.Event()
    stop.set()
    c = model.new_cache()
    paused = model.prefill(c, [7, 8], cancel=stop)
    out["cancelled"] = [paused.logits is None, c.length]
    out["resumed"] = model.prefill(c, [7, 8], cancel=threading.Event(),
                                   resume=paused.paused).logits.tolist()
    model.release(b)
    del c  # collected without release: the followers drop theirs at the next call
    out["lengths"] = [a.length]
    out["decode2"] = model.decode(np.array([9]), [a]).tolist()
    return out


if __name__ == "__main__":
    from engine.tensor_parallel.load import load_tensor_parallel

    world = int(sys.argv[1])
    loaded = load_tensor_parallel("random:tiny", "float32", "cpu", world, factory="tp_toy:build")
    if len(sys.argv) > 2 and sys.argv[2] == "serve-forever":
        print("READY", flush=True)
        import time
        while True:
            try:
                script(loaded.model)
            except Exception as exc:
                print("ERROR", type(exc).__name__, exc, flush=True)
                time.sleep(60)
            time.sleep(0.05)
    result = script(loaded.model)
    result["local"] = script(Toy(0, 1, None))
    print(json.dumps(result), flush=True)
