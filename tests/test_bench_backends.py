"""bench/sweep/backends.py: both backends time a request the same way (one timestamp per
token, batch rows counted); the prompts."""
from __future__ import annotations

import pytest

from bench.sweep.backends import BACKENDS, prompt_ids
from bench.sweep.plan import Point


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
    from bench.sweep.plan import build_plan

    if words is None:
        assert build_plan(variants="tiny", backend=backend, dtype=dtype)
        return
    with pytest.raises(BenchError, match=words):
        build_plan(variants="tiny", backend=backend, dtype=dtype)
