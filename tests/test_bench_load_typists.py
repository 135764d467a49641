"""cgbench load --typists: typing replays at once with fixed-length requests (bench/load/)."""
from __future__ import annotations

import csv
import json

import pytest
from click.testing import CliRunner

from bench.cli import main
from bench.errors import BenchError
from bench.load.typists import GOAL_P50_MS, TypistsConfig
from serve.testing import FakeGenerator, LiveServer

FAST = ["--cps", "2000", "--pause-ms", "5,10", "--pause-prob", "0.3"]


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "source.py"
    path.write_text("".join(f"def function_{i}(value):\n    return value * {i}\n" for i in range(60)))
    return path


def test_two_typists_and_fixed_requests_report_p50_p90_each(source, tmp_path):
    fake = FakeGenerator(context_length=1 << 16)
    out = tmp_path / "load"
    with LiveServer(fake) as live:
        result = CliRunner().invoke(main, [
            "load", live.url, "--requests", "3", "--max-tokens", "4", "--typists", "2",
            "--typing-file", str(source), "--typing-lines", "100-102,10-12", "--out", str(out),
            *FAST])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["completed"] == 3  # the fixed-length requests, as before
    typists = summary["typists"]
    assert list(typists) == ["typist-1", "typist-2"]
    assert typists["typist-1"]["lines"] == [100, 102] and typists["typist-2"]["lines"] == [10, 12]
    for s in typists.values():
        assert s["requests"] >= 3 and s["answered"] + s["superseded"] + s["failed"] == s["requests"]
        assert s["latency_ms"]["count"] == s["answered"] > 0
        assert s["p50_ms"] == s["latency_ms"]["p50"] <= s["p90_ms"]
        assert s["goal_met"] == (s["p50_ms"] <= GOAL_P50_MS)
    assert summary["typist_goal"]["met"] == all(s["goal_met"] for s in typists.values())
    rows = list(csv.DictReader(open(out / "requests.csv")))
    clients = [r["client"] for r in rows]
    assert clients.count("fixed") == 3
    assert clients.count("typist-1") == typists["typist-1"]["requests"]
    assert clients.count("typist-2") == typists["typist-2"]["requests"]
    # each typist typed its own region: the cursor line of its prompts (the whole text above)
    cursor_lines = {call[0].count("\n") + 1 for call in fake.calls
                    if call[0].startswith("def function_0(value):")}
    assert cursor_lines & {100, 101, 102} and cursor_lines & {10, 11, 12}
    assert not cursor_lines - {100, 101, 102, 10, 11, 12}
    assert "typist-1" in result.output and "goal p50 <= 1500 ms" in result.output
    assert json.loads((out / "env.json").read_text())["typists"] == 2


def test_typists_alone_with_no_fixed_requests(source, tmp_path):
    with LiveServer(FakeGenerator(context_length=1 << 16)) as live:
        result = CliRunner().invoke(main, [
            "load", live.url, "--requests", "0", "--typists", "1", "--typing-file", str(source),
            "--typing-lines", "3-4", "--out", str(tmp_path / "o"), "--json", *FAST])
    assert result.exit_code == 0, result.output
    summary, _ = json.JSONDecoder().raw_decode(result.output[result.output.index("{"):])
    assert summary["requests"] == 0 and summary["e2e_ms"]["p50"] is None  # NaN as null and summary["typists"]["typist-1"]["answered"] > 0


def test_typists_are_told_apart_by_their_token(source, tmp_path):
    """Two typists on the same lines: neither supersedes the other's requests."""
    from bench.load.typists import run_typist

    cfg = TypistsConfig(2, (source,), ((20, 21),), cps=2000, pause_ms=(5, 10), pause_prob=0.3)
    with LiveServer(FakeGenerator(context_length=1 << 16)) as live:
        import threading
        import time

        outcomes = {}
        clock0 = time.perf_counter()
        threads = [threading.Thread(target=lambda t=t: outcomes.update(
            {t.name: run_typist(live.url, t, cfg, clock0)})) for t in cfg.typists()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert {o.mode for o in outcomes["typist-1"]} == {"typist-1"}
    assert len(outcomes["typist-1"]) > 0 and len(outcomes["typist-2"]) > 0


@pytest.mark.parametrize("kwargs, words", [
    ({"count": 2}, "--typing-file"),
    ({"count": 0, "lines": ((1, 2),)}, "--typists N"),
    ({"count": -1}, "--typists -1"),
])
def test_bad_typist_options(kwargs, words):
    with pytest.raises(BenchError, match=words):
        TypistsConfig(**kwargs)


def test_lines_outside_the_file_name_the_option(source):
    with pytest.raises(BenchError, match="--typing-lines 500-509"):
        TypistsConfig(1, (source,), ((500, 509),)).typists()


@pytest.mark.parametrize("args, words", [
    (["--requests", "0"], "--requests 0"),
    (["--typists", "1", "--typing-lines", "4"], "--typing-lines"),
    (["--pause-ms", "5"], "--pause-ms"),
])
def test_cli_errors_are_one_line(args, words, source):
    extra = ["--typing-file", str(source)] if "--typists" in args else []
    result = CliRunner().invoke(main, ["load", "http://127.0.0.1:9", *args, *extra])
    assert result.exit_code == 1 and words in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
