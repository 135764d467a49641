"""One decode step on CPU in numpy, over the fast model's own weight and KV-cache memory.

A decode step is 1 token against 1.4 GB of weights (350M, float32): matrix-vector products
bound by memory bandwidth.  On this project's CPU machines Paddle's CPU matrix-vector product
reads at ~20 GB/s whatever the call (2-D/3-D matmul, F.linear, mv, transposed weights, einsum,
oneDNN, 1-2 threads), where numpy's OpenBLAS reads the same arrays at ~27 GB/s; and each Paddle
eager op costs ~20-50 us of dispatch against numpy's few.  So on CPU, in float32, the fast model
runs its decode steps here: the same mathematics as `FastCodeGen._forward` for one position, on
zero-copy numpy views of the Paddle tensors (weights read-only, KV cache written in place), so
prefill (Paddle) and decode (numpy) share one cache and no weight is held twice.

Attention here reads only the keys written so far (not the cache's whole capacity with a mask).
"""
from __future__ import annotations

import ctypes
import math

import numpy as np

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


class NumpyDecoder:
    """Decode steps for a float32 FastCodeGen on CPU (see the module docstring)."""

    def __init__(self, model):
        a = model.config.arch
        self.n_head, self.head_dim, self.half = a.n_head, a.head_dim, a.rotary_dim // 2
        self.eps = model.eps
        self.layers = [{name: (readonly_view(t) if t is not None else None)
                        for name, t in vars(layer).items()} for layer in model.layers]
        self.wte = readonly_view(model.wte)
        self.ln_f = (readonly_view(model.ln_f_w), readonly_view(model.ln_f_b))
        self.lm = (readonly_view(model.lm_w), readonly_view(model.lm_b))
        # cos/sin per position laid out like r1/r2's columns (q heads, then k heads)
        reps = 2 * self.n_head
        self.cos = np.ascontiguousarray(np.tile(readonly_view(model.cos), reps))
        self.sin = np.ascontiguousarray(np.tile(readonly_view(model.sin), reps))
        self._views: dict[tuple[int, tuple[int, ...]], np.ndarray] = {}

    def _cache_view(self, tensor) -> np.ndarray:
        key = (tensor.data_ptr(), tuple(tensor.shape))
        view = self._views.get(key)
        if view is None:
            if len(self._views) > 1024:  # old caches' views; rebuilt on demand
                self._views.clear()
            view = self._views[key] = writable_view(tensor)
        return view

    def step(self, tokens: np.ndarray, kv: list, pos: int) -> np.ndarray:
        """Logits [rows, vocab] for `tokens` [rows] at position `pos`; writes the cache there."""
        rows, heads, dim, half = len(tokens), self.n_head, self.head_dim, self.half
        x = self.wte[tokens]  # [rows, embd], a copy
        cos, sin = self.cos[pos], self.sin[pos]
        seen = pos + 1
        for layer, (k_t, v_t) in zip(self.layers, kv):
            keys, values = self._cache_view(k_t), self._cache_view(v_t)
            h = _layer_norm(x, layer["ln_w"], layer["ln_b"], self.eps)
            x1, x2 = h @ layer["r1_w"], h @ layer["r2_w"]  # [rows, 2 * heads * half]
            parts = [(x1 * cos - x2 * sin).reshape(rows, 2, heads, half),
                     (x2 * cos + x1 * sin).reshape(rows, 2, heads, half)]
            if layer["pass_w"] is not None:
                parts.append((h @ layer["pass_w"]).reshape(rows, 2, heads, dim - 2 * half))
            qk = np.concatenate(parts, axis=-1)  # [rows, 2, heads, dim]; q pre-scaled
            keys[:, :, pos] = qk[:, 1]
            values[:, :, pos] = (h @ layer["v_w"]).reshape(rows, heads, dim)
            # scores [rows, heads, seen] = keys . q, then softmax, then the values they weight
            scores = np.matmul(keys[:, :, :seen], qk[:, 0, :, :, None])[..., 0]
            scores -= scores.max(axis=-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=-1, keepdims=True)
            attn = np.matmul(scores[:, :, None, :], values[:, :, :seen])  # [rows, heads, 1, dim]
            up = h @ layer["fc_in_w"]
            up += layer["fc_in_b"]
            mlp = _gelu_tanh(up) @ layer["fc_out_w"]
            mlp += layer["fc_out_b"]
            mlp += attn.reshape(rows, heads * dim) @ layer["out_w"]
            x += mlp
        last = _layer_norm(x, *self.ln_f, self.eps)
        logits = last @ self.lm[0]
        logits += self.lm[1]
        return logits
