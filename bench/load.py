"""`cgbench load URL`: drive an OpenAI-compatible completions server, measured client side.

Like vLLM's benchmark_serving: TTFT = first streamed chunk with text, ITL = gaps between such
chunks, E2E = whole request; request and output-token throughput over the whole test, under a
concurrency cap.  Plain `http.client` in threads: nothing beyond the standard library.
"""
from __future__ import annotations

import http.client
import json
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import numpy as np

from .errors import BenchError
from .latency import LatencyStats, gaps

COMPLETIONS_PATH = "/v1/completions"
WORDS = ("def", "return", "self", "value", "for", "in", "range", "if", "else", "print", "x", "=",
         "(", ")", ":", "import", "class", "list", "dict", "None")


@dataclass
class RequestResult:
    ok: bool
    ttft_ms: float = math.nan
    e2e_ms: float = math.nan
    chunk_times_ms: list[float] = field(default_factory=list)
    output_tokens: int = 0
    error: str = ""


@dataclass
class LoadConfig:
    url: str
    concurrency: int = 1
    requests: int = 8
    prompt_tokens: int = 128
    max_tokens: int = 16
    stream: bool = True
    model: str = ""
    timeout_s: float = 600.0
    seed: int = 0
    ignore_eos: bool = True

    def __post_init__(self):
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BenchError(f"URL {self.url!r}: give the server's base URL, e.g. http://127.0.0.1:5000")
        for name in ("concurrency", "requests", "prompt_tokens", "max_tokens"):
            if getattr(self, name) < 1:
                raise BenchError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be at least 1")


def make_prompt(tokens: int, rng: np.random.Generator) -> str:
    """About `tokens` tokens of code-like words (one BPE token each, roughly)."""
    return " ".join(rng.choice(WORDS, size=tokens))


def _endpoint(url: str) -> tuple[str, str, int, str]:
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    if not path.endswith("/completions"):
        path = path + (COMPLETIONS_PATH if not path.endswith("/v1") else "/completions")
    return parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80), path


def send_request(cfg: LoadConfig, prompt: str) -> RequestResult:
    scheme, host, port, path = _endpoint(cfg.url)
    body = {"prompt": prompt, "max_tokens": cfg.max_tokens, "temperature": 0.0, "stream": cfg.stream}
    if cfg.model:
        body["model"] = cfg.model
    if cfg.ignore_eos:
        body["ignore_eos"] = True  # vLLM's extension: every request makes max_tokens tokens
    conn_cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
    conn = conn_cls(host, port, timeout=cfg.timeout_s)
    start = time.perf_counter()
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            text = resp.read(300).decode("utf-8", "replace").replace("\n", " ")
            return RequestResult(False, error=f"HTTP {resp.status}: {text}")
        if cfg.stream:
            return _read_stream(resp, start)
        data = json.loads(resp.read())
        e2e = (time.perf_counter() - start) * 1e3
        tokens = (data.get("usage") or {}).get("completion_tokens") or cfg.max_tokens
        return RequestResult(True, ttft_ms=e2e, e2e_ms=e2e, output_tokens=int(tokens))
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return RequestResult(False, error=f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()


def _read_stream(resp, start: float) -> RequestResult:
    """Server-sent events: `data: {json}` lines, then `data: [DONE]`."""
    times, usage_tokens = [], None
    for raw in resp:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            break
        event = json.loads(payload)
        if "error" in event:
            return RequestResult(False, error=f"stream error: {event['error']}")
        if any(c.get("text") for c in event.get("choices") or ()):
            times.append((time.perf_counter() - start) * 1e3)
        if event.get("usage"):
            usage_tokens = event["usage"].get("completion_tokens")
    e2e = (time.perf_counter() - start) * 1e3
    if not times:
        return RequestResult(False, e2e_ms=e2e, error="stream ended without any text")
    return RequestResult(True, ttft_ms=times[0], e2e_ms=e2e, chunk_times_ms=times,
                         output_tokens=int(usage_tokens or len(times)))


def run_load(cfg: LoadConfig, on_done=None) -> dict:
    rng = np.random.default_rng(cfg.seed)
    prompts = [make_prompt(cfg.prompt_tokens, rng) for _ in range(cfg.requests)]
    lock = threading.Lock()
    results: list[RequestResult] = []

    def one(prompt):
        r = send_request(cfg, prompt)
        with lock:
            results.append(r)
            if on_done:
                on_done(len(results), cfg.requests)
        return r

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=cfg.concurrency) as pool:
        list(pool.map(one, prompts))
    duration = time.perf_counter() - start
    return summarise(results, duration, cfg)


def summarise(results: list[RequestResult], duration_s: float, cfg: LoadConfig) -> dict:
    ok = [r for r in results if r.ok]
    tokens = sum(r.output_tokens for r in ok)
    tpot = [(r.e2e_ms - r.ttft_ms) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1 and cfg.stream]
    out = {
        "url": cfg.url, "concurrency": cfg.concurrency, "requests": len(results),
        "completed": len(ok), "failed": len(results) - len(ok), "stream": cfg.stream,
        "prompt_tokens": cfg.prompt_tokens, "max_tokens": cfg.max_tokens,
        "duration_s": duration_s, "output_tokens": tokens,
        "request_throughput_per_s": len(ok) / duration_s if duration_s else math.nan,
        "output_throughput_tokens_per_s": tokens / duration_s if duration_s else math.nan,
        "errors": sorted({r.error for r in results if not r.ok})[:5],
    }
    metrics = {"e2e_ms": [r.e2e_ms for r in ok]}
    if cfg.stream:
        metrics.update(ttft_ms=[r.ttft_ms for r in ok], tpot_ms=tpot,
                       itl_ms=[g for r in ok for g in gaps(r.chunk_times_ms)])
    for name, values in metrics.items():
        out[name] = LatencyStats.from_values(values).to_dict()
    return out


def render_load(summary: dict) -> str:
    lines = [f"{summary['url']}: {summary['completed']}/{summary['requests']} ok, concurrency "
             f"{summary['concurrency']}, {summary['duration_s']:.2f} s",
             f"request throughput {summary['request_throughput_per_s']:.2f}/s, output "
             f"{summary['output_throughput_tokens_per_s']:.1f} tokens/s"]
    lines.append(f"{'metric':<8} {'mean':>9} {'p50':>9} {'p90':>9} {'p99':>9} {'stdev':>9} {'n':>5}")
    for name in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
        s = summary.get(name)
        if s:
            lines.append(f"{name:<8} " + " ".join(f"{s[k]:>9.1f}" for k in ("mean", "p50", "p90", "p99", "stdev"))
                         + f" {s['count']:>5}")
    for err in summary["errors"]:
        lines.append(f"error: {err}")
    return "\n".join(lines)
