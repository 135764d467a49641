"""The completions logic without HTTP: a parsed request and a client key in, a reply out.

`Completion.answer` (vLLM's serving_completion, in small) cancels the client's requests
that this one supersedes, submits it to the scheduler, waits for the job's events under
the request deadline, and returns a `Reply` (one JSON body, or SSE frames to send as they
come), an `ApiError` value for an error before any byte, or None when the client has gone.
An error after streaming began is sent as an event. It records the metrics and the
access-log summary. Tornado is not imported here: `serve.handlers` writes what it gets.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import AsyncIterator

from engine import EngineError, OptionError

from . import protocol
from .errors import ApiError, bad_request, overloaded
from .scheduler import Done, QueueFull, Stopped
from .supersede import client_key, extends

log = logging.getLogger("serve")

LOADING, READY, STOPPING = "loading", "ready", "stopping"  # the server's lifecycle status
SUPERSEDED_HEADER = "X-Cgserve-Superseded"


@dataclass
class Reply:
    """A 200 answer: one JSON `body`, or `events` (SSE frames, bytes) to send one by one."""

    body: dict | None = None
    events: AsyncIterator[bytes] | None = None
    headers: dict[str, str] = field(default_factory=dict)


def ready_error(state) -> ApiError | None:
    """The 503 to answer while the server does not take work (loading, stopping, or a model
    that cannot run any more: a lost tensor-parallel rank)."""
    if state.status != READY:
        return not_ready(state.status)
    failure = model_failure(state.generator)
    return None if failure is None else unavailable(failure)


def model_failure(generator) -> str | None:
    """Why the model cannot run any more (a tensor-parallel rank is lost), else None."""
    return getattr(getattr(generator, "model", None), "failure", None)


def unavailable(message: str) -> ApiError:
    return overloaded(message, retry_after_s=30, code="model_unavailable")


def not_ready(status: str) -> ApiError:
    if status == STOPPING:
        return overloaded("the server is shutting down", retry_after_s=5, code="shutting_down")
    return overloaded("the model is still loading; retry shortly", retry_after_s=5,
                      code="model_loading")


def client_of(config, req: protocol.CompletionRequest, authorization: str | None,
              address: str | None, user_agent: str | None) -> str | None:
    """The client key that superseding and warm-ups group requests by (None: neither is on)."""
    if not (config.supersede or config.speculate):
        return None
    return client_key(req.user, authorization, address, user_agent)


class Completion:
    """One completion request, from submission to its last event.

    `state` is the server's shared state (config, status, scheduler, generator, metrics);
    `arrived` the perf_counter time the request came in (its deadline counts from it).
    """

    def __init__(self, state, req: protocol.CompletionRequest, client: str | None,
                 arrived: float):
        self.state = state
        self.req = req
        self.client = client
        self.deadline = arrived + state.config.request_timeout_s
        self.job = None
        self.disconnected = False
        self.summary: dict = {"stream": req.stream, "n": req.n, "max_tokens": req.max_tokens}
        if state.config.log_prompts:
            self.summary["prompt"] = req.prompt[-200:]

    async def answer(self) -> Reply | ApiError | None:
        try:
            self.submit()
            head = protocol.ResponseHead.new(self.state.config.served_name)
            if self.req.stream:
                return await self.stream(head)
            return await self.complete(head)
        except ApiError as exc:
            return exc

    def submit(self) -> None:
        state = self.state
        error = ready_error(state)
        if error is not None:
            raise error
        params = self.req.sampling_params(state.config.truncate)
        if state.config.supersede:
            self.supersede()
        try:
            self.job = state.scheduler.submit(self.req.prompt, params, self.client)
        except QueueFull:
            state.metrics.count_rejected("queue_full")
            raise overloaded("the server is busy: too many requests are waiting; retry shortly",
                             code="queue_full") from None
        except Stopped:
            raise not_ready(STOPPING) from None

    def supersede(self) -> None:
        """Cancel this client's queued or running requests that this prompt extends."""
        scheduler = self.state.scheduler
        for job in scheduler.jobs_of(self.client):
            if extends(job.prompt, self.req.prompt):
                self.state.metrics.count_cancelled("superseded")
                scheduler.cancel(job, "superseded")

    # ---- the client went away, or the request is over ----
    def disconnect(self) -> None:
        self.disconnected = True
        self.cancel("disconnect")

    def close(self) -> None:
        """After the reply was written (or not): stop the job if it still runs, and let go of
        it (Tornado may keep a finished handler, and so this object, until the connection
        closes)."""
        if self.job is not None and not self.job.finished:
            self.cancel("disconnect" if self.disconnected else "aborted")
        self.job = None

    def cancel(self, reason: str) -> None:
        job = self.job
        if job is None or job.finished or job.cancel.is_set():
            return
        self.state.metrics.count_cancelled(reason)
        self.summary["cancelled"] = reason
        self.state.scheduler.cancel(job, reason)

    # ---- answering ----
    async def complete(self, head) -> Reply | ApiError | None:
        item = await self.next_item()
        while not isinstance(item, Done):
            item = await self.next_item()
        if self.superseded(item):
            return self.answer_superseded(head, item)
        result = self.outcome(item)
        if isinstance(result, ApiError) or result is None:
            return result
        return Reply(body=protocol.format_completion(self.req, head, result,
                                                     self.state.generator.tokenizer))

    async def stream(self, head) -> Reply | ApiError | None:
        item = await self.next_item()
        if getattr(item, "finish_reason", None) == "cancelled" and \
                self.job.cancel_reason == "superseded":  # stopped before its first token
            while not isinstance(item, Done):
                item = await self.next_item()
        if isinstance(item, Done) and self.superseded(item):
            return self.answer_superseded(head, item)
        if isinstance(item, Done) and (item.error is not None or item.dropped):
            return self.outcome(item)  # an error before any token: a plain HTTP error
        return Reply(events=self.events(head, item))

    async def events(self, head, item) -> AsyncIterator[bytes]:
        """SSE frames from the first event on: token deltas, the end, then [DONE]."""
        req = self.req
        tokenizer = self.state.generator.tokenizer
        offsets = [len(req.prompt)] * req.n
        if req.echo:
            for index in range(req.n):
                yield protocol.sse(protocol.format_chunk(head, index, req.prompt, None))
        while not isinstance(item, Done):
            text, index = item.text, item.index
            logprobs = None
            if req.logprobs is not None:
                logprobs = protocol.event_logprobs(tokenizer, item, offsets[index])
            offsets[index] += len(text)
            if text or item.finish_reason or logprobs:
                yield protocol.sse(protocol.format_chunk(head, index, text, item.finish_reason,
                                                         logprobs))
            item = await self.next_item()
        if item.error is not None or item.dropped:
            yield protocol.sse(self.error_for(item).body())
        else:
            self.record(item.result)
            if req.include_usage:
                body = head.envelope([])
                body["usage"] = protocol.usage(item.result)
                yield protocol.sse(body)
        yield protocol.SSE_DONE

    def superseded(self, done: Done) -> bool:
        """Cancelled for a newer request of the same client before it could finish."""
        if self.job.cancel_reason != "superseded" or done.error is not None:
            return False
        return done.dropped or any(c.finish_reason == "cancelled" for c in done.result.choices)

    def answer_superseded(self, head, done: Done) -> Reply | None:
        """An empty completion (nobody will read this one), in the shape the client asked for.

        `finish_reason` is `length` as for any generation cut short; the header
        `X-Cgserve-Superseded: true` tells it apart."""
        self.job.finished = True
        self.summary["cancelled"] = "superseded"
        if done.result is not None:
            self.record(done.result)
        if self.disconnected:
            return None
        req, headers = self.req, {SUPERSEDED_HEADER: "true"}
        if not req.stream:
            body = head.envelope([{"text": "", "index": i, "logprobs": None,
                                   "finish_reason": "length"} for i in range(req.n)])
            body["usage"] = protocol.usage(done.result) if done.result is not None else \
                {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
            return Reply(body=body, headers=headers)
        frames = [protocol.sse(protocol.format_chunk(head, i, "", "length")) for i in range(req.n)]
        return Reply(events=_once(b"".join(frames) + protocol.SSE_DONE), headers=headers)

    # ---- the job ----
    async def next_item(self):
        """The job's next event or Done; past the deadline the job is cancelled first."""
        if self.job.cancel.is_set():
            return await self.job.next_item()
        remaining = self.deadline - time.perf_counter()
        try:
            return await self.job.next_item(max(remaining, 0.0))
        except asyncio.TimeoutError:
            self.cancel("timeout")
            return await self.job.next_item()

    def outcome(self, done: Done):
        """The result to send; the ApiError to answer with; None when the client has gone."""
        self.job.finished = True
        if done.error is None and not done.dropped:
            self.record(done.result)
            return None if self.disconnected else done.result
        if self.disconnected:
            return None
        return self.error_for(done)

    def error_for(self, done: Done) -> ApiError:
        self.job.finished = True
        if done.dropped:
            if self.job.cancel_reason == "shutdown":
                return not_ready(STOPPING)
            return overloaded("timed out waiting in the queue; retry shortly", code="queue_timeout")
        if getattr(done.error, "http_status", None) == 503:  # the model cannot run any more
            return unavailable(str(done.error))
        if isinstance(done.error, OptionError):
            return protocol.engine_error(done.error)
        if isinstance(done.error, EngineError):
            return bad_request(str(done.error))
        log.error("generation failed", exc_info=done.error)
        return ApiError(500, "internal server error; the server log has the details",
                        code="internal_error")

    def record(self, result) -> None:
        job = self.job
        job.finished = True
        waited = job.started_at - job.enqueued_at if job.started_at is not None else None
        self.state.metrics.record_result(result, waited)
        reused = result.reused_tokens
        self.summary.update(prompt_tokens=result.prompt_tokens,
                            completion_tokens=result.completion_tokens,
                            truncated=result.truncated_tokens, reused=reused,
                            finish=",".join(str(c.finish_reason) for c in result.choices),
                            engine_ms=round(result.e2e_ms, 1))


async def _once(frame: bytes) -> AsyncIterator[bytes]:
    yield frame
