"""engine/cpu_vector.py's explicit-vector kernels against numpy: the register-tile GEMM with A
read directly and transposed, every row and column remainder, overwrite and accumulate; the
online-softmax column passes."""
from __future__ import annotations

import numpy as np
import pytest

from engine.cpu_kernels import nb
from engine.cpu_vector import LANES, col_exp, col_max, col_rescale, col_scale, gemm


@nb.njit
def _gemm(a, sr, sk, b, c, m, k, cols, accumulate):
    gemm(a.ctypes.data, sr, sk, b.ctypes.data, b.shape[1], k, c.ctypes.data, c.shape[1], m,
         cols, accumulate)


@nb.njit
def _softmax_passes(s, n, c0, cols, top, high, alpha, total, out):
    col_max(s.ctypes.data, s.shape[1], n, c0, cols, top.ctypes.data, high.ctypes.data)
    col_rescale(top.ctypes.data, high.ctypes.data, alpha.ctypes.data, total.ctypes.data, c0,
                cols)
    col_exp(s.ctypes.data, s.shape[1], n, c0, cols, high.ctypes.data, total.ctypes.data)
    col_scale(out.ctypes.data, out.shape[1], out.shape[0], c0, cols, alpha.ctypes.data)


@pytest.mark.parametrize("m", [1, 3, 4, 9])  # row tiles of 4 and rows one by one
@pytest.mark.parametrize("vectors", [1, 3, 4, 5, 9])  # column tiles of up to 4 vectors
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("accumulate", [False, True])
def test_gemm_matches_numpy(m, vectors, transposed, accumulate):
    rng = np.random.default_rng(m * 100 + vectors)
    k, cols = 37, vectors * LANES
    a = rng.standard_normal((k, m) if transposed else (m, k)).astype(np.float32)
    sr, sk = (1, m) if transposed else (k, 1)
    b = rng.standard_normal((k, cols + 5)).astype(np.float32)  # rows longer than the columns
    c = rng.standard_normal((m, cols + 3)).astype(np.float32)
    before = c.copy()
    _gemm(a, sr, sk, b, c, m, k, cols, accumulate)
    product = (a.T if transposed else a).astype(np.float64) @ b[:, :cols].astype(np.float64)
    np.testing.assert_allclose(c[:, :cols], product + (before[:, :cols] if accumulate else 0),
                               rtol=0, atol=2e-5)
    np.testing.assert_array_equal(c[:, cols:], before[:, cols:])  # nothing past the columns


def test_softmax_column_passes_match_numpy():
    """One block of an online softmax: max down each column from a running max, the rescale
    of the running sums and of an accumulator, exp and the sums; columns before c0 untouched."""
    rng = np.random.default_rng(0)
    n, cols, c0 = 11, 3 * LANES, LANES
    s = (rng.standard_normal((n, cols)) * 5).astype(np.float32)
    top = rng.standard_normal(cols).astype(np.float32)
    total = rng.random(cols).astype(np.float32) + 1
    out = rng.standard_normal((4, cols)).astype(np.float32)
    high, alpha = np.zeros(cols, np.float32), np.zeros(cols, np.float32)
    want_high = np.maximum(top, s.max(axis=0))
    want_alpha = np.exp(top.astype(np.float64) - want_high)
    want_p = np.exp(s.astype(np.float64) - want_high)
    want_total = total * want_alpha + want_p.sum(axis=0)
    want_out = out * want_alpha
    s0, total0, out0 = s.copy(), total.copy(), out.copy()
    _softmax_passes(s, n, c0, cols, top, high, alpha, total, out)
    live = slice(c0, cols)
    np.testing.assert_array_equal(high[live], want_high[live])
    np.testing.assert_array_equal(top[live], want_high[live])  # the running max moved on
    # exp's own error is ~3e-7; the float32 difference s - high (|s| up to ~25) adds ~1e-6
    np.testing.assert_allclose(alpha[live], want_alpha[live], rtol=3e-6)
    np.testing.assert_allclose(s[:, live], want_p[:, live], rtol=3e-6, atol=1e-37)
    np.testing.assert_allclose(total[live], want_total[live], rtol=3e-6)
    np.testing.assert_allclose(out[:, live], want_out[:, live], rtol=3e-6)
    for got, old in ((s, s0), (total, total0), (out, out0)):
        np.testing.assert_array_equal(got[..., :c0], old[..., :c0])


def test_gemm_with_the_avx2_tile_width():
    """Without AVX-512 the column tiles are one vector wide (WIDE = 1): that code path, built
    in a fresh process with WIDE forced to 1, gives numpy's product too."""
    import subprocess
    import sys

    script = """
import numpy as np
from engine import cpu_vector
cpu_vector.WIDE = 1
from engine.cpu_kernels import nb

@nb.njit
def run(a, b, c, m, k, cols):
    cpu_vector.gemm(a.ctypes.data, k, 1, b.ctypes.data, b.shape[1], k, c.ctypes.data,
                    c.shape[1], m, cols, False)

rng = np.random.default_rng(0)
m, k, cols = 6, 19, 5 * cpu_vector.LANES
a, b = (rng.standard_normal(s).astype(np.float32) for s in ((m, k), (k, cols)))
c = np.zeros((m, cols), np.float32)
run(a, b, c, m, k, cols)
print(float(np.abs(c - a.astype(np.float64) @ b).max()))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.strip().splitlines()[-1]) < 2e-5
