"""`cgbench load URL`'s fixed-length requests, measured client side.

Like vLLM's benchmark_serving: TTFT = first streamed chunk with text, ITL = gaps between such
chunks, E2E = whole request; request and output-token throughput over the whole test, under a
concurrency cap; requests through the shared client (`bench.http_client`), in threads.
"""
from __future__ import annotations

import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ..errors import BenchError
from ..http_client import CompletionClient, check_url
from ..latency import LatencyStats, gaps

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
    fired_s: float = math.nan  # sent, from the start of the load test


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
        check_url(self.url)
        for name in ("concurrency", "requests", "prompt_tokens", "max_tokens"):
            least = 0 if name == "requests" else 1  # 0: only typists (bench.load.typists)
            if getattr(self, name) < least:
                raise BenchError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be at "
                                 f"least {least}")


def make_prompt(tokens: int, rng: np.random.Generator) -> str:
    """About `tokens` tokens of code-like words (one BPE token each, roughly)."""
    return " ".join(rng.choice(WORDS, size=tokens))


def send_request(cfg: LoadConfig, prompt: str) -> RequestResult:
    body = {"prompt": prompt, "max_tokens": cfg.max_tokens, "temperature": 0.0, "stream": cfg.stream}
    if cfg.model:
        body["model"] = cfg.model
    if cfg.ignore_eos:
        body["ignore_eos"] = True  # vLLM's extension: every request makes max_tokens tokens
    reply = CompletionClient(cfg.url, timeout_s=cfg.timeout_s).post(body)
    if not reply.ok:
        return RequestResult(False, e2e_ms=reply.e2e_ms, error=reply.error)
    tokens = reply.usage.get("completion_tokens")
    if not cfg.stream:
        return RequestResult(True, ttft_ms=reply.e2e_ms, e2e_ms=reply.e2e_ms,
                             output_tokens=int(tokens or cfg.max_tokens))
    if not reply.text_times_ms:
        return RequestResult(False, e2e_ms=reply.e2e_ms, error="stream ended without any text")
    return RequestResult(True, ttft_ms=reply.text_times_ms[0], e2e_ms=reply.e2e_ms,
                         chunk_times_ms=reply.text_times_ms,
                         output_tokens=int(tokens or len(reply.text_times_ms)))


def run_fixed(cfg: LoadConfig, on_done=None, clock0: float | None = None
              ) -> tuple[list[RequestResult], float]:
    """`cfg.requests` prompts under the concurrency cap; the results and the seconds taken."""
    rng = np.random.default_rng(cfg.seed)
    prompts = [make_prompt(cfg.prompt_tokens, rng) for _ in range(cfg.requests)]
    lock = threading.Lock()
    results: list[RequestResult] = []
    start = time.perf_counter()
    clock0 = start if clock0 is None else clock0

    def one(prompt):
        fired = time.perf_counter() - clock0
        r = send_request(cfg, prompt)
        r.fired_s = fired
        with lock:
            results.append(r)
            if on_done:
                on_done(len(results), cfg.requests)
        return r

    if prompts:
        with ThreadPoolExecutor(max_workers=cfg.concurrency) as pool:
            list(pool.map(one, prompts))
    return results, time.perf_counter() - start


def summarise(results: list[RequestResult], duration_s: float, cfg: LoadConfig) -> dict:
    """The fixed-length requests: counts, throughput and TTFT/TPOT/ITL/E2E statistics."""
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


def render_fixed(summary: dict) -> str:
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
