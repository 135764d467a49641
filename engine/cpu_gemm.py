"""A prompt's float32 GEMM on the CPU: out = x @ w.T for w stored [out, in], on cpu_vector's
dot-product register tile (4 rows of x against 4 rows of w, both read along their contiguous
rows, so the weight needs no transposed copy).  Blocks: BLOCK_W rows of w against a block of x
rows that stays in L2 (rows * in * 4 bytes <= L2_BYTES, 32 to 128 rows), one task per pair.

Measured on this project's 2-core AMD EPYC (Zen 5, one process, min of 5-7, against Paddle's
matmul on the same arrays; the tile's in-cache rate is 482 GFLOP/s on both cores):
- 350M, 512 prompt rows: fc_in [512, 1024] x [1024, 4096] 13.0-13.4 ms against 18.1-23.3 (0.69x),
  fc_out [512, 4096] x [4096, 1024] 15.5-16.6 against 18.2-18.7 (0.87x); the q/k/v parts and
  out_proj (0.5-1M weights) swung between 160 and 350 GFLOP/s from run to run, against
  Paddle's ~235: not taken (MIN_WEIGHTS);
- 2B: [512, 2560] x [2560, 2048 / 2560 / 10240] 0.87x / 1.00x / 0.83x; fc_out, K = 10240,
  1.12x (a block of 32 x rows no longer fits L2): not taken (MAX_K);
- 64 rows of 350M's fc_in: 1.18x (too few rows to reuse a block of w): not taken (MIN_ROWS).
A float32 1,024-token 350M prefill (two 512-token chunks, alternating processes, min of 5):
2.56-2.75 s with it, 2.94-3.00 s without.
"""
from __future__ import annotations

import numpy as np

from .cpu_kernels import LOCK, nb  # numba, after cpu_kernels chose its threading layer
from .cpu_vector import DOT_TILE, LANES, dot1x1, dot1x4, dot4x1, dot4x4

BLOCK_W = 128  # rows of w per task
L2_BYTES = 512 << 10  # a task's block of x rows fits this
MIN_ROWS = 128  # fewer prompt rows: Paddle's matmul (see the module docstring)
MIN_WEIGHTS = 1 << 22  # smaller matrices: Paddle's matmul
MAX_K = 4096  # longer rows: Paddle's matmul (a block of 32 x rows must fit L2_BYTES)


@nb.njit(parallel=True, cache=True)
def _times_t(x, w, out, tb):  # pragma: no cover - compiled
    t_rows, k = x.shape
    n_rows = w.shape[0]
    px, pw, po = x.ctypes.data, w.ctypes.data, out.ctypes.data
    wblocks = (n_rows + BLOCK_W - 1) // BLOCK_W
    xblocks = (t_rows + tb - 1) // tb
    for task in nb.prange(wblocks * xblocks):
        n0, t0 = (task // xblocks) * BLOCK_W, (task % xblocks) * tb
        n1, t1 = min(n_rows, n0 + BLOCK_W), min(t_rows, t0 + tb)
        n4, t4 = n0 + (n1 - n0) // DOT_TILE * DOT_TILE, t0 + (t1 - t0) // DOT_TILE * DOT_TILE
        for n in range(n0, n1):
            if n < n4 and (n - n0) % DOT_TILE:
                continue  # inside the tile of four w rows that starts below it
            tile, pwn = n < n4, pw + 4 * n * k
            for t in range(t0, t4, DOT_TILE):
                at, pxt = po + 4 * (t * n_rows + n), px + 4 * t * k
                if tile:
                    dot4x4(pxt, k, pwn, k, k, at, n_rows)
                else:
                    dot4x1(pxt, k, pwn, k, k, at, n_rows)
            for t in range(t4, t1):
                at, pxt = po + 4 * (t * n_rows + n), px + 4 * t * k
                if tile:
                    dot1x4(pxt, k, pwn, k, k, at, n_rows)
                else:
                    dot1x1(pxt, k, pwn, k, k, at, n_rows)


def fits(rows: int, w_shape) -> bool:
    """Whether a prompt's product of `rows` rows with a [out, in] weight comes here."""
    n, k = w_shape
    return rows >= MIN_ROWS and n * k >= MIN_WEIGHTS and k <= MAX_K and k % LANES == 0


def times_transposed(x: np.ndarray, w: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out[T, N] = x[T, K] @ w[N, K].T, float32, all C-contiguous; K a multiple of LANES."""
    t, k = x.shape
    if (w.ndim != 2 or w.shape[1] != k or out.shape != (t, w.shape[0]) or k % LANES
            or any(a.dtype != np.float32 or not a.flags.c_contiguous for a in (x, w, out))):
        raise ValueError(f"times_transposed: x {x.dtype}{x.shape} w {w.dtype}{w.shape} -> out "
                         f"{out.dtype}{out.shape} (float32, C-contiguous, K % {LANES} == 0)")
    tb = max(DOT_TILE * 8, min(128, L2_BYTES // (4 * k) // DOT_TILE * DOT_TILE))
    with LOCK:
        _times_t(x, w, out, tb)
    return out


def warm() -> None:
    """Compile (or load from numba's cache) the GEMM with the argument types fast_model passes
    (x and w read-only views, out writable); tiny arrays."""
    x, w = np.zeros((5, LANES), np.float32), np.zeros((5, LANES), np.float32)
    x.setflags(write=False)
    w.setflags(write=False)
    times_transposed(x, w, np.zeros((5, 5), np.float32))
