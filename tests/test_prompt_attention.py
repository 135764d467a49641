"""A prompt's causal attention on CPU (engine/cpu_attention.prompt_attend) against the formula
in float64, and the fast model's prefill through it: in chunks over a cached prefix as in one
call."""
from __future__ import annotations

import numpy as np
import pytest

from engine import load
from engine.cpu_attention import prompt_attend
from fakes import run_prompt


def formula(q, keys, values, pos):
    """softmax(q . keys[:seen]) . values[:seen] per query, seen = its position + 1, float64."""
    q, keys, values = (a.astype(np.float64) for a in (q, keys, values))
    out = np.empty(q.shape)
    for i in range(q.shape[0]):
        scores = np.einsum("hd,hkd->hk", q[i], keys[:, :pos + i + 1])
        p = np.exp(scores - scores.max(axis=-1, keepdims=True))
        out[i] = np.einsum("hk,hkd->hd", p / p.sum(axis=-1, keepdims=True),
                           values[:, :pos + i + 1])
    return out


def attention_inputs(t, pos, dim, room, seed):
    """q [t, 3, dim] at positions pos.. (heads with flat, moderate and peaked scores) and a
    cache [3, pos + t + room, dim] whose positions past pos + t hold NaN (never to be read)."""
    rng = np.random.default_rng(seed)
    heads = 3
    q = rng.standard_normal((t, heads, dim)).astype(np.float32)
    q *= np.asarray([0.05, 1.0, 4.0], np.float32)[:, None] / np.float32(np.sqrt(dim))
    keys, values = (np.full((heads, pos + t + room, dim), np.nan, np.float32) for _ in range(2))
    keys[:, :pos + t] = rng.standard_normal((heads, pos + t, dim))
    values[:, :pos + t] = rng.standard_normal((heads, pos + t, dim))
    return q, keys, values


@pytest.mark.parametrize("dim", [16, 64, 80, 256])  # head dims: tiny, 350M, 2B, 6B/16B
@pytest.mark.parametrize("pos", [0, 37])
@pytest.mark.parametrize("t", [1, 5, 64, 300])
def test_kernel_matches_the_formula(t, pos, dim):
    q, keys, values = attention_inputs(t, pos, dim, room=0 if t == 300 else 11, seed=t + pos + dim)
    got = prompt_attend(q, keys, values, pos)
    assert got.shape == q.shape and got.dtype == np.float32
    # float32 rounding: each score is one chain of `dim` fused multiply-adds (its error grows
    # as sqrt(dim)), amplified by the peaked head's softmax: 1.04e-5 measured at dim 256
    atol = 1e-5 * max(1.0, np.sqrt(dim / 64))
    np.testing.assert_allclose(got, formula(q, keys, values, pos), rtol=0, atol=atol)


def test_kernel_writes_into_out_and_rejects_bad_shapes():
    q, keys, values = attention_inputs(7, 3, 16, room=2, seed=0)
    out = np.full(q.shape, np.nan, np.float32)
    assert prompt_attend(q, keys, values, 3, out) is out
    np.testing.assert_allclose(out, formula(q, keys, values, 3), rtol=0, atol=1e-5)  # float32 sums
    with pytest.raises(ValueError, match="prompt_attend: q"):
        prompt_attend(q, keys, values, 6)  # 6 + 7 positions do not fit a capacity of 12
    with pytest.raises(ValueError, match="keys must be 3-D float32"):
        prompt_attend(q, keys.astype(np.float64), values, 3)
    strided = np.zeros((7, 2, 3, 16), np.float32)
    strided[:, 0] = q  # q read in place from a wider array (the model's [T, 2, H, D] q|k)
    np.testing.assert_array_equal(prompt_attend(strided[:, 0], keys, values, 3), out)


def test_prefill_in_chunks_over_a_cached_prefix_equals_one_call():
    """600 tokens in one prefill, and in chunks of odd lengths (one token, chunks that straddle
    query and key blocks) each over the cache the previous ones wrote: the same logits after
    every chunk as a one-call prefill of the tokens so far."""
    model = load("random:tiny", prefix_cache_bytes=0).model
    assert model.host  # the compiled kernel's path
    ids = [int(i) for i in np.random.default_rng(4).integers(0, 256, 600)]
    cache = model.new_cache()
    start = 0
    for end in (1, 38, 39, 101, 357, 600):
        chunk = model.prefill(cache, ids[start:end]).logits
        one_call, _ = run_prompt(model, ids[:end])
        assert ((chunk - one_call) ** 2).mean() / (one_call ** 2).mean() <= 1e-10, end
        start = end
    assert cache.length == 600
