"""--tensor-parallel on the three commands: plumbing and the errors a user can make, each one
line and a non-zero exit before anything loads."""
from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

import serve.server
from bench.cli import main as cgbench
from bench.errors import BenchError
from bench.sweep.plan import build_plan
from engine.__main__ import main as engine_main
from serve.cli import main as cgserve


def test_cgserve_passes_tensor_parallel_to_load(captured):
    result = CliRunner().invoke(cgserve, ["random:16B-multi", "--tensor-parallel", "2",
                                          "--dtype", "float16", "--device", "gpu"])
    assert result.exit_code == 0, result.output
    config = captured["config"]
    assert config.tensor_parallel == 2
    assert config.load_kwargs() == {"dtype": "float16", "device": "gpu", "impl": "fast",
                                    "tensor_parallel": 2}


def test_cgserve_tensor_parallel_from_env(captured, monkeypatch):
    monkeypatch.setenv("CGSERVE_TENSOR_PARALLEL", "4")
    assert CliRunner().invoke(cgserve, ["random:350M-mono"]).exit_code == 0
    assert captured["config"].tensor_parallel == 4


@pytest.mark.parametrize("args, fragment", [
    (["random:350M-mono", "--tensor-parallel", "3"], "--tensor-parallel 3: random:350M-mono "
                                                     "cannot be split 3 ways"),
    (["random:350M-mono", "--tensor-parallel", "0"], "--tensor-parallel 0"),
    (["random:350M-mono", "--tensor-parallel", "2", "--impl", "reference"], "--impl reference"),
    (["/no/such/model", "--tensor-parallel", "2"], "/no/such/model: no such directory"),
    (["random:350M-mono", "--tensor-parallel", "2", "--device", "gpu:1"],
     "--device 'gpu:1' names 1 GPU(s) but --tensor-parallel 2 needs 2 different ones"),
])
def test_cgserve_errors_before_anything_loads(captured, args, fragment):
    result = CliRunner().invoke(cgserve, args)
    assert result.exit_code == 1 and "config" not in captured
    assert fragment in result.output and len(result.output.strip().splitlines()) == 1


def test_engine_cli_bad_split_is_one_line():
    result = CliRunner().invoke(engine_main, ["random:tiny", "--tensor-parallel", "8"])
    assert result.exit_code == 1
    assert "--tensor-parallel 8" in result.output and "must divide 4" in result.output


@pytest.mark.parametrize("device, fragment", [("gpu:0", "needs 2 different ones"),
                                              ("gpu:0,0", "needs 2 different ones"),
                                              ("tpu", "not understood")])
def test_device_lists(device, fragment):
    from engine import OptionError
    from engine.tensor_parallel.load import parse_devices

    with pytest.raises(OptionError, match=fragment):
        parse_devices(device, 2)
    assert parse_devices("gpu", 2) == ("gpu", [0, 1])
    assert parse_devices("gpu:2,3", 2) == ("gpu", [2, 3])
    assert parse_devices("cpu", 4) == ("cpu", None)


def test_bench_sweeps_tensor_parallel_as_an_axis():
    points = build_plan(variants="350M-mono", tensor_parallel="1,2", device="gpu:1")
    assert [p.tensor_parallel for p in points] == [1, 2]
    assert points[1].point_id.endswith("/tp2") and points[1].load_device == "gpu:1,2"
    assert points[0].load_device == "gpu:1" and points[0].key() != points[1].key()


@pytest.mark.parametrize("args, fragment", [
    (["--tensor-parallel", "3"], "cannot be split 3 ways"),
    (["--tensor-parallel", "2", "--backend", "hf"], "only the paddle backend"),
])
def test_bench_tensor_parallel_errors(args, fragment):
    with pytest.raises(BenchError, match=fragment):
        build_plan(variants="350M-mono", **{a.lstrip("-").replace("-", "_"): b
                                           for a, b in zip(args[::2], args[1::2])})
    result = CliRunner().invoke(cgbench, ["run", "--variants", "350M-mono", *args])
    assert result.exit_code == 1 and fragment in result.output


def test_points_csv_has_the_column_and_old_files_read_as_one(tmp_path):
    from bench.sweep.schema import COLUMNS, read_points, write_points

    assert "tensor_parallel" in COLUMNS
    write_points(tmp_path, [{"schema_version": 1, "variant": "codegen-tiny", "status": "ok",
                             "tensor_parallel": 2}])
    assert read_points(tmp_path)[0]["tensor_parallel"] == 2
    text = (tmp_path / "points.csv").read_text().splitlines()
    cols = text[0].split(",")
    i = cols.index("tensor_parallel")
    old = [",".join(c for j, c in enumerate(line.split(",")) if j != i) for line in text]
    (tmp_path / "points.csv").write_text("\n".join(old) + "\n")
    assert read_points(tmp_path)[0]["tensor_parallel"] == 1


def test_report_and_compare_tell_split_points_apart(tmp_path):
    from bench.analysis.compare import compare_runs
    from bench.analysis.frames import load_run
    from bench.analysis.report import render_report
    from bench_points import sweep_row, write_run

    one, two = sweep_row("paddle", 128), sweep_row("paddle", 128, ttft=50.0)
    two.update(tensor_parallel=2, point_id=two["point_id"] + "/tp2")
    write_run(tmp_path / "a", [one, two])
    points, env = load_run(tmp_path / "a")
    header = render_report(points, env, "text").splitlines()[0].split()
    assert "tp" in header
    items, only_a, only_b = compare_runs(tmp_path / "a", tmp_path / "a")
    assert {p.endswith("/tp2") for p in items["point"]} == {True, False}
