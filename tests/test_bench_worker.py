"""bench/sweep/worker.py: a point's row from its timings, the floor, failures classified."""
from __future__ import annotations

import pytest

from bench.sweep.backends import Timing
from bench.sweep.worker import classify, floor_row, latency_row


def test_latency_row_from_timings():
    timings = [Timing(100.0, 90.0, 400.0, [100.0, 200.0, 300.0, 400.0], 4),
               Timing(120.0, 95.0, 420.0, [120.0, 220.0, 320.0, 420.0], 4)]
    row = latency_row(timings, new_tokens=4, batch=1)
    assert row["ttft_ms_mean"] == pytest.approx(110.0)
    assert row["tpot_ms_mean"] == pytest.approx(100.0) and row["tpot_ms_stdev"] == 0
    assert row["itl_ms_p99"] == pytest.approx(100.0) and row["itl_count"] == 6
    assert row["decode_tokens_per_s_mean"] == pytest.approx(10.0)
    floor = floor_row({**row, "prompt_tokens": 8, "new_tokens": 4, "batch": 1,
                       "weight_bytes": 10**9, "kv_bytes_per_token": 0}, 20.0, "test")
    assert floor["floor_ms_per_token"] == pytest.approx(50.0)
    assert floor["pct_of_floor"] == pytest.approx(50.0)


@pytest.mark.parametrize("exc, status", [
    (MemoryError(), "oom"),
    (RuntimeError("CUDA error: out of memory"), "oom"),
    (RuntimeError("ResourceExhaustedError: Out of memory error on GPU 0"), "oom"),
    (ValueError("shape mismatch"), "error"),
])
def test_failures_are_classified(exc, status):
    assert classify(exc) == status
