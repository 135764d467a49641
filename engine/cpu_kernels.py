"""CPU kernels: weights stored narrower than float32, and attention (numba, compiled on first use).

A decode step is bound by the bytes of weights it reads.  These kernels read each stored weight
once per call, widen it to float32 in registers and accumulate in float32, so a step over int8
weights reads a quarter of float32's bytes, and never writes a widened copy of a matrix:
- `mv(w, scale, x, out)`: out[r] = scale * (w @ x[r]) for w [out, in]; one row goes through an
  unrolled kernel (four output rows per pass share each x load), several rows (a batched decode
  step, a short prompt chunk) through one that takes four rows of w (in L1) against each pair of
  x's rows, widening each weight once per pair (350M shapes, int8: the matrices of one step take
  ~12 ms for 4 rows, ~44 ms for 16, against ~4-5 ms for one, in-cache timings);
- `dequantize(w, scale, out)`: out = scale * w in float32, for a prompt's GEMM (one matrix at a
  time into one reused buffer, amortised over the prompt's tokens);
- `attend` (one query per head: a decode step) and `prompt_attend` (a prompt's causal attention:
  per head and block of queries, an online softmax over blocks of keys, each query over only the
  keys it sees, with a polynomial exp LLVM vectorises), float32 over the KV cache.
Stored element types (numba has no float16): int8 (int8 weights, per-row scale), uint16 holding
float16 bits, int16 holding bfloat16 bits; `widen` picks the conversion at compile time (LLVM
emits vcvtph2ps for float16 where the CPU has F16C).  Float16's inf/NaN bit patterns widen to
inf/NaN too.  Measured on this project's 2-core AMD EPYC (350M shapes): 51200x1024 int8 GEMV
~33 GB/s of int8 read, numpy's float32 sgemv on the same shape ~41 GB/s of float32.

Calls are serialised by a lock: numba's parallel loops share one thread pool, which its
workqueue layer (the fallback where TBB is not found) does not let two threads enter.
"""
from __future__ import annotations

import ctypes
import importlib.util
import os
import threading

import numpy as np


def _prefer_tbb() -> None:
    """Make numba's parallel loops run on TBB: its OpenMP layer measured 4-5x slower decode
    steps here beside Paddle's own OpenMP runtime (162-190 ms vs 36-41 ms per 350M step, busy
    machine), its workqueue layer 1.5x.  Paddle's CPU wheel ships libtbb.so.12 (for OpenVINO);
    loading it first lets numba find it.  NUMBA_THREADING_LAYER set by the user wins."""
    spec = importlib.util.find_spec("paddle")
    if spec is not None and spec.origin:
        path = os.path.join(os.path.dirname(spec.origin), "libs", "libtbb.so.12")
        if os.path.isfile(path):
            try:
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            except OSError:
                pass
    if "NUMBA_THREADING_LAYER" not in os.environ:
        from numba import config

        config.THREADING_LAYER_PRIORITY = ["tbb", "workqueue", "omp"]


_prefer_tbb()
import numba as nb  # noqa: E402  (after the threading layer is chosen)
from llvmlite import ir  # noqa: E402
from numba import types  # noqa: E402
from numba.extending import intrinsic, overload  # noqa: E402

_LOCK = threading.Lock()
STORED = {"int8": np.int8, "float16": np.uint16, "bfloat16": np.int16}  # kernel element types


@intrinsic
def _f16_bits_to_f32(typingctx, bits):
    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())
    return types.float32(types.uint16), codegen


@intrinsic
def _bf16_bits_to_f32(typingctx, bits):
    def codegen(context, builder, signature, args):
        wide = builder.shl(builder.zext(args[0], ir.IntType(32)), ir.Constant(ir.IntType(32), 16))
        return builder.bitcast(wide, ir.FloatType())
    return types.float32(types.int16), codegen


def widen(value):  # pragma: no cover - replaced by the overload inside numba
    raise NotImplementedError


@overload(widen, inline="always")
def _widen(value):
    if value == types.float32:  # float32 weights of a batched decode step (rows_times)
        return lambda value: value
    if value == types.int8:
        return lambda value: np.float32(value)
    if value == types.uint16:
        return lambda value: _f16_bits_to_f32(value)
    if value == types.int16:
        return lambda value: _bf16_bits_to_f32(value)
    return None


@nb.njit(inline="always", fastmath=True)
def _four_outputs(w, scale, xr, o, out, r):  # pragma: no cover - compiled
    """out[r, o:o+4] = scale * (w[o:o+4] @ xr): four rows of w share each load of xr."""
    a0 = np.float32(0)
    a1 = np.float32(0)
    a2 = np.float32(0)
    a3 = np.float32(0)
    for i in range(w.shape[1]):
        u = xr[i]
        a0 += widen(w[o, i]) * u
        a1 += widen(w[o + 1, i]) * u
        a2 += widen(w[o + 2, i]) * u
        a3 += widen(w[o + 3, i]) * u
    out[r, o] = a0 * scale[o]
    out[r, o + 1] = a1 * scale[o + 1]
    out[r, o + 2] = a2 * scale[o + 2]
    out[r, o + 3] = a3 * scale[o + 3]


@nb.njit(inline="always", fastmath=True)
def _last_outputs(w, scale, x, o, out):  # pragma: no cover - compiled
    """Outputs o.. to the end (fewer than four) for every row of x."""
    for j in range(o, w.shape[0]):
        for r in range(x.shape[0]):
            a = np.float32(0)
            for i in range(w.shape[1]):
                a += widen(w[j, i]) * x[r, i]
            out[r, j] = a * scale[j]


@nb.njit(parallel=True, fastmath=True, cache=True)
def _mv_one(w, scale, x, out):
    """out[0, o] = scale[o] * sum_i w[o, i] * x[0, i]; four rows of w per pass."""
    n_out = w.shape[0]
    for b in nb.prange((n_out + 3) // 4):
        o = b * 4
        if o + 4 <= n_out:
            _four_outputs(w, scale, x[0], o, out, 0)
        else:
            _last_outputs(w, scale, x, o, out)


@nb.njit(parallel=True, fastmath=True, cache=True)
def _mv_pairs(w, scale, x, out):
    """Several rows of x: four rows of w (in L1) at a time against every pair of x's rows, each
    weight widened once per pair; w is read from memory once."""
    n_out, n_in = w.shape
    rows = x.shape[0]
    for b in nb.prange((n_out + 3) // 4):
        o = b * 4
        if o + 4 > n_out:
            _last_outputs(w, scale, x, o, out)
            continue
        for r in range(0, rows - 1, 2):
            x0 = x[r]
            x1 = x[r + 1]
            a00 = np.float32(0)
            a01 = np.float32(0)
            a02 = np.float32(0)
            a03 = np.float32(0)
            a10 = np.float32(0)
            a11 = np.float32(0)
            a12 = np.float32(0)
            a13 = np.float32(0)
            for i in range(n_in):
                w0 = widen(w[o, i])
                w1 = widen(w[o + 1, i])
                w2 = widen(w[o + 2, i])
                w3 = widen(w[o + 3, i])
                u = x0[i]
                v = x1[i]
                a00 += w0 * u
                a01 += w1 * u
                a02 += w2 * u
                a03 += w3 * u
                a10 += w0 * v
                a11 += w1 * v
                a12 += w2 * v
                a13 += w3 * v
            out[r, o] = a00 * scale[o]
            out[r, o + 1] = a01 * scale[o + 1]
            out[r, o + 2] = a02 * scale[o + 2]
            out[r, o + 3] = a03 * scale[o + 3]
            out[r + 1, o] = a10 * scale[o]
            out[r + 1, o + 1] = a11 * scale[o + 1]
            out[r + 1, o + 2] = a12 * scale[o + 2]
            out[r + 1, o + 3] = a13 * scale[o + 3]
        if rows % 2:
            _four_outputs(w, scale, x[rows - 1], o, out, rows - 1)


@nb.njit(parallel=True, fastmath=True, cache=True)
def _dequantize(w, scale, out):
    n_out, n_in = w.shape
    for o in nb.prange(n_out):
        s = scale[o]
        src = w[o]
        dst = out[o]
        for i in range(n_in):
            dst[i] = widen(src[i]) * s


def _check(w: np.ndarray, scale: np.ndarray) -> None:
    if w.ndim != 2 or not w.flags.c_contiguous or w.dtype not in STORED.values():
        raise ValueError(f"kernel weight must be a C-contiguous 2-D int8/uint16/int16 array, "
                         f"not {w.dtype} {w.shape}")
    if scale.shape != (w.shape[0],) or scale.dtype != np.float32:
        raise ValueError(f"kernel scale must be float32 [{w.shape[0]}], not {scale.dtype} "
                         f"{scale.shape}")


def mv(w: np.ndarray, scale: np.ndarray, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """(x @ w.T) * scale, [rows, out] float32, for w [out, in] stored narrow and x [rows, in]."""
    _check(w, scale)
    x = np.ascontiguousarray(x, np.float32)
    if x.ndim != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"mv: x is {x.shape}, w is {w.shape}")
    if out is None:
        out = np.empty((x.shape[0], w.shape[0]), np.float32)
    with _LOCK:
        (_mv_one if x.shape[0] == 1 else _mv_pairs)(w, scale, x, out)
    return out


_ONES: dict[int, np.ndarray] = {}


def rows_times(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """x @ w.T [rows, out] for a float32 w stored [out, in]: one row through the four-output
    kernel, several through the pairs kernel, which reads w once for all rows where OpenBLAS's
    GEMM first packs (copies) all of w.  Measured on this project's 2-core machine (TBB layer):
    one row as fast as numpy's sgemv (20 [4096, 1024]: 9.1 vs 10.4 ms; [51200, 1024]: 4.7 vs
    4.7); 8 rows 1.3-1.9x one GEMV against 2.6-3.8x for OpenBLAS's GEMM, 16 rows 3.1x
    against 4.8-5.1x."""
    if w.dtype != np.float32 or w.ndim != 2 or not w.flags.c_contiguous:
        raise ValueError(f"rows_times needs a C-contiguous float32 matrix, not {w.dtype} {w.shape}")
    ones = _ONES.get(w.shape[0])
    if ones is None:
        ones = _ONES[w.shape[0]] = np.ones(w.shape[0], np.float32)
    x = np.ascontiguousarray(x, np.float32)
    if x.ndim != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"rows_times: x is {x.shape}, w is {w.shape}")
    out = np.empty((x.shape[0], w.shape[0]), np.float32)
    with _LOCK:
        (_mv_one if x.shape[0] == 1 else _mv_pairs)(w, ones, x, out)
    return out


def dequantize(w: np.ndarray, scale: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out[...] = w * scale[:, None] in float32 (out: C-contiguous, w's shape)."""
    _check(w, scale)
    if out.shape != w.shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"dequantize: out is {out.dtype} {out.shape}, needs float32 {w.shape}")
    with _LOCK:
        _dequantize(w, scale, out)
    return out


@nb.njit(parallel=True, fastmath=True, cache=True)
def _quantize_rows(x, q, scale):
    rows, n = x.shape
    for r in nb.prange(rows):
        m = np.float32(0)
        for i in range(n):
            m = max(m, abs(x[r, i]))
        s = m / np.float32(127)
        scale[r] = s
        inv = np.float32(1) / s if s > 0 else np.float32(0)
        for i in range(n):
            q[r, i] = np.int8(np.rint(x[r, i] * inv))


@nb.njit(parallel=True, fastmath=True, cache=True)
def _rescale(c, row_scale, col_scale, out):
    rows, n = c.shape
    for r in nb.prange(rows):
        s = row_scale[r]
        for j in range(n):
            out[r, j] = np.float32(c[r, j]) * (s * col_scale[j])


def quantize_rows(x: np.ndarray, q: np.ndarray, scale: np.ndarray) -> None:
    """Per row of float32 x: scale = max|x| / 127, q = rint(x / scale) (int8, same shape)."""
    with _LOCK:
        _quantize_rows(x, q, scale)


def rescale(c: np.ndarray, row_scale: np.ndarray, col_scale: np.ndarray, out: np.ndarray) -> None:
    """out = c (int32) * row_scale[:, None] * col_scale[None, :], in float32."""
    with _LOCK:
        _rescale(c, row_scale, col_scale, out)


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
    with _LOCK:
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
    with _LOCK:
        if t == 1:  # one query (a one-token chunk): the decode step's kernel, no padding row
            _attend_heads(np.ascontiguousarray(q[0]), keys, values, int(pos) + 1,
                          out.reshape(heads, dim))
        else:
            _prompt_attend(q, keys, values, int(pos), QUERY_BLOCK, KEY_BLOCK, out)
    return out
