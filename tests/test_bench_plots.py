"""cgbench plot / report's PNGs (bench/analysis/plots.py): size, colours, legend, redrawing."""
from __future__ import annotations

import struct

from click.testing import CliRunner

from bench.analysis.frames import load_run
from bench.analysis.plots import BACKEND_COLOURS, colours, write_plots
from bench.cli import main
from bench_points import three_backends, write_run


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_plots_read_on_a_laptop_screen(tmp_path):
    run = three_backends(tmp_path / "run")
    points, env = load_run(run)
    paths = write_plots(points, env, run)
    assert [p.name for p in paths] == ["latency.png", "memory.png"]
    for path in paths:
        assert png_size(path) == (1200, 700)
    assert not list(run.glob(".*.tmp.png"))  # written whole, then renamed


def test_one_colour_per_backend_and_the_legend_names_each(tmp_path, monkeypatch):
    import matplotlib.axes

    seen = []
    real_bar = matplotlib.axes.Axes.bar

    def bar(self, *args, **kwargs):
        seen.append((kwargs.get("label"), kwargs.get("color")))
        return real_bar(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "bar", bar)
    run = three_backends(tmp_path / "run")
    write_plots(*load_run(run), run)
    assert set(seen) == {("paddle", "tab:blue"), ("paddle-ref", "tab:green"), ("hf", "tab:orange")}
    assert len({c for _, c in seen}) == 3  # paddle-ref is not hf's colour
    assert colours(["hf", "ct2", "ort"]) == {"hf": BACKEND_COLOURS["hf"], "ct2": "tab:purple",
                                             "ort": "tab:brown"}


def test_groups_run_by_prompt_length_then_new_tokens(tmp_path):
    from bench.analysis.plots import _layout
    from bench_points import sweep_row

    run = write_run(tmp_path / "r", [sweep_row("hf", 1024, 64), sweep_row("paddle", 128, 64),
                                     sweep_row("paddle", 1024, 16), sweep_row("hf", 128, 16)])
    points, _ = load_run(run)
    groups, backends, labels, common = _layout(points)
    assert labels == ["prompt 128\nnew 16", "prompt 128\nnew 64", "prompt 1024\nnew 16",
                      "prompt 1024\nnew 64"]
    assert backends == ["hf", "paddle"] and common == "350M-mono, float32, cpu"


def test_cgbench_plot_redraws_sweeps_and_typing_runs(tmp_path):
    run = three_backends(tmp_path / "run")
    typing = tmp_path / "typing"
    typing.mkdir()
    (typing / "requests.csv").write_text(
        "mode,line,offset,fired_s,pause_ms,prompt_chars,latency_ms,status,superseded,"
        "prompt_tokens,cached_tokens,completion_tokens,error,shown\n"
        "reuse,3,40,0.1,500,40,300.5,200,False,20,10,5,,True\n"
        "reuse,4,60,0.9,500,60,,409,True,30,0,0,superseded,False\n")
    result = CliRunner().invoke(main, ["plot", str(run), str(typing)])
    assert result.exit_code == 0, result.output
    assert png_size(run / "latency.png") == (1200, 700)
    assert (typing / "latency.png").stat().st_size > 0
    assert not (run / "report.md").exists()  # plot draws, nothing else


def test_cgbench_plot_of_something_else_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    for target in (tmp_path / "empty", tmp_path / "missing"):
        result = CliRunner().invoke(main, ["plot", str(target)])
        assert result.exit_code == 1 and "neither points.csv nor requests.csv" in result.output
        assert len(result.output.strip().splitlines()) == 1
