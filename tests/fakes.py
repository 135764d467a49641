"""A scripted model: the engine's model interface, choosing tokens from a list."""
from __future__ import annotations

import threading

import numpy as np

from engine.config import config_from_dict
from engine.generate import Generator
from engine.interface import KVCache, Prefill
from engine.runtime import Device
from engine.model import LoadedModel
from engine.variants import TINY


class ScriptedModel:
    """Greedy decoding of this model yields `script` (then repeats its last token).

    It implements the engine's model interface (engine/interface.py): each cache counts the
    steps of its own sequence, so rows at different steps decode together.  `fail_on`: a
    token id whose decode raises (a request that breaks the model)."""

    def __init__(self, script: list[int], vocab: int = 51200, on_decode=None,
                 fail_on: int | None = None):
        self.script, self.vocab, self.on_decode = script, vocab, on_decode
        self.fail_on = fail_on
        self.prefills: list[list[int]] = []
        self.decodes = 0
        self.rows_per_decode: list[int] = []
        self.released = 0
        self.device = Device("cpu")
        self.config = None  # set by scripted_generator

    def _row(self, step: int) -> np.ndarray:
        row = np.zeros(self.vocab, np.float32)
        row[self.script[min(step, len(self.script) - 1)]] = 10.0
        return row

    def new_cache(self) -> KVCache:
        return KVCache({"step": 0}, self.kv_bytes_per_token())

    def prefill(self, cache, tokens, cancel=None, resume=None) -> Prefill:
        if cancel is not None and cancel.is_set():
            return Prefill(None)
        self.prefills.append(list(tokens))
        cache.length += len(tokens)
        cache.capacity = max(cache.capacity, cache.length)
        cache.data = {"step": 0}
        return Prefill(self._row(0))

    def decode(self, tokens, caches):
        if self.fail_on is not None and self.fail_on in [int(t) for t in tokens]:
            raise RuntimeError(f"scripted failure on token {self.fail_on}")
        self.decodes += 1
        self.rows_per_decode.append(len(caches))
        if self.on_decode:
            self.on_decode(self.decodes)
        rows = []
        for cache in caches:
            cache.data = {"step": cache.data["step"] + 1}
            cache.length += 1
            cache.capacity = max(cache.capacity, cache.length)
            rows.append(self._row(cache.data["step"]))
        return np.stack(rows)

    def fork(self, cache, upto, room=0):
        return KVCache(dict(cache.data), cache.bytes_per_position, length=upto, capacity=upto)

    def trim(self, cache, length):
        cache.length = min(cache.length, length)

    def reserve(self, cache, tokens):
        cache.capacity = max(cache.capacity, cache.length + tokens)

    def release(self, cache):
        self.released += 1
        cache.data, cache.length, cache.capacity = None, 0, 0

    def kv_bytes_per_token(self) -> int:
        return 1024

    def param_count(self) -> int:
        return 0

    def logits(self, ids):
        return np.stack([self._row(0)] * len(ids))


def scripted_generator(script, tokenizer, n_positions: int = 2048, on_decode=None,
                       **generator_kwargs) -> Generator:
    arch = TINY.arch.config_dict()
    arch["n_positions"] = arch["n_ctx"] = n_positions
    config = config_from_dict(arch, "scripted")
    model = ScriptedModel(script, on_decode=on_decode)
    model.config = config
    return Generator(LoadedModel(model, tokenizer, config, "scripted", 0.0), **generator_kwargs)


def cancel_after(n_decodes: int) -> tuple[threading.Event, callable]:
    event = threading.Event()

    def hook(count):
        if count >= n_decodes:
            event.set()

    return event, hook


def run_prompt(model, ids, cache=None, start: int = 0):
    """Prefill `ids[start:]` on top of `cache` (holding at least `ids[:start]`; a fresh cache
    when None): (last position's logits, the cache)."""
    cache = cache if cache is not None else model.new_cache()
    model.trim(cache, start)
    return model.prefill(cache, list(ids)[start:]).logits, cache


def decode_rows(model, prompt, steps: int, rows: int):
    """`rows` copies of one prompt decoded together for `steps` (row r starts from the argmax
    plus r): (logits [steps, rows, vocab], the tokens picked per step)."""
    logits, cache = run_prompt(model, prompt)
    caches = [cache] + [model.fork(cache, cache.length, steps) for _ in range(rows - 1)]
    tokens = np.asarray([int(logits.argmax()) + r for r in range(rows)])
    out, picked = [], []
    for _ in range(steps):
        logits = model.decode(tokens, caches)
        out.append(logits)
        tokens = logits.argmax(axis=-1)
        picked.append(tokens.tolist())
    return np.stack(out), picked
