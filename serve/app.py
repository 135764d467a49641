"""Tornado handlers: routes, auth, CORS, the completions endpoint (JSON and SSE).

`BaseHandler.write_error` is the one place that formats an error response.
Handlers get the shared `ServerState` through `initialize()`.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from dataclasses import dataclass, field

import tornado.web
from tornado.iostream import StreamClosedError

from engine import EngineError, OptionError

from . import protocol
from .config import ServeConfig
from .errors import ApiError, bad_request, overloaded, reason
from .metrics import Metrics
from .openapi import build_spec
from .scheduler import Done, QueueFull, Scheduler, Stopped
from .supersede import client_key, extends

log = logging.getLogger("serve")
access_log = logging.getLogger("serve.access")

LOADING, READY, STOPPING = "loading", "ready", "stopping"
HOPELESS_BODY_FACTOR = 64  # bodies this many times over --max-body are refused unread


@dataclass
class ServerState:
    """What every handler shares: settings, model, scheduler, metrics, lifecycle status."""

    config: ServeConfig
    status: str = LOADING
    generator: object = None
    scheduler: Scheduler | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    active: int = 0  # completion requests being answered
    metrics: Metrics = None

    def __post_init__(self):
        self.metrics = Metrics(queue_depth=lambda: self.scheduler.depth if self.scheduler else 0,
                               busy=lambda: int(bool(self.scheduler and self.scheduler.busy)),
                               ready=lambda: int(self.status == READY),
                               cache_bytes=lambda: cache_reading(self.generator, "used_bytes"),
                               cache_budget=lambda: cache_reading(self.generator, "budget_bytes"),
                               warmups=lambda: dict(self.scheduler.warmups) if self.scheduler
                               else {},
                               warming=lambda: int(bool(self.scheduler and self.scheduler.warming)),
                               warmups_pending=lambda: self.scheduler.pending_warmups
                               if self.scheduler else 0)

    def set_ready(self, generator) -> None:
        self.generator = generator
        self.scheduler = Scheduler(generator, self.config.max_queue,
                                   speculate=self.config.speculate,
                                   lines_ahead=self.config.speculate_lines)
        self.status = READY


def model_failure(generator) -> str | None:
    """Why the model cannot run any more (a tensor-parallel rank is lost), else None."""
    return getattr(getattr(generator, "model", None), "failure", None)


def unavailable(message: str) -> ApiError:
    return overloaded(message, retry_after_s=30, code="model_unavailable")


def cache_reading(generator, name: str) -> float:
    """A number from the engine's prefix cache (0 when there is none); it changes under us."""
    cache = getattr(generator, "prefix_cache", None)
    for _ in range(3):  # the worker may change the entries while we add them up
        try:
            return float(getattr(cache, name, 0) or 0)
        except RuntimeError:
            continue
    return float("nan")


class BaseHandler(tornado.web.RequestHandler):
    route = "other"
    needs_auth = False
    allowed = ("GET",)

    def initialize(self, state: ServerState) -> None:
        self.state = state
        self.disconnected = False
        self.summary: dict = {}  # extra fields for the access log (never prompt text)
        self.set_cors_headers()

    def clear(self) -> None:  # also runs before an error response: keep the CORS header
        super().clear()
        if hasattr(self, "state"):
            self.set_cors_headers()

    def set_cors_headers(self) -> None:
        origin = self.state.config.cors_origin
        if origin:
            self.set_header("Access-Control-Allow-Origin", origin)
            if origin != "*":
                self.set_header("Vary", "Origin")

    def prepare(self) -> None:
        if self.needs_auth and self.request.method != "OPTIONS":
            check_auth(self.state.config.api_key, self.request.headers.get("Authorization"))

    def options(self, *args) -> None:
        if not self.state.config.cors_origin:
            raise tornado.web.HTTPError(405)
        self.set_header("Access-Control-Allow-Methods", ", ".join(self.allowed + ("OPTIONS",)))
        self.set_header("Access-Control-Allow-Headers",
                        self.request.headers.get("Access-Control-Request-Headers",
                                                 "Authorization, Content-Type"))
        self.set_header("Access-Control-Max-Age", "600")
        self.set_status(204)
        self.finish()

    def send_json(self, body: dict, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body, ensure_ascii=False))

    def write_error(self, status_code: int, **kwargs) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        error = as_api_error(exc, status_code, self.request)
        if error.status == 405:
            self.set_header("Allow", ", ".join(self.allowed))
        for key, value in error.headers.items():
            self.set_header(key, value)
        self.set_status(error.status)
        self.summary.setdefault("error", error.code or error.type)
        self.send_json(error.body(), error.status)

    def log_exception(self, typ, value, tb) -> None:
        if isinstance(value, (ApiError, tornado.web.HTTPError)):
            return  # an answer to the client, not a server fault
        log.error("unexpected error in %s %s", self.request.method, self.request.path,
                  exc_info=(typ, value, tb))

    def on_finish(self) -> None:
        status = "disconnected" if self.disconnected else str(self.get_status())
        self.state.metrics.requests.inc(route=self.route, status=status)

    def on_connection_close(self) -> None:
        self.disconnected = True


def check_auth(api_key: str | None, header: str | None) -> None:
    if api_key is None:
        return
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "missing API key: send the header 'Authorization: Bearer YOUR_KEY'",
                       code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        raise ApiError(401, "incorrect API key provided", code="invalid_api_key",
                       headers={"WWW-Authenticate": "Bearer"})


def as_api_error(exc, status: int, request) -> ApiError:
    """Any exception as the ApiError to answer with; unexpected ones never show their text."""
    if isinstance(exc, ApiError):
        return exc
    if status == 404:
        return ApiError(404, f"unknown URL ({request.method} {request.path}); the completions "
                             "routes are POST /v1/completions and POST /v1/engines/ENGINE/completions",
                        code="not_found")
    if status == 405:
        return ApiError(405, f"method {request.method} is not allowed on {request.path}",
                        code="method_not_allowed")
    if isinstance(exc, tornado.web.HTTPError) and status < 500:
        return ApiError(status, exc.log_message or reason(status))
    return ApiError(500, "internal server error; the server log has the details",
                    code="internal_error")


class NotFoundHandler(BaseHandler):
    route = "unknown"

    def prepare(self) -> None:
        raise tornado.web.HTTPError(404)


class HealthHandler(BaseHandler):
    route = "health"

    def get(self) -> None:
        state = self.state
        body = {"status": state.status, "model": state.config.served_name}
        failure = model_failure(state.generator)
        if failure:
            body.update(status="failed", error=failure)
        if state.status == READY and not failure:
            body.update(queue_depth=state.scheduler.depth, busy=state.scheduler.busy)
            self.send_json(body)
        else:
            self.set_header("Retry-After", "5")
            self.send_json(body, 503)


class ModelsHandler(BaseHandler):
    route = "models"
    needs_auth = True

    def get(self, model_id: str | None = None) -> None:
        card = {"id": self.state.config.served_name, "object": "model",
                "created": self.state.created, "owned_by": "cgserve"}
        if model_id is None:
            self.send_json({"object": "list", "data": [card]})
        elif model_id == card["id"]:
            self.send_json(card)
        else:
            raise ApiError(404, f"model {model_id!r} does not exist; this server has "
                                f"{card['id']!r}", param="model", code="model_not_found")


class MetricsHandler(BaseHandler):
    route = "metrics"

    def get(self) -> None:
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.finish(self.state.metrics.render())


class OpenAPIHandler(BaseHandler):
    route = "openapi"

    def get(self) -> None:
        self.send_json(build_spec(self.state.config))


@tornado.web.stream_request_body
class CompletionsHandler(BaseHandler):
    """POST /v1/completions and /v1/engines/{engine}/completions."""

    route = "completions"
    needs_auth = True
    allowed = ("POST",)

    def prepare(self) -> None:
        """Checks that fail here are answered in post(), after the body is read: closing a
        connection with unread body bytes resets it before the client sees the answer."""
        self.t0 = time.perf_counter()
        self.job = None
        self.chunks: list[bytes] = []
        self.size = 0
        self.counted = False
        self.refusal: ApiError | None = None
        try:
            super().prepare()
        except ApiError as exc:
            self.refusal = exc
        if self.request.method != "POST":
            return
        limit = self.state.config.max_body_bytes
        length = self.request.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > limit:
            if int(length) > HOPELESS_BODY_FACTOR * limit:
                raise too_large(limit)  # not worth reading; the client may see a reset
            self.refusal = self.refusal or too_large(limit)
        self.state.active += 1
        self.counted = True

    def data_received(self, chunk: bytes) -> None:
        if self.refusal is not None:
            return  # read and dropped
        self.size += len(chunk)
        if self.size > self.state.config.max_body_bytes:
            self.chunks.clear()
            self.refusal = too_large(self.state.config.max_body_bytes)
            return
        self.chunks.append(chunk)

    async def post(self, engine: str | None = None) -> None:
        if self.refusal is not None:
            raise self.refusal
        state = self.state
        if state.status != READY:
            raise not_ready(state.status)
        failure = model_failure(state.generator)
        if failure:
            raise unavailable(failure)
        req = protocol.parse_completion(protocol.parse_body(b"".join(self.chunks)))
        self.chunks.clear()
        params = req.sampling_params(state.config.truncate)
        self.summary.update(stream=req.stream, n=req.n, max_tokens=req.max_tokens)
        if self.state.config.log_prompts:
            self.summary["prompt"] = req.prompt[-200:]
        client = None
        if state.config.supersede or state.config.speculate:  # both work per client
            headers = self.request.headers
            client = client_key(req.user, headers.get("Authorization"), self.request.remote_ip,
                                headers.get("User-Agent"))
        if state.config.supersede:
            self.supersede(client, req.prompt)
        try:
            self.job = state.scheduler.submit(req.prompt, params, client)
        except QueueFull:
            state.metrics.rejected.inc(reason="queue_full")
            raise overloaded("the server is busy: too many requests are waiting; retry shortly",
                             code="queue_full") from None
        except Stopped:
            raise not_ready(STOPPING) from None
        head = protocol.ResponseHead.new(state.config.served_name)
        try:
            if req.stream:
                await self.stream_completion(req, head)
            else:
                await self.complete(req, head)
        finally:
            self.finish_job()

    def supersede(self, client: str, prompt: str) -> None:
        """Cancel this client's queued or running requests that this prompt extends."""
        for job in self.state.scheduler.jobs_of(client):
            if extends(job.prompt, prompt):
                self.state.metrics.cancelled.inc(reason="superseded")
                self.state.scheduler.cancel(job, "superseded")

    # ---- answering ----
    async def complete(self, req, head) -> None:
        done = None
        while done is None:
            item = await self.next_item()
            if isinstance(item, Done):
                done = item
        if self.superseded(done):
            self.answer_superseded(req, head, done)
            return
        result = self.outcome(done)
        if result is not None and not self.disconnected:
            self.send_json(protocol.format_completion(req, head, result, self.state.generator.tokenizer))

    async def stream_completion(self, req, head) -> None:
        item = await self.next_item()
        if getattr(item, "finish_reason", None) == "cancelled" and \
                self.job.cancel_reason == "superseded":  # stopped before its first token
            while not isinstance(item, Done):
                item = await self.next_item()
        if isinstance(item, Done) and self.superseded(item):
            self.answer_superseded(req, head, item)
            return
        if isinstance(item, Done) and (item.error is not None or item.dropped):
            self.outcome(item)  # an error before any token: a plain HTTP error, not a stream
            return
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        tokenizer = self.state.generator.tokenizer
        offsets = [len(req.prompt)] * req.n
        if req.echo:
            for index in range(req.n):
                await self.send_event(protocol.format_chunk(head, index, req.prompt, None))
        while not isinstance(item, Done):
            text, index = item.text, item.index
            logprobs = None
            if req.logprobs is not None:
                logprobs = protocol.event_logprobs(tokenizer, item, offsets[index])
            offsets[index] += len(text)
            if text or item.finish_reason or logprobs:
                await self.send_event(protocol.format_chunk(head, index, text, item.finish_reason,
                                                            logprobs))
            item = await self.next_item()
        await self.end_stream(req, head, item)

    def superseded(self, done: Done) -> bool:
        """Cancelled for a newer request of the same client before it could finish."""
        if self.job.cancel_reason != "superseded" or done.error is not None:
            return False
        return done.dropped or any(c.finish_reason == "cancelled" for c in done.result.choices)

    def answer_superseded(self, req, head, done: Done) -> None:
        """An empty completion (nobody will read this one), in the shape the client asked for.

        `finish_reason` is `length` as for any generation cut short; the header
        `X-Cgserve-Superseded: true` tells it apart."""
        self.job.finished = True
        self.summary["cancelled"] = "superseded"
        if done.result is not None:
            self.record(done.result)
        if self.disconnected:
            return
        self.set_header("X-Cgserve-Superseded", "true")
        if not req.stream:
            body = head.envelope([{"text": "", "index": i, "logprobs": None,
                                   "finish_reason": "length"} for i in range(req.n)])
            body["usage"] = protocol.usage(done.result) if done.result is not None else \
                {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
            self.send_json(body)
            return
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        chunks = [protocol.sse(protocol.format_chunk(head, i, "", "length")) for i in range(req.n)]
        self.finish(b"".join(chunks) + protocol.SSE_DONE)

    async def end_stream(self, req, head, done: Done) -> None:
        if done.error is not None or done.dropped:
            error = self.error_for(done)
            await self.send_event(error.body())
        elif req.include_usage:
            self.record(done.result)
            body = head.envelope([])
            body["usage"] = protocol.usage(done.result)
            await self.send_event(body)
        else:
            self.record(done.result)
        await self.send_event(None)

    async def send_event(self, body: dict | None) -> None:
        if self.disconnected:
            return
        self.write(protocol.SSE_DONE if body is None else protocol.sse(body))
        try:
            await self.flush()
        except StreamClosedError:
            self.on_connection_close()

    # ---- the job ----
    async def next_item(self):
        """The job's next event or Done; past the deadline the job is cancelled first."""
        remaining = self.t0 + self.state.config.request_timeout_s - time.perf_counter()
        if self.job.cancel.is_set():
            return await self.job.next_item()
        try:
            return await self.job.next_item(max(remaining, 0.0))
        except asyncio.TimeoutError:
            self.cancel_job("timeout")
            return await self.job.next_item()

    def outcome(self, done: Done):
        """The result to send, or None after raising/recording why there is none."""
        self.job.finished = True
        if done.error is None and not done.dropped:
            self.record(done.result)
            return None if self.disconnected else done.result
        if self.disconnected:
            return None
        raise self.error_for(done)

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
        metrics = self.state.metrics
        self.job.finished = True
        metrics.completion_tokens.inc(result.completion_tokens)
        metrics.prompt_tokens.inc(result.prompt_tokens)
        metrics.truncated_tokens.inc(result.truncated_tokens)
        reused = getattr(result, "reused_tokens", 0) or 0
        metrics.reused_tokens.inc(reused)
        metrics.computed_tokens.inc(result.prompt_tokens - reused)
        if result.completion_tokens:
            metrics.ttft.observe(result.ttft_ms / 1e3)
        if self.job.started_at is not None:
            metrics.queue_wait.observe(self.job.started_at - self.job.enqueued_at)
        self.summary.update(prompt_tokens=result.prompt_tokens,
                            completion_tokens=result.completion_tokens,
                            truncated=result.truncated_tokens, reused=reused,
                            finish=",".join(str(c.finish_reason) for c in result.choices),
                            engine_ms=round(result.e2e_ms, 1))

    def cancel_job(self, reason: str) -> None:
        job = self.job
        if job is None or job.finished or job.cancel.is_set():
            return
        self.state.metrics.cancelled.inc(reason=reason)
        self.summary["cancelled"] = reason
        self.state.scheduler.cancel(job, reason)

    def finish_job(self) -> None:
        if self.job is not None and not self.job.finished:
            self.cancel_job("disconnect" if self.disconnected else "aborted")

    def on_connection_close(self) -> None:
        super().on_connection_close()
        self.cancel_job("disconnect")

    def on_finish(self) -> None:
        super().on_finish()
        if self.counted:
            self.counted = False
            self.state.active -= 1
            self.state.metrics.latency.observe(time.perf_counter() - self.t0)


def too_large(limit: int) -> ApiError:
    return ApiError(413, f"request body larger than {limit} bytes; send a shorter prompt "
                         "(or start the server with a larger --max-body)", code="request_too_large")


def not_ready(status: str) -> ApiError:
    if status == STOPPING:
        return overloaded("the server is shutting down", retry_after_s=5, code="shutting_down")
    return overloaded("the model is still loading; retry shortly", retry_after_s=5,
                      code="model_loading")


def log_access(handler: tornado.web.RequestHandler) -> None:
    """One line per request: method, path, status, time and counts; never prompt or output text."""
    request = handler.request
    status = handler.get_status()
    level = logging.INFO if status < 500 else logging.ERROR
    extra = " ".join(f"{k}={v}" for k, v in getattr(handler, "summary", {}).items())
    access_log.log(level, "%d %s %s %.1fms %s %s", status, request.method, request.path,
                   request.request_time() * 1e3, request.remote_ip, extra)


def make_app(state: ServerState) -> tornado.web.Application:
    args = {"state": state}
    routes = [
        (r"/v1/engines/([^/]+)/completions", CompletionsHandler, args),
        (r"/v1/completions", CompletionsHandler, args),
        (r"/v1/models", ModelsHandler, args),
        (r"/v1/models/(.+)", ModelsHandler, args),
        (r"/v1/engines", ModelsHandler, args),
        (r"/health", HealthHandler, args),
        (r"/v1/health", HealthHandler, args),
        (r"/metrics", MetricsHandler, args),
        (r"/openapi.json", OpenAPIHandler, args),
    ]
    return tornado.web.Application(routes, default_handler_class=NotFoundHandler,
                                   default_handler_args=args, log_function=log_access,
                                   compress_response=False)
