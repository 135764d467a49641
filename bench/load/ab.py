"""`cgbench load-ab`: the same load scenarios against two servers, alternating, in one run.

Two servers (say cgserve with batching and the same cgserve with `--max-batch 1`) are
measured round by round: in each round every scenario runs against both, in an order that
alternates between rounds, so a machine that drifts (load, heat, another process) moves both
alike.  A scenario is a fixed-length load (`bench.load.fixed`: concurrency, requests, prompt
and new tokens); the table has, per scenario and server, the median over rounds of output
tokens/s, p50 end-to-end, p50 TTFT, p50 TPOT and p99 inter-token latency, and the ratios of
the first server to the second.  Writes `rounds.csv` (every run), `summary.csv`,
`summary.json` and `env.json` into the output directory.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..errors import BenchError
from ..output import atomic_write, git_commit, make_dir, write_json
from .fixed import LoadConfig, run_fixed, summarise

COLUMNS = {"output_tokens_per_s": "output tokens/s", "e2e_p50_ms": "p50 e2e ms",
           "ttft_p50_ms": "p50 TTFT ms", "tpot_p50_ms": "p50 TPOT ms",
           "itl_p99_ms": "p99 ITL ms"}


@dataclass(frozen=True)
class Scenario:
    name: str
    concurrency: int
    requests: int
    prompt_tokens: int
    max_tokens: int

    @classmethod
    def parse(cls, text: str) -> "Scenario":
        """NAME:CONCURRENCY:REQUESTS:PROMPT_TOKENS:MAX_TOKENS, e.g. decode:8:16:128:64."""
        parts = text.split(":")
        try:
            name, *numbers = parts
            values = [int(n) for n in numbers]
            if len(values) != 4 or not name or min(values) < 1:
                raise ValueError
        except ValueError:
            raise BenchError(f"--scenario {text!r}: expected NAME:CONCURRENCY:REQUESTS:"
                             "PROMPT_TOKENS:MAX_TOKENS with whole numbers >= 1, e.g. "
                             "decode:8:16:128:64") from None
        return cls(name, *values)


def parse_server(text: str) -> tuple[str, str]:
    label, sep, url = text.partition("=")
    if not sep or not label or not url.startswith(("http://", "https://")):
        raise BenchError(f"--server {text!r}: expected LABEL=URL, e.g. "
                         "batching=http://127.0.0.1:8001")
    return label, url.rstrip("/")


def run_ab(servers: list[tuple[str, str]], scenarios: list[Scenario], rounds: int,
           out: Path | None = None, model: str = "", log=print) -> pd.DataFrame:
    """Every scenario against both servers for `rounds` rounds; the summary table."""
    if len(servers) != 2:
        raise BenchError("load-ab compares two servers: give --server twice")
    if rounds < 1:
        raise BenchError(f"--rounds {rounds}: must be at least 1")
    if out is not None:
        make_dir(out)
    rows = []
    for r in range(rounds):
        for scenario in scenarios:
            order = servers if r % 2 == 0 else servers[::-1]
            for label, url in order:
                cfg = LoadConfig(url, scenario.concurrency, scenario.requests,
                                 scenario.prompt_tokens, scenario.max_tokens, model=model,
                                 seed=r)
                results, duration = run_fixed(cfg)
                s = summarise(results, duration, cfg)
                if s["failed"]:
                    raise BenchError(f"{label} ({url}), {scenario.name}: {s['failed']} of "
                                     f"{s['requests']} requests failed: {s['errors'][:1]}")
                row = {"round": r, "scenario": scenario.name, "server": label,
                       "output_tokens_per_s": s["output_throughput_tokens_per_s"],
                       "e2e_p50_ms": s["e2e_ms"]["p50"], "ttft_p50_ms": s["ttft_ms"]["p50"],
                       "tpot_p50_ms": s["tpot_ms"]["p50"], "itl_p99_ms": s["itl_ms"]["p99"],
                       "duration_s": duration, **{f"scenario_{k}": v for k, v in
                                                  vars(scenario).items() if k != "name"}}
                rows.append(row)
                log(f"round {r + 1}/{rounds} {scenario.name:>10} {label:>10}: "
                    f"{row['output_tokens_per_s']:.1f} tok/s, p50 e2e {row['e2e_p50_ms']:.0f} ms")
    frame = pd.DataFrame(rows)
    table = summarise_ab(frame, [label for label, _ in servers])
    if out is not None:
        from ..hardware import describe_environment

        env = describe_environment(measure_bandwidth=False)
        env.update(servers=dict(servers), rounds=rounds, git_commit=git_commit())
        atomic_write(out / "rounds.csv", frame.round(2).to_csv(index=False))
        atomic_write(out / "summary.csv", table.round(3).to_csv())
        write_json(out / "env.json", env)
        write_json(out / "summary.json", {
            "servers": dict(servers), "rounds": rounds,
            "scenarios": [vars(s) for s in scenarios],
            "table": {scenario: {f"{column} ({server})": value for (column, server), value
                                 in row.items()} for scenario, row in table.iterrows()}})
    return table


def summarise_ab(frame: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    """Medians over rounds per (scenario, server), then the first server's ratio to the other."""
    medians = frame.groupby(["scenario", "server"], sort=False)[list(COLUMNS)].median()
    wide = medians.unstack("server")
    a, b = labels
    for column in COLUMNS:
        wide[(column, f"{a}/{b}")] = wide[(column, a)] / wide[(column, b)]
    order = [(c, s) for c in COLUMNS for s in (a, b, f"{a}/{b}")]
    return wide[order]


def render_ab(table: pd.DataFrame) -> str:
    """One line per scenario and measure: both servers and the ratio."""
    lines = []
    for scenario, row in table.iterrows():
        for column, title in COLUMNS.items():
            values = [row[(column, s)] for s in table[column].columns]
            a, b, ratio = values
            lines.append(f"{scenario:>12}  {title:<16} {a:10.1f} {b:10.1f}   {ratio:6.2f}x")
    a, b, _ = table[next(iter(COLUMNS))].columns
    return "\n".join([f"{'scenario':>12}  {'measure':<16} {a:>10} {b:>10}   ratio"] + lines)
