"""`cgbench report RUN`: the run's table as text, markdown or JSON, plus PNG plots."""
from __future__ import annotations

import json
import math
from pathlib import Path

from .errors import BenchError
from .schema import ENV_FILE, read_points

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


def load_run(run_dir: Path) -> tuple[list[dict], dict]:
    rows = read_points(run_dir)
    env_path = Path(run_dir) / ENV_FILE
    env = {}
    if env_path.is_file():
        try:
            env = json.loads(env_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise BenchError(f"{env_path}: unreadable ({exc}); rerun or remove the file") from None
    return rows, env


def _fmt(value, decimals) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if decimals is None or not isinstance(value, (int, float)):
        return str(value).replace("codegen-", "")
    return f"{value:,.{decimals}f}"


def table_cells(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    headings = [h for _, h, _ in TABLE]
    return headings, [[_fmt(r.get(c), d) for c, _, d in TABLE] for r in rows]


def render_text(headings: list[str], cells: list[list[str]]) -> str:
    widths = [max(len(h), *(len(row[i]) for row in cells)) if cells else len(h)
              for i, h in enumerate(headings)]
    line = lambda items: "  ".join(x.rjust(w) for x, w in zip(items, widths)).rstrip()  # noqa: E731
    return "\n".join([line(headings), line(["-" * w for w in widths])] + [line(r) for r in cells])


def render_markdown(headings: list[str], cells: list[list[str]]) -> str:
    out = ["| " + " | ".join(headings) + " |", "|" + "---|" * len(headings)]
    return "\n".join(out + ["| " + " | ".join(r) + " |" for r in cells])


def backend_ratios(rows: list[dict]) -> list[dict]:
    """Every other backend / hf for the same shape measured in this run (both ok)."""
    by_key = {}
    for r in rows:
        if r["status"] == "ok":
            by_key[(r["variant"], r["dtype"], r["device"], r["prompt_tokens"], r["new_tokens"],
                    r["batch"], r.get("tensor_parallel", 1), r["backend"])] = r
    out = []
    for key, p in by_key.items():
        if key[-1] == "hf" or key[:-1] + ("hf",) not in by_key:
            continue
        h = by_key[key[:-1] + ("hf",)]
        out.append({"variant": p["variant"], "backend": key[-1], "prompt_tokens": p["prompt_tokens"],
                    "new_tokens": p["new_tokens"], "batch": p["batch"],
                    **{f"{m}_over_hf": _ratio(p.get(m), h.get(m))
                       for m in ("ttft_ms_mean", "tpot_ms_mean", "e2e_ms_mean", "load_s",
                                 "peak_rss_mb")}})
    return out


def _ratio(a, b):
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or not b:
        return math.nan
    return a / b


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


def render_report(rows: list[dict], env: dict, fmt: str = "text", run_name: str = "") -> str:
    if fmt == "json":
        return json.dumps({"run": run_name, "env": env, "points": rows,
                           "over_hf": backend_ratios(rows)}, indent=2, default=str)
    headings, cells = table_cells(rows)
    if fmt == "text":
        return render_text(headings, cells)
    lines = [f"# cgbench run {run_name}", "", environment_line(env), "",
             render_markdown(headings, cells), ""]
    failed = [r for r in rows if r["status"] != "ok"]
    for r in failed:
        lines.append(f"- {r['point_id']}: **{r['status']}** {r['message']}")
    ratios = backend_ratios(rows)
    if ratios:
        lines += ["", "## backend / hf, same shape, same run (below 1: faster or smaller than hf)", ""]
        heads = ["variant", "backend", "prompt", "new", "ttft", "tpot", "e2e", "load", "peak rss"]
        body = [[r["variant"].replace("codegen-", ""), r["backend"], str(r["prompt_tokens"]),
                 str(r["new_tokens"])]
                + [_fmt(r[f"{m}_over_hf"], 2) for m in (
                    "ttft_ms_mean", "tpot_ms_mean", "e2e_ms_mean", "load_s", "peak_rss_mb")]
                for r in ratios]
        lines.append(render_markdown(heads, body))
    lines += ["", "Metrics: ../../shared/docs/BENCHMARKING.md; columns: results/README.md. "
              "`% floor` = (weight + KV bytes per token / bandwidth) / tpot."]
    return "\n".join(lines) + "\n"


def device_memory_mb(rows: list[dict], env: dict) -> tuple[float | None, str]:
    """The memory line of the plots: the GPU's memory, or the host's on cpu runs."""
    gpu = [r["gpu_total_mb"] for r in rows if isinstance(r.get("gpu_total_mb"), (int, float))]
    if gpu:
        return max(gpu), "GPU memory"
    if env.get("memory_mb"):
        return float(env["memory_mb"]), "host memory"
    return None, ""


def write_plots(rows: list[dict], env: dict, out_dir: Path) -> list[Path]:
    """latency.png and memory.png of the ok points (grouped by variant, backend and shape)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        return []
    labels = [f"{r['variant'].replace('codegen-', '')}\n{r['backend']} {r['dtype'].replace('float', 'fp')}\n"
              f"p{r['prompt_tokens']} n{r['new_tokens']}" + (f" b{r['batch']}" if r['batch'] != 1 else "")
              + (f" tp{r['tensor_parallel']}" if r.get("tensor_parallel", 1) != 1 else "")
              for r in ok]
    colors = ["tab:blue" if r["backend"] == "paddle" else "tab:orange" for r in ok]
    x = range(len(ok))
    paths = []

    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.3 * len(ok) * 2), 5))
    for ax, metric, title in ((axes[0], "ttft_ms", "time to first token (ms)"),
                              (axes[1], "tpot_ms", "time per output token (ms)")):
        means = [r.get(f"{metric}_mean") or 0 for r in ok]
        errs = [r.get(f"{metric}_stdev") or 0 for r in ok]
        ax.bar(x, means, yerr=errs, color=colors, capsize=3)
        if metric == "tpot_ms":
            floors = [r.get("floor_ms_per_token") for r in ok]
            if any(isinstance(f, (int, float)) for f in floors):
                ax.scatter(x, [f if isinstance(f, (int, float)) else math.nan for f in floors],
                           marker="_", s=400, color="black", label="bandwidth floor", zorder=3)
                ax.legend(loc="upper left")
        ax.set_title(title)
        ax.set_xticks(list(x), labels, fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("latency by variant (blue: paddle engine, orange: hf transformers)")
    fig.tight_layout()
    paths.append(out_dir / "latency.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(max(7, 0.9 * len(ok)), 5))
    gpu = any(isinstance(r.get("gpu_peak_device_mb"), (int, float)) for r in ok)
    metric = "gpu_peak_device_mb" if gpu else "peak_rss_mb"
    ax.bar(x, [(r.get(metric) or 0) / 1024 for r in ok], color=colors, label=(
        "GPU peak, device-wide minus idle" if gpu else "host peak RSS"))
    ax.scatter(x, [r["weight_bytes"] / 2**30 for r in ok], marker="_", s=400, color="black",
               label="weights alone", zorder=3)
    limit, what = device_memory_mb(rows, env)
    if limit:
        ax.axhline(limit / 1024, color="red", linestyle="--", label=f"{what} ({limit / 1024:.0f} GiB)")
    ax.set_ylabel("GiB")
    ax.set_xticks(list(x), labels, fontsize=7)
    ax.set_title("peak memory by variant")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    paths.append(out_dir / "memory.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths
