"""cgbench serve-overhead (bench/tools/serve_overhead.py): a few requests on the tiny model."""
from __future__ import annotations

import csv
import json

from click.testing import CliRunner

from bench.cli import main
from bench.tools.serve_overhead import summarise


def test_overhead_rows_summary_and_files(tmp_path):
    out = tmp_path / "o"
    result = CliRunner().invoke(main, ["serve-overhead", "--requests", "3", "--warmup", "1",
                                       "--max-tokens", "4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(out / "requests.csv")))
    assert len(rows) == 2 * 2 * 3  # (random:tiny, fake) x (json, stream) x 3 measured
    for r in rows:
        client, engine = float(r["client_ms"]), float(r["engine_e2e_ms"])
        assert client > engine > 0
        assert abs(float(r["overhead_ms"]) - (client - engine)) < 1e-3
        assert (int(r["chunks"]) > 0) == (r["mode"] == "stream")  # SSE events, none for JSON
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["results"]) == {"random:tiny/json", "random:tiny/stream", "fake/json",
                                       "fake/stream"}
    assert summary["run"]["requests_per_mode"] == 3 and summary["run"]["budget_ms"] == 5.0
    assert "ttft_overhead_ms" in summary["results"]["fake/stream"]
    assert "overhead p50" in result.output
    assert json.loads((out / "env.json").read_text())["git_commit"]


def test_summary_groups_by_engine_and_mode():
    rows = [{"engine": "e", "mode": m, "client_ms": c, "engine_e2e_ms": c - 1.0,
             "overhead_ms": 1.0, "overhead_per_token_ms": 0.25, "ttft_overhead_ms": 0.5,
             "completion_tokens": 4} for m in ("json", "stream") for c in (10.0, 20.0)]
    s = summarise(rows)
    assert set(s) == {"e/json", "e/stream"} and "ttft_overhead_ms" not in s["e/json"]
    assert s["e/json"]["client_ms"]["p50"] == 15.0 and s["e/json"]["within_budget_p50"]


def test_bad_options_are_one_line():
    result = CliRunner().invoke(main, ["serve-overhead", "--requests", "0"])
    assert result.exit_code == 1 and "--requests" in result.output
    result = CliRunner().invoke(main, ["convert-speed", "--repeats", "0"])
    assert result.exit_code == 1 and "--repeats 0" in result.output


def test_an_output_directory_that_cannot_be_made_fails_before_the_run(tmp_path):
    (tmp_path / "file").write_text("")
    for command in (["serve-overhead"], ["load", "http://127.0.0.1:9"]):
        result = CliRunner().invoke(main, [*command, "--out", str(tmp_path / "file" / "x")])
        assert result.exit_code == 1 and "--out" in result.output and "cannot create" in result.output
        assert len(result.output.strip().splitlines()) == 1
