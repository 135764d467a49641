"""cgbench typing (bench/typing/run.py, replay.py) end to end against in-process servers."""
from __future__ import annotations

import csv
import json

import pytest
from click.testing import CliRunner

from bench.cli import main
from serve.testing import FakeGenerator, LiveServer


@pytest.fixture
def source(tmp_path):
    body = "".join(f"def function_{i}(value):\n    return value * {i}\n" for i in range(90))
    path = tmp_path / "source.py"
    path.write_text(body)
    return path


FAST = ["--cps", "2000", "--pause-ms", "5,10", "--pause-prob", "0.3"]


def test_replay_against_a_server_with_supersede(source, tmp_path):
    fake = FakeGenerator(step_s=0.03, context_length=1 << 16)  # slow next to the typist
    out = tmp_path / "run"
    with LiveServer(fake) as live:
        result = CliRunner().invoke(main, ["typing", str(source), "--url", live.url,
                                           "--lines", "170-174", "--out", str(out), *FAST])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())["modes"]["reuse"]
    rows = list(csv.DictReader(open(out / "requests.csv")))
    assert len(rows) == summary["requests"] >= 5
    assert summary["superseded"] > 0  # the typist outran the server: stale requests were cut
    assert summary["answered"] + summary["superseded"] + summary["failed"] == summary["requests"]
    assert summary["failed"] == 0
    assert summary["server_metrics"]['cgserve_cancelled_total{reason="superseded"}'] \
        == summary["superseded"]
    sent = [call[0] for call in fake.calls]  # the extension's prompts: 31 + 119 lines + cursor
    assert all(p.startswith("def function_0(value):\n") and p.count("\n") == 150 for p in sent)
    env = json.loads((out / "env.json").read_text())
    assert env["lines_replayed"] == [170, 174] and env["file_lines"] == 181
    assert (out / "latency.png").stat().st_size > 0


def test_compare_in_process_counts_reused_tokens(source, tmp_path):
    out = tmp_path / "cmp"
    result = CliRunner().invoke(main, ["typing", str(source), "--model", "random:tiny",
                                       "--compare", "--lines", "10-13", "--out", str(out), *FAST])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    reuse, baseline = summary["modes"]["reuse"], summary["modes"]["no-reuse"]
    assert reuse["requests"] == baseline["requests"] > 0
    assert baseline["reused_tokens"] == 0
    assert reuse["reused_tokens"] > 0  # within a line the prompt extends the last one
    assert reuse["computed_tokens"] < baseline["computed_tokens"]
    assert reuse["server_metrics"]["cgserve_prompt_tokens_reused_total"] == reuse["reused_tokens"]
    assert set(summary["goal"]) >= {"p50_ratio", "ratio_met", "absolute_met"}


def test_bad_arguments_are_one_line_errors(source):
    runner = CliRunner()
    both = runner.invoke(main, ["typing", str(source), "--url", "http://x:1", "--model", "m"])
    assert both.exit_code == 1 and "exactly one" in both.output
    compare = runner.invoke(main, ["typing", str(source), "--url", "http://x:1", "--compare"])
    assert compare.exit_code == 1 and "--baseline-url" in compare.output
    lines = runner.invoke(main, ["typing", str(source), "--model", "m", "--speculate-lines", "9"])
    assert lines.exit_code == 1 and "--speculate-lines must be 1 to 8" in lines.output
