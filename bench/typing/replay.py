"""Replay a typing session against cgserve: a request at every pause, as the editor sends it.

Each mode (`reuse`, `no-reuse`) has its own server.  With several modes the session is
interleaved line by line (the order alternates from line to line): one line is typed
against one server in real time, its requests are waited for, then the same line
against the next server.  So both modes see the same machine load, and each server's
prefix cache sees a continuous session.  Requests are never aborted by the client
(like the Fauxpilot extension); a newer one may supersede them on the server.

Speculative warm-ups (cgserve computes a client's next-line prompt start while idle)
run only within their own mode's segments: with several modes, each server's
`SpeculationGate` is opened when its segment starts and closed when it ends, and
closing waits until no warm-up runs.  So a warm-up never takes CPU from the other
mode's server, and gets only the idle time a real typist would give it (the rest of
its line and the start of the next), not the other mode's segment.  In-process
servers are held (`Scheduler.hold_warmups`); a server at a URL cannot be held, so
there closing waits until /metrics says `cgserve_warmup_running 0` (its warm-up then
gets extra time: an optimistic bias, said in the results).
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..errors import BenchError
from ..http_client import FAUXPILOT_PATH, CompletionClient, read_metrics
from .session import MAX_LINES, Segment, prompt_at

USER_AGENT = "OpenAI/JS 4.3.1"  # what vscode-fauxpilot's openai client sends
TOKEN = "dummy"  # the extension's default bearer token; each typist of `cgbench load` has its own


@dataclass
class Outcome:
    """One request of the replay and what came back."""

    mode: str
    line: int
    offset: int
    fired_s: float  # from the start of the replay
    pause_ms: float
    prompt_chars: int
    latency_ms: float = float("nan")
    status: int = 0
    superseded: bool = False
    text: str = ""
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    error: str = ""

    @property
    def shown(self) -> bool:
        """Answered (not superseded) while the typist was still waiting."""
        return self.status == 200 and not self.superseded and self.latency_ms <= self.pause_ms


def request_body(prompt: str, max_tokens: int) -> str:
    """The extension's request: pretty-printed JSON, its default model/temperature, stop."""
    return json.dumps({"model": "fastertransformer", "prompt": prompt, "max_tokens": max_tokens,
                       "temperature": 0.1, "stop": ["\n"]}, indent=2)


def send(url: str, prompt: str, max_tokens: int, timeout_s: float = 600.0,
         token: str = TOKEN) -> dict:
    """POST one completion as the extension does; returns status, superseded, text, usage
    (or error)."""
    client = CompletionClient(url, path=urlsplit(url).path.rstrip("/") + FAUXPILOT_PATH,
                              headers={"User-Agent": USER_AGENT,
                                       "Authorization": f"Bearer {token}"},
                              timeout_s=timeout_s)
    reply = client.post(request_body(prompt, max_tokens))
    out = {"status": reply.status,
           "superseded": reply.headers.get("x-cgserve-superseded") == "true"}
    if not reply.ok:
        out["error"] = reply.error
        return out
    usage = reply.usage
    out.update(text=reply.text, prompt_tokens=usage.get("prompt_tokens", 0),
               completion_tokens=usage.get("completion_tokens", 0),
               cached_tokens=(usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0))
    return out


def replay_segment(url: str, mode: str, text: str, segment: Segment, max_tokens: int,
                   clock0: float, max_lines: int = MAX_LINES, token: str = TOKEN) -> list[Outcome]:
    """Type one line in real time against `url`; return once all its requests are answered."""
    start = time.perf_counter()
    outcomes, threads = [], []

    def fire(outcome: Outcome, prompt: str, fired: float) -> None:
        result = send(url, prompt, max_tokens, token=token)
        outcome.latency_ms = (time.perf_counter() - fired) * 1e3
        for key, value in result.items():
            setattr(outcome, key, value)

    for pause in segment.pauses:
        delay = start + pause.at_s - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        prompt = prompt_at(text, pause.offset, max_lines)
        fired = time.perf_counter()
        outcome = Outcome(mode, pause.line + 1, pause.offset, fired - clock0, pause.pause_s * 1e3,
                          len(prompt))
        outcomes.append(outcome)
        thread = threading.Thread(target=fire, args=(outcome, prompt, fired), daemon=True)
        thread.start()
        threads.append(thread)
    rest = start + segment.duration_s - time.perf_counter()
    if rest > 0:
        time.sleep(rest)
    for thread in threads:
        thread.join()
    return outcomes


class SpeculationGate:
    """Lets a server's speculative warm-ups run during its own segments only."""

    def __init__(self, scheduler=None, url: str | None = None, timeout_s: float = 120.0):
        self.scheduler, self.url, self.timeout_s = scheduler, url, timeout_s

    def open(self) -> None:
        if self.scheduler is not None:
            self.scheduler.hold_warmups(False)

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.hold_warmups(True)
            if not self.scheduler.wait_warmups_stopped(self.timeout_s):
                raise BenchError("a speculative warm-up did not stop")
            return
        if self.url is None:
            return
        deadline = time.monotonic() + self.timeout_s
        while read_metrics(self.url).get("cgserve_warmup_running", 0.0) > 0:
            if time.monotonic() > deadline:
                raise BenchError(f"{self.url} kept running a warm-up for {self.timeout_s:.0f} s")
            time.sleep(0.05)


def replay(urls: dict[str, str], text: str, segments: list[Segment], max_tokens: int,
           progress=None, max_lines: int = MAX_LINES,
           gates: dict[str, SpeculationGate] | None = None, token: str = TOKEN,
           clock0: float | None = None) -> list[Outcome]:
    """Every segment against every mode's server, interleaved; all outcomes in order.

    `gates` (by mode): opened for the mode's segments only (see the module docstring).
    `token`: the bearer token every request carries (cgserve tells clients apart by it);
    `clock0`: the perf_counter time `fired_s` counts from (default: now)."""
    if not urls:
        raise BenchError("no server to replay against")
    modes = list(urls)
    gates = gates or {}
    for gate in gates.values():
        gate.close()
    clock0 = time.perf_counter() if clock0 is None else clock0
    outcomes: list[Outcome] = []
    for n, segment in enumerate(segments):
        order = modes if n % 2 == 0 else modes[::-1]
        for mode in order:
            gate = gates.get(mode)
            if gate is not None:
                gate.open()
            outcomes += replay_segment(urls[mode], mode, text, segment, max_tokens, clock0,
                                       max_lines, token)
            if gate is not None:
                gate.close()
        if progress is not None:
            progress(n + 1, len(segments), outcomes)
    return outcomes
