"""bench/typing/report.py: per-mode (and per-typist) tables over the requests' DataFrame."""
from __future__ import annotations

import math

import pytest

from bench.errors import BenchError
from bench.typing.replay import Outcome
from bench.typing.report import (CSV_FIELDS, group_summary, outcomes_frame, read_requests,
                                 render_summary, requests_csv, summarise)


def outcome(mode, latency, status=200, superseded=False, pause=500.0, prompt=100, cached=0):
    return Outcome(mode, 10, 0, 0.0, pause, 50, latency_ms=latency, status=status,
                   superseded=superseded, prompt_tokens=prompt, cached_tokens=cached)


OUTCOMES = [outcome("reuse", 100, cached=80), outcome("reuse", 300, cached=90),
            outcome("reuse", 900, pause=400), outcome("reuse", 50, superseded=True),
            outcome("no-reuse", 1000), outcome("no-reuse", 2000), outcome("no-reuse", 0, status=500)]


def test_counts_latency_and_tokens_per_mode():
    s = summarise(OUTCOMES, ["reuse", "no-reuse"])["modes"]
    reuse, base = s["reuse"], s["no-reuse"]
    assert (reuse["requests"], reuse["answered"], reuse["superseded"], reuse["failed"]) == (4, 3, 1, 0)
    assert reuse["shown_in_time"] == 2  # 900 ms came after its 400 ms pause
    assert reuse["latency_ms"]["p50"] == 300 and reuse["latency_ms"]["count"] == 3  # answered only
    assert reuse["reused_tokens"] == 170 and reuse["computed_tokens"] == 230
    assert reuse["reused_fraction"] == pytest.approx(170 / 400)
    assert (base["answered"], base["failed"]) == (2, 1) and base["latency_ms"]["p50"] == 1500


def test_goal_is_the_p50_ratio_and_the_absolute_p50():
    goal = summarise(OUTCOMES, ["reuse", "no-reuse"])["goal"]
    assert goal["p50_ratio"] == pytest.approx(0.2) and goal["ratio_met"]
    assert goal["p50_reuse_ms"] == 300 and goal["absolute_met"]
    assert "p50 reuse / no-reuse = 0.200" in render_summary(summarise(OUTCOMES, ["reuse", "no-reuse"]))


def test_a_group_with_no_requests_is_zeros_and_nan():
    s = group_summary(outcomes_frame(OUTCOMES), ["reuse", "typist-9"])
    assert s["typist-9"]["requests"] == 0 and math.isnan(s["typist-9"]["latency_ms"]["p50"])
    assert math.isnan(s["typist-9"]["reused_fraction"])
    empty = group_summary(outcomes_frame([]), ["reuse"])
    assert empty["reuse"]["answered"] == 0


def test_requests_csv_round_trips(tmp_path):
    (tmp_path / "requests.csv").write_text(requests_csv(outcomes_frame(OUTCOMES)))
    frame = read_requests(tmp_path)
    assert list(frame.columns) == CSV_FIELDS
    assert summarise(frame, ["reuse", "no-reuse"]) == summarise(OUTCOMES, ["reuse", "no-reuse"])
    assert frame["superseded"].tolist() == [False, False, False, True, False, False, False]


def test_a_foreign_requests_csv_is_refused(tmp_path):
    (tmp_path / "requests.csv").write_text("engine,mode,client_ms\nfake,json,1.0\n")
    with pytest.raises(BenchError, match="not a `cgbench typing` file"):
        read_requests(tmp_path)
    with pytest.raises(BenchError, match="not found"):
        read_requests(tmp_path / "nothing")


def test_cgbench_report_of_a_typing_run_is_its_per_mode_summary(tmp_path):
    from click.testing import CliRunner

    from bench.cli import main

    (tmp_path / "requests.csv").write_text(requests_csv(outcomes_frame(OUTCOMES)))
    runner = CliRunner()
    text = runner.invoke(main, ["report", str(tmp_path), "--no-plots"])
    assert text.exit_code == 0, text.output
    reuse = next(line for line in text.output.splitlines() if line.strip().startswith("reuse"))
    assert reuse.split()[:7] == ["reuse", "4", "3", "1", "0", "2", "300"]
    assert "p50 reuse / no-reuse = 0.200" in text.output
    assert (tmp_path / "report.md").read_text().startswith(f"# cgbench typing run {tmp_path.name}")
    csv_text = runner.invoke(main, ["report", str(tmp_path), "--format", "csv", "--no-plots",
                                    "--no-write"]).output
    assert csv_text.splitlines()[0].startswith("mode,requests,answered")
