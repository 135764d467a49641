"""serve.serving without HTTP: a parsed request in, a Reply, SSE frames or an ApiError out."""
from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

from engine import EngineError, OptionError
from serve import protocol, serving
from serve.app import ServerState
from serve.config import ServeConfig
from serve.errors import ApiError
from serve.serving import Completion, Reply
from serve.testing import FakeGenerator


def request(**fields) -> protocol.CompletionRequest:
    return protocol.parse_completion({"prompt": "def f(", "max_tokens": 5, **fields})


def ready_state(generator, **settings) -> ServerState:
    state = ServerState(ServeConfig(model="random:tiny", port=0, **settings))
    state.set_ready(generator)
    return state


def run(coro_fn, state: ServerState):
    """Run `coro_fn()` on a fresh loop, then stop the state's scheduler thread."""
    try:
        return asyncio.run(coro_fn())
    finally:
        if state.scheduler is not None:
            state.scheduler.stop(cancel_running=True)
            state.scheduler.join(10)


async def frames(reply: Reply) -> list[str]:
    out = []
    async for frame in reply.events:
        assert frame.startswith(b"data: ") and frame.endswith(b"\n\n")
        out += [part[6:] for part in frame.decode().split("\n\n") if part]
    return out


def test_json_reply_and_what_it_records():
    state = ready_state(FakeGenerator())

    async def go():
        call = Completion(state, request(stop="\n", max_tokens=30), "c1", time.perf_counter())
        reply = await call.answer()
        call.close()
        return call, reply

    call, reply = run(go, state)
    assert isinstance(reply, Reply) and reply.events is None and reply.headers == {}
    assert reply.body["choices"][0]["text"] == "hello world"
    assert reply.body["choices"][0]["finish_reason"] == "stop"
    assert call.summary["completion_tokens"] == reply.body["usage"]["completion_tokens"]
    assert "prompt" not in call.summary  # no prompt text unless --log-prompts
    assert state.metrics.value("cgserve_completion_tokens_total") == \
        reply.body["usage"]["completion_tokens"]
    assert state.metrics.value("cgserve_queue_wait_seconds_count") == 1


def test_stream_reply_is_deltas_usage_then_done():
    state = ready_state(FakeGenerator())

    async def go():
        call = Completion(state, request(stream=True, max_tokens=3,
                                         stream_options={"include_usage": True}), None,
                          time.perf_counter())
        reply = await call.answer()
        return await frames(reply)

    events = run(go, state)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks[:-1]) == "hel"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3
    assert len({c["id"] for c in chunks}) == 1


@pytest.mark.parametrize("status, code", [("loading", "model_loading"),
                                          ("stopping", "shutting_down")])
def test_not_ready_is_a_503_value(status, code):
    state = ServerState(ServeConfig(model="random:tiny", port=0))
    state.status = status

    async def go():
        return await Completion(state, request(), None, time.perf_counter()).answer()

    error = run(go, state)
    assert isinstance(error, ApiError) and error.status == 503 and error.code == code
    assert int(error.headers["Retry-After"]) > 0


def test_full_queue_is_a_503_value_with_retry_after():
    gate = threading.Event()
    fake = FakeGenerator(gate=gate)
    state = ready_state(fake, max_queue=0)

    async def go():
        first = Completion(state, request(), None, time.perf_counter())
        running = asyncio.ensure_future(first.answer())
        await asyncio.to_thread(fake.started.wait, 10)
        refused = await Completion(state, request(), None, time.perf_counter()).answer()
        gate.set()
        return refused, await running

    refused, answered = run(go, state)
    assert isinstance(refused, ApiError) and refused.status == 503
    assert refused.code == "queue_full" and int(refused.headers["Retry-After"]) >= 1
    assert isinstance(answered, Reply)
    assert state.metrics.value("cgserve_rejected_total", reason="queue_full") == 1


@pytest.mark.parametrize("stream", [False, True])
def test_a_newer_prompt_that_extends_supersedes(stream):
    gate = threading.Event()
    fake = FakeGenerator(gate=gate)
    state = ready_state(fake)

    async def go():
        old = Completion(state, request(prompt="def f(", stream=stream, n=2), "c1",
                         time.perf_counter())
        stale = asyncio.ensure_future(old.answer())
        await asyncio.to_thread(fake.started.wait, 10)
        new = Completion(state, request(prompt="def f(x", stream=stream), "c1",
                         time.perf_counter())
        fresh = asyncio.ensure_future(new.answer())
        while new.job is None:  # submitted: the old one is cancelled
            await asyncio.sleep(0.001)
        gate.set()
        reply = await stale
        body = (await frames(reply)) if stream else reply.body
        await fresh
        return old, reply, body

    old, reply, body = run(go, state)
    assert reply.headers == {"X-Cgserve-Superseded": "true"}
    assert old.summary["cancelled"] == "superseded"
    if stream:
        assert body[-1] == "[DONE]"
        texts = [json.loads(e)["choices"][0] for e in body[:-1]]
    else:
        texts = body["choices"]
    assert [(c["text"], c["finish_reason"]) for c in texts] == [("", "length")] * 2
    assert state.metrics.value("cgserve_cancelled_total", reason="superseded") == 1


def test_no_client_key_without_supersede_and_speculate():
    req = request(user="alice")
    both_off = ServeConfig(model="random:tiny", supersede=False, speculate=False)
    assert serving.client_of(both_off, req, "Bearer k", "127.0.0.1", "ua") is None
    assert serving.client_of(ServeConfig(model="random:tiny"), req, "Bearer k", "127.0.0.1",
                             "ua") is not None


class FailingGenerator(FakeGenerator):
    """Its model raises `error` once `tokens` tokens are out: in the prompt (0) or in a decode
    step; the batch fails that request with it (as it would one whose KV cache can never
    fit: an OptionError)."""

    def __init__(self, error: Exception, tokens: int = 0):
        super().__init__()
        self.error, self.tokens = error, tokens
        prefill, decode = self.model.prefill, self.model.decode

        def failing_prefill(cache, ids, cancel=None, resume=None):
            if self.tokens == 0:
                raise self.error
            return prefill(cache, ids, cancel, resume)

        def failing_decode(tokens, caches):
            if caches[0].data + 1 >= self.tokens:
                raise self.error
            return decode(tokens, caches)

        self.model.prefill, self.model.decode = failing_prefill, failing_decode


@pytest.mark.parametrize("error, status, code", [
    (OptionError("prompt of 3000 tokens and max_new_tokens 16 need more KV cache than "
                 "--kv-cache-mb allows"), 400, None),
    (OptionError("prompt of 70 tokens does not fit the context of 64"), 400,
     "context_length_exceeded"),
    (EngineError("the model cannot do that"), 400, None),
    (RuntimeError("boom"), 500, "internal_error"),
])
def test_engine_errors_before_any_token_are_values(error, status, code):
    state = ready_state(FailingGenerator(error))

    async def go():
        return [await Completion(state, request(stream=stream), None, time.perf_counter())
                .answer() for stream in (False, True)]

    for answer in run(go, state):  # a plain error, the stream not begun
        assert isinstance(answer, ApiError) and answer.status == status
        assert answer.code == code and "boom" not in answer.message


def test_an_error_after_streaming_began_is_an_event():
    state = ready_state(FailingGenerator(EngineError("ran out"), tokens=2))

    async def go():
        reply = await Completion(state, request(stream=True), None, time.perf_counter()).answer()
        return await frames(reply)

    events = run(go, state)
    assert [json.loads(e)["choices"][0]["text"] for e in events[:2]] == ["h", "e"]
    assert json.loads(events[2])["error"]["message"] == "ran out"
    assert events[3:] == ["[DONE]"]


def test_a_disconnect_cancels_and_answers_nothing():
    fake = FakeGenerator(step_s=0.01, context_length=1 << 20)
    state = ready_state(fake)

    async def go():
        call = Completion(state, request(max_tokens=5000), None, time.perf_counter())
        answer = asyncio.ensure_future(call.answer())
        await asyncio.to_thread(fake.started.wait, 10)
        call.disconnect()
        return await answer

    assert run(go, state) is None
    assert fake.results[-1].choices[0].finish_reason == "cancelled"
    assert state.metrics.value("cgserve_cancelled_total", reason="disconnect") == 1


def test_past_the_deadline_a_queued_job_is_dropped_with_a_503_value():
    gate = threading.Event()
    fake = FakeGenerator(gate=gate)
    state = ready_state(fake)

    async def go():
        running = asyncio.ensure_future(
            Completion(state, request(), None, time.perf_counter()).answer())
        await asyncio.to_thread(fake.started.wait, 10)
        late = time.perf_counter() - state.config.request_timeout_s  # its time is up at once
        refused = await Completion(state, request(), None, late).answer()
        gate.set()
        return refused, await running

    refused, answered = run(go, state)
    assert isinstance(refused, ApiError) and refused.status == 503
    assert refused.code == "queue_timeout" and "Retry-After" in refused.headers
    assert isinstance(answered, Reply) and len(fake.calls) == 1  # the late one never ran
    assert state.metrics.value("cgserve_cancelled_total", reason="timeout") == 1
