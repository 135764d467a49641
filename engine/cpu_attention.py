"""CPU attention kernels over the KV cache (numba, on cpu_kernels' TBB pool and lock).

- `attend(q, keys, values, seen)`: one query per head (a decode step's row) over the first
  `seen` positions of its cache, heads in parallel;
- `prompt_attend(q, keys, values, pos)`: a prompt's causal attention, per head and block of
  queries, an online softmax over blocks of keys, each query over only the keys it sees,
  transposed so that engine/cpu_vector's register-tile GEMMs and column passes run on vectors
  of queries.  Measured per 350M layer, 16 heads, a 512-token chunk at position 0 and at 512
  (this project's 2-core AMD EPYC, each in its own process, min of 7): 2.5-4.0 and 5.8-6.2
  ms, against 6.7-8.4 and 18.8-23.8 ms for the numba-loop kernel before it (scores as dot
  products along the head dim, ~70-85 GFLOP/s).
Both float32, q pre-scaled by 1/sqrt(head_dim).
"""
from __future__ import annotations

import numpy as np

from .cpu_kernels import LOCK, nb  # numba, after cpu_kernels chose its threading layer
from .cpu_vector import LANES, col_exp, col_max, col_rescale, col_scale, gemm


@nb.njit(parallel=True, fastmath=True, cache=True)
def _attend_heads(q, keys, values, seen, out):  # pragma: no cover - compiled
    """out[h] = softmax(keys[h, :seen] . q[h]) . values[h, :seen], heads in parallel."""
    heads, dim = q.shape
    for h in nb.prange(heads):
        scores = np.empty(seen, np.float32)
        top = np.float32(-np.inf)
        for s in range(seen):
            acc = np.float32(0.0)
            for d in range(dim):
                acc += keys[h, s, d] * q[h, d]
            scores[s] = acc
            top = max(top, acc)
        total = np.float32(0.0)
        for s in range(seen):
            e = np.exp(scores[s] - top)
            scores[s] = e
            total += e
        inv = np.float32(1.0) / total
        for d in range(dim):
            out[h, d] = 0.0
        for s in range(seen):
            p = scores[s] * inv
            for d in range(dim):
                out[h, d] += p * values[h, s, d]


def attend(q: np.ndarray, keys: np.ndarray, values: np.ndarray, seen: int) -> np.ndarray:
    """One sequence's attention over its cache: q [heads, dim] (pre-scaled), keys/values
    [heads, capacity, dim] of which the first `seen` positions count; [heads, dim].  One
    compiled call per row and layer, where numpy's per-head matmuls cost ~0.25 ms of call
    overhead per row and layer at a few hundred positions (a batched decode step calls it for
    every row)."""
    out = np.empty(q.shape, np.float32)
    with LOCK:
        _attend_heads(np.ascontiguousarray(q, np.float32), keys, values, int(seen), out)
    return out


# ---- a prompt's causal attention ------------------------------------------------------------
QUERY_BLOCK = 128  # queries per task (one head each): each task reads its keys once
KEY_BLOCK = 64  # keys per step of the online softmax (scores [64, 128]: 32 KB)
_LOW = np.float32(-1e30)  # a running max below any score (finite: fastmath assumes no inf)


@nb.njit(parallel=True, fastmath=True, cache=True)
def _prompt_attend(q, keys, values, pos, out):  # pragma: no cover - compiled
    """Causal attention, one task per head and block of QUERY_BLOCK queries, transposed so
    that a vector holds LANES queries: S^T = K Q^T over blocks of KEY_BLOCK keys read where
    the cache holds them, an online softmax down each query's column, O^T += V^T P^T; only
    the queries that see a block's keys (from a multiple of LANES), masked keys at _LOW
    before the max and 0 after the exp."""
    t, heads, dim = q.shape
    blocks = (t + QUERY_BLOCK - 1) // QUERY_BLOCK
    for task in nb.prange(heads * blocks):
        h, b = task // blocks, task % blocks
        b = b // 2 if b % 2 == 0 else blocks - 1 - b // 2  # light and heavy blocks alternate
        q0 = b * QUERY_BLOCK
        real = min(QUERY_BLOCK, t - q0)
        cols = (real + LANES - 1) // LANES * LANES  # padding queries are zero, never written
        qt = np.zeros((dim, cols), np.float32)
        for i in range(real):
            for d in range(dim):
                qt[d, i] = q[q0 + i, h, d]
        ot = np.zeros((dim, cols), np.float32)
        top = np.full(cols, _LOW, np.float32)
        high = np.empty(cols, np.float32)
        alpha = np.empty(cols, np.float32)
        total = np.zeros(cols, np.float32)
        st = np.empty((KEY_BLOCK, cols), np.float32)  # scores, then probabilities
        pq, ps, po = qt.ctypes.data, st.ctypes.data, ot.ctypes.data
        pt, ph, pa, pz = top.ctypes.data, high.ctypes.data, alpha.ctypes.data, total.ctypes.data
        pk, pv = keys[h].ctypes.data, values[h].ctypes.data
        first = pos + q0  # the block's first position; its last sees keys 0..first+real-1
        for k0 in range(0, first + real, KEY_BLOCK):
            n = min(KEY_BLOCK, first + real - k0)
            c0 = max(0, k0 - first) // LANES * LANES  # queries before it see none of these
            gemm(pk + 4 * k0 * dim, dim, 1, pq + 4 * c0, cols, dim, ps + 4 * c0, cols, n,
                 cols - c0, False)
            masked = k0 + n - 1 - first > c0  # some key lies after some query's position
            if masked:
                for j in range(n):
                    for i in range(c0, min(cols, k0 + j - first)):
                        st[j, i] = _LOW
            col_max(ps, cols, n, c0, cols, pt, ph)
            col_rescale(pt, ph, pa, pz, c0, cols)
            col_exp(ps, cols, n, c0, cols, ph, pz)
            if masked:
                for j in range(n):
                    for i in range(c0, min(cols, k0 + j - first)):
                        st[j, i] = 0
            col_scale(po, cols, dim, c0, cols, pa)
            gemm(pv + 4 * k0 * dim, 1, dim, ps + 4 * c0, cols, n, po + 4 * c0, cols, dim,
                 cols - c0, True)
        for i in range(real):
            inv = np.float32(1) / total[i]
            for d in range(dim):
                out[q0 + i, h, d] = ot[d, i] * inv


def prompt_attend(q: np.ndarray, keys: np.ndarray, values: np.ndarray, pos: int,
                  out: np.ndarray | None = None) -> np.ndarray:
    """A prompt's causal attention: q [T, heads, dim] (pre-scaled; any strides but the last)
    at positions pos..pos+T-1, each over keys/values [heads, capacity, dim] 0..its own
    position (written up to pos + T); [T, heads, dim] float32 (the layout the output
    projection reads), into `out` if given."""
    t, heads, dim = q.shape
    for name, a in (("q", q), ("keys", keys), ("values", values), ("out", out)):
        if a is not None and (a.dtype != np.float32 or a.ndim != 3 or a.strides[-1] != 4
                              or (name != "q" and not a.flags.c_contiguous)):
            raise ValueError(f"prompt_attend: {name} must be 3-D float32 with contiguous rows"
                             f"{'' if name == 'q' else ', C-contiguous'}, not {a.dtype} "
                             f"{a.shape} strides {a.strides}")
    if (keys.shape != values.shape or keys.shape[0] != heads or keys.shape[2] != dim
            or pos < 0 or pos + t > keys.shape[1] or (out is not None and out.shape != q.shape)):
        raise ValueError(f"prompt_attend: q {q.shape} at {pos}, keys {keys.shape}, values "
                         f"{values.shape}, out {None if out is None else out.shape}")
    if out is None:
        out = np.empty(q.shape, np.float32)
    with LOCK:
        if t == 1:  # one query (a one-token chunk): the decode step's kernel, no padding row
            _attend_heads(np.ascontiguousarray(q[0]), keys, values, int(pos) + 1,
                          out.reshape(heads, dim))
        else:
            _prompt_attend(q, keys, values, int(pos), out)
    return out


def warm() -> None:
    """Compile (or load from numba's on-disk cache) the attention kernels with the argument
    types the fast model passes (see cpu_kernels.warm): a decode row, a one-token chunk
    (q a read-only view) and a prompt (q a strided read-only view).  Tiny arrays."""
    heads, capacity, dim = 2, 8, 4
    keys = np.zeros((heads, capacity, dim), np.float32)
    values = np.zeros((heads, capacity, dim), np.float32)
    attend(np.zeros((heads, dim), np.float32), keys, values, 1)
    qk = np.zeros((1, 3, 2, heads, dim), np.float32)  # [1, T, q|k, H, D] as the projection's
    qk.setflags(write=False)
    for t in (1, 3):
        prompt_attend(qk[0, :t, 0], keys, values, 0)
