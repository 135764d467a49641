"""Both backends time a request the same way: one timestamp per token, batch rows counted."""
from __future__ import annotations

import pytest

from bench.backends import BACKENDS, prompt_ids
from bench.plan import Point
from bench.worker import classify, floor_row, latency_row


@pytest.fixture(scope="module", params=["paddle", "hf"])
def backend(request):
    return BACKENDS[request.param](Point("codegen-tiny", "random", request.param, "float32", "cpu",
                                         8, 4, batch=2, repeats=1, warmup=0))


@pytest.mark.parametrize("batch", [1, 2])
def test_timing_has_one_timestamp_per_token(backend, batch):
    t = backend.run(prompt_ids(0, 0, 8, backend.usable_ids), 5, batch)
    assert t.completion_tokens == 5 * batch
    assert len(t.token_times_ms) == 5
    assert t.token_times_ms == sorted(t.token_times_ms)
    assert 0 < t.prefill_ms <= t.ttft_ms == t.token_times_ms[0] <= t.e2e_ms
    assert backend.load_s > 0 and backend.usable_ids == 256


def test_prompts_are_exact_and_reproducible():
    a = prompt_ids(3, 0, 1024, 256)
    assert len(a) == 1024 and max(a) < 256 and a == prompt_ids(3, 0, 1024, 256)
    assert a != prompt_ids(3, 1, 1024, 256)


def test_latency_row_from_timings():
    from bench.backends import Timing

    timings = [Timing(100.0, 90.0, 400.0, [100.0, 200.0, 300.0, 400.0], 4),
               Timing(120.0, 95.0, 420.0, [120.0, 220.0, 320.0, 420.0], 4)]
    row = latency_row(timings, new_tokens=4, batch=1)
    assert row["ttft_ms_mean"] == pytest.approx(110.0)
    assert row["tpot_ms_mean"] == pytest.approx(100.0) and row["tpot_ms_stdev"] == 0
    assert row["itl_ms_p99"] == pytest.approx(100.0) and row["itl_count"] == 6
    assert row["decode_tokens_per_s_mean"] == pytest.approx(10.0)
    floor = floor_row({**row, "prompt_tokens": 8, "new_tokens": 4, "batch": 1,
                       "weight_bytes": 10**9, "kv_bytes_per_token": 0}, 20.0, "test")
    assert floor["floor_ms_per_token"] == pytest.approx(50.0)
    assert floor["pct_of_floor"] == pytest.approx(50.0)


@pytest.mark.parametrize("exc, status", [
    (MemoryError(), "oom"),
    (RuntimeError("CUDA error: out of memory"), "oom"),
    (RuntimeError("ResourceExhaustedError: Out of memory error on GPU 0"), "oom"),
    (ValueError("shape mismatch"), "error"),
])
def test_failures_are_classified(exc, status):
    assert classify(exc) == status


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_ct2_backend_times_the_same_weights(dtype):
    pytest.importorskip("ctranslate2")
    pytest.importorskip("transformers")
    import numpy as np

    from engine import load

    backend = BACKENDS["ct2"](Point("codegen-tiny", "random", "ct2", dtype, "cpu", 8, 4,
                                    repeats=1, warmup=0))
    t = backend.run(prompt_ids(0, 0, 8, backend.usable_ids), 5, 1)
    assert t.completion_tokens == 5 and len(t.token_times_ms) == 5
    assert 0 < t.prefill_ms <= t.ttft_ms == t.token_times_ms[0] <= t.e2e_ms
    ids = prompt_ids(0, 0, 12, backend.usable_ids)
    theirs = np.asarray(backend.generator.forward_batch([[f"<t{i}>" for i in ids]]))[0]
    ours = load("random:tiny", prefix_cache_bytes=0).model.logits(ids)
    error = ((theirs - ours) ** 2).sum() / (ours ** 2).sum()
    assert error <= (1e-8 if dtype == "float32" else 1e-2)  # the same model, converted


@pytest.mark.parametrize("backend,dtype,words", [
    ("hf", "int8", "--backend hf runs"), ("ct2", "int8", None), ("paddle", "int8", None),
])
def test_plan_checks_each_backends_dtypes(backend, dtype, words):
    from bench.errors import BenchError
    from bench.plan import build_plan

    if words is None:
        assert build_plan(variants="tiny", backend=backend, dtype=dtype)
        return
    with pytest.raises(BenchError, match=words):
        build_plan(variants="tiny", backend=backend, dtype=dtype)
