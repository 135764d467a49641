"""Measure one sweep point in this process: `python -m bench.sweep.worker JOB.json RESULT.json`.

The runner starts one worker per point, so each point begins with clean memory and a crash or
out-of-memory ends only its own point.  The result is one `points.csv` row as JSON.

`CGBENCH_FAULT=KIND[@STAGE][#MATCH]` (for tests) injects a failure into points whose id contains
MATCH, at STAGE `load` or `run` (default): `oom` raises an out-of-memory error, `kill` makes the
process die by SIGKILL (what the kernel's OOM killer does), `error` raises another error.
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from engine.atomic import atomic_write_bytes
from engine.dtypes import WEIGHT_DTYPES
from engine.runtime import configure_cpu_threads

from ..latency import LatencyStats, gaps
from .plan import Point
from .schema import SCHEMA_VERSION

LATENCY_PREFIXES = ("ttft_", "tpot_", "e2e_", "prefill_", "tokens_per_s", "decode_", "itl_",
                    "latency_count", "floor_", "pct_")
OOM_MARKERS = ("out of memory", "resourceexhausted", "cuda error: out of memory", "cannot allocate memory")


class InjectedOOM(MemoryError):
    pass


def classify(exc: BaseException) -> str:
    text = f"{type(exc).__name__} {exc}".lower()
    if isinstance(exc, MemoryError) or any(m in text for m in OOM_MARKERS):
        return "oom"
    return "error"


def identity(point: Point) -> dict:
    from engine.variants import get_variant

    v = get_variant(point.variant)
    row = {"schema_version": SCHEMA_VERSION, "point_id": point.point_id, "size": v.size,
           "data": v.data}
    row.update(point.to_dict())
    arch = v.arch
    row.update(param_count=arch.param_count, weight_bytes=arch.weight_bytes(point.dtype),
               kv_bytes_per_token=arch.kv_bytes_per_token(WEIGHT_DTYPES[point.dtype].cache_dtype))
    return row


def _fault(stage: str, point_id: str) -> None:
    fault = os.environ.get("CGBENCH_FAULT", "")
    if not fault:
        return
    fault, _, match = fault.partition("#")
    kind, _, where = fault.partition("@")
    if (where or "run") != stage or match not in point_id:
        return
    if kind == "oom":
        raise InjectedOOM("out of memory (injected by CGBENCH_FAULT)")
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "error":
        raise RuntimeError("injected failure (CGBENCH_FAULT)")


def latency_row(timings: list, new_tokens: int, batch: int) -> dict:
    row: dict = {}
    ttft = [t.ttft_ms for t in timings]
    e2e = [t.e2e_ms for t in timings]
    tpot = [(t.e2e_ms - t.ttft_ms) / (new_tokens - 1) if new_tokens > 1 else math.nan
            for t in timings]
    decode_rate = [batch * (new_tokens - 1) / ((t.e2e_ms - t.ttft_ms) / 1e3)
                   if new_tokens > 1 and t.e2e_ms > t.ttft_ms else math.nan for t in timings]
    itl = [g for t in timings for g in gaps(t.token_times_ms)]
    for name, values in (("ttft_ms", ttft), ("tpot_ms", tpot), ("e2e_ms", e2e),
                         ("prefill_ms", [t.prefill_ms for t in timings]),
                         ("tokens_per_s", [batch * new_tokens / (t.e2e_ms / 1e3) for t in timings]),
                         ("decode_tokens_per_s", decode_rate), ("itl_ms", itl)):
        row.update(LatencyStats.from_values(values).columns(name))
    row["latency_count"] = len(timings)
    row["itl_count"] = len(itl)
    return row


def floor_row(row: dict, bandwidth_gbps: float | None, source: str) -> dict:
    if not bandwidth_gbps:
        return {}
    context = row["prompt_tokens"] + row["new_tokens"] / 2
    bytes_per_token = row["weight_bytes"] + row["kv_bytes_per_token"] * context * row["batch"]
    floor_ms = bytes_per_token / (bandwidth_gbps * 1e9) * 1e3
    tpot = row.get("tpot_ms_mean")
    pct = floor_ms / tpot * 100 if tpot and not math.isnan(tpot) else math.nan
    return {"bandwidth_gbps": bandwidth_gbps, "bandwidth_source": source,
            "floor_ms_per_token": floor_ms, "pct_of_floor": pct}


def measure(point: Point, job: dict, row: dict) -> dict:
    """Load, warm up, run the repeats; fills `row` with every clock and memory reading.

    Memory readings are filled in even when the point fails (an OOM row keeps its peaks).
    """
    from .backends import BACKENDS, prompt_ids
    from ..memory import RssSampler

    rss = RssSampler().start()
    gpu = None
    if point.device.startswith("gpu"):
        from ..memory import NvmlSampler

        gpu = NvmlSampler(int(point.device.split(":")[1])).start()  # idle baseline before load
    try:
        _fault("load", point.point_id)
        backend = BACKENDS[point.backend](point)
        row["load_s"] = backend.load_s
        row["load_peak_rss_mb"] = rss.peak_mb
        _fault("run", point.point_id)
        for i in range(point.warmup):
            backend.run(prompt_ids(point.seed, 10_000 + i, point.prompt_tokens, backend.usable_ids),
                        point.new_tokens, point.batch)
        timings = []
        for i in range(point.repeats):
            t = backend.run(prompt_ids(point.seed, i, point.prompt_tokens, backend.usable_ids),
                            point.new_tokens, point.batch)
            if t.completion_tokens != point.new_tokens * point.batch:
                raise RuntimeError(f"{point.backend} made {t.completion_tokens} tokens, "
                                   f"expected {point.new_tokens * point.batch}")
            timings.append(t)
        row.update(latency_row(timings, point.new_tokens, point.batch))
        framework = backend.framework_memory()
        row["cuda_version"] = framework.pop("cuda_version", None)
        row.update(framework)
    finally:
        rss.stop()
        row["peak_rss_mb"] = rss.peak_mb
        row["rss_samples"] = rss.samples
        if gpu is not None:
            gpu.stop()
            g = gpu.result()
            row.update(gpu_name=g.name, gpu_uuid=g.uuid, gpu_total_mb=g.total_mb,
                       gpu_idle_mb=g.idle_mb, gpu_peak_device_mb=g.peak_device_mb,
                       gpu_peak_process_mb=g.peak_process_mb, gpu_samples=g.samples,
                       gpu_sample_interval_ms=g.interval_ms)
    if gpu is not None:
        from ..hardware import lookup_gpu

        known = lookup_gpu(row["gpu_name"])
        if known:
            row.update(floor_row(row, known.bandwidth_gbps, f"datasheet: {known.name}"))
    else:
        row.update(floor_row(row, job.get("cpu_bandwidth_gbps"), "measured cpu read bandwidth"))
    return row


def run_job(job: dict) -> dict:
    point = Point.from_dict(job["point"])
    start = time.perf_counter()
    row = identity(point)
    try:
        measure(point, job, row)
        row.update(status="ok", message="")
    except Exception as exc:  # the row records it; the sweep goes on
        row = {k: v for k, v in row.items() if not k.startswith(LATENCY_PREFIXES)}
        row.update(status=classify(exc), message=f"{type(exc).__name__}: {exc}".splitlines()[0][:500])
        traceback.print_exc(file=sys.stderr)
    row["point_wall_s"] = time.perf_counter() - start + job.get("startup_s", 0.0)
    return row


def main(argv: list[str]) -> int:
    configure_cpu_threads()  # before paddle or torch is imported
    job = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    row = run_job(job)
    atomic_write_bytes(Path(argv[1]), json.dumps(row, default=float).encode("utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
