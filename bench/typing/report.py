"""Summarise a typing replay and write requests.csv, summary.json, env.json, latency.png.

The requests are a pandas DataFrame, one row per request (`requests.csv`'s columns); every
table here is a groupby over it, by `mode` for `cgbench typing` and by typist for the typists
of `cgbench load`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, fields
from pathlib import Path

import pandas as pd

from ..errors import BenchError
from ..latency import LatencyStats
from ..output import atomic_write, make_dir, write_json
from .replay import Outcome

GOAL_RATIO = 0.2  # issue 7: p50 with reuse <= 0.2 x without
GOAL_P50_MS = 1000.0  # ... and <= 1 s
REQUESTS_FILE = "requests.csv"
CSV_FIELDS = [f.name for f in fields(Outcome) if f.name != "text"] + ["shown"]


def outcomes_frame(outcomes: list[Outcome]) -> pd.DataFrame:
    """One row per request, requests.csv's columns (the completion's text left out)."""
    rows = [{**asdict(o), "shown": o.shown} for o in outcomes]
    return pd.DataFrame(rows, columns=CSV_FIELDS)


def read_requests(run_dir: Path) -> pd.DataFrame:
    """A typing run's requests.csv as written by `write_results`."""
    path = Path(run_dir) / REQUESTS_FILE
    if not path.is_file():
        raise BenchError(f"{path}: not found; give a directory written by `cgbench typing`")
    frame = pd.read_csv(path, keep_default_na=False, na_values={"latency_ms": ["", "nan"]})
    missing = [c for c in CSV_FIELDS if c not in frame.columns]
    if missing:
        raise BenchError(f"{path}: column {missing[0]!r} missing; not a `cgbench typing` file")
    for column in ("superseded", "shown"):
        frame[column] = frame[column].astype(str).str.lower().eq("true")
    return frame


def _with_flags(frame: pd.DataFrame) -> pd.DataFrame:
    superseded = frame["superseded"].astype(bool)
    return frame.assign(superseded=superseded, answered=(frame["status"] == 200) & ~superseded,
                        failed=frame["status"] != 200, shown=frame["shown"].astype(bool))


def group_summary(frame: pd.DataFrame, groups: list[str], by: str = "mode") -> dict:
    """Per group (in `groups`' order): latency of the answered requests, counts, tokens."""
    frame = _with_flags(frame)
    counts = frame.groupby(by, sort=False).agg(
        requests=("status", "size"), answered=("answered", "sum"),
        superseded=("superseded", "sum"), failed=("failed", "sum"),
        shown_in_time=("shown", "sum"), prompt_tokens=("prompt_tokens", "sum"),
        reused_tokens=("cached_tokens", "sum")).reindex(groups, fill_value=0)
    answered = frame[frame["answered"]]
    latency = {name: LatencyStats.from_values(values).to_dict()
               for name, values in answered.groupby(by, sort=False)["latency_ms"]}
    empty = LatencyStats.from_values([]).to_dict()
    out = {}
    for name, row in counts.iterrows():
        row = {k: int(v) for k, v in row.items()}
        prompt, reused = row["prompt_tokens"], row["reused_tokens"]
        out[name] = {**{k: row[k] for k in ("requests", "answered", "superseded", "failed",
                                            "shown_in_time")},
                     "latency_ms": latency.get(name, empty),
                     "prompt_tokens": prompt, "reused_tokens": reused,
                     "computed_tokens": prompt - reused,
                     "reused_fraction": reused / prompt if prompt else math.nan,
                     "mean_prompt_tokens": prompt / row["requests"] if row["requests"] else math.nan}
    return out


def summarise(outcomes: list[Outcome] | pd.DataFrame, modes: list[str]) -> dict:
    """Per mode: latency of the completions answered, superseded/failed counts, tokens; with
    both modes, the issue's goal."""
    frame = outcomes if isinstance(outcomes, pd.DataFrame) else outcomes_frame(outcomes)
    out: dict = {"modes": group_summary(frame, list(modes))}
    if {"reuse", "no-reuse"} <= set(out["modes"]):
        with_p50 = out["modes"]["reuse"]["latency_ms"]["p50"]
        without_p50 = out["modes"]["no-reuse"]["latency_ms"]["p50"]
        ratio = with_p50 / without_p50 if without_p50 else math.nan
        out["goal"] = {"p50_ratio": ratio, "ratio_met": ratio <= GOAL_RATIO,
                       "p50_reuse_ms": with_p50, "absolute_met": with_p50 <= GOAL_P50_MS,
                       "limits": {"ratio": GOAL_RATIO, "p50_ms": GOAL_P50_MS}}
    return out


def render_groups(groups: dict, heading: str = "mode") -> str:
    lines = [f"{heading:<10} requests answered superseded failed  p50 ms   p90 ms   p99 ms  "
             "reused/prompt tokens"]
    for name, s in groups.items():
        lat = s["latency_ms"]
        lines.append(f"{name:<10} {s['requests']:>8} {s['answered']:>8} {s['superseded']:>10} "
                     f"{s['failed']:>6} {lat['p50']:>8.0f} {lat['p90']:>8.0f} {lat['p99']:>8.0f}  "
                     f"{s['reused_tokens']}/{s['prompt_tokens']}")
    return "\n".join(lines)


def render_summary(summary: dict) -> str:
    lines = [render_groups(summary["modes"])]
    goal = summary.get("goal")
    if goal:
        lines.append(f"p50 reuse / no-reuse = {goal['p50_ratio']:.3f} (goal <= {GOAL_RATIO}: "
                     f"{'met' if goal['ratio_met'] else 'NOT met'}); p50 with reuse "
                     f"{goal['p50_reuse_ms']:.0f} ms (goal <= {GOAL_P50_MS:.0f} ms: "
                     f"{'met' if goal['absolute_met'] else 'NOT met'})")
    return "\n".join(lines)


MODE_TABLE = [("mode", "mode", None), ("requests", "requests", None),
              ("answered", "answered", None), ("superseded", "superseded", None),
              ("failed", "failed", None), ("shown_in_time", "shown in time", None),
              ("p50_ms", "p50 ms", 0), ("p90_ms", "p90 ms", 0), ("p99_ms", "p99 ms", 0),
              ("reused_tokens", "reused tokens", None), ("prompt_tokens", "prompt tokens", None)]


def modes_frame(summary: dict) -> pd.DataFrame:
    """One row per mode of a summary: counts, latency percentiles, tokens."""
    return pd.DataFrame([{"mode": mode, **{k: v for k, v in s.items() if not isinstance(v, dict)},
                          **{f"{q}_ms": s["latency_ms"][q] for q in ("p50", "p90", "p99")}}
                         for mode, s in summary["modes"].items()])


def render_report(frame: pd.DataFrame, fmt: str, run_name: str = "") -> str:
    """`cgbench report` of a typing run: the per-mode summary of its requests.csv."""
    from ..analysis.tables import format_columns, render_table
    from ..output import json_text

    modes = list(dict.fromkeys(frame["mode"]))
    summary = summarise(frame, modes)
    if fmt == "json":
        return json_text({"run": run_name, **summary})
    if fmt == "csv":
        return modes_frame(summary)[[c for c, _, _ in MODE_TABLE]].to_csv(index=False)
    table = render_table(format_columns(modes_frame(summary), MODE_TABLE), fmt)
    goal = render_summary(summary).splitlines()[len(modes) + 1:]
    if fmt == "markdown":
        return "\n".join([f"# cgbench typing run {run_name}", "", table, "", *goal]) + "\n"
    return "\n".join([table, *goal]) + "\n"


def requests_csv(frame: pd.DataFrame) -> str:
    return frame[CSV_FIELDS].round({"latency_ms": 1, "fired_s": 3}).to_csv(index=False)


def write_results(out_dir: Path, outcomes: list[Outcome], summary: dict, env: dict) -> list[Path]:
    make_dir(out_dir)
    frame = outcomes_frame(outcomes)
    paths = [out_dir / REQUESTS_FILE, out_dir / "summary.json", out_dir / "env.json"]
    atomic_write(paths[0], requests_csv(frame))
    write_json(paths[1], summary)
    write_json(paths[2], env)
    plot = write_plot(out_dir / "latency.png", frame, list(summary["modes"]))
    return paths + ([plot] if plot else [])


def write_plot(path: Path, frame: pd.DataFrame, modes: list[str], by: str = "mode") -> Path | None:
    """Each request's latency by line (answered: dots, superseded: crosses) and their CDF."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = _with_flags(frame)
    fig, (ax, cdf) = plt.subplots(1, 2, figsize=(12, 4.5))
    for mode, colour in zip(modes, ("tab:blue", "tab:red", "tab:green", "tab:purple")):
        rows = frame[frame[by] == mode]
        ok, gone = rows[rows["answered"]], rows[rows["superseded"]]
        ax.scatter(ok["line"], ok["latency_ms"] / 1e3, s=10, c=colour, label=f"{mode} (answered)")
        ax.scatter(gone["line"], gone["latency_ms"] / 1e3, s=14, marker="x", c=colour, alpha=0.5,
                   label=f"{mode} (superseded)")
        values = (ok["latency_ms"] / 1e3).sort_values().to_numpy()
        if len(values):
            cdf.step(values, [(i + 1) / len(values) for i in range(len(values))], where="post",
                     c=colour, label=mode)
    ax.set_yscale("log")
    ax.set_xlabel("line of the file (cursor)")
    ax.set_ylabel("pause to completion (s)")
    ax.set_title("latency of each request while typing")
    ax.legend(fontsize=8)
    cdf.set_xscale("log")
    cdf.axvline(GOAL_P50_MS / 1e3, ls="--", c="grey", lw=1)
    cdf.set_xlabel("pause to completion (s)")
    cdf.set_ylabel("fraction of answered requests")
    cdf.set_title("distribution")
    cdf.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
