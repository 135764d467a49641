"""One decode step on CPU in numpy, over the fast model's own weight and KV-cache memory.

A decode step is 1 token against 1.4 GB of weights (350M, float32): matrix-vector products
bound by memory bandwidth.  On this project's CPU machines Paddle's CPU matrix-vector product
reads at ~20 GB/s whatever the call (2-D/3-D matmul, F.linear, mv, transposed weights, einsum,
oneDNN, 1-2 threads), where numpy's OpenBLAS, and the compiled kernels of engine/cpu_kernels.py
that every step's matrices go through, read the same arrays at ~27-40 GB/s; and each Paddle
eager op costs ~20-50 us of dispatch against numpy's few.  So on CPU, in float32, the fast model
runs its decode steps here: the same mathematics as `FastCodeGen._forward` for one position, on
zero-copy numpy views of the Paddle tensors (weights read-only, KV cache written in place), so
prefill (Paddle) and decode (numpy) share one cache and no weight is held twice.

Attention here reads only the keys written so far (not the cache's whole capacity with a mask),
one compiled call per row over its cache viewed as [heads, capacity, head_dim].
"""
from __future__ import annotations

import ctypes
import math

import numpy as np

from .cpu_attention import attend
from .cpu_kernels import rows_times
from .quant import PackedMatrix

_GELU_C = math.sqrt(2.0 / math.pi)


def readonly_view(tensor) -> np.ndarray:
    """A read-only numpy view of a contiguous CPU Paddle tensor (no copy)."""
    return np.from_dlpack(tensor)


def writable_view(tensor) -> np.ndarray:
    """A writable numpy view of a contiguous CPU float32 Paddle tensor's memory (no copy).

    DLPack views are read-only; the KV cache must be written, so this maps the tensor's
    buffer directly.  The view does not keep the tensor alive: use it only while the
    tensor is referenced (the cache passed to `decode` holds it for the whole step).
    """
    if not (tensor.is_contiguous() and str(tensor.dtype) == "paddle.float32"
            and tensor.place.is_cpu_place()):
        raise ValueError(f"a numpy view needs a contiguous float32 CPU tensor, not {tensor.dtype} "
                         f"on {tensor.place} (contiguous: {tensor.is_contiguous()})")
    shape = tuple(tensor.shape)
    count = math.prod(shape)
    buf = (ctypes.c_float * count).from_address(tensor.data_ptr())
    return np.frombuffer(buf, dtype=np.float32, count=count).reshape(shape)


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    # ufunc reductions directly: ndarray.mean's Python wrapper costs more than the math here
    inv_n = np.float32(1.0 / x.shape[-1])
    centred = x - np.add.reduce(x, axis=-1, keepdims=True) * inv_n
    var = np.add.reduce(centred * centred, axis=-1, keepdims=True) * inv_n
    centred *= 1.0 / np.sqrt(var + np.float32(eps))
    centred *= w
    centred += b
    return centred


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU, tanh form (CodeGen's gelu_new), in place on `x`."""
    inner = x * x
    inner *= np.float32(0.044715)
    inner += 1.0
    inner *= x
    inner *= np.float32(_GELU_C)
    np.tanh(inner, out=inner)
    inner += 1.0
    inner *= 0.5
    x *= inner
    return x


def _mv(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """x @ w.T [rows, out] for w stored [out, in] (every matrix of the fast model is).

    Every decode step's matrices go through cpu_kernels on numba's TBB pool, which also runs
    the rows' attention: one row as fast as OpenBLAS's sgemv, several rows reading each weight
    once for all of them (1.1-1.6x one row at 8 rows, where OpenBLAS's GEMM packs a copy of
    the weight first and costs 2.4-6x).  One pool for the whole step: a step that switched
    between OpenBLAS's threads and TBB's for every matrix ran 1.3-1.6x slower, each pool's
    waiting threads spinning on the cores the other needed (this project's 2-core machine, 8
    rows of 350M: 104-131 ms a step, against 75-81 on one pool)."""
    if isinstance(w, PackedMatrix):  # int8/float16/bfloat16: reads w once (engine/cpu_kernels.py)
        return w.mv(x)
    return rows_times(w, x)


def _view(tensor):
    """A numpy view of a weight tensor; a PackedMatrix is numpy already."""
    return tensor if isinstance(tensor, PackedMatrix) else readonly_view(tensor)


class NumpyDecoder:
    """Decode steps for a float32 FastCodeGen on CPU (see the module docstring)."""

    def __init__(self, model):
        a = model.config.arch
        self.n_head, self.head_dim, self.half = model.n_head, a.head_dim, a.rotary_dim // 2
        self.eps = model.eps
        self.reduce = model.reduce  # tensor parallel: all-reduce of a numpy array (None: one rank)
        self.vocab = model.vocab  # tensor parallel: this rank's vocabulary rows (None: all)
        self.bounds = tuple(model.qkv_bounds[1:4])  # ends of qkv_w's r1, r2 and pass rows
        names = ("ln_w", "ln_b", "qkv_w", "out_w", "fc_in_w", "fc_in_b", "fc_out_w", "fc_out_b")
        self.layers = [tuple(_view(getattr(layer, name)) for name in names)
                       for layer in model.layers]
        self.wte = _view(model.wte)
        self.ln_f = (readonly_view(model.ln_f_w), readonly_view(model.ln_f_b))
        self.lm = (_view(model.lm_w), readonly_view(model.lm_b))
        # cos/sin per position laid out like r1/r2's rows (q heads, then k heads)
        reps = 2 * self.n_head
        self.cos = np.ascontiguousarray(np.tile(readonly_view(model.cos), reps))
        self.sin = np.ascontiguousarray(np.tile(readonly_view(model.sin), reps))
        self._views: dict[tuple[int, tuple[int, ...]], np.ndarray] = {}

    def _cache_view(self, tensor) -> np.ndarray:
        """One sequence's cache tensor [1, heads, capacity, dim] as [heads, capacity, dim]."""
        key = (tensor.data_ptr(), tuple(tensor.shape))
        view = self._views.get(key)
        if view is None:
            if len(self._views) > 4096:  # old caches' views; rebuilt on demand
                self._views.clear()
            _, heads, capacity, dim = key[1]
            view = self._views[key] = writable_view(tensor).reshape(heads, capacity, dim)
        return view

    def step(self, tokens: np.ndarray, caches) -> np.ndarray:
        """Logits [rows, vocab] for `tokens` [rows], row r at position caches[r].length (each
        its own); writes each cache there.  Every matrix is read once for all rows; attention
        runs per row over its own cache."""
        rows, heads, dim, half = len(tokens), self.n_head, self.head_dim, self.half
        rot, rot2, qk_end = self.bounds
        positions = np.fromiter((c.length for c in caches), np.int64, rows)
        ids, inside = (tokens, None) if self.vocab is None else self.vocab.local_ids(tokens)
        x = self.wte.widened(ids) if isinstance(self.wte, PackedMatrix) \
            else self.wte[ids]  # [rows, embd], a copy
        if self.vocab is not None:  # zeros for the other ranks' ids, summed over the ranks
            x = self.vocab.embedding(x, inside)
        cos, sin = self.cos[positions], self.sin[positions]  # [rows, 2 * heads * half]
        reduce = self.reduce
        for i, (ln_w, ln_b, qkv_w, out_w, fc_in_w, fc_in_b, fc_out_w, fc_out_b) in enumerate(
                self.layers):
            h = _layer_norm(x, ln_w, ln_b, self.eps)
            y = _mv(qkv_w, h)  # [rows, r1 | r2 | pass | v]
            x1, x2 = y[:, :rot], y[:, rot:rot2]
            parts = [(x1 * cos - x2 * sin).reshape(rows, 2, heads, half),
                     (x2 * cos + x1 * sin).reshape(rows, 2, heads, half)]
            if qk_end > rot2:
                parts.append(y[:, rot2:qk_end].reshape(rows, 2, heads, dim - 2 * half))
            qk = np.concatenate(parts, axis=-1)  # [rows, 2, heads, dim]; q pre-scaled
            v = y[:, qk_end:].reshape(rows, heads, dim)
            attn = np.empty((rows, heads, dim), np.float32)
            for r, cache in enumerate(caches):
                k_t, v_t = cache.data[i]
                keys, values = self._cache_view(k_t), self._cache_view(v_t)
                pos = positions[r]
                keys[:, pos] = qk[r, 1]
                values[:, pos] = v[r]
                # one compiled call per row, on the matrices' pool: numpy's einsum took 2x
                # as long for one row at 1,024 positions (12.5 vs 6.3 ms a step)
                attn[r] = attend(qk[r, 0], keys, values, pos + 1)
            up = _mv(fc_in_w, h)
            up += fc_in_b
            mlp = _mv(fc_out_w, _gelu_tanh(up))
            if reduce is None:
                mlp += fc_out_b
                mlp += _mv(out_w, attn.reshape(rows, heads * dim))
            else:  # tensor parallel: one all-reduce of both partial sums, then the bias
                mlp += _mv(out_w, attn.reshape(rows, heads * dim))
                mlp = reduce(mlp)
                mlp += fc_out_b
            x += mlp
        last = _layer_norm(x, *self.ln_f, self.eps)
        logits = _mv(self.lm[0], last)
        logits += self.lm[1]
        return logits if self.vocab is None else self.vocab.logits(logits)
