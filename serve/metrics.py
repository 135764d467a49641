"""Prometheus metrics in the text exposition format (no client library needed).

The metric names are defined here only; every name carries its unit.
All updates happen on the IO loop, so no locks are needed.
"""
from __future__ import annotations

import bisect
from typing import Callable

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    if not pairs:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Counter:
    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = ()):
        self.name, self.help, self.label_names = name, help_text, labels
        self.values: dict[tuple, float] = {}

    def inc(self, amount: float = 1.0, **labels) -> None:
        key = tuple(str(labels[n]) for n in self.label_names)
        self.values[key] = self.values.get(key, 0.0) + amount

    def get(self, **labels) -> float:
        return self.values.get(tuple(str(labels[n]) for n in self.label_names), 0.0)

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        rows = self.values.items() if self.values or self.label_names else [((), 0.0)]
        for key, value in sorted(rows):
            out.append(f"{self.name}{_labels(tuple(zip(self.label_names, key)))} {_num(value)}")
        return out


class Gauge:
    def __init__(self, name: str, help_text: str, read: Callable[[], float]):
        self.name, self.help, self.read = name, help_text, read

    def render(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge",
                f"{self.name} {_num(self.read())}"]


class ReadCounter:
    """A counter kept elsewhere (the worker thread's): `read()` gives {label value: count}."""

    def __init__(self, name: str, help_text: str, label: str | None,
                 read: Callable[[], dict[str, float]], keys: tuple[str, ...]):
        self.name, self.help, self.label, self.read, self.keys = name, help_text, label, read, keys

    def render(self) -> list[str]:
        values = self.read() or {}
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        for key in self.keys:
            labels = _labels(((self.label, key),)) if self.label else ""
            out.append(f"{self.name}{labels} {_num(values.get(key, 0))}")
        return out


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...] = LATENCY_BUCKETS_S):
        self.name, self.help, self.buckets = name, help_text, buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        running = 0
        for bound, count in zip(self.buckets + (float("inf"),), self.counts):
            running += count
            out.append(f'{self.name}_bucket{{le="{_num(bound)}"}} {running}')
        out += [f"{self.name}_sum {_num(self.sum)}", f"{self.name}_count {self.count}"]
        return out


class Metrics:
    """Everything /metrics reports; gauges read the live state through callables."""

    def __init__(self, queue_depth: Callable[[], float] = lambda: 0,
                 busy: Callable[[], float] = lambda: 0, ready: Callable[[], float] = lambda: 0,
                 cache_bytes: Callable[[], float] = lambda: 0,
                 cache_budget: Callable[[], float] = lambda: 0,
                 warmups: Callable[[], dict[str, float]] = lambda: {},
                 warming: Callable[[], float] = lambda: 0,
                 warmups_pending: Callable[[], float] = lambda: 0):
        self.requests = Counter("cgserve_requests_total", "HTTP requests answered, by route and status",
                                ("route", "status"))
        self.cancelled = Counter("cgserve_cancelled_total",
                                 "Generations cut short, by reason (disconnect, timeout, shutdown, "
                                 "superseded)",
                                 ("reason",))
        self.rejected = Counter("cgserve_rejected_total",
                                "Completions refused before generation, by reason", ("reason",))
        self.completion_tokens = Counter("cgserve_completion_tokens_total", "Tokens generated")
        self.prompt_tokens = Counter("cgserve_prompt_tokens_total", "Prompt tokens processed")
        self.reused_tokens = Counter("cgserve_prompt_tokens_reused_total",
                                     "Prompt tokens whose KV cache came from an earlier request")
        self.computed_tokens = Counter("cgserve_prompt_tokens_computed_total",
                                       "Prompt tokens the model had to run (not reused)")
        self.truncated_tokens = Counter("cgserve_truncated_prompt_tokens_total",
                                        "Prompt tokens cut from the left to fit the context")
        self.latency = Histogram("cgserve_request_latency_seconds",
                                 "Completion request latency, arrival to last byte")
        self.ttft = Histogram("cgserve_ttft_seconds",
                              "Time to first token as the engine measured it")
        self.queue_wait = Histogram("cgserve_queue_wait_seconds",
                                    "Time a completion waited in the queue")
        self.warmup_counters = [
            ReadCounter("cgserve_warmups_started_total",
                        "Speculative warm-ups of a client's next-line prompt started", None,
                        warmups, ("started",)),
            ReadCounter("cgserve_warmups_total",
                        "Speculative warm-ups ended, by outcome (completed; cancelled by a "
                        "request, resumed later; skipped: already cached or too long)",
                        "outcome", warmups, ("completed", "cancelled", "skipped")),
            ReadCounter("cgserve_warmup_tokens_computed_total",
                        "Prompt tokens computed by speculative warm-ups", None,
                        lambda: {"tokens": warmups().get("tokens", 0)}, ("tokens",)),
        ]
        self.gauges = [
            Gauge("cgserve_queue_depth", "Completions waiting for the worker", queue_depth),
            Gauge("cgserve_busy", "1 while the worker is generating", busy),
            Gauge("cgserve_ready", "1 once the model is loaded and the server takes work", ready),
            Gauge("cgserve_prefix_cache_bytes", "KV cache bytes kept for reuse", cache_bytes),
            Gauge("cgserve_prefix_cache_budget_bytes",
                  "The prefix cache's budget (0: reuse is off)", cache_budget),
            Gauge("cgserve_warmup_running", "1 while a speculative warm-up runs", warming),
            Gauge("cgserve_warmups_pending", "Clients with a warm-up waiting for an idle worker",
                  warmups_pending),
        ]

    def render(self) -> str:
        lines: list[str] = []
        for metric in (self.requests, self.cancelled, self.rejected, self.completion_tokens,
                       self.prompt_tokens, self.reused_tokens, self.computed_tokens,
                       self.truncated_tokens, self.latency, self.ttft,
                       self.queue_wait, *self.warmup_counters, *self.gauges):
            lines += metric.render()
        return "\n".join(lines) + "\n"
