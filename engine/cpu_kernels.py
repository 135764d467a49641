"""CPU matrix kernels: weights stored narrower than float32, several rows at once (numba).

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
- `rows_times(w, x)`: the same two kernels for a float32 w (every decode step's matrices);
attention is engine/cpu_attention.py's, on the same pool and lock.
Stored element types (numba has no float16): int8 (int8 weights, per-row scale), uint16 holding
float16 bits, int16 holding bfloat16 bits; `widen` picks the conversion at compile time (LLVM
emits vcvtph2ps for float16 where the CPU has F16C).  Float16's inf/NaN bit patterns widen to
inf/NaN too.  Measured on this project's 2-core AMD EPYC (350M shapes): 51200x1024 int8 GEMV
~33 GB/s of int8 read, numpy's float32 sgemv on the same shape ~41 GB/s of float32.

Calls are serialised by a lock (`LOCK`, cpu_attention's too): numba's parallel loops share one
thread pool, which its workqueue layer (the fallback where TBB is not found) does not let two
threads enter.
"""
from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import os
import threading

import numpy as np

# every module whose numba code the cached kernels compile in (cpu_attention's and cpu_gemm's
# inline cpu_vector's)
KERNEL_SOURCES = ("cpu_kernels.py", "cpu_vector.py", "cpu_attention.py", "cpu_gemm.py")


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


def kernel_cache_dir(sources: str = os.path.dirname(os.path.abspath(__file__))) -> str:
    """Where the kernels' compiled code is cached: engine.runtime.user_cache_dir()/numba/<a hash
    of every file in KERNEL_SOURCES under `sources`>.  Numba keys a cached kernel on its own
    file's time stamp alone, so an edit to a module it inlines code from (cpu_vector.py's, in
    cpu_attention's kernel) would otherwise leave the old machine code in use: after a `git
    pull` on an editable install, say.  It also keeps the cache out of a read-only
    site-packages."""
    from .runtime import user_cache_dir

    digest = hashlib.sha256()
    for name in KERNEL_SOURCES:
        with open(os.path.join(sources, name), "rb") as f:
            digest.update(f.read())
    return str(user_cache_dir() / "numba" / digest.hexdigest()[:16])


if not os.environ.get("NUMBA_CACHE_DIR"):  # the user's choice wins
    nb.config.CACHE_DIR = kernel_cache_dir()  # before any kernel is defined: numba reads it then

LOCK = threading.Lock()
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
    return _times(w, scale, x, out, "mv")


def _times(w: np.ndarray, scale: np.ndarray, x, out: np.ndarray | None, caller: str) -> np.ndarray:
    """(x @ w.T) * scale through the one-row or the several-row kernel (w, scale checked)."""
    x = np.ascontiguousarray(x, np.float32)
    if x.ndim != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"{caller}: x is {x.shape}, w is {w.shape}")
    if out is None:
        out = np.empty((x.shape[0], w.shape[0]), np.float32)
    with LOCK:
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
    return _times(w, ones, x, None, "rows_times")


def dequantize(w: np.ndarray, scale: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out[...] = w * scale[:, None] in float32 (out: C-contiguous, w's shape)."""
    _check(w, scale)
    if out.shape != w.shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"dequantize: out is {out.dtype} {out.shape}, needs float32 {w.shape}")
    with LOCK:
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
    with LOCK:
        _quantize_rows(x, q, scale)


def rescale(c: np.ndarray, row_scale: np.ndarray, col_scale: np.ndarray, out: np.ndarray) -> None:
    """out = c (int32) * row_scale[:, None] * col_scale[None, :], in float32."""
    with LOCK:
        _rescale(c, row_scale, col_scale, out)


def warm() -> None:
    """Compile (or load from numba's on-disk cache) the float32 kernels a decode step uses, with
    the argument types the fast model passes (weights are read-only views): a fresh install's
    first completion would otherwise wait ~10 s for the compiler.  Tiny arrays; idempotent."""
    w = np.zeros((4, 8), np.float32)
    w.setflags(write=False)
    for rows in (1, 2):
        rows_times(w, np.zeros((rows, 8), np.float32))
