"""bench/latency.py: statistics computed once from a list of values, token gaps."""
from __future__ import annotations

import math

import numpy as np
import pytest

from bench.latency import LatencyStats, gaps


def test_latency_stats_match_numpy():
    values = [12.0, 3.0, 7.5, 9.0, 30.0, 4.0, 5.5]
    s = LatencyStats.from_values(values)
    assert s.count == 7
    assert s.mean == pytest.approx(np.mean(values))
    for q, got in ((50, s.p50), (90, s.p90), (99, s.p99)):
        assert got == pytest.approx(np.percentile(values, q))
    assert s.stdev == pytest.approx(np.std(values, ddof=1))
    assert s.columns("ttft_ms") == {"ttft_ms_mean": s.mean, "ttft_ms_p50": s.p50,
                                    "ttft_ms_p90": s.p90, "ttft_ms_p99": s.p99,
                                    "ttft_ms_stdev": s.stdev}


def test_latency_stats_of_one_and_none():
    assert LatencyStats.from_values([4.0]).stdev == 0.0
    empty = LatencyStats.from_values([math.nan, None])
    assert empty.count == 0 and math.isnan(empty.mean)


def test_gaps_are_differences_of_timestamps():
    assert gaps([10.0, 15.0, 17.5]) == [5.0, 2.5]
    assert gaps([3.0]) == []
