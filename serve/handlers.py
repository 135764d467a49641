"""Tornado handlers: read the body, auth, CORS, write JSON or SSE, notice disconnects.

The completion itself is `serve.serving`'s; these only carry it over HTTP.
`BaseHandler.write_error` is the one place that formats an error response.
Handlers get the shared `ServerState` through `initialize()`.
"""
from __future__ import annotations

import hmac
import json
import logging
import time

import tornado.web
from tornado.iostream import StreamClosedError

from . import protocol, serving
from .errors import ApiError, reason
from .metrics import CONTENT_TYPE
from .openapi import build_spec
from .serving import READY, Reply

log = logging.getLogger("serve")
access_log = logging.getLogger("serve.access")

HOPELESS_BODY_FACTOR = 64  # bodies this many times over --max-body are refused unread


class BaseHandler(tornado.web.RequestHandler):
    route = "other"
    needs_auth = False
    allowed = ("GET",)

    def initialize(self, state) -> None:
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
        self.state.metrics.count_request(self.route, status)

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
        failure = serving.model_failure(state.generator)
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
        self.set_header("Content-Type", CONTENT_TYPE)
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
        self.completion: serving.Completion | None = None
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
        refusal = self.refusal or serving.ready_error(self.state)  # loading: 503, body unread
        if refusal is not None:
            raise refusal
        req = protocol.parse_completion(protocol.parse_body(b"".join(self.chunks)))
        self.chunks.clear()
        headers = self.request.headers
        client = serving.client_of(self.state.config, req, headers.get("Authorization"),
                                   self.request.remote_ip, headers.get("User-Agent"))
        self.completion = serving.Completion(self.state, req, client, self.t0)
        self.summary = self.completion.summary
        if self.disconnected:  # gone while the body was read
            self.completion.disconnect()
        try:
            reply = await self.completion.answer()
            if isinstance(reply, ApiError):
                raise reply
            if reply is not None and not self.disconnected:
                await self.send_reply(reply)
        finally:
            self.completion.close()

    async def send_reply(self, reply: Reply) -> None:
        for key, value in reply.headers.items():
            self.set_header(key, value)
        if reply.events is None:
            self.send_json(reply.body)
            return
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        async for frame in reply.events:  # to the end even after a disconnect: it records
            if self.disconnected:
                continue
            self.write(frame)
            try:
                await self.flush()
            except StreamClosedError:
                self.on_connection_close()

    def on_connection_close(self) -> None:
        super().on_connection_close()
        if getattr(self, "completion", None) is not None:
            self.completion.disconnect()

    def on_finish(self) -> None:
        super().on_finish()
        if self.counted:
            self.counted = False
            self.state.active -= 1
            self.state.metrics.latency.observe(time.perf_counter() - self.t0)


def too_large(limit: int) -> ApiError:
    return ApiError(413, f"request body larger than {limit} bytes; send a shorter prompt "
                         "(or start the server with a larger --max-body)", code="request_too_large")


def log_access(handler: tornado.web.RequestHandler) -> None:
    """One line per request: method, path, status, time and counts; never prompt or output text."""
    request = handler.request
    status = handler.get_status()
    level = logging.INFO if status < 500 else logging.ERROR
    extra = " ".join(f"{k}={v}" for k, v in getattr(handler, "summary", {}).items())
    access_log.log(level, "%d %s %s %.1fms %s %s", status, request.method, request.path,
                   request.request_time() * 1e3, request.remote_ip, extra)
