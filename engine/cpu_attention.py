"""CPU attention kernels over the KV cache (numba, on cpu_kernels' TBB pool and lock).

- `attend(q, keys, values, seen)`: one query per head (a decode step's row) over the first
  `seen` positions of its cache, heads in parallel;
- `prompt_attend(q, keys, values, pos)`: a prompt's causal attention, per head and block of
  queries, an online softmax over blocks of keys, each query over only the keys it sees, with
  a polynomial exp LLVM vectorises (libm's is scalar).  Measured per 350M layer at 1,024
  tokens (this project's 2-core machine, one process, alternated): 33 ms against 48 for
  oneDNN's per-head sgemm with Paddle's softmax, which it replaced.
Both float32, q pre-scaled by 1/sqrt(head_dim).
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .cpu_kernels import LOCK, nb  # numba, after cpu_kernels chose its threading layer


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
KEY_BLOCK = 64  # keys per step of the online softmax (their K and V rows: 32 KB at dim 64)
_LOW = np.float32(-1e30)  # a running max below any score (finite: fastmath assumes no inf)
_EXP_MIN = np.float32(-87.0)  # exp(-87) ~ 1.6e-38, still a normal float32
_LOG2E = np.float32(1.4426950408889634)
_LN2 = np.float32(0.6931471805599453)


@intrinsic
def _f32_from_bits(typingctx, bits):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@nb.njit(inline="always", fastmath=True)
def _exp(x):  # pragma: no cover - compiled
    """exp(x) in float32 for x <= 0 (relative error ~3e-7; below -87 it is exp(-87)), in
    plain arithmetic LLVM vectorises, where libm's scalar expf is not: 2**n times Cephes' expf
    polynomial of the remainder r = x - n ln2, |r| <= ln2 / 2."""
    x = max(x, _EXP_MIN)
    n = np.floor(x * _LOG2E + np.float32(0.5))
    r = x - n * _LN2
    p = np.float32(1.9875691500e-4) * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * r * r + r + np.float32(1.0)
    return p * _f32_from_bits(np.int32((np.int32(n) + 127) << 23))


@nb.njit(inline="always", fastmath=True)
def _block_scores(qb, kb, rows, last, first, k0, s):  # pragma: no cover - compiled
    """s[i, j] = qb[i] . kb[j] for pairs of rows and fours of keys (8 sums share 6 loads),
    each pair only up to the keys its second row sees (rounded up to 4, at most `last`)."""
    dim = qb.shape[1]
    for i in range(0, rows, 2):
        x0, x1 = qb[i], qb[i + 1]
        for j in range(0, min(last, (first + i + 2 - k0 + 3) // 4 * 4), 4):
            y0, y1, y2, y3 = kb[j], kb[j + 1], kb[j + 2], kb[j + 3]
            a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = np.float32(0)
            for d in range(dim):
                u, v = x0[d], x1[d]
                a0 += u * y0[d]
                a1 += u * y1[d]
                a2 += u * y2[d]
                a3 += u * y3[d]
                b0 += v * y0[d]
                b1 += v * y1[d]
                b2 += v * y2[d]
                b3 += v * y3[d]
            s[i, j], s[i, j + 1], s[i, j + 2], s[i, j + 3] = a0, a1, a2, a3
            s[i + 1, j], s[i + 1, j + 1], s[i + 1, j + 2], s[i + 1, j + 3] = b0, b1, b2, b3


@nb.njit(inline="always", fastmath=True)
def _block_softmax(s, rows, real, n, last, first, k0, top, total, acc):  # pragma: no cover
    """Online softmax over one block of `n` keys from k0: row i (position first + i) sees
    keys up to its own; s becomes the block's probabilities (0 past what a row sees, up to
    `last`), and the row's running max, sum and accumulator are rescaled to the new max."""
    for i in range(rows):
        seen = min(n, first + i + 1 - k0) if i < real else 0
        row = s[i]
        if seen <= 0:
            for j in range(last):
                row[j] = 0
            continue
        high = top[i]
        for j in range(seen):
            high = max(high, row[j])
        alpha = _exp(top[i] - high)
        part = np.float32(0)
        for j in range(seen):
            e = _exp(row[j] - high)
            row[j] = e
            part += e
        for j in range(seen, last):
            row[j] = 0
        total[i] = total[i] * alpha + part
        top[i] = high
        out = acc[i]
        for d in range(acc.shape[1]):
            out[d] *= alpha


@nb.njit(inline="always", fastmath=True)
def _block_values(s, vb, rows, last, first, k0, acc):  # pragma: no cover - compiled
    """acc[i] += s[i] @ vb: pairs of rows against fours of value rows, along the head dim."""
    dim = vb.shape[1]
    for i in range(0, rows, 2):
        o0, o1, p, r = acc[i], acc[i + 1], s[i], s[i + 1]
        for j in range(0, min(last, (first + i + 2 - k0 + 3) // 4 * 4), 4):
            p0, p1, p2, p3 = p[j], p[j + 1], p[j + 2], p[j + 3]
            r0, r1, r2, r3 = r[j], r[j + 1], r[j + 2], r[j + 3]
            y0, y1, y2, y3 = vb[j], vb[j + 1], vb[j + 2], vb[j + 3]
            for d in range(dim):
                o0[d] += p0 * y0[d] + p1 * y1[d] + p2 * y2[d] + p3 * y3[d]
                o1[d] += r0 * y0[d] + r1 * y1[d] + r2 * y2[d] + r3 * y3[d]


@nb.njit(parallel=True, fastmath=True, cache=True)
def _prompt_attend(q, keys, values, pos, bq, bk, out):  # pragma: no cover - compiled
    """Causal attention, one task per head and block of bq queries, each streaming over key
    blocks of bk (copied, zero-padded to a multiple of 4) with an online softmax."""
    t, heads, dim = q.shape
    blocks = (t + bq - 1) // bq
    for task in nb.prange(heads * blocks):
        h, b = task // blocks, task % blocks
        b = b // 2 if b % 2 == 0 else blocks - 1 - b // 2  # light and heavy blocks alternate
        q0 = b * bq
        real = min(bq, t - q0)
        rows = real + (real & 1)  # pairs of rows; the padding row is zero
        qb = np.zeros((rows, dim), np.float32)
        qb[:real] = q[q0:q0 + real, h]
        acc = np.zeros((rows, dim), np.float32)
        top = np.full(rows, _LOW, np.float32)
        total = np.zeros(rows, np.float32)
        s = np.empty((rows, bk), np.float32)
        kb = np.zeros((bk, dim), np.float32)
        vb = np.zeros((bk, dim), np.float32)
        first = pos + q0  # the block's first position; its last sees keys 0..first+real-1
        for k0 in range(0, first + real, bk):
            n = min(bk, first + real - k0)
            kb[:n] = keys[h, k0:k0 + n]
            vb[:n] = values[h, k0:k0 + n]
            last = (n + 3) // 4 * 4
            kb[n:last] = 0
            vb[n:last] = 0
            _block_scores(qb, kb, rows, last, first, k0, s)
            _block_softmax(s, rows, real, n, last, first, k0, top, total, acc)
            _block_values(s, vb, rows, last, first, k0, acc)
        for i in range(real):
            inv = np.float32(1) / total[i]
            for d in range(dim):
                out[q0 + i, h, d] = acc[i, d] * inv


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
            _prompt_attend(q, keys, values, int(pos), QUERY_BLOCK, KEY_BLOCK, out)
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
