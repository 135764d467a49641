"""`cgbench typing`: the extension's prompt rule, the pause plan, and replays end to end."""
from __future__ import annotations

import csv
import json

import pytest
from click.testing import CliRunner

from bench.cli import main
from bench.errors import BenchError
from bench.typing.session import fauxpilot_prompt, plan_session
from serve.testing import FakeGenerator, LiveServer


def numbered(n: int) -> str:
    return "".join(f"line{i}\n" for i in range(n))


def test_prompt_is_all_text_before_the_cursor_up_to_150_lines():
    doc = numbered(149) + "x = "  # 150 lines, the cursor on the last
    assert fauxpilot_prompt(doc) == doc


def test_prompt_past_150_lines_is_31_leading_plus_119_before_the_cursor():
    doc = numbered(400) + "    ret"  # cursor on line 400 (0-based)
    prompt = fauxpilot_prompt(doc)
    lines = prompt.split("\n")
    assert lines[:31] == [f"line{i}" for i in range(31)]
    assert lines[31:-1] == [f"line{i}" for i in range(400 - 119, 400)]
    assert lines[-1] == "    ret"
    assert len(lines) == 31 + 119 + 1


def test_plan_pauses_after_each_indentation_and_is_repeatable():
    text = "def f(x):\n    return x + 1\n\n    y = f(2)\n"
    segments = plan_session(text, 1, 4, cps=10, pause_ms=(100, 200), pause_prob=0.0)
    assert [len(s.pauses) for s in segments] == [1, 1, 0, 1]  # the blank line has none
    assert [text[p.offset - 4:p.offset] for p in segments[1].pauses] == ["    "]
    again = plan_session(text, 1, 4, cps=10, pause_ms=(100, 200), pause_prob=0.0)
    assert again == segments
    words = plan_session(text, 1, 4, cps=10, pause_ms=(100, 200), pause_prob=1.0)
    assert sum(len(s.pauses) for s in words) > 3  # also after spaces and "(" when asked
    for segment in words:
        times = [p.at_s for p in segment.pauses]
        assert times == sorted(times) and segment.duration_s >= times[-1] if times else True
        assert all(0.1 <= p.pause_s <= 0.2 for p in segment.pauses)


def test_plan_rejects_lines_outside_the_file():
    with pytest.raises(BenchError, match="lines"):
        plan_session("a\nb\n", 2, 9, cps=10, pause_ms=(1, 2), pause_prob=0.1)


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


def test_prompt_window_follows_the_max_lines_setting():
    doc = numbered(300) + "x"
    lines = fauxpilot_prompt(doc, max_lines=50).split("\n")
    assert lines[:10] == [f"line{i}" for i in range(10)]  # floor(0.21 * 50) leading lines
    assert lines[10:-1] == [f"line{i}" for i in range(260, 300)] and lines[-1] == "x"
