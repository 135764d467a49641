"""Explicit-vector float32 kernels for the CPU prompt attention, written as LLVM IR (numba
intrinsics called from numba code with addresses and element strides).

Numba's loops leave LLVM's vectoriser to guess: an outer-product GEMM's accumulators go through
memory (it cannot prove the arrays do not alias), and a row loop with a start known only at run
time stayed scalar here (0.44 against 0.13 ns per element).  These kernels say the vectors
outright, 16 float32 lanes (one AVX-512 register; two AVX2 registers elsewhere):
- `gemm_rows(R, ...)`: c[:R, :cols] (+)= A[:R, :k] @ b[:k, :cols] with A read through any two
  strides (a row-major matrix, or one read transposed) and each element broadcast, b's rows and
  c's rows contiguous; R rows times up to four vectors of columns of accumulators stay in
  registers across k.  Measured on this project's 2-core AMD EPYC, one thread, [128, 64] x
  [64, 64]: 221 GFLOP/s, where the same tile in numba's loops ran 5-8;
- `dot_tile(RX, RW)`: c[t, n] = x[t] . w[n] for RX rows of x against RW rows of w, both read
  along their contiguous rows (a weight stored [out, in] needs no transposed copy): RX x RW
  vectors of partial sums across k, each summed across its lanes at the end (cpu_gemm's GEMM);
- `col_max`, `col_rescale`, `col_exp`, `col_scale`: an online softmax's column passes over a [n, cols] block
  (one key per row, one query per column), a vector of queries at a time.
Column counts are multiples of `LANES`; a caller pads its columns.  A cached kernel that inlines
these (cpu_attention's) is recompiled after an edit here: the cache directory is named by a hash
of every kernel source (cpu_kernels.kernel_cache_dir).
"""
from __future__ import annotations

from llvmlite import binding, ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .cpu_kernels import nb  # noqa: F401  (numba, after cpu_kernels chose its threading layer)

LANES = 16
_F32, _I32, _I64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
_VEC, _IVEC = ir.VectorType(_F32, LANES), ir.VectorType(_I32, LANES)
# vectors of columns per register tile: 4 rows x 4 vectors = 16 accumulators fill half of
# AVX-512's 32 registers; AVX2's 16 registers (each vector two of them) take one
WIDE = 4 if binding.get_host_cpu_features().get("avx512f", False) else 1


def _vconst(x: float):
    return ir.Constant(_VEC, [ir.Constant(_F32, float(x))] * LANES)


def _intrinsic_fn(builder, name: str, nargs: int):
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VEC, [_VEC] * nargs),
                                          name)


def _pointer(builder, address):
    return builder.inttoptr(address, _F32.as_pointer())


def _vload(builder, base, index):
    return builder.load(builder.bitcast(builder.gep(base, [index]), _VEC.as_pointer()), align=4)


def _vstore(builder, value, base, index):
    builder.store(value, builder.bitcast(builder.gep(base, [index]), _VEC.as_pointer()), align=4)


def _const(n: int):
    return ir.Constant(_I64, n)


def _tile(builder, rows, sk, b, ldb, k, c, ldc, column, accumulate, width):
    """Emit one register tile: len(rows) rows (pointers into A) x `width` vectors from
    `column` (an IR value), accumulated over k, then stored (added to c where `accumulate`)."""
    fma = _intrinsic_fn(builder, "llvm.fma.v16f32", 3)
    acc = [[cgutils.alloca_once_value(builder, ir.Constant(_VEC, None)) for _ in range(width)]
           for _ in rows]
    splat = ir.Constant(_IVEC, [0] * LANES)
    with cgutils.for_range(builder, k) as loop:
        brow = builder.gep(b, [builder.add(builder.mul(loop.index, ldb), column)])
        bv = [_vload(builder, brow, _const(LANES * v)) for v in range(width)]
        at = builder.mul(loop.index, sk)
        for r, row in enumerate(rows):
            s = builder.load(builder.gep(row, [at]), align=4)
            s = builder.insert_element(ir.Constant(_VEC, ir.Undefined), s, ir.Constant(_I32, 0))
            s = builder.shuffle_vector(s, ir.Constant(_VEC, ir.Undefined), splat)
            for v in range(width):
                builder.store(builder.call(fma, [s, bv[v], builder.load(acc[r][v])]), acc[r][v])
    for r in range(len(rows)):
        crow = builder.gep(c, [builder.add(builder.mul(_const(r), ldc), column)])
        for v in range(width):
            x = builder.load(acc[r][v])
            old = _vload(builder, crow, _const(LANES * v))
            _vstore(builder, builder.select(accumulate, builder.fadd(x, old), x), crow,
                    _const(LANES * v))


def _make_gemm_rows(nrows: int):
    @intrinsic
    def gemm_rows(typingctx, a, sr, sk, b, ldb, k, c, ldc, cols, accumulate):
        """c[r*ldc + j] (+)= sum_{kk<k} a[r*sr + kk*sk] * b[kk*ldb + j] for r < nrows and
        j < cols (a multiple of LANES); addresses in bytes, strides in float32 elements;
        accumulate: add to c instead of overwriting it."""
        sig = types.void(*([types.intp] * 9), types.boolean)

        def codegen(context, builder, signature, args):
            a, sr, sk, b, ldb, k, c, ldc, cols, accumulate = args
            accumulate = builder.trunc(accumulate, ir.IntType(1)) if accumulate.type != \
                ir.IntType(1) else accumulate
            A, B, C = (_pointer(builder, x) for x in (a, b, c))
            rows = [builder.gep(A, [builder.mul(_const(r), sr)]) for r in range(nrows)]
            step = LANES * WIDE
            full = builder.udiv(cols, _const(step))
            with cgutils.for_range(builder, full) as loop:
                _tile(builder, rows, sk, B, ldb, k, C, ldc, builder.mul(loop.index, _const(step)),
                      accumulate, WIDE)
            done = builder.mul(full, _const(step))
            left = builder.udiv(builder.sub(cols, done), _const(LANES))
            for width in range(1, WIDE):
                with builder.if_then(builder.icmp_unsigned("==", left, _const(width))):
                    _tile(builder, rows, sk, B, ldb, k, C, ldc, done, accumulate, width)
            return context.get_dummy_value()
        return sig, codegen
    return gemm_rows


ROW_TILE = 4
_gemm4, _gemm1 = _make_gemm_rows(ROW_TILE), _make_gemm_rows(1)


@nb.njit(inline="always")
def gemm(a, sr, sk, b, ldb, k, c, ldc, m, cols, accumulate):  # pragma: no cover - compiled
    """c[:m, :cols] (+)= A[:m, :k] @ b[:k, :cols], A[r, kk] at a + 4 * (r*sr + kk*sk); the
    arguments as `gemm_rows`'."""
    for r in range(0, m - ROW_TILE + 1, ROW_TILE):
        _gemm4(a + 4 * r * sr, sr, sk, b, ldb, k, c + 4 * r * ldc, ldc, cols, accumulate)
    for r in range(m - m % ROW_TILE, m):
        _gemm1(a + 4 * r * sr, sr, sk, b, ldb, k, c + 4 * r * ldc, ldc, cols, accumulate)


def _make_dot_tile(xrows: int, wrows: int):
    @intrinsic
    def dot_tile(typingctx, x, ldx, w, ldw, k, c, ldc):
        """c[t*ldc + n] = sum_{kk<k} x[t*ldx + kk] * w[n*ldw + kk] for t < xrows, n < wrows;
        k a multiple of LANES; addresses in bytes, strides in float32 elements."""
        sig = types.void(*([types.intp] * 7))

        def codegen(context, builder, signature, args):
            x, ldx, w, ldw, k, c, ldc = args
            X, Wt, C = (_pointer(builder, a) for a in (x, w, c))
            fma = _intrinsic_fn(builder, "llvm.fma.v16f32", 3)
            xr = [builder.gep(X, [builder.mul(_const(t), ldx)]) for t in range(xrows)]
            wr = [builder.gep(Wt, [builder.mul(_const(n), ldw)]) for n in range(wrows)]
            acc = [[cgutils.alloca_once_value(builder, ir.Constant(_VEC, None))
                    for _ in range(wrows)] for _ in range(xrows)]
            with cgutils.for_range(builder, builder.udiv(k, _const(LANES))) as loop:
                at = builder.mul(loop.index, _const(LANES))
                xv = [_vload(builder, row, at) for row in xr]
                wv = [_vload(builder, row, at) for row in wr]
                for t in range(xrows):
                    for n in range(wrows):
                        builder.store(builder.call(fma, [xv[t], wv[n], builder.load(acc[t][n])]),
                                      acc[t][n])
            lanes_sum = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(_F32, [_F32, _VEC]), "llvm.vector.reduce.fadd.v16f32")
            for t in range(xrows):
                crow = builder.gep(C, [builder.mul(_const(t), ldc)])
                for n in range(wrows):
                    total = builder.call(lanes_sum, [ir.Constant(_F32, -0.0), builder.load(acc[t][n])],
                                         fastmath=("reassoc",))
                    builder.store(total, builder.gep(crow, [_const(n)]))
            return context.get_dummy_value()
        return sig, codegen
    return dot_tile


DOT_TILE = 4  # rows of x and of w per register tile: 16 vectors of partial sums
dot4x4, dot1x4, dot4x1, dot1x1 = (_make_dot_tile(a, b) for a, b in ((4, 4), (1, 4), (4, 1), (1, 1)))


def _vexp(builder, x):
    """exp(x) for x <= 0, in plain arithmetic (libm's expf is scalar): 2**n times Cephes'
    expf polynomial of the remainder r = x - n ln2, |r| <= ln2 / 2 (relative error ~3e-7;
    below -87 it is exp(-87) ~ 1.6e-38, still a normal float32)."""
    fmax = _intrinsic_fn(builder, "llvm.maxnum.v16f32", 2)
    floor = _intrinsic_fn(builder, "llvm.floor.v16f32", 1)
    fma = _intrinsic_fn(builder, "llvm.fma.v16f32", 3)
    x = builder.call(fmax, [x, _vconst(-87.0)])
    n = builder.call(floor, [builder.call(fma, [x, _vconst(1.4426950408889634), _vconst(0.5)])])
    r = builder.call(fma, [n, _vconst(-0.6931471805599453), x])
    p = _vconst(1.9875691500e-4)
    for coefficient in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1,
                        5.0000001201e-1):
        p = builder.call(fma, [p, r, _vconst(coefficient)])
    p = builder.call(fma, [p, builder.fmul(r, r), builder.fadd(r, _vconst(1.0))])
    bits = builder.shl(builder.add(builder.fptosi(n, _IVEC), ir.Constant(_IVEC, [127] * LANES)),
                       ir.Constant(_IVEC, [23] * LANES))
    return builder.fmul(p, builder.bitcast(bits, _VEC))


def _columns(builder, c0, cols, body):
    """body(i) for each vector of columns i = c0, c0 + LANES, ... < cols."""
    count = builder.udiv(builder.sub(cols, c0), _const(LANES))
    with cgutils.for_range(builder, count) as loop:
        body(builder.add(c0, builder.mul(loop.index, _const(LANES))))


@intrinsic
def col_max(typingctx, s, ld, n, c0, cols, top, high):
    """high[i] = max(top[i], s[j*ld + i] for j < n), i in [c0, cols)."""
    sig = types.void(*([types.intp] * 7))

    def codegen(context, builder, signature, args):
        s, ld, n, c0, cols, top, high = args
        S, M, H = (_pointer(builder, x) for x in (s, top, high))
        fmax = _intrinsic_fn(builder, "llvm.maxnum.v16f32", 2)

        def body(i):
            m = cgutils.alloca_once_value(builder, _vload(builder, M, i))
            with cgutils.for_range(builder, n) as row:
                x = _vload(builder, S, builder.add(builder.mul(row.index, ld), i))
                builder.store(builder.call(fmax, [builder.load(m), x]), m)
            _vstore(builder, builder.load(m), H, i)
        _columns(builder, c0, cols, body)
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def col_rescale(typingctx, top, high, alpha, total, c0, cols):
    """alpha[i] = exp(top[i] - high[i]), total[i] *= alpha[i], top[i] = high[i] for i in
    [c0, cols): an online softmax moving to a new running max."""
    sig = types.void(*([types.intp] * 6))

    def codegen(context, builder, signature, args):
        top, high, alpha, total, c0, cols = args
        M, H, A, T = (_pointer(builder, x) for x in (top, high, alpha, total))

        def body(i):
            h = _vload(builder, H, i)
            a = _vexp(builder, builder.fsub(_vload(builder, M, i), h))
            _vstore(builder, a, A, i)
            _vstore(builder, builder.fmul(_vload(builder, T, i), a), T, i)
            _vstore(builder, h, M, i)
        _columns(builder, c0, cols, body)
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def col_exp(typingctx, s, ld, n, c0, cols, high, total):
    """s[j*ld + i] = exp(s[j*ld + i] - high[i]) and total[i] += their sum, j < n, i in
    [c0, cols)."""
    sig = types.void(*([types.intp] * 7))

    def codegen(context, builder, signature, args):
        s, ld, n, c0, cols, high, total = args
        S, H, T = (_pointer(builder, x) for x in (s, high, total))

        def body(i):
            h = _vload(builder, H, i)
            t = cgutils.alloca_once_value(builder, _vload(builder, T, i))
            with cgutils.for_range(builder, n) as row:
                at = builder.add(builder.mul(row.index, ld), i)
                e = _vexp(builder, builder.fsub(_vload(builder, S, at), h))
                _vstore(builder, e, S, at)
                builder.store(builder.fadd(builder.load(t), e), t)
            _vstore(builder, builder.load(t), T, i)
        _columns(builder, c0, cols, body)
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def col_scale(typingctx, s, ld, n, c0, cols, alpha):
    """s[j*ld + i] *= alpha[i], j < n, i in [c0, cols)."""
    sig = types.void(*([types.intp] * 6))

    def codegen(context, builder, signature, args):
        s, ld, n, c0, cols, alpha = args
        S, A = _pointer(builder, s), _pointer(builder, alpha)

        def body(i):
            a = _vload(builder, A, i)
            with cgutils.for_range(builder, n) as row:
                at = builder.add(builder.mul(row.index, ld), i)
                _vstore(builder, builder.fmul(_vload(builder, S, at), a), S, at)
        _columns(builder, c0, cols, body)
        return context.get_dummy_value()
    return sig, codegen
