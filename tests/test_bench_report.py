"""cgbench report (bench/analysis/report.py, tables.py, frames.py) on a run written here."""
from __future__ import annotations

import csv
import io
import json

import pytest
from click.testing import CliRunner

from bench.analysis.frames import load_run
from bench.analysis.report import backend_ratios, render_report
from bench.cli import main
from bench_points import three_backends


@pytest.fixture
def run(tmp_path):
    return three_backends(tmp_path / "run")


def test_ratios_to_hf_are_per_shape_and_backend(run):
    points, _ = load_run(run)
    ratios = backend_ratios(points)
    assert sorted(zip(ratios["backend"], ratios["prompt_tokens"])) == [
        ("paddle", 128), ("paddle", 1024), ("paddle-ref", 128), ("paddle-ref", 1024)]
    paddle = ratios[ratios["backend"] == "paddle"]
    assert paddle["tpot_ms_mean_over_hf"].tolist() == pytest.approx([0.5, 0.5])
    assert paddle["ttft_ms_mean_over_hf"].tolist() == pytest.approx([0.5, 0.5])
    assert ratios["load_s_over_hf"].tolist() == pytest.approx([1.0] * 4)


def test_text_table_has_every_point_and_dashes_for_missing(run):
    points, env = load_run(run)
    text = render_report(points, env, "text")
    lines = text.rstrip().splitlines()
    assert lines[0].split()[:3] == ["variant", "backend", "dtype"] and len(lines) == 2 + 7
    oom = next(line for line in lines if " oom " in line)
    assert oom.split()[7] == "3.0" and oom.split()[8] == "-"  # load s kept, no ttft
    assert "2,048" not in text and "1,024" not in text.split("\n")[3]  # ids stay plain


def test_markdown_has_environment_failures_and_ratios(run):
    points, _ = load_run(run)
    md = render_report(points, {"cpu": "EPYC", "cpu_cores": 2}, "markdown", "r1")
    assert md.startswith("# cgbench run r1\n\nCPU EPYC (2 cores)")
    assert "| 350M-mono | paddle | float32 | 128 | 16 | 1 | ok |" in md
    assert "**oom** out of memory" in md
    assert "| 350M-mono | paddle | 128 | 16 | 0.50 | 0.50 |" in md


def test_csv_has_the_raw_values(run):
    points, env = load_run(run)
    rows = list(csv.DictReader(io.StringIO(render_report(points, env, "csv"))))
    assert len(rows) == 7 and float(rows[0]["ttft_ms_mean"]) == 512.0
    assert rows[-1]["status"] == "oom" and rows[-1]["ttft_ms_mean"] == ""


def test_json_has_points_and_ratios_with_null_for_missing(run):
    points, env = load_run(run)
    data = json.loads(render_report(points, env, "json", "r1"))
    assert data["run"] == "r1" and len(data["points"]) == 7 and len(data["over_hf"]) == 4
    assert data["points"][-1]["ttft_ms_mean"] is None
    assert data["points"][0]["prompt_tokens"] == 128


def test_cli_report_formats_and_files(run):
    runner = CliRunner()
    result = runner.invoke(main, ["report", str(run), "--format", "csv", "--no-plots"])
    assert result.exit_code == 0 and result.output.startswith("variant,backend,dtype")
    assert (run / "report.md").read_text().startswith("# cgbench run run")
    bad = runner.invoke(main, ["report", str(run), "--format", "xml"])
    assert bad.exit_code == 2 and "--format" in bad.output
