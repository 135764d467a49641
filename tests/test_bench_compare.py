"""cgbench compare (bench/analysis/compare.py): B / A for the points two runs share."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from bench.analysis.compare import compare_runs, render_comparison
from bench.cli import main
from bench_points import sweep_row, three_backends, write_run


def test_a_run_against_itself_is_one_everywhere(tmp_path):
    run = three_backends(tmp_path / "a")
    items, only_a, only_b = compare_runs(run, run)
    assert (only_a, only_b) == ([], [])
    assert set(items["point"]) == {f"350M-mono/{b}/float32/{p}/16/1"
                                   for b in ("paddle", "paddle-ref", "hf") for p in (128, 1024)}
    assert {"ttft_ms_mean", "tpot_ms_mean", "peak_rss_mb", "load_s"} <= set(items["metric"])
    assert not {"param_count", "batch", "latency_count"} & set(items["metric"])
    assert items["b_over_a"].tolist() == pytest.approx([1.0] * len(items))


def test_ratios_and_points_only_one_run_has(tmp_path):
    a = three_backends(tmp_path / "a")
    b = three_backends(tmp_path / "b", scale=0.5)
    write_run(tmp_path / "c", [sweep_row("paddle", 128, ttft=256.0), sweep_row("paddle", 4096)])
    items, _, _ = compare_runs(a, b)
    ttft = items[items["metric"] == "ttft_ms_mean"]
    assert ttft["b_over_a"].tolist() == pytest.approx([0.5] * 6)
    items, only_a, only_b = compare_runs(a, tmp_path / "c")
    assert set(items["point"]) == {"350M-mono/paddle/float32/128/16/1"}
    assert len(only_a) == 5 and only_b == [("codegen-350M-mono", "paddle", "float32", "4096", "16",
                                            "1", "1")]  # ..., batch, tensor_parallel
    text = render_comparison(items, "text", ("ttft_ms_mean",))
    assert text.splitlines()[2].split() == ["350M-mono/paddle/float32/128/16/1", "ttft_ms_mean",
                                            "512", "256", "0.500"]


def test_cli_compare_json_csv_and_nothing_shared(tmp_path):
    a = three_backends(tmp_path / "a")
    runner = CliRunner()
    data = json.loads(runner.invoke(main, ["compare", str(a), str(a), "--format", "json",
                                           "--metrics", "tpot"]).output)
    assert {i["metric"] for i in data} == {"tpot_ms_mean", "tpot_ms_stdev"}
    assert runner.invoke(main, ["compare", str(a), str(a), "--format", "csv"]).output.startswith(
        "point,metric,a,b,b_over_a")
    other = write_run(tmp_path / "o", [sweep_row("hf", 64)])
    result = runner.invoke(main, ["compare", str(a), str(other)])
    assert result.exit_code == 1 and "share no successful point" in result.output
