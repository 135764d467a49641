"""Test and benchmark helpers: a fake engine and a live server on a background thread.

`FakeGenerator` speaks the Generator's interface (stream/generate, tokenizer,
context_length) with one byte per token and no model, so server behaviour can
be tested (and its overhead measured) where the model does not matter.
"""
from __future__ import annotations

import asyncio
import dataclasses
import threading
import time

from engine.generate import Choice, GenerationResult, Stream, TokenEvent, fit_prompt
from engine.tokenizer import ByteTokenizer as _EngineByteTokenizer

from .config import ServeConfig
from .server import Server


class ByteTokenizer(_EngineByteTokenizer):
    """The engine's byte tokenizer with end of text at 256, right after the bytes."""

    eos_token_id = 256
    name = "fake-bytes"

    def __init__(self):
        super().__init__(eos_token_id=256)


class FakeGenerator:
    """Emits `script` one byte per step (repeating it), honouring stop, n, cancel and context.

    `step_s` sleeps before each step; `gate` (a threading.Event) holds every
    request before its first token until set.  `calls` records (prompt, params).
    """

    def __init__(self, script: str = "hello world\nsecond line\n", step_s: float = 0.0,
                 context_length: int = 64, gate: threading.Event | None = None):
        self.script = script.encode("utf-8")
        self.step_s = step_s
        self.context_length = context_length
        self.gate = gate
        self.tokenizer = ByteTokenizer()
        self.calls: list[tuple] = []
        self.results: list[GenerationResult] = []
        self.started = threading.Event()  # set when a request reaches its first step
        self.load_s = 0.0

    def generate(self, prompt, params, cancel=None):
        stream = self.stream(prompt, params, cancel)
        for _ in stream:
            pass
        return stream.result

    def stream(self, prompt, params, cancel=None) -> Stream:
        return Stream(self._events(prompt, params, cancel or threading.Event()))

    def _events(self, prompt, params, cancel):
        start = time.perf_counter()
        ids, truncated = fit_prompt(self.tokenizer.encode(prompt), params, self.context_length,
                                    self.tokenizer.eos_token_id)
        self.calls.append((prompt, params))
        if self.gate is not None:
            self.started.set()
            self.gate.wait()
        self.started.set()
        choices = [Choice(i) for i in range(params.n)]
        texts = [""] * params.n
        times: list[float] = []
        for step in range(params.max_new_tokens):
            if cancel.is_set():
                break
            if self.step_s:
                time.sleep(self.step_s)
            now = time.perf_counter() - start
            times.append(now * 1e3)
            byte = self.script[step % len(self.script)]
            last = step == params.max_new_tokens - 1
            for choice in choices:
                if choice.finish_reason:
                    continue
                yield self._advance(choice, texts, byte, params, now, last)
            if all(c.finish_reason for c in choices):
                break
        for choice in choices:
            if choice.finish_reason is None:
                choice.finish_reason = "cancelled"
                yield TokenEvent(choice.index, -1, "", time.perf_counter() - start,
                                 finish_reason="cancelled")
        e2e = (time.perf_counter() - start) * 1e3
        result = make_result(choices, prompt_tokens=len(ids),
                             completion_tokens=sum(len(c.token_ids) for c in choices),
                             truncated_tokens=truncated, seed=params.seed or 0,
                             ttft_ms=times[0] if times else e2e, e2e_ms=e2e, token_times_ms=times)
        self.results.append(result)
        return result

    def _advance(self, choice: Choice, texts: list[str], byte: int, params, now, last):
        i = choice.index
        choice.token_ids.append(byte)
        texts[i] += chr(byte)
        logprob = top = None
        if params.logprobs is not None:
            logprob, top = -0.5, dict(list({byte: -0.5, 32: -1.5}.items())[: params.logprobs])
            choice.logprobs.append(logprob)
            choice.top_logprobs.append(top)
        hits = [texts[i].find(s) for s in params.stop if s in texts[i]]
        if hits:
            texts[i] = texts[i][: min(hits)]
            choice.finish_reason = "stop"
        elif last:
            choice.finish_reason = "length"
        longest = max((len(s) for s in params.stop), default=1)
        safe = len(texts[i]) if choice.finish_reason else max(len(texts[i]) - (longest - 1), 0)
        delta = texts[i][len(choice.text): max(safe, len(choice.text))]
        choice.text += delta
        return TokenEvent(i, byte, delta, now, logprob, top, choice.finish_reason)


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
