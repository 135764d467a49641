"""What /metrics reports, through prometheus-client: one registry per server.

The metric names are defined here only; every name carries its unit. Gauges and the
warm-up counters are read live from the scheduler and the engine's prefix cache when
/metrics is scraped (`Gauge.set_function`, a collector); the rest are updated by
`serve.serving` and `serve.handlers` on the IO loop.
"""
from __future__ import annotations

from typing import Callable

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily

# No `<name>_created` series: they were never part of cgserve's metrics (process-wide switch).
prometheus_client.disable_created_metrics()

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CANCEL_REASONS = ("disconnect", "timeout", "shutdown", "superseded", "aborted")
# The exposition format generate_latest writes (what Prometheus 2 and 3 both read).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def cache_reading(generator, name: str) -> float:
    """`used_bytes` or `budget_bytes` of the engine's prefix cache (0 before the model is
    loaded, or without a cache)."""
    cache = generator.prefix_cache if generator is not None else None
    return float(getattr(cache, name)) if cache is not None else 0.0


class WarmupCounters:
    """The scheduler's warm-up counts (kept by its worker thread) as Prometheus counters."""

    def __init__(self, scheduler: Callable[[], object]):
        self.scheduler = scheduler

    def collect(self):
        scheduler = self.scheduler()
        counts = dict(scheduler.warmups) if scheduler is not None else {}
        started = CounterMetricFamily(
            "cgserve_warmups_started_total",
            "Speculative warm-ups of a client's next-line prompt started")
        started.add_metric([], counts.get("started", 0))
        ended = CounterMetricFamily(
            "cgserve_warmups_total", "Speculative warm-ups ended, by outcome (completed; "
            "cancelled by a request, resumed later; skipped: already cached or too long)",
            labels=["outcome"])
        for outcome in ("completed", "cancelled", "skipped"):
            ended.add_metric([outcome], counts.get(outcome, 0))
        tokens = CounterMetricFamily("cgserve_warmup_tokens_computed_total",
                                     "Prompt tokens computed by speculative warm-ups")
        tokens.add_metric([], counts.get("tokens", 0))
        return [started, ended, tokens]


class Metrics:
    """Everything /metrics reports for one server.

    `scheduler` and `generator` return the live objects (None while loading); `ready`
    says whether the server takes work.
    """

    def __init__(self, scheduler: Callable[[], object] = lambda: None,
                 generator: Callable[[], object] = lambda: None,
                 ready: Callable[[], bool] = lambda: False):
        self.registry = CollectorRegistry()
        reg = self.registry
        self.requests = Counter("cgserve_requests_total",
                                "HTTP requests answered, by route and status",
                                ["route", "status"], registry=reg)
        self.cancelled = Counter("cgserve_cancelled_total",
                                 "Generations cut short, by reason (" + ", ".join(CANCEL_REASONS) +
                                 ")", ["reason"], registry=reg)
        self.rejected = Counter("cgserve_rejected_total",
                                "Completions refused before generation, by reason", ["reason"],
                                registry=reg)
        self.completion_tokens = Counter("cgserve_completion_tokens_total", "Tokens generated",
                                         registry=reg)
        self.prompt_tokens = Counter("cgserve_prompt_tokens_total", "Prompt tokens processed",
                                     registry=reg)
        self.reused_tokens = Counter("cgserve_prompt_tokens_reused_total",
                                     "Prompt tokens whose KV cache came from an earlier request",
                                     registry=reg)
        self.computed_tokens = Counter("cgserve_prompt_tokens_computed_total",
                                       "Prompt tokens the model had to run (not reused)",
                                       registry=reg)
        self.truncated_tokens = Counter("cgserve_truncated_prompt_tokens_total",
                                        "Prompt tokens cut from the left to fit the context",
                                        registry=reg)
        self.latency = Histogram("cgserve_request_latency_seconds",
                                 "Completion request latency, arrival to last byte",
                                 buckets=LATENCY_BUCKETS_S, registry=reg)
        self.ttft = Histogram("cgserve_ttft_seconds",
                              "Time to first token as the engine measured it",
                              buckets=LATENCY_BUCKETS_S, registry=reg)
        self.queue_wait = Histogram("cgserve_queue_wait_seconds",
                                    "Time a completion waited in the queue",
                                    buckets=LATENCY_BUCKETS_S, registry=reg)
        for why in CANCEL_REASONS:  # at 0 from the start, so rates and diffs need no gaps
            self.cancelled.labels(reason=why)
        self.rejected.labels(reason="queue_full")
        reg.register(WarmupCounters(scheduler))

        def reading(attribute: str) -> Callable[[], float]:
            def read() -> float:
                live = scheduler()
                return float(getattr(live, attribute)) if live is not None else 0.0
            return read

        gauges = (
            ("cgserve_queue_depth", "Completions waiting for the worker", reading("depth")),
            ("cgserve_busy", "1 while the worker is generating", reading("busy")),
            ("cgserve_ready", "1 once the model is loaded and the server takes work",
             lambda: float(bool(ready()))),
            ("cgserve_running_sequences",
             "Sequences (rows: a request with n choices counts n) being prefilled or decoded",
             reading("running")),
            ("cgserve_waiting_requests", "Requests admitted but not decoding yet",
             reading("waiting")),
            ("cgserve_batch_size", "Rows in the most recent decode step", reading("batch_size")),
            ("cgserve_prefix_cache_bytes", "KV cache bytes kept for reuse",
             lambda: cache_reading(generator(), "used_bytes")),
            ("cgserve_prefix_cache_budget_bytes", "The prefix cache's budget (0: reuse is off)",
             lambda: cache_reading(generator(), "budget_bytes")),
            ("cgserve_warmup_running", "1 while a speculative warm-up runs", reading("warming")),
            ("cgserve_warmups_pending", "Clients with a warm-up waiting for an idle worker",
             reading("pending_warmups")),
        )
        for name, help_text, read in gauges:
            Gauge(name, help_text, registry=reg).set_function(read)

    # ---- updates (IO loop) ----
    def count_request(self, route: str, status: str) -> None:
        self.requests.labels(route=route, status=status).inc()

    def count_cancelled(self, reason: str) -> None:
        self.cancelled.labels(reason=reason).inc()

    def count_rejected(self, reason: str) -> None:
        self.rejected.labels(reason=reason).inc()

    def record_result(self, result, queue_wait_s: float | None) -> None:
        """One finished generation: its token counts, its TTFT and its time in the queue."""
        self.completion_tokens.inc(result.completion_tokens)
        self.prompt_tokens.inc(result.prompt_tokens)
        self.truncated_tokens.inc(result.truncated_tokens)
        reused = result.reused_tokens
        self.reused_tokens.inc(reused)
        self.computed_tokens.inc(result.prompt_tokens - reused)
        if result.completion_tokens:
            self.ttft.observe(result.ttft_ms / 1e3)
        if queue_wait_s is not None:
            self.queue_wait.observe(queue_wait_s)

    # ---- readings ----
    def value(self, name: str, **labels) -> float:
        """One sample's value as /metrics would show it (0 when it has none yet)."""
        value = self.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def render(self) -> bytes:
        return generate_latest(self.registry)
