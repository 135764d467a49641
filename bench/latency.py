"""Latency statistics computed once from a list of values (like optimum-benchmark's `Latency`)."""
from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass

STATS = ("mean", "p50", "p90", "p99", "stdev")


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method) of sorted values."""
    if not sorted_values:
        return math.nan
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


@dataclass(frozen=True)
class LatencyStats:
    count: int
    mean: float
    p50: float
    p90: float
    p99: float
    stdev: float

    @classmethod
    def from_values(cls, values) -> "LatencyStats":
        vals = sorted(float(v) for v in values if v is not None and not math.isnan(float(v)))
        if not vals:
            return cls(0, math.nan, math.nan, math.nan, math.nan, math.nan)
        stdev = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return cls(len(vals), statistics.fmean(vals), percentile(vals, 50), percentile(vals, 90),
                   percentile(vals, 99), stdev)

    def columns(self, prefix: str) -> dict[str, float]:
        """`{prefix_mean: .., prefix_p50: .., ...}` for a CSV row."""
        return {f"{prefix}_{name}": getattr(self, name) for name in STATS}

    def to_dict(self) -> dict:
        return asdict(self)


def gaps(times_ms: list[float]) -> list[float]:
    """Inter-token latencies: the differences between consecutive token timestamps."""
    return [b - a for a, b in zip(times_ms, times_ms[1:])]
