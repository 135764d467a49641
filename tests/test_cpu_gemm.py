"""engine/cpu_gemm.py, a prompt's float32 GEMM on cpu_vector's dot-product tile, against numpy
in float64 (every remainder of the 4 x 4 tile, blocks of w and of x), its input checks and
which products it takes; and the fast model's prefill through it."""
from __future__ import annotations

import numpy as np
import pytest

from engine import cpu_gemm, load
from fakes import run_prompt


@pytest.mark.parametrize("t, k, n", [
    (1, 16, 4), (5, 32, 7), (4, 48, 1), (37, 64, 130), (130, 1024, 258), (9, 2560, 257),
    (300, 16, 131)])  # rows past one block of x (tb) and of w (BLOCK_W)
def test_matches_numpy(t, k, n):
    rng = np.random.default_rng(t * 7 + n)
    x = rng.standard_normal((t, k)).astype(np.float32)
    w = rng.standard_normal((n, k)).astype(np.float32)
    out = np.full((t, n), np.nan, np.float32)
    assert cpu_gemm.times_transposed(x, w, out) is out
    want = x.astype(np.float64) @ w.T.astype(np.float64)
    np.testing.assert_allclose(out, want, rtol=0, atol=3e-6 * np.sqrt(k) * 4)


def test_bad_inputs_are_refused():
    x, w = np.zeros((4, 32), np.float32), np.zeros((8, 32), np.float32)
    for args in ((np.zeros((4, 24), np.float32), np.zeros((8, 24), np.float32),
                  np.zeros((4, 8), np.float32)),  # K not a multiple of 16
                 (x, np.zeros((8, 16), np.float32), np.zeros((4, 8), np.float32)),
                 (x, w, np.zeros((4, 7), np.float32)),
                 (x.astype(np.float64), w, np.zeros((4, 8), np.float32)),
                 (x, np.asfortranarray(w), np.zeros((4, 8), np.float32))):
        with pytest.raises(ValueError, match="times_transposed"):
            cpu_gemm.times_transposed(*args)


def test_which_products_it_takes():
    assert cpu_gemm.fits(512, (4096, 1024)) and cpu_gemm.fits(512, (1024, 4096))
    assert not cpu_gemm.fits(512, (1024, 1024))  # small matrices: Paddle's matmul
    assert not cpu_gemm.fits(64, (4096, 1024))  # few rows
    assert not cpu_gemm.fits(512, (2560, 10240))  # rows of w too long for a block of x in L2


def test_prefill_through_it_equals_paddles_matmul(monkeypatch):
    """The tiny model with every product of a prompt taken here gives the logits of Paddle's
    matmul (and takes it: the calls are counted)."""
    model = load("random:tiny", prefix_cache_bytes=0).model
    ids = [int(i) for i in np.random.default_rng(2).integers(0, 256, 150)]
    paddle_logits, _ = run_prompt(model, ids)
    calls = []
    real = cpu_gemm.times_transposed
    monkeypatch.setattr(cpu_gemm, "MIN_ROWS", 1)
    monkeypatch.setattr(cpu_gemm, "MIN_WEIGHTS", 0)
    monkeypatch.setattr(cpu_gemm, "times_transposed", lambda *a: calls.append(1) or real(*a))
    ours, _ = run_prompt(model, ids)
    assert len(calls) >= 2 * model.config.arch.n_layer  # fc_in, fc_out at least, every layer
    assert ((ours - paddle_logits) ** 2).mean() / (paddle_logits ** 2).mean() <= 1e-10
