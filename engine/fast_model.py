"""A leaner CodeGen forward in Paddle, behind the same prefill/decode interface.

Same mathematics as PaddleNLP's CodeGenForCausalLM, fewer and cheaper ops:
- qkv columns are reordered once at load into [Q | K | V], heads in order, the
  attention scale folded into Q, and the rotary pairs of Q and K permuted from
  CodeGen's interleaved layout to two halves (a permutation applied to both Q
  and K leaves every q.k product unchanged), so rotary is two slices and a concat;
- one fused GELU (tanh form = gelu_new), one layer_norm per block (parallel block);
- a preallocated KV cache written in place; no per-step mask tensors;
- the vocabulary projection only for the last position.
PaddleNLP's model stays the reference the tests compare against.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .config import ModelConfig
from .runtime import Device, ensure_dygraph, import_paddle

CACHE_BLOCK = 256  # KV-cache capacity grows in steps of this many positions
ATTN_BLOCK = 256  # prompt queries attended together


def _qkv_permutation(n_embd: int, n_head: int, head_dim: int, rotary_dim: int) -> np.ndarray:
    """Column order that turns CodeGen's 4-shard [q|v|k] qkv into [Q|K|V] (half-split rotary)."""
    shard = n_embd // 4  # each of the 4 shards holds n_head/4 whole heads of q, v and k
    q_cols, k_cols, v_cols = [], [], []
    for m in range(4):
        base = m * 3 * shard
        q_cols.append(np.arange(base, base + shard))
        v_cols.append(np.arange(base + shard, base + 2 * shard))
        k_cols.append(np.arange(base + 2 * shard, base + 3 * shard))
    q, k, v = (np.concatenate(c) for c in (q_cols, k_cols, v_cols))
    # within each head: rotary pairs (0,1),(2,3)... -> evens first, then odds
    inner = np.concatenate([np.arange(0, rotary_dim, 2), np.arange(1, rotary_dim, 2),
                            np.arange(rotary_dim, head_dim)])
    heads = (np.arange(n_head)[:, None] * head_dim + inner[None, :]).reshape(-1)
    return np.concatenate([q[heads], k[heads], v])


@dataclass
class _Layer:
    ln_w: object
    ln_b: object
    qkv_w: object
    out_w: object
    fc_in_w: object
    fc_in_b: object
    fc_out_w: object
    fc_out_b: object


class FastCodeGen:
    """CodeGen forward with a preallocated KV cache; `prefill`/`decode` like PaddleCodeGen."""

    def __init__(self, arrays, config: ModelConfig, dtype: str, device: Device):
        """`arrays`: (name, numpy array) pairs in PaddleNLP's layout, in any order; each is
        copied to the device as it comes (the caller may reuse its buffers)."""
        self._paddle = paddle = import_paddle()
        self.config, self.dtype, self.device = config, dtype, device
        a = config.arch
        self.n_head, self.head_dim, self.rot = a.n_head, a.head_dim, a.rotary_dim
        self.eps = config.layer_norm_epsilon
        perm = _qkv_permutation(a.n_embd, a.n_head, a.head_dim, a.rotary_dim)
        scale = np.ones(3 * a.n_embd, np.float32)
        scale[: a.n_embd] = 1.0 / math.sqrt(a.head_dim)
        tensors = {}
        for name, array in arrays:
            if name.endswith("attn.qkv_proj.weight"):
                array = np.asarray(array, np.float32)[:, perm] * scale
            tensors[name] = self._to_device(array)
        self.layers = []
        for i in range(a.n_layer):
            p = f"transformer.h.{i}."
            self.layers.append(_Layer(*(tensors.pop(p + n) for n in (
                "ln_1.weight", "ln_1.bias", "attn.qkv_proj.weight", "attn.out_proj.weight",
                "mlp.fc_in.weight", "mlp.fc_in.bias", "mlp.fc_out.weight", "mlp.fc_out.bias"))))
        self.wte = tensors.pop("transformer.wte.weight")
        self.ln_f_w, self.ln_f_b = tensors.pop("transformer.ln_f.weight"), tensors.pop("transformer.ln_f.bias")
        self.lm_w, self.lm_b = tensors.pop("lm_head.weight"), tensors.pop("lm_head.bias")
        inv = 1.0 / (10000 ** (np.arange(0, self.rot, 2, dtype=np.float64) / self.rot))
        angles = np.arange(a.n_positions, dtype=np.float64)[:, None] * inv[None, :]
        self.sin = self._to_device(np.sin(angles))  # [positions, rotary_dim / 2]
        self.cos = self._to_device(np.cos(angles))
        self._mask_cache: dict[tuple[int, int], object] = {}

    def _to_device(self, array: np.ndarray):
        paddle = self._paddle
        if self.dtype == "bfloat16":
            return paddle.to_tensor(np.asarray(array, np.float32)).astype("bfloat16")
        return paddle.to_tensor(np.ascontiguousarray(array, dtype=self.dtype))

    # ---- pieces -------------------------------------------------------------------------
    def _rotary(self, qk, sin, cos):
        """Rotary on the first `rot` dims of q and k together: qk [B, T, 2, H, D]."""
        half = self.rot // 2
        x1, x2, rest = qk[..., :half], qk[..., half:self.rot], qk[..., self.rot:]
        return self._paddle.concat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], axis=-1)

    def _mask(self, rows: int, first: int, keys: int):
        """Additive mask [rows, keys]: query i (at position first + i) sees keys 0..first+i."""
        key = (rows, first, keys)
        if key not in self._mask_cache:
            at = np.arange(rows)[:, None] + first
            m = np.where(np.arange(keys)[None, :] <= at, 0.0, -np.inf).astype(np.float32)
            if len(self._mask_cache) > 256:
                self._mask_cache.clear()
            self._mask_cache[key] = self._to_device(m)
        return self._mask_cache[key]

    def _attend(self, q, keys, values, pos: int):
        """Causal attention of q [B, H, T, D] (positions pos..) over the cache [B, H, cap, D].

        One token: over the whole capacity with a mask (no copies).  A prompt: in blocks
        of ATTN_BLOCK queries, each over only the keys it can see, which skips the masked
        half of the work and keeps the score tensors small.
        """
        paddle, F = self._paddle, self._paddle.nn.functional
        t, capacity = q.shape[2], keys.shape[2]
        if t == 1:
            scores = paddle.matmul(q, keys, transpose_y=True) + self._mask(1, pos, capacity)
            return paddle.matmul(F.softmax(scores, axis=-1), values)
        out = []
        for i in range(0, t, ATTN_BLOCK):
            rows, seen = min(ATTN_BLOCK, t - i), pos + min(i + ATTN_BLOCK, t)
            scores = paddle.matmul(q[:, :, i:i + rows], keys[:, :, :seen], transpose_y=True)
            scores = scores + self._mask(rows, pos + i, seen)
            out.append(paddle.matmul(F.softmax(scores, axis=-1), values[:, :, :seen]))
        return out[0] if len(out) == 1 else paddle.concat(out, axis=2)

    def _block(self, layer: _Layer, x, kv: list, sincos, pos: int):
        paddle, F = self._paddle, self._paddle.nn.functional
        b, t, e = x.shape
        h = F.layer_norm(x, [e], layer.ln_w, layer.ln_b, self.eps)
        qkv = F.linear(h, layer.qkv_w).reshape([b, t, 3, self.n_head, self.head_dim])
        qk = self._rotary(qkv[:, :, :2], *sincos).transpose([2, 0, 3, 1, 4])  # [2, B, H, T, D]
        keys, values = kv  # [B, H, capacity, D], contiguous: written in place, never copied
        keys[:, :, pos:pos + t] = qk[1]
        values[:, :, pos:pos + t] = qkv[:, :, 2].transpose([0, 2, 1, 3])
        attn = self._attend(qk[0], keys, values, pos).transpose([0, 2, 1, 3]).reshape([b, t, e])
        mlp = F.linear(F.gelu(F.linear(h, layer.fc_in_w, layer.fc_in_b), approximate=True),
                       layer.fc_out_w, layer.fc_out_b)
        return x + F.linear(attn, layer.out_w) + mlp

    def _forward(self, ids: np.ndarray, cache):
        paddle, F = ensure_dygraph(self._paddle), self._paddle.nn.functional
        t = ids.shape[1]
        cache = self._reserve(cache, t)
        kv, pos = cache
        with paddle.no_grad():
            sincos = (self.sin[pos:pos + t].reshape([1, t, 1, 1, -1]),
                      self.cos[pos:pos + t].reshape([1, t, 1, 1, -1]))
            x = F.embedding(paddle.to_tensor(ids, dtype="int64"), self.wte)
            for layer, layer_kv in zip(self.layers, kv):
                x = self._block(layer, x, layer_kv, sincos, pos)
            last = F.layer_norm(x[:, -1], [x.shape[-1]], self.ln_f_w, self.ln_f_b, self.eps)
            logits = F.linear(last, self.lm_w, self.lm_b).astype("float32").numpy()
        return logits, (kv, pos + t)

    def _reserve(self, cache, new: int):
        """Grow the cache (in blocks of CACHE_BLOCK positions) so `new` more tokens fit.

        Attention runs over the whole capacity with a mask, so a block wastes at most
        CACHE_BLOCK - 1 positions of work but no per-step copy is ever made.
        """
        paddle = self._paddle
        kv, pos = cache
        capacity = kv[0][0].shape[2] if kv else 0
        if pos + new <= capacity:
            return cache
        limit = self.config.arch.n_positions
        size = min(limit, -(-(pos + new) // CACHE_BLOCK) * CACHE_BLOCK)
        rows = kv[0][0].shape[0] if kv else 1
        shape = [rows, self.n_head, size, self.head_dim]
        grown = []
        for layer in range(len(self.layers)):
            pair = (paddle.zeros(shape, self.dtype), paddle.zeros(shape, self.dtype))
            if kv and pos:
                pair[0][:, :, :pos] = kv[layer][0][:, :, :pos]
                pair[1][:, :, :pos] = kv[layer][1][:, :, :pos]
            grown.append(pair)
        return grown, pos

    # ---- the engine's model interface ------------------------------------------------------
    supports_prefix_reuse = True

    def prefill(self, ids: list[int], cache=None, start: int = 0):
        """Run `ids[start:]` on top of `cache`, which must hold `ids[:start]` (one row)."""
        if cache is None or start == 0:
            cache, start = ([], 0), 0
        else:
            cache = (cache[0], start)  # positions from `start` on are overwritten
        logits, cache = self._forward(np.asarray([ids[start:]], np.int64), cache)
        return logits[0], cache

    def param_count(self) -> int:
        tensors = [self.wte, self.ln_f_w, self.ln_f_b, self.lm_w, self.lm_b]
        tensors += [t for layer in self.layers for t in vars(layer).values()]
        return sum(int(np.prod(t.shape)) for t in tensors)

    def kv_bytes_per_token(self, rows: int = 1) -> int:
        return self.config.arch.kv_bytes_per_token(self.dtype) * rows

    def cache_nbytes(self, cache) -> int:
        kv, _ = cache
        if not kv:
            return 0
        rows, _, capacity, _ = kv[0][0].shape
        return self.kv_bytes_per_token(rows) * capacity

    def decode(self, tokens: np.ndarray, cache):
        return self._forward(tokens.reshape(-1, 1).astype(np.int64), cache)

    def expand_cache(self, cache, rows: int):
        if rows == 1:
            return cache
        kv, pos = cache
        paddle = self._paddle
        return [(paddle.tile(k, [rows, 1, 1, 1]), paddle.tile(v, [rows, 1, 1, 1]))
                for k, v in kv], pos

    def logits(self, ids: list[int]) -> np.ndarray:
        """Logits for every position (for checks): runs step by step over the cache."""
        first, cache = self.prefill(ids[:1])
        rows = [first]
        for token in ids[1:]:
            out, cache = self.decode(np.asarray([token]), cache)
            rows.append(out[0])
        return np.stack(rows)
