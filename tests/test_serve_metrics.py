"""/metrics: names, labels and live readings, parsed as Prometheus parses them."""
from __future__ import annotations

import threading

from types import SimpleNamespace

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.typing.replay import read_metrics
from bench.typing.run import METRICS as TYPING_METRICS
from serve.metrics import Metrics, cache_reading
from serve.testing import FakeGenerator, LiveServer, make_result

COUNTERS = ("cgserve_requests_total", "cgserve_cancelled_total", "cgserve_rejected_total",
            "cgserve_completion_tokens_total", "cgserve_prompt_tokens_total",
            "cgserve_prompt_tokens_reused_total", "cgserve_prompt_tokens_computed_total",
            "cgserve_truncated_prompt_tokens_total", "cgserve_warmups_started_total",
            "cgserve_warmups_total", "cgserve_warmup_tokens_computed_total")
HISTOGRAMS = ("cgserve_request_latency_seconds", "cgserve_ttft_seconds",
              "cgserve_queue_wait_seconds")
GAUGES = ("cgserve_queue_depth", "cgserve_busy", "cgserve_ready", "cgserve_running_sequences",
          "cgserve_waiting_requests", "cgserve_batch_size", "cgserve_prefix_cache_bytes",
          "cgserve_prefix_cache_budget_bytes", "cgserve_warmup_running", "cgserve_warmups_pending")


def families(metrics: Metrics) -> dict:
    return {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}


def samples(metrics: Metrics) -> dict:
    """{(sample name, sorted labels): value} as a scraper reads them."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in families(metrics).values() for s in f.samples}


def fake_scheduler(**values):
    live = dict(depth=2, busy=True, running=5, waiting=3, batch_size=4, warming=False,
                pending_warmups=1,
                warmups={"started": 7, "completed": 4, "cancelled": 2, "skipped": 1,
                         "tokens": 900})
    return SimpleNamespace(**{**live, **values})


def test_every_metric_has_its_name_and_type():
    found = families(Metrics())
    types = {f.name: f.type for f in found.values()}
    for name in COUNTERS:
        assert types[name.removesuffix("_total")] == "counter", name
    for name in HISTOGRAMS:
        assert types[name] == "histogram", name
    for name in GAUGES:
        assert types[name] == "gauge", name
    names = {s.name for f in found.values() for s in f.samples}
    assert not any(n.endswith("_created") for n in names)  # no series cgserve never had


def test_gauges_read_the_live_scheduler_and_cache():
    cache = SimpleNamespace(used_bytes=1024, budget_bytes=4096)
    scheduler = fake_scheduler()
    metrics = Metrics(scheduler=lambda: scheduler,
                      generator=lambda: SimpleNamespace(prefix_cache=cache), ready=lambda: True)
    read = samples(metrics)
    assert read[("cgserve_running_sequences", ())] == 5
    assert read[("cgserve_waiting_requests", ())] == 3
    assert read[("cgserve_batch_size", ())] == 4
    assert read[("cgserve_queue_depth", ())] == 2
    assert read[("cgserve_busy", ())] == 1 and read[("cgserve_ready", ())] == 1
    assert read[("cgserve_prefix_cache_bytes", ())] == 1024
    assert read[("cgserve_prefix_cache_budget_bytes", ())] == 4096
    assert read[("cgserve_warmups_started_total", ())] == 7
    assert read[("cgserve_warmups_total", (("outcome", "cancelled"),))] == 2
    assert read[("cgserve_warmup_tokens_computed_total", ())] == 900
    scheduler.running, scheduler.batch_size = 1, 1  # read at every scrape, not copied
    assert samples(metrics)[("cgserve_batch_size", ())] == 1


def test_readings_are_zero_while_loading():
    read = samples(Metrics())
    for name in GAUGES:
        assert read[(name, ())] == 0, name
    for outcome in ("completed", "cancelled", "skipped"):
        assert read[("cgserve_warmups_total", (("outcome", outcome),))] == 0


def test_a_result_counts_tokens_ttft_and_queue_wait():
    metrics = Metrics()
    metrics.record_result(make_result([], prompt_tokens=10, completion_tokens=4,
                                      truncated_tokens=2, reused_tokens=6, ttft_ms=30.0), 0.5)
    metrics.record_result(make_result([], prompt_tokens=3, completion_tokens=0), None)
    assert metrics.value("cgserve_prompt_tokens_total") == 13
    assert metrics.value("cgserve_prompt_tokens_reused_total") == 6
    assert metrics.value("cgserve_prompt_tokens_computed_total") == 7
    assert metrics.value("cgserve_truncated_prompt_tokens_total") == 2
    assert metrics.value("cgserve_ttft_seconds_count") == 1  # no token, no first token
    assert metrics.value("cgserve_ttft_seconds_sum") == 0.03
    assert metrics.value("cgserve_queue_wait_seconds_bucket", le="0.5") == 1
    assert metrics.value("cgserve_queue_wait_seconds_bucket", le="0.25") == 0


def test_labelled_counters_and_separate_servers():
    first, second = Metrics(), Metrics()  # a registry each: no clash, no shared counts
    first.count_request("completions", "200")
    first.count_request("completions", "200")
    first.count_cancelled("superseded")
    first.count_rejected("queue_full")
    read = samples(first)
    assert read[("cgserve_requests_total", (("route", "completions"), ("status", "200")))] == 2
    assert read[("cgserve_cancelled_total", (("reason", "superseded"),))] == 1
    assert read[("cgserve_rejected_total", (("reason", "queue_full"),))] == 1
    assert second.value("cgserve_requests_total", route="completions", status="200") == 0


def test_cache_reading_while_the_worker_changes_the_cache():
    """The prefix cache adds up its entries under its lock: a reading taken while another
    thread puts and evicts entries is always a whole number of entries, never an error."""
    from engine.prefix_cache import PrefixCache

    cache = PrefixCache(10 * 7)
    stop = threading.Event()

    def churn():
        i = 0
        while not stop.is_set():
            cache.put([i], object(), 7, client=i % 3)
            i += 1

    worker = threading.Thread(target=churn)
    worker.start()
    try:
        readings = [cache_reading(SimpleNamespace(prefix_cache=cache), "used_bytes")
                    for _ in range(2000)]
    finally:
        stop.set()
        worker.join()
    assert all(r % 7 == 0 and 0 <= r <= 70 for r in readings)
    assert cache_reading(SimpleNamespace(prefix_cache=None), "used_bytes") == 0  # reuse off
    assert cache_reading(None, "used_bytes") == 0  # still loading


def test_served_metrics_parse_and_keep_the_names_bench_reads():
    with LiveServer(FakeGenerator()) as live, httpx.Client(base_url=live.url, timeout=10) as c:
        c.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
        response = c.get("/metrics")
        assert response.headers["content-type"].startswith("text/plain")
        parsed = {s.name: s for f in text_string_to_metric_families(response.text)
                  for s in f.samples}
        assert parsed["cgserve_ready"].value == 1
        assert parsed["cgserve_completion_tokens_total"].value == 2
        assert not {"cgserve_running_sequences", "cgserve_waiting_requests",
                    "cgserve_batch_size"} - set(parsed)
        read = read_metrics(live.url)  # cgbench typing's reader
        assert set(TYPING_METRICS) <= set(read), set(TYPING_METRICS) - set(read)
        assert read['cgserve_requests_total{route="completions",status="200"}'] == 1
