"""Test and benchmark helpers: a fake engine and a live server on a background thread.

`FakeGenerator` is the engine's Generator over a scripted model (one byte per token, no
weights), so server behaviour can be tested (and its overhead measured) where the model does
not matter, through the same batch the real engine uses.
"""
from __future__ import annotations

import asyncio
import dataclasses
import threading
import time

import numpy as np

from engine.config import config_from_dict
from engine.generate import GenerationResult, Generator
from engine.interface import KVCache, Prefill
from engine.runtime import Device
from engine.model import LoadedModel
from engine.tokenizer import ByteTokenizer as _EngineByteTokenizer
from engine.variants import TINY

from .config import ServeConfig
from .server import Server


class ByteTokenizer(_EngineByteTokenizer):
    """The engine's byte tokenizer with end of text at 256, right after the bytes."""

    eos_token_id = 256
    name = "fake-bytes"

    def __init__(self):
        super().__init__(eos_token_id=256)


class ByteScriptModel:
    """A model behind the engine's interface (engine/interface.py) whose greedy choice is
    `script`'s bytes, one per step, repeated: step k of every sequence is script[k % len],
    whatever its prompt.  The logits put the script's byte at 0, a space at -20 and the rest
    far below, so sampling at any allowed temperature picks the script too, and logprobs are
    real log-softmax values.  `step_s` sleeps once per decode step; `gate` holds every
    prompt before it runs until set; `started` is set when a prompt reaches the model."""

    SECOND = 32  # the runner-up token (a space), 20 below the chosen one

    def __init__(self, script: bytes, step_s: float, gate: threading.Event | None,
                 started: threading.Event, vocab: int):
        self.script, self.step_s, self.gate, self.started = script, step_s, gate, started
        self.vocab = vocab
        self.device = Device("cpu")
        self.config = None  # set by FakeGenerator

    def _row(self, step: int) -> np.ndarray:
        row = np.full(self.vocab, -1e4, np.float32)
        row[self.SECOND] = -20.0
        row[self.script[step % len(self.script)]] = 0.0
        return row

    def new_cache(self) -> KVCache:
        return KVCache(0, 1)

    def prefill(self, cache, tokens, cancel=None, resume=None) -> Prefill:
        self.started.set()
        if self.gate is not None:
            self.gate.wait()
        cache.length += len(tokens)
        cache.capacity = max(cache.capacity, cache.length)
        cache.data = 0  # steps decoded
        return Prefill(self._row(0))

    def decode(self, tokens, caches) -> np.ndarray:
        if self.step_s:
            time.sleep(self.step_s)
        rows = []
        for cache in caches:
            cache.data += 1
            cache.length += 1
            cache.capacity = max(cache.capacity, cache.length)
            rows.append(self._row(cache.data))
        return np.stack(rows)

    def fork(self, cache, upto, room=0) -> KVCache:
        return KVCache(cache.data, 1, length=upto, capacity=upto)

    def trim(self, cache, length) -> None:
        cache.length = min(cache.length, length)

    def reserve(self, cache, tokens) -> None:
        cache.capacity = max(cache.capacity, cache.length + tokens)

    def release(self, cache) -> None:
        cache.data, cache.length, cache.capacity = 0, 0, 0

    def kv_bytes_per_token(self) -> int:
        return 1

    def param_count(self) -> int:
        return 0

    def logits(self, ids) -> np.ndarray:
        return np.stack([self._row(0)] * len(ids))


class FakeGenerator(Generator):
    """The engine's Generator (its batch, sampling, stops and clocks) over `ByteScriptModel`:
    one byte per token, no weights, so server behaviour can be tested (and its overhead
    measured) where the model does not matter.  No prefix cache by default (so no warm-ups).

    `step_s` sleeps before each decode step; `gate` (a threading.Event) holds every request
    before its first token until set.  `calls` records (prompt, params) as the engine starts
    each request; `results` the results, in the order they finished.
    """

    def __init__(self, script: str = "hello world\nsecond line\n", step_s: float = 0.0,
                 context_length: int = 64, gate: threading.Event | None = None,
                 prefix_cache_bytes: int = 0, **generator_kwargs):
        self.started = threading.Event()  # set when a request reaches its first step
        self.gate = gate
        tokenizer = ByteTokenizer()
        arch = TINY.arch.config_dict()
        arch["n_positions"] = arch["n_ctx"] = context_length
        arch.update(vocab_size=257, eos_token_id=256, pad_token_id=256)
        config = config_from_dict(arch, "fake")
        model = ByteScriptModel(script.encode("utf-8"), step_s, gate, self.started, 257)
        model.config = config
        self.calls: list[tuple] = []
        self.results: list[GenerationResult] = []
        super().__init__(LoadedModel(model, tokenizer, config, "fake", 0.0),
                         prefix_cache_bytes=prefix_cache_bytes, **generator_kwargs)

    def request(self, prompt, params, cancel, emit, on_done, client=None, on_start=None):
        def started(req):
            self.calls.append((prompt, params))
            if on_start is not None:
                on_start(req)

        def done(req):
            if req.result is not None:
                self.results.append(req.result)
            on_done(req)

        return super().request(prompt, params, cancel, emit, done, client, started)


def make_result(choices, **values) -> GenerationResult:
    """A GenerationResult with zeros for every field not given (the engine adds fields)."""
    zeros = {f.name: 0 for f in dataclasses.fields(GenerationResult)}
    zeros.update(token_times_ms=[], load_s=0.0)
    return GenerationResult(**{**zeros, "choices": choices, **values})


class LiveServer:
    """A real server on 127.0.0.1 (ephemeral port) in a thread with its own event loop."""

    def __init__(self, generator=None, loader=None, **settings):
        settings.setdefault("model", "random:tiny")
        settings.setdefault("port", 0)
        self.config = ServeConfig(**settings)
        self.generator = generator
        self.loader = loader
        self.loop = asyncio.new_event_loop()
        self.server: Server | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, name="live-server",
                                        daemon=True)

    def __enter__(self) -> "LiveServer":
        self._thread.start()
        self.call(self._start())
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    async def _start(self) -> None:
        self.server = Server(self.config, self.generator)
        self.server.listen()
        if self.loader is not None:
            asyncio.ensure_future(self.server.load(self.loader))

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def state(self):
        return self.server.state

    def call(self, coro, timeout: float = 30.0):
        """Run a coroutine on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def on_loop(self, fn, timeout: float = 10.0):
        async def wrapper():
            return fn()
        return self.call(wrapper(), timeout)

    def shutdown(self, grace_s: float = 0.0) -> None:
        self.call(self.server.shutdown(grace_s), timeout=grace_s + 15)

    def close(self) -> None:
        if not self.loop.is_running():
            return
        try:
            if self.server and self.server.state.status != "stopping":
                self.shutdown(0.0)
        finally:
            if self.server and self.server.state.scheduler:
                self.server.state.scheduler.stop(cancel_running=True)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            if not self.loop.is_running():
                self.loop.close()
