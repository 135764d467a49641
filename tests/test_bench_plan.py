"""Sweep plans from options, and the errors bad options give."""
from __future__ import annotations

import os

import pytest

from bench.errors import BenchError
from bench.sweep.plan import CPU_QUICK_VARIANTS, Point, build_plan, estimated_cost


def test_default_plan_is_the_quick_cpu_sweep_of_the_350M_variants():
    points = build_plan()
    assert [p.variant for p in points] == [f"codegen-{v}" for v in CPU_QUICK_VARIANTS]
    assert {(p.backend, p.dtype, p.device, p.weights, p.prompt_tokens, p.new_tokens)
            for p in points} == {("paddle", "float32", "cpu", "random", 128, 16)}


def test_plan_is_the_product_of_the_options():
    points = build_plan(variants="350M-mono,codegen-2B-multi", prompt_tokens="128,1024",
                        new_tokens="16,64", backend="paddle,hf", repeats=2, warmup=0)
    assert len(points) == 2 * 2 * 2 * 2
    assert len({p.key() for p in points}) == len(points)
    assert {p.variant for p in points} == {"codegen-350M-mono", "codegen-2B-multi"}
    assert all(p.repeats == 2 and p.warmup == 0 for p in points)
    assert points[0].point_id == "350M-mono/random/paddle/float32/cpu/p128/n16/b1"


def test_sizes_times_data():
    names = [p.variant for p in build_plan(sizes="350M,2B", data="mono,nl")]
    assert names == ["codegen-350M-mono", "codegen-350M-nl", "codegen-2B-mono", "codegen-2B-nl"]


def test_point_round_trips_through_a_dict():
    p = build_plan(variants="tiny")[0]
    assert Point.from_dict(p.to_dict() | {"extra": 1}) == p
    assert p.model_spec == "random:tiny"


def test_weights_directory_finds_variant_directories(tmp_path):
    (tmp_path / "codegen-350M-mono").mkdir()
    points = build_plan(variants="350M-mono", weights=str(tmp_path))
    assert points[0].weights == str(tmp_path / "codegen-350M-mono")
    with pytest.raises(BenchError, match="no codegen-2B-mono directory"):
        build_plan(variants="2B-mono", weights=str(tmp_path))


def test_cost_grows_with_work():
    small, big = build_plan(variants="350M-mono", prompt_tokens="128,1024")
    assert estimated_cost(big) > estimated_cost(small)


@pytest.mark.parametrize("options, words", [
    ({"variants": "350M-mnoo"}, "unknown variant"),
    ({"variants": "350M-mono", "sizes": "2B"}, "either --variants"),
    ({"sizes": "3B"}, "--sizes"),
    ({"data": "python"}, "--data"),
    ({"dtype": "float8"}, "--dtype"),
    ({"dtype": "float16", "backend": "paddle,paddle-ref"}, "needs a GPU"),
    ({"device": "tpu:0"}, "--device"),
    ({"backend": "onnx"}, "--backend"),
    ({"prompt_tokens": "128,abc"}, "--prompt-tokens"),
    ({"new_tokens": "0"}, "--new-tokens"),
    ({"prompt_tokens": "2040", "new_tokens": "64"}, "context"),
    ({"repeats": 0}, "--repeats"),
    ({"warmup": -1}, "--warmup"),
    ({"weights": "/nonexistent/models"}, "not a readable directory"),
])
def test_bad_options_are_one_line_errors(options, words):
    with pytest.raises(BenchError) as err:
        build_plan(**options)
    assert words in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any directory")
def test_unreadable_weights_directory(tmp_path):
    tmp_path.chmod(0)
    try:
        with pytest.raises(BenchError, match="not a readable directory"):
            build_plan(weights=str(tmp_path))
    finally:
        tmp_path.chmod(0o755)
