"""Summarise a typing replay and write requests.csv, summary.json, env.json, latency.png."""
from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, fields
from pathlib import Path

from .latency import LatencyStats
from .typing_replay import Outcome

GOAL_RATIO = 0.2  # issue 7: p50 with reuse <= 0.2 x without
GOAL_P50_MS = 1000.0  # ... and <= 1 s


def summarise(outcomes: list[Outcome], modes: list[str]) -> dict:
    """Per mode: latency of the completions answered, superseded/failed counts, tokens."""
    out: dict = {"modes": {}}
    for mode in modes:
        rows = [o for o in outcomes if o.mode == mode]
        answered = [o for o in rows if o.status == 200 and not o.superseded]
        reused = sum(o.cached_tokens for o in rows)
        prompt = sum(o.prompt_tokens for o in rows)
        out["modes"][mode] = {
            "requests": len(rows),
            "answered": len(answered),
            "superseded": sum(o.superseded for o in rows),
            "failed": sum(o.status != 200 for o in rows),
            "shown_in_time": sum(o.shown for o in rows),
            "latency_ms": LatencyStats.from_values(o.latency_ms for o in answered).to_dict(),
            "prompt_tokens": prompt,
            "reused_tokens": reused,
            "computed_tokens": prompt - reused,
            "reused_fraction": reused / prompt if prompt else math.nan,
            "mean_prompt_tokens": prompt / len(rows) if rows else math.nan,
        }
    if {"reuse", "no-reuse"} <= set(out["modes"]):
        with_p50 = out["modes"]["reuse"]["latency_ms"]["p50"]
        without_p50 = out["modes"]["no-reuse"]["latency_ms"]["p50"]
        ratio = with_p50 / without_p50 if without_p50 else math.nan
        out["goal"] = {"p50_ratio": ratio, "ratio_met": ratio <= GOAL_RATIO,
                       "p50_reuse_ms": with_p50, "absolute_met": with_p50 <= GOAL_P50_MS,
                       "limits": {"ratio": GOAL_RATIO, "p50_ms": GOAL_P50_MS}}
    return out


def render_summary(summary: dict) -> str:
    lines = ["mode       requests answered superseded failed  p50 ms   p90 ms   p99 ms  "
             "reused/prompt tokens"]
    for mode, s in summary["modes"].items():
        lat = s["latency_ms"]
        lines.append(f"{mode:<10} {s['requests']:>8} {s['answered']:>8} {s['superseded']:>10} "
                     f"{s['failed']:>6} {lat['p50']:>8.0f} {lat['p90']:>8.0f} {lat['p99']:>8.0f}  "
                     f"{s['reused_tokens']}/{s['prompt_tokens']}")
    goal = summary.get("goal")
    if goal:
        lines.append(f"p50 reuse / no-reuse = {goal['p50_ratio']:.3f} (goal <= {GOAL_RATIO}: "
                     f"{'met' if goal['ratio_met'] else 'NOT met'}); p50 with reuse "
                     f"{goal['p50_reuse_ms']:.0f} ms (goal <= {GOAL_P50_MS:.0f} ms: "
                     f"{'met' if goal['absolute_met'] else 'NOT met'})")
    return "\n".join(lines)


CSV_FIELDS = [f.name for f in fields(Outcome) if f.name != "text"] + ["shown"]


def write_results(out_dir: Path, outcomes: list[Outcome], summary: dict, env: dict) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "requests.csv", out_dir / "summary.json", out_dir / "env.json"]
    with open(paths[0], "w", newline="") as fh:
        writer = csv.DictWriter(fh, CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for o in outcomes:
            writer.writerow({**asdict(o), "shown": o.shown,
                             "latency_ms": round(o.latency_ms, 1),
                             "fired_s": round(o.fired_s, 3)})
    paths[1].write_text(json.dumps(summary, indent=2, default=_jsonable) + "\n")
    paths[2].write_text(json.dumps(env, indent=2, default=_jsonable) + "\n")
    plot = write_plot(out_dir / "latency.png", outcomes, summary)
    return paths + ([plot] if plot else [])


def _jsonable(value):
    return None if isinstance(value, float) and math.isnan(value) else str(value)


def write_plot(path: Path, outcomes: list[Outcome], summary: dict) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (ax, cdf) = plt.subplots(1, 2, figsize=(12, 4.5))
    for mode, colour in zip(summary["modes"], ("tab:blue", "tab:red", "tab:green")):
        rows = [o for o in outcomes if o.mode == mode]
        ok = [o for o in rows if o.status == 200 and not o.superseded]
        gone = [o for o in rows if o.superseded]
        ax.scatter([o.line for o in ok], [o.latency_ms / 1e3 for o in ok], s=10, c=colour,
                   label=f"{mode} (answered)")
        ax.scatter([o.line for o in gone], [o.latency_ms / 1e3 for o in gone], s=14,
                   marker="x", c=colour, alpha=0.5, label=f"{mode} (superseded)")
        values = sorted(o.latency_ms / 1e3 for o in ok)
        if values:
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
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
