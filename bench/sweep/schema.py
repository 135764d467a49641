"""The `points.csv` schema: one row per sweep point, every column documented here.

This table is the one source of truth: `results/README.md` is generated from it
(`python -m bench.sweep.schema > results/README.md` keeps them in step; a test checks they agree).
Bump SCHEMA_VERSION whenever a column is renamed, removed or changes meaning.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from ..errors import BenchError, SchemaError
from ..latency import STATS
from ..output import atomic_write

SCHEMA_VERSION = 1
POINTS_FILE = "points.csv"
ENV_FILE = "env.json"

# (name, meaning) in file order.  Latency metrics expand to _mean/_p50/_p90/_p99/_stdev.
IDENTITY = [
    ("schema_version", f"version of this column layout (now {SCHEMA_VERSION})"),
    ("point_id", "stable key of the point: variant/weights/backend/dtype/device/prompt/new/batch"),
    ("variant", "full variant name, e.g. codegen-350M-mono (or codegen-tiny)"),
    ("size", "model size: 350M, 2B, 6B, 16B (tiny in tests)"),
    ("data", "training data: nl, multi or mono"),
    ("weights", "`random` (real architecture, random weights) or the model directory"),
    ("backend", "`paddle` (this project's engine) or `hf` (transformers, own decode loop)"),
    ("dtype", "float32, float16 or bfloat16"),
    ("device", "cpu or gpu:N (logical index, as the framework sees it)"),
    ("prompt_tokens", "prompt length in tokens (random ids of exactly this length)"),
    ("new_tokens", "tokens generated per request; EOS ignored so every run makes exactly this many"),
    ("batch", "rows decoded together (n choices of one prompt: one prefill, batched decode)"),
    ("tensor_parallel", "processes (GPUs) the model is split over (`--tensor-parallel`; 1: one "
                        "device; runs before this column existed read as 1)"),
    ("repeats", "measured runs (after the warm-up runs)"),
    ("warmup", "unmeasured runs before the measured ones"),
    ("seed", "seed of the random weights and prompts"),
    ("status", "ok, oom (out of memory, or killed by SIGKILL) or error"),
    ("message", "the error or OOM message (empty when ok)"),
    ("started_at", "UTC time the point started (ISO 8601)"),
    ("point_wall_s", "wall time of the whole point: process start, load, warm-up, repeats"),
]
MODEL = [
    ("param_count", "parameters, computed from the architecture"),
    ("weight_bytes", "parameter bytes at this dtype"),
    ("kv_bytes_per_token", "KV-cache bytes one token of context costs (all layers, K and V)"),
]
LOAD = [
    ("load_s", "model load time: build + fill weights (+ reading files), in seconds"),
    ("load_peak_rss_mb", "host peak RSS of the point's process when loading finished (MiB)"),
]
LATENCY_METRICS = [
    ("ttft_ms", "time to first token: prefill plus the first chosen token (ms)"),
    ("tpot_ms", "time per output token after the first: (e2e - ttft) / (new_tokens - 1) (ms)"),
    ("e2e_ms", "whole request, start to last token (ms)"),
    ("prefill_ms", "the prompt's forward pass alone (ms)"),
    ("tokens_per_s", "batch * new_tokens / e2e"),
    ("decode_tokens_per_s", "batch * (new_tokens - 1) / (e2e - ttft): the decode-only rate"),
    ("itl_ms", "inter-token latency: every gap between consecutive tokens, over all repeats (ms)"),
]
LATENCY_COUNT = [("latency_count", "measured runs the statistics are over (= repeats when ok)"),
                 ("itl_count", "gaps the itl_ms statistics are over")]
MEMORY = [
    ("peak_rss_mb", "host peak RSS of the point's process (kernel VmHWM, and sampled), MiB"),
    ("rss_samples", "host RSS samples taken"),
    ("gpu_name", "GPU name from NVML (empty on cpu)"),
    ("gpu_uuid", "GPU UUID the logical device was mapped to (honours CUDA_VISIBLE_DEVICES)"),
    ("gpu_total_mb", "the GPU's memory (MiB)"),
    ("gpu_idle_mb", "device-wide used memory before the model loaded (idle baseline, MiB)"),
    ("gpu_peak_device_mb", "device-wide peak minus the idle baseline (MiB): includes the CUDA context"),
    ("gpu_peak_process_mb", "this process's own peak from NVML's process list (empty in some containers)"),
    ("gpu_samples", "NVML samples taken"),
    ("gpu_sample_interval_ms", "NVML sampling interval (<= 10 ms)"),
    ("alloc_max_allocated_mb", "framework allocator: max allocated (paddle/torch .cuda.max_memory_allocated)"),
    ("alloc_max_reserved_mb", "framework allocator: max reserved"),
    ("allocator_strategy", "FLAGS_allocator_strategy for paddle (auto_growth / naive_best_fit), `torch` for hf"),
]
FLOOR = [
    ("bandwidth_gbps", "memory bandwidth used for the floor (GB/s): GPU table, or measured on cpu"),
    ("bandwidth_source", "where that bandwidth came from"),
    ("floor_ms_per_token", "(weight bytes + KV bytes read) / bandwidth: least possible time per token"),
    ("pct_of_floor", "floor_ms_per_token / tpot_ms_mean * 100: how close decode runs to the hardware limit"),
]


def latency_columns() -> list[tuple[str, str]]:
    out = []
    for name, meaning in LATENCY_METRICS:
        for stat in STATS:
            out.append((f"{name}_{stat}", f"{stat} of {name}: {meaning}"))
    return out + LATENCY_COUNT


def all_columns() -> list[tuple[str, str]]:
    return IDENTITY + MODEL + LOAD + latency_columns() + MEMORY + FLOOR


COLUMNS = [name for name, _ in all_columns()]
KEY_COLUMNS = ("variant", "weights", "backend", "dtype", "device", "prompt_tokens", "new_tokens",
               "batch", "tensor_parallel")
DEFAULTED = {"tensor_parallel": "1"}  # columns added later: a file without them reads this
NUMERIC = {n for n in COLUMNS if n.endswith(("_ms", "_mb", "_s", "_gbps", "_count", "_bytes",
                                             "_per_token", "_tokens", "_per_s", "_version"))
           or n.split("_")[-1] in STATS or n in (
               "batch", "tensor_parallel", "repeats", "warmup", "seed", "param_count", "pct_of_floor", "rss_samples",
               "gpu_samples", "point_wall_s", "latency_count", "itl_count")}


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def _parse(name: str, text: str):
    if text == "":
        return None
    if name in NUMERIC:
        try:
            number = float(text)
        except ValueError:
            return text
        return int(number) if number.is_integer() and "." not in text and "e" not in text else number
    return text


def read_points(run_dir: Path) -> list[dict]:
    """Rows of `run_dir/points.csv`, checked against this schema version."""
    path = Path(run_dir) / POINTS_FILE
    if not Path(run_dir).is_dir():
        raise BenchError(f"{run_dir}: no such run directory; give a directory written by `cgbench run`")
    if not path.is_file():
        raise BenchError(f"{path}: not found; {run_dir} is not a cgbench run (run `cgbench run --out {run_dir}`)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BenchError(f"{path}: cannot read ({exc}); check the file") from None
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    if "schema_version" not in header:
        raise SchemaError(f"{path}: no schema_version column; not a cgbench points file")
    rows = list(reader)
    versions = {r["schema_version"] for r in rows}
    if versions - {str(SCHEMA_VERSION)}:
        other = sorted(versions - {str(SCHEMA_VERSION)})[0]
        raise SchemaError(f"{path}: schema version {other}, this cgbench reads version "
                          f"{SCHEMA_VERSION}; rerun the sweep (or use the cgbench that wrote it)")
    if not rows and header != COLUMNS:
        raise SchemaError(f"{path}: columns differ from schema version {SCHEMA_VERSION}")
    missing = [c for c in COLUMNS if c not in header and c not in DEFAULTED]
    if missing:
        raise SchemaError(f"{path}: column {missing[0]!r} missing for schema version "
                          f"{SCHEMA_VERSION}; the file was edited or written by another cgbench")
    return [{k: _parse(k, v) for k, v in {**DEFAULTED, **row}.items()} for row in rows]


def write_points(run_dir: Path, rows: list[dict]) -> Path:
    """Write every row to `points.csv` atomically (a temporary file, then rename)."""
    path = Path(run_dir) / POINTS_FILE
    unknown = sorted({k for r in rows for k in r} - set(COLUMNS))
    assert not unknown, f"columns outside the schema: {unknown}"
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: _cell(row.get(c)) for c in COLUMNS})
    atomic_write(path, buf.getvalue())
    return path


def point_key(row: dict) -> tuple:
    return tuple(str(row.get(c)) for c in KEY_COLUMNS)


def markdown_documentation() -> str:
    """The column documentation for results/README.md."""
    lines = [
        "# Benchmark results",
        "",
        "Each run directory `results/<RUN>/` written by `cgbench run` holds:",
        "",
        "- `points.csv`: one row per sweep point (tidy: one point, one row), columns below;",
        "  rewritten atomically after every point, so a crash loses nothing (`--resume` goes on).",
        "- `env.json`: the machine and software (CPU, cores, memory, measured CPU read bandwidth,",
        "  GPU name and driver, CUDA, Paddle/PaddleNLP/torch/transformers versions, the thread and",
        "  MKL settings applied before Paddle was imported).",
        "- `report.md`, `*.png`: written by `cgbench report RUN` (`cgbench plot RUN` redraws the",
        "  PNGs from `points.csv`).",
        "",
        f"## points.csv, schema version {SCHEMA_VERSION}",
        "",
        "Latency metrics come as five columns each: `_mean`, `_p50`, `_p90`, `_p99`, `_stdev`",
        "(over the measured repeats; `itl_ms` over every token gap of every repeat). Memory is in",
        "MiB. Empty cells: not applicable (GPU columns on cpu) or not measured (failed points).",
        "",
        "| column | meaning |",
        "|---|---|",
    ]
    lines += [f"| `{name}` | {meaning.replace('|', '/')} |" for name, meaning in all_columns()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown_documentation(), end="")
