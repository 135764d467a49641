"""`cgbench compare A B`: B / A for every metric of the points both runs measured."""
from __future__ import annotations

import math

from .schema import IDENTITY, MODEL, read_points

MATCH = ("variant", "backend", "dtype", "prompt_tokens", "new_tokens", "batch", "tensor_parallel")
SKIP = {name for name, _ in IDENTITY + MODEL} | {"rss_samples", "gpu_samples",
                                                 "gpu_sample_interval_ms", "gpu_total_mb",
                                                 "gpu_idle_mb", "bandwidth_gbps", "latency_count",
                                                 "itl_count"}


def match_key(row: dict) -> tuple:
    return tuple(str(row.get(c)) for c in MATCH)


def compare_runs(run_a, run_b) -> tuple[list[dict], list[tuple], list[tuple]]:
    """Long table (point, metric, a, b, b/a) and the keys only A or only B has."""
    rows_a = {match_key(r): r for r in read_points(run_a) if r["status"] == "ok"}
    rows_b = {match_key(r): r for r in read_points(run_b) if r["status"] == "ok"}
    out = []
    for key in [k for k in rows_a if k in rows_b]:
        a, b = rows_a[key], rows_b[key]
        label = "/".join(key).replace("codegen-", "")
        for metric in a:
            if metric in SKIP:
                continue
            va, vb = a.get(metric), b.get(metric)
            if not isinstance(va, (int, float)) or not isinstance(vb, (int, float)):
                continue
            ratio = vb / va if va else math.nan
            out.append({"point": label, "metric": metric, "a": va, "b": vb, "b_over_a": ratio})
    only_a = [k for k in rows_a if k not in rows_b]
    only_b = [k for k in rows_b if k not in rows_a]
    return out, only_a, only_b


def render_comparison(items: list[dict], fmt: str, metrics: tuple[str, ...] | None = None) -> str:
    import json

    if metrics:
        items = [i for i in items if any(i["metric"].startswith(m) for m in metrics)]
    if fmt == "json":
        return json.dumps(items, indent=2)
    heads = ["point", "metric", "A", "B", "B/A"]
    cells = [[i["point"], i["metric"], f"{i['a']:.4g}", f"{i['b']:.4g}",
              "-" if math.isnan(i["b_over_a"]) else f"{i['b_over_a']:.3f}"] for i in items]
    from .report import render_markdown, render_text

    return render_markdown(heads, cells) if fmt == "markdown" else render_text(heads, cells)
