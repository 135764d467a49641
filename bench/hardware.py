"""What the machine is: GPU bandwidth table, measured CPU bandwidth, and `env.json`.

The table is from NVIDIA datasheets (../shared/docs/BENCHMARKING.md). Decoding at batch 1 reads
every weight once per token, so `weight_bytes / bandwidth` is a floor on time per token.
"""
from __future__ import annotations

import os
import platform
import sys
import threading
import time
from dataclasses import dataclass
from importlib import metadata

from .memory import MB, gpu_inventory

GB = 1e9


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gb: float
    bandwidth_gbps: float
    note: str = ""


# Most specific patterns first: "A100" must not be read as "A10".
GPUS: tuple[tuple[str, Gpu], ...] = (
    ("P40", Gpu("Tesla P40", 24, 346, "fp16 arithmetic 1/64 rate: store fp16, compute fp32")),
    ("V100", Gpu("V100", 32, 900)),
    ("T4", Gpu("T4", 16, 320)),
    ("A100-SXM4-80GB", Gpu("A100 80GB", 80, 2039)),
    ("A100", Gpu("A100", 40, 1555)),
    ("A10", Gpu("A10", 24, 600)),
    ("H100 PCIe", Gpu("H100 PCIe", 80, 2000)),
    ("H100", Gpu("H100 SXM", 80, 3350)),
    ("H200", Gpu("H200", 141, 4800)),
)


def lookup_gpu(name: str) -> Gpu | None:
    upper = name.upper()
    for pattern, gpu in GPUS:
        if pattern.upper() in upper:
            return gpu
    return None


def measure_cpu_bandwidth_gbps(size_mb: int = 256, threads: int | None = None,
                               rounds: int = 3) -> float:
    """Read bandwidth of this machine: threads summing disjoint slices of a large array."""
    import numpy as np

    threads = threads or len(os.sched_getaffinity(0))
    data = np.ones(size_mb * MB // 4, dtype=np.float32)
    parts = np.array_split(data, threads)
    best = 0.0
    for _ in range(rounds):
        workers = [threading.Thread(target=np.add.reduce, args=(p,)) for p in parts]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = max(best, data.nbytes / (time.perf_counter() - start) / GB)
    return best


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    from engine.runtime import cpuinfo_field

    return cpuinfo_field("model name") or platform.processor() or "unknown"


def host_memory_mb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / MB
    except (ValueError, OSError):
        return float("nan")


TRACKED_ENV = ("OMP_NUM_THREADS", "MKL_DEBUG_CPU_TYPE", "CGW_NO_CPU_TUNING", "CUDA_VISIBLE_DEVICES",
               "CGW_TP_VOCAB", "FLAGS_allocator_strategy", "FLAGS_fraction_of_gpu_memory_to_use")


def describe_environment(measure_bandwidth: bool = True) -> dict:
    """Everything `env.json` records (no paddle import: workers report what they load)."""
    from engine.runtime import applied_settings

    gpus = gpu_inventory()
    env = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_cores": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "memory_mb": round(host_memory_mb()),
        "gpus": gpus,
        "gpu_name": gpus[0]["name"] if gpus else None,
        "gpu_driver": gpus[0]["driver"] if gpus else None,
        "cuda_version": None,  # filled by the first GPU point (from the framework)
        "versions": {d: _version(d) for d in (
            "paddlepaddle", "paddlepaddle-gpu", "paddlenlp", "torch", "transformers", "numpy",
            "nvidia-ml-py", "codegen-workbench")},
        "settings_applied_by_engine": applied_settings(),
        "env": {k: os.environ.get(k) for k in TRACKED_ENV},
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],  # a shared machine is noisy
    }
    if measure_bandwidth:
        env["cpu_bandwidth_gbps"] = round(measure_cpu_bandwidth_gbps(), 2)
    return env
