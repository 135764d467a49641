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
