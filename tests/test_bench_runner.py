"""cgbench run (bench/sweep/runner.py) end to end: a tiny real run, resume, injected failures."""
from __future__ import annotations

import csv
import json

import pytest
from click.testing import CliRunner

from bench.cli import main
from bench.sweep.schema import COLUMNS, SCHEMA_VERSION, read_points
from engine.variants import TINY

TINY_RUN = ["run", "--variants", "tiny", "--prompt-tokens", "8", "--new-tokens", "4",
            "--repeats", "2", "--warmup", "1"]


def cgbench(*args, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env, catch_exceptions=False)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    result = cgbench(*TINY_RUN, "--backend", "paddle,hf", "--out", out)
    assert result.exit_code == 0, result.output
    return out, result


def test_tiny_run_writes_documented_columns(tiny_run):
    out, result = tiny_run
    with open(out / "points.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == COLUMNS
        raw = list(reader)
    assert [r["schema_version"] for r in raw] == [str(SCHEMA_VERSION)] * 2
    assert "2/2" in result.output and "ETA" in result.output  # progress on stderr


def test_tiny_run_measures_both_backends_consistently(tiny_run):
    rows = read_points(tiny_run[0])
    assert [(r["backend"], r["status"]) for r in rows] == [("paddle", "ok"), ("hf", "ok")]
    for r in rows:
        assert r["param_count"] == TINY.arch.param_count
        assert r["weight_bytes"] == TINY.arch.weight_bytes("float32")
        assert r["latency_count"] == 2 and r["itl_count"] == 2 * 3
        assert 0 < r["ttft_ms_mean"] < r["e2e_ms_mean"]
        assert r["ttft_ms_p50"] <= r["ttft_ms_p90"] <= r["ttft_ms_p99"]
        # tpot and tokens/s follow from e2e and ttft (mean of per-run values)
        spread = r["e2e_ms_stdev"] * 1.01
        assert (4000 / (r["e2e_ms_mean"] + spread) <= r["tokens_per_s_mean"]
                <= 4000 / (r["e2e_ms_mean"] - spread))
        assert r["tpot_ms_mean"] == pytest.approx((r["e2e_ms_mean"] - r["ttft_ms_mean"]) / 3,
                                                  rel=1e-3)
        assert r["peak_rss_mb"] >= r["load_peak_rss_mb"] > 50
        assert r["load_s"] > 0 and r["pct_of_floor"] > 0
        assert r["bandwidth_source"] == "measured cpu read bandwidth"
        assert r["gpu_peak_device_mb"] is None
    assert rows[0]["allocator_strategy"] and rows[1]["allocator_strategy"] == "torch"


def test_env_json_records_machine_and_settings(tiny_run):
    env = json.loads((tiny_run[0] / "env.json").read_text())
    assert env["cpu_cores"] >= 1 and env["memory_mb"] > 0 and env["cpu_bandwidth_gbps"] > 0
    assert env["versions"]["paddlepaddle"] and env["versions"]["paddlenlp"]
    assert env["env"]["OMP_NUM_THREADS"]
    assert env["gpus"] == [] or env["gpu_name"]


def test_existing_run_is_left_untouched_without_resume(tiny_run):
    out = tiny_run[0]
    before = (out / "points.csv").read_bytes()
    result = cgbench(*TINY_RUN, "--out", out)
    assert result.exit_code == 1
    assert "--resume" in result.output and len(result.output.strip().splitlines()) == 1
    assert (out / "points.csv").read_bytes() == before


def test_resume_skips_points_already_done(tiny_run):
    out = tiny_run[0]
    before = (out / "points.csv").read_bytes()
    result = cgbench(*TINY_RUN, "--backend", "paddle,hf", "--out", out, "--resume")
    assert result.exit_code == 0, result.output
    assert "2 ok" in result.output and "] 1/" not in result.output  # no progress line: nothing ran
    assert (out / "points.csv").read_bytes() == before


def test_report_of_a_real_run_prints_table_and_writes_markdown_and_plots(tiny_run):
    out = tiny_run[0]
    result = cgbench("report", out)
    assert result.exit_code == 0, result.output
    assert "ttft ms" in result.output and "hf" in result.output
    md = (out / "report.md").read_text()
    assert "| tiny | paddle |" in md and "backend / hf" in md
    for name in ("latency.png", "memory.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(cgbench("report", out, "--format", "json", "--no-plots", "--no-write").output)
    assert len(data["points"]) == 2 and len(data["over_hf"]) == 1
    assert "| variant |" in cgbench("report", out, "--format", "markdown", "--no-plots").output


def test_injected_oom_is_a_row_and_the_sweep_goes_on(tmp_path):
    out = tmp_path / "oom"
    result = cgbench("run", "--variants", "tiny", "--prompt-tokens", "8", "--new-tokens", "2,3",
                     "--repeats", "1", "--warmup", "0", "--out", out,
                     env={"CGBENCH_FAULT": "oom@load#n3"})
    assert result.exit_code == 0, result.output
    rows = read_points(out)
    assert [(r["new_tokens"], r["status"]) for r in rows] == [(2, "ok"), (3, "oom")]
    assert "out of memory" in rows[1]["message"]
    assert rows[1]["param_count"] == TINY.arch.param_count and rows[1]["ttft_ms_mean"] is None
    assert rows[1]["peak_rss_mb"] > 0  # the memory reached before the failure is kept


def test_killed_worker_is_recorded_as_oom(tmp_path):
    out = tmp_path / "kill"
    result = cgbench("run", "--variants", "tiny", "--prompt-tokens", "8", "--new-tokens", "2",
                     "--repeats", "1", "--warmup", "0", "--out", out,
                     env={"CGBENCH_FAULT": "kill@load"})
    assert result.exit_code == 0, result.output
    (row,) = read_points(out)
    assert row["status"] == "oom" and "SIGKILL" in row["message"]


def test_errors_are_retried_by_resume(tmp_path):
    out = tmp_path / "err"
    args = ["run", "--variants", "tiny", "--prompt-tokens", "8", "--new-tokens", "2",
            "--repeats", "1", "--warmup", "0", "--out", out]
    assert cgbench(*args, env={"CGBENCH_FAULT": "error@load"}).exit_code == 0
    assert [r["status"] for r in read_points(out)] == ["error"]
    assert cgbench(*args, "--resume", env={"CGBENCH_FAULT": ""}).exit_code == 0
    assert [r["status"] for r in read_points(out)] == ["ok"]


def _one_line_failure(result, *words):
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    for w in words:
        assert w in lines[0]


@pytest.mark.parametrize("args, words", [
    (["report", "/nonexistent/run"], ["no such run directory"]),
    (["run", "--variants", "350M-mnoo"], ["unknown variant", "350M-mono"]),
    (["run", "--dtype", "int4"], ["--dtype"]),
    (["run", "--device", "gpu:x"], ["--device"]),
    (["run", "--weights", "/nonexistent/models"], ["--weights"]),
    (["run", "--resume"], ["--resume needs --out"]),
    (["recommend", "/nonexistent/run", "--memory", "24GB"], ["no such run directory"]),
])
def test_bad_input_is_one_line_and_non_zero(args, words, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a run that started by mistake would write here
    _one_line_failure(cgbench(*args), *words)
    assert list(tmp_path.iterdir()) == []
