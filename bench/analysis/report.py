"""`cgbench report RUN`: the run's table as text, markdown, CSV or JSON (plots: `plots.py`)."""
from __future__ import annotations

import json

import pandas as pd

from .frames import SHAPE, ok_points, records
from .tables import format_columns, render_markdown, render_table

# (column, heading, decimals) of the summary table
TABLE = [
    ("variant", "variant", None), ("backend", "backend", None), ("dtype", "dtype", None),
    ("prompt_tokens", "prompt", None), ("new_tokens", "new", None), ("batch", "batch", None),
    ("tensor_parallel", "tp", None), ("status", "status", None), ("load_s", "load s", 1), ("ttft_ms_mean", "ttft ms", 0),
    ("ttft_ms_p90", "ttft p90", 0), ("tpot_ms_mean", "tpot ms", 1), ("itl_ms_p50", "itl p50", 1),
    ("itl_ms_p90", "itl p90", 1), ("itl_ms_p99", "itl p99", 1), ("e2e_ms_mean", "e2e ms", 0),
    ("tokens_per_s_mean", "tok/s", 2), ("peak_rss_mb", "rss MiB", 0),
    ("gpu_peak_device_mb", "gpu MiB", 0), ("pct_of_floor", "% floor", 0),
]
RATIO_METRICS = ("ttft_ms_mean", "tpot_ms_mean", "e2e_ms_mean", "load_s", "peak_rss_mb")
RATIO_TABLE = [("variant", "variant", None), ("backend", "backend", None),
               ("prompt_tokens", "prompt", None), ("new_tokens", "new", None)] + [
    (f"{m}_over_hf", h, 2) for m, h in zip(RATIO_METRICS, ("ttft", "tpot", "e2e", "load", "peak rss"))]


def backend_ratios(points: pd.DataFrame) -> pd.DataFrame:
    """Every other backend / hf for the same shape measured in this run (both ok)."""
    ok = ok_points(points).drop_duplicates(list(SHAPE) + ["backend"], keep="last")
    hf = ok[ok["backend"] == "hf"].set_index(list(SHAPE))[list(RATIO_METRICS)]
    others = ok[ok["backend"] != "hf"].set_index(list(SHAPE))
    joined = others.join(hf, rsuffix="_hf", how="inner")
    out = joined[["backend"]].reset_index()
    for m in RATIO_METRICS:
        out[f"{m}_over_hf"] = (joined[m] / joined[f"{m}_hf"].where(joined[f"{m}_hf"] != 0)).to_numpy()
    return out[["variant", "backend", "prompt_tokens", "new_tokens", "batch"]
               + [f"{m}_over_hf" for m in RATIO_METRICS]]


def environment_line(env: dict) -> str:
    versions = env.get("versions", {})
    parts = [env.get("gpu_name") or f"CPU {env.get('cpu', '?')} ({env.get('cpu_cores', '?')} cores)",
             f"{env.get('memory_mb', 0) / 1024:.0f} GiB host memory" if env.get("memory_mb") else "",
             f"read bandwidth {env['cpu_bandwidth_gbps']} GB/s" if env.get("cpu_bandwidth_gbps") else "",
             f"paddle {versions.get('paddlepaddle') or versions.get('paddlepaddle-gpu')}",
             f"paddlenlp {versions.get('paddlenlp')}", f"torch {versions.get('torch')}",
             f"transformers {versions.get('transformers')}",
             "settings " + ", ".join(f"{k}={v}" for k, v in (env.get("env") or {}).items() if v)]
    return "; ".join(p for p in parts if p)


def render_report(points: pd.DataFrame, env: dict, fmt: str = "text", run_name: str = "") -> str:
    """The points table in `fmt`; markdown adds the environment, failures and ratios to hf."""
    ratios = backend_ratios(points)
    if fmt == "json":
        return json.dumps({"run": run_name, "env": env, "points": records(points),
                           "over_hf": records(ratios)}, indent=2, default=str)
    columns = TABLE if (points["tensor_parallel"] != 1).any() else [  # tp: only when split
        c for c in TABLE if c[0] != "tensor_parallel"]
    if fmt == "csv":
        return points[[c for c, _, _ in columns]].to_csv(index=False)
    table = format_columns(points, columns)
    if fmt == "text":
        return render_table(table, "text") + "\n"
    lines = [f"# cgbench run {run_name}", "", environment_line(env), "",
             render_markdown(table), ""]
    for r in points[points["status"] != "ok"].itertuples():
        lines.append(f"- {r.point_id}: **{r.status}** {r.message if isinstance(r.message, str) else ''}")
    if len(ratios):
        lines += ["", "## backend / hf, same shape, same run (below 1: faster or smaller than hf)", "",
                  render_markdown(format_columns(ratios, RATIO_TABLE))]
    lines += ["", "Metrics: ../../shared/docs/BENCHMARKING.md; columns: results/README.md. "
              "`% floor` = (weight + KV bytes per token / bandwidth) / tpot."]
    return "\n".join(lines) + "\n"
