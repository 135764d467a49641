"""The one HTTP client of cgbench: POST a completion (JSON or SSE), timed from the send.

`cgbench load`, `cgbench typing` and `cgbench serve-overhead` all send their requests through
`CompletionClient.post`, so every request is timed the same way: `e2e_ms` from just before the
request is written to the end of the answer; for a stream, the time of each `data:` event
(`event_times_ms`) and of those with text (`text_times_ms`: TTFT is the first, ITL their gaps).
Plain `http.client`: nothing beyond the standard library.  A transport failure is a `Reply`
with status 0 and an error, never an exception.
"""
from __future__ import annotations

import http.client
import json
import math
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .errors import BenchError

OPENAI_PATH = "/v1/completions"  # what OpenAI clients (and vLLM's benchmark) post to
FAUXPILOT_PATH = "/v1/engines/codegen/completions"  # what vscode-fauxpilot posts to


@dataclass
class Reply:
    """One request's answer and its client-side clocks (ms from the send)."""

    status: int
    e2e_ms: float = math.nan
    body: dict = field(default_factory=dict)  # the JSON answer (non-streamed)
    events: list[dict] = field(default_factory=list)  # the SSE events (streamed), [DONE] left out
    event_times_ms: list[float] = field(default_factory=list)  # every `data:` line, [DONE] too
    text_times_ms: list[float] = field(default_factory=list)  # events carrying text
    headers: dict = field(default_factory=dict)
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200 and not self.error

    @property
    def text(self) -> str:
        if self.events:
            return "".join(c.get("text") or "" for e in self.events for c in e.get("choices") or ())
        choices = self.body.get("choices") or [{}]
        return choices[0].get("text") or ""

    @property
    def usage(self) -> dict:
        for event in reversed(self.events):
            if event.get("usage"):
                return event["usage"]
        return self.body.get("usage") or {}


def check_url(url: str, option: str = "URL") -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BenchError(f"{option} {url!r}: give the server's base URL, e.g. http://127.0.0.1:8978")
    return url


def openai_path(url: str) -> str:
    """The completions path under a base URL given as `http://host:port[/v1][/completions]`."""
    path = urlsplit(url).path.rstrip("/")
    if path.endswith("/completions"):
        return path
    return path + (OPENAI_PATH if not path.endswith("/v1") else "/completions")


class CompletionClient:
    """Requests to one server; `keep_alive` reuses one connection, as an editor does."""

    def __init__(self, url: str, path: str | None = None, headers: dict | None = None,
                 timeout_s: float = 600.0, keep_alive: bool = False):
        parts = urlsplit(check_url(url))
        self.scheme, self.host = parts.scheme, parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.base_path = parts.path.rstrip("/")
        self.path = path if path is not None else openai_path(url)
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self.timeout_s, self.keep_alive = timeout_s, keep_alive
        self._conn = None

    def _connection(self):
        if self._conn is None:
            cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
            self._conn = cls(self.host, self.port, timeout=self.timeout_s)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def post(self, body: dict | str) -> Reply:
        """POST `body` (a dict, or JSON text sent as is); streamed when it asks `stream`."""
        payload = body if isinstance(body, str) else json.dumps(body)
        stream = bool(json.loads(payload).get("stream")) if isinstance(body, str) else bool(body.get("stream"))
        conn = self._connection()
        start = time.perf_counter()
        try:
            conn.request("POST", self.path, payload, self.headers)
            response = conn.getresponse()
            headers = {k.lower(): v for k, v in response.getheaders()}
            if response.status != 200:
                raw = response.read()
                return Reply(response.status, _ms(start), headers=headers,
                             error=f"HTTP {response.status}: {_error_text(raw)}")
            if stream:
                return _read_events(response, start, headers)
            data = json.loads(response.read() or b"{}")
            return Reply(200, _ms(start), body=data, headers=headers)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            self.close()  # the connection is in an unknown state
            return Reply(0, _ms(start), error=f"{type(exc).__name__}: {exc}")
        finally:
            if not self.keep_alive:
                self.close()

    def get_text(self, path: str) -> str | None:
        """GET `path` under the base URL; its body, or None when unreachable or not 200."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            conn.request("GET", self.base_path + path)
            response = conn.getresponse()
            body = response.read().decode("utf-8", "replace")
            return body if response.status == 200 else None
        except (OSError, http.client.HTTPException):
            return None
        finally:
            conn.close()


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1e3


def _error_text(raw: bytes) -> str:
    """An OpenAI-style error's message, else the start of the body."""
    try:
        message = json.loads(raw)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = raw[:300].decode("utf-8", "replace")
    return str(message).replace("\n", " ")


def _read_events(response, start: float, headers: dict) -> Reply:
    """Server-sent events: `data: {json}` lines, then `data: [DONE]`."""
    reply = Reply(200, headers=headers)
    for raw in response:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data:"):
            continue
        reply.event_times_ms.append(_ms(start))
        payload = line[5:].strip()
        if payload == "[DONE]":
            break
        event = json.loads(payload)
        if "error" in event:
            reply.error = f"stream error: {event['error']}"
            break
        reply.events.append(event)
        if any(c.get("text") for c in event.get("choices") or ()):
            reply.text_times_ms.append(reply.event_times_ms[-1])
    response.read()  # the rest, so a kept-alive connection can be reused
    reply.e2e_ms = _ms(start)
    return reply


def read_metrics(url: str) -> dict[str, float]:
    """A Prometheus text endpoint (cgserve's /metrics) as {name{labels}: value}; {} if unreachable."""
    body = CompletionClient(url, path="").get_text("/metrics") or ""
    values = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                values[name] = float(value)
            except ValueError:
                pass
    return values
