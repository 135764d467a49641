"""`cgbench load URL`: fixed-length requests and typists against one server at the same time.

The fixed-length requests run under their concurrency cap while every typist types in its own
thread; all start together.  The summary has the fixed requests' statistics (as before) and,
with typists, `typists`: per typist p50/p90 of its answered requests and the goal.  With an
output directory: `requests.csv` (one row per request, `client` = fixed or typist-<k>),
`summary.json` and `env.json`.
"""
from __future__ import annotations

import threading
import time
from datetime import datetime
from pathlib import Path

import pandas as pd

from ..errors import BenchError
from ..output import atomic_write, git_commit, make_dir, write_json
from ..typing.report import outcomes_frame
from .fixed import LoadConfig, RequestResult, render_fixed, run_fixed, summarise
from .typists import GOAL_P50_MS, TypistsConfig, render_typists, run_typist, summarise_typists

CSV_FIELDS = ["client", "fired_s", "latency_ms", "ttft_ms", "status", "superseded", "shown",
              "line", "offset", "pause_ms", "prompt_chars", "prompt_tokens", "cached_tokens",
              "completion_tokens", "error"]


def default_out() -> Path:
    return Path("results") / f"load-{datetime.now():%Y%m%d-%H%M%S}"


def run_load(cfg: LoadConfig, on_done=None, typists: TypistsConfig | None = None,
             out: Path | None = None) -> dict:
    """Run the load test; the summary (and, with `out`, the files written there)."""
    typists = typists or TypistsConfig()
    people = typists.typists()
    if cfg.requests == 0 and not people:
        raise BenchError("--requests 0: nothing to send; give --requests N or --typists N")
    if out is not None:
        make_dir(Path(out))  # before the test: a bad --out fails at once
    clock0 = time.perf_counter()
    outcomes, failures = {}, []

    def type_one(typist):
        try:
            outcomes[typist.name] = run_typist(cfg.url, typist, typists, clock0)
        except Exception as exc:  # reported after the others finish
            failures.append(f"{typist.name}: {exc}")

    threads = [threading.Thread(target=type_one, args=(t,), daemon=True) for t in people]
    for thread in threads:
        thread.start()
    results, duration = run_fixed(cfg, on_done, clock0)
    for thread in threads:
        thread.join()
    if failures:
        raise BenchError(f"a typist stopped: {failures[0]}")
    summary = summarise(results, duration, cfg)
    typed = outcomes_frame([o for t in people for o in outcomes[t.name]]).rename(
        columns={"mode": "client"})
    if people:
        summary["typists"] = summarise_typists(typed, people, by="client")
        summary["typist_goal"] = {"p50_ms": GOAL_P50_MS,
                                  "met": all(s["goal_met"] for s in summary["typists"].values())}
        summary["duration_s"] = time.perf_counter() - clock0
    if out is not None:
        write_run(Path(out), requests_frame(results, typed), summary, cfg, typists)
    return summary


def requests_frame(results: list[RequestResult], typed: pd.DataFrame) -> pd.DataFrame:
    """Every request of the test, fixed-length and typed, in the order they were sent."""
    fixed = pd.DataFrame({
        "client": "fixed", "fired_s": [r.fired_s for r in results],
        "latency_ms": [r.e2e_ms for r in results], "ttft_ms": [r.ttft_ms for r in results],
        "status": [200 if r.ok else 0 for r in results], "superseded": False,
        "completion_tokens": [r.output_tokens for r in results],
        "error": [r.error for r in results]})
    frame = pd.concat([f for f in (fixed, typed) if len(f)], ignore_index=True) \
        if len(fixed) or len(typed) else pd.DataFrame(columns=CSV_FIELDS)
    frame = frame.reindex(columns=CSV_FIELDS).sort_values("fired_s", kind="stable")
    counts = ["status", "line", "offset", "prompt_chars", "prompt_tokens", "cached_tokens",
              "completion_tokens"]  # whole numbers, empty where a fixed request has none
    return frame.astype({c: "Int64" for c in counts})


def write_run(out: Path, frame: pd.DataFrame, summary: dict, cfg: LoadConfig,
              typists: TypistsConfig) -> list[Path]:
    from ..hardware import describe_environment

    env = describe_environment(measure_bandwidth=False)
    env.update(url=cfg.url, concurrency=cfg.concurrency, requests=cfg.requests,
               prompt_tokens=cfg.prompt_tokens, max_tokens=cfg.max_tokens, stream=cfg.stream,
               typists=typists.count, typing_files=[str(f) for f in typists.files],
               typing_lines=[list(span) for span in typists.lines], cps=typists.cps,
               pause_ms=list(typists.pause_ms), pause_prob=typists.pause_prob,
               typing_max_tokens=typists.max_tokens, seed=typists.seed, git_commit=git_commit())
    paths = [out / "requests.csv", out / "summary.json", out / "env.json"]
    atomic_write(paths[0], frame.round({"fired_s": 3, "latency_ms": 1, "ttft_ms": 1, "pause_ms": 1})
                 .to_csv(index=False))
    write_json(paths[1], summary)
    write_json(paths[2], env)
    return paths


def render_load(summary: dict) -> str:
    lines = [render_fixed(summary)] if summary["requests"] else []
    if summary.get("typists"):
        goal = summary["typist_goal"]
        lines += [render_typists(summary["typists"]),
                  f"every typist p50 <= {goal['p50_ms']:.0f} ms: "
                  f"{'met' if goal['met'] else 'NOT met'}"]
    return "\n".join(lines)


def answered_any(summary: dict) -> bool:
    return bool(summary["completed"]) or any(
        s["answered"] for s in (summary.get("typists") or {}).values())
