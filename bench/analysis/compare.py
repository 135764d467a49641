"""`cgbench compare A B`: B / A for every metric of the points both runs measured."""
from __future__ import annotations

import json

import pandas as pd

from ..sweep.schema import IDENTITY, MODEL, NUMERIC
from .frames import load_run, ok_points, records
from .tables import render_table

MATCH = ("variant", "backend", "dtype", "prompt_tokens", "new_tokens", "batch", "tensor_parallel")
SKIP = {name for name, _ in IDENTITY + MODEL} | {"rss_samples", "gpu_samples",
                                                 "gpu_sample_interval_ms", "gpu_total_mb",
                                                 "gpu_idle_mb", "bandwidth_gbps", "latency_count",
                                                 "itl_count"}
METRICS = [c for c in sorted(NUMERIC) if c not in SKIP]


def _label(frame: pd.DataFrame) -> pd.Series:
    label = frame[list(MATCH[:-1])].astype(str).agg("/".join, axis=1).str.replace("codegen-", "")
    return label + frame["tensor_parallel"].map(
        lambda n: "" if str(n) in ("1", "1.0") else f"/tp{n}")  # one device: no suffix


def compare_frames(a: pd.DataFrame, b: pd.DataFrame) -> tuple[pd.DataFrame, list[tuple], list[tuple]]:
    """Long table (point, metric, a, b, b_over_a) and the keys only A or only B has."""
    keys = list(MATCH)

    def keyed(frame):  # one row per point, matched as text, as the CSV cells read
        frame = ok_points(frame).drop_duplicates(keys, keep="last")
        return frame.assign(**{k: frame[k].astype(str) for k in keys})

    a, b = keyed(a), keyed(b)
    both = a.merge(b, on=keys, how="outer", suffixes=("_a", "_b"), indicator=True, sort=False)
    only = {side: [tuple(r) for r in both.loc[both["_merge"] == side, keys].itertuples(index=False)]
            for side in ("left_only", "right_only")}
    shared = both[both["_merge"] == "both"]
    if shared.empty:
        return pd.DataFrame(columns=["point", "metric", "a", "b", "b_over_a"]), \
            only["left_only"], only["right_only"]
    metrics = [m for m in a.columns if m in METRICS]  # in the file's column order
    long = pd.DataFrame({"point": _label(shared).repeat(len(metrics)).to_numpy(),
                         "metric": metrics * len(shared),
                         "a": shared[[f"{m}_a" for m in metrics]].to_numpy().ravel(),
                         "b": shared[[f"{m}_b" for m in metrics]].to_numpy().ravel()})
    long = long.dropna(subset=["a", "b"]).reset_index(drop=True)
    long["b_over_a"] = long["b"] / long["a"].where(long["a"] != 0)
    return long, only["left_only"], only["right_only"]


def compare_runs(run_a, run_b) -> tuple[pd.DataFrame, list[tuple], list[tuple]]:
    return compare_frames(load_run(run_a)[0], load_run(run_b)[0])


def render_comparison(items: pd.DataFrame, fmt: str, metrics: tuple[str, ...] | None = None) -> str:
    if metrics:
        items = items[items["metric"].str.startswith(metrics)]
    if fmt == "json":
        return json.dumps(records(items), indent=2)
    if fmt == "csv":
        return items.to_csv(index=False).rstrip("\n")
    table = pd.DataFrame({"point": items["point"], "metric": items["metric"],
                          "A": items["a"].map("{:.4g}".format), "B": items["b"].map("{:.4g}".format),
                          "B/A": items["b_over_a"].map(lambda r: "-" if pd.isna(r) else f"{r:.3f}")})
    return render_table(table, fmt)
