"""The engine's model interface, written down: what every model behind `Generator` implements.

The batch (`engine.batch`) drives a model through exactly these calls; nothing else is
discovered at run time.  Implementations: `FastCodeGen` (the engine's own Paddle forward, with
numpy decode steps on CPU), `PaddleCodeGen` (PaddleNLP's model, the reference), the sharded
model of tensor parallelism (rank 0 forwards each call to its followers) and the tests' fakes.

A sequence's keys and values live in a `KVCache` value that the model creates and changes and
callers only read (`length`, `capacity`, `nbytes`, `device`).  Every call names the caches it
works on, so sequences at different positions decode together in one step, a prefix-cache
entry is handed to a sequence and back without copies, and a sequence joins or leaves the
batch between two steps without touching the others.

Calls and their contracts:
- `new_cache()`: an empty cache (length 0) on the model's device.
- `prefill(cache, tokens, cancel=None, resume=None) -> Prefill`: run `tokens` at positions
  `cache.length ...` (the cache holds the tokens before them) and return the last position's
  logits; `cache.length` grows by `len(tokens)`.  Once `cancel` (a `threading.Event`) is set
  the model may stop between two layers: then `logits` is None, `cache.length` is unchanged
  and `paused` is a state (or None) that a later call with the same cache and the same
  `tokens` passes as `resume` to finish from the layer it stopped at.  Models that cannot stop
  part-way run the whole chunk.
- `decode(tokens, caches) -> logits [rows, vocab]`: one token per cache (row i feeds
  `tokens[i]` at position `caches[i].length`), all rows in one step; each length grows by 1.
  A failed call changes no length (positions past `length` are scratch), so it can be retried.
- `fork(cache, upto, room=0) -> KVCache`: a new cache holding a copy of positions `[0, upto)`,
  with capacity for `room` more; `cache` is left as it was.
- `trim(cache, length)`: forget positions from `length` on (the next write goes there).
- `reserve(cache, tokens)`: capacity for `tokens` more positions (prefill and decode reserve
  by themselves; this lets a caller allocate ahead).
- `release(cache)`: give the cache's memory back now; the cache must not be used again.
- `config`, `device`: the model's configuration and where its caches live.
- `kv_bytes_per_token()`: bytes one position of one sequence costs (all layers, K and V; under
  tensor parallelism, on one rank).  `param_count()`; `logits(ids)`: every position's logits of
  one prompt, for checks.
Failures a user can cause are `EngineError`s; anything else is a bug, and the batch fails only
the requests whose rows it was computing (see `engine.batch`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

import numpy as np


@dataclass(eq=False)
class KVCache:
    """One sequence's KV cache.  `data` is the model's own (FastCodeGen: one (keys, values) pair
    per layer, each [1, heads, capacity, head_dim]); only the model reads or writes it."""

    data: object
    bytes_per_position: int
    device: str = "cpu"
    length: int = 0  # positions [0, length) hold the sequence's tokens
    capacity: int = 0  # positions allocated

    @property
    def nbytes(self) -> int:
        return self.capacity * self.bytes_per_position


@dataclass(frozen=True)
class Prefill:
    """What `Model.prefill` returns: the last position's logits [vocab], or None when it
    stopped part-way; then `paused` (or None) lets a later call go on from there."""

    logits: np.ndarray | None
    paused: object = None

    @property
    def finished(self) -> bool:
        return self.logits is not None


@runtime_checkable
class Model(Protocol):
    config: object  # engine.config.ModelConfig
    device: object  # engine.runtime.Device (rank 0's, under tensor parallelism)

    def new_cache(self) -> KVCache: ...

    def prefill(self, cache: KVCache, tokens: Sequence[int], cancel=None,
                resume=None) -> Prefill: ...

    def decode(self, tokens: np.ndarray, caches: Sequence[KVCache]) -> np.ndarray: ...

    def fork(self, cache: KVCache, upto: int, room: int = 0) -> KVCache: ...

    def trim(self, cache: KVCache, length: int) -> None: ...

    def reserve(self, cache: KVCache, tokens: int) -> None: ...

    def release(self, cache: KVCache) -> None: ...

    def kv_bytes_per_token(self) -> int: ...

    def param_count(self) -> int: ...

    def logits(self, ids: list[int]) -> np.ndarray: ...


def check_model(model) -> None:
    """Raise TypeError naming what a model lacks (called once when a Generator is built)."""
    missing = [name for name in ("new_cache", "prefill", "decode", "fork", "trim", "reserve",
                                 "release", "kv_bytes_per_token", "param_count")
               if not callable(getattr(model, name, None))]
    if missing:
        raise TypeError(f"{type(model).__name__} does not implement the engine's model interface "
                        f"(engine/interface.py): missing {', '.join(missing)}")
