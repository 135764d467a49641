"""A leaner CodeGen forward in Paddle, behind the same prefill/decode interface.

Same mathematics as PaddleNLP's CodeGenForCausalLM, fewer and cheaper ops:
- qkv is rearranged once at load into four projections with contiguous outputs (see
  `_projection_columns`), the attention scale folded into q, so rotary is four
  same-shape element-wise ops (Paddle's broadcasting and strided element-wise
  kernels are 20-100x slower on CPU than same-shape contiguous ones);
- weights are stored for the decode step's matrix-vector products (see `_Layer`): every
  matrix [out, in], the four projections as one (one product for a decode step; contiguous
  row blocks, no copy, for a prompt's four products);
- one fused GELU (tanh form = gelu_new), one layer_norm per block (parallel block);
- a preallocated KV cache written in place; no per-step mask tensors;
- the vocabulary projection only for the last position.
PaddleNLP's model stays the reference the tests compare against.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import cpu_gemm
from .config import ModelConfig
from .cpu_decode import NumpyDecoder, readonly_view, writable_view
from .cpu_attention import prompt_attend
from .cpu_attention import warm as warm_attention
from .cpu_kernels import warm as warm_matrices
from .interface import KVCache, Prefill
from .quant import NARROW, Packer, packs
from .runtime import Device, ensure_dygraph, import_paddle

CACHE_BLOCK = 256  # KV-cache capacity grows in steps of this many positions
ATTN_BLOCK = 256  # prompt queries attended together (Paddle's path: GPUs)


def warm_kernels() -> None:
    """The CPU decode, prompt GEMM and prompt-attention kernels, compiled or loaded from
    numba's cache."""
    warm_matrices()
    cpu_gemm.warm()
    warm_attention()


@dataclass
class Paused:
    """A prompt chunk stopped between two layers: the hidden state of its `length` positions
    from `start` after the first `layer` layers (whose KV entries for them are written), so
    a later call can go on from that layer instead of running the chunk again."""

    start: int
    length: int
    layer: int
    x: object  # [1, length, n_embd] tensor

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.x.shape)) * self.x.element_size()


def _projection_columns(n_embd: int, n_head: int, head_dim: int, rotary_dim: int, mp: int = 4):
    """Columns of CodeGen's qkv weight for four projections with contiguous outputs.

    CodeGen's qkv holds 4 shards of [q | v | k] (whole heads each; a tensor-parallel rank of N
    holds 4 / N of them: `mp`, with `n_embd` and `n_head` its part) and rotates
    interleaved pairs (0,1), (2,3)... of the first `rotary_dim` dims of every head.
    We take, for q and k together: the first member of every pair (`r1`), the second
    (`r2`), the dims that do not rotate (`pass`), and v.  Rotary is then four
    element-wise ops on same-shape contiguous tensors, and each head's dims come out
    as [firsts | seconds | pass]: the same permutation for q and k, so every q.k
    product, and so attention, is unchanged.  Returns ({name: columns}, q_columns).
    """
    shard = n_embd // mp
    q_cols, k_cols, v_cols = [], [], []
    for m in range(mp):
        base = m * 3 * shard
        q_cols.append(np.arange(base, base + shard))
        v_cols.append(np.arange(base + shard, base + 2 * shard))
        k_cols.append(np.arange(base + 2 * shard, base + 3 * shard))
    q, k, v = (np.concatenate(c) for c in (q_cols, k_cols, v_cols))
    heads = np.arange(n_head)[:, None] * head_dim

    def pick(inner: np.ndarray) -> np.ndarray:
        within = (heads + inner[None, :]).reshape(-1)
        return np.concatenate([q[within], k[within]])

    cols = {"r1": pick(np.arange(0, rotary_dim, 2)), "r2": pick(np.arange(1, rotary_dim, 2)),
            "pass": pick(np.arange(rotary_dim, head_dim)), "v": v}
    return cols, q


QKV_PARTS = ("r1", "r2", "pass", "v")  # the row blocks of _Layer.qkv_w, in this order
# stored [out, in], transposed from PaddleNLP's [in, out] (qkv_proj is rearranged as well)
TRANSPOSED = ("attn.out_proj.weight", "mlp.fc_in.weight", "mlp.fc_out.weight", "lm_head.weight")


@dataclass
class _Layer:
    """One block's tensors.  Every matrix is stored [out, in], transposed from PaddleNLP's
    [in, out], like the vocabulary projection: one layout for every product.  A decode step of
    several rows reads each [out, in] matrix once for all of them in one compiled kernel on
    the same thread pool as its attention (engine/cpu_decode.py); one row reads it as fast as
    [in, out] (numpy sgemv, 9.3 vs 9.6 ms for 20 [1024 -> 4096]), and a prompt's GEMMs run at
    the same speed either way (Paddle's matmul with transpose_y: 95 vs 97 ms for 4 x
    [512, 1024 -> 4096]; measured on this project's 2-core machine).  The four projections
    are one matrix: one call for a decode step, contiguous row blocks for a prompt's four."""
    ln_w: object
    ln_b: object
    qkv_w: object  # [out, in]: rows r1 | r2 | pass | v (see _projection_columns), q pre-scaled
    out_w: object  # [out, in]
    fc_in_w: object  # [out, in]
    fc_in_b: object
    fc_out_w: object  # [out, in]
    fc_out_b: object
    # views of qkv_w's row blocks (r1, r2, pass or None when rotary_dim == head_dim, v)
    parts: tuple = ()

    def matrices(self) -> list:
        """The tensors that hold memory (not the views in `parts`)."""
        return [self.ln_w, self.ln_b, self.qkv_w, self.out_w, self.fc_in_w, self.fc_in_b,
                self.fc_out_w, self.fc_out_b]


class FastCodeGen:
    """CodeGen forward over per-sequence KV caches: the engine's `Model` (engine/interface.py).

    Under tensor parallelism (`shard=(rank, world)`) it holds one rank's part: the arrays it is
    given are already that rank's slices (its heads' q/k/v columns and out_proj rows, its
    fc_in columns and fc_out rows; engine/tensor_parallel), and `reduce` all-reduces, once per
    layer, the sum of the attention and MLP partial outputs (a Paddle tensor, or a numpy array
    in the CPU decode step) in place across the ranks.  With `vocab` (a
    tensor_parallel.vocab.VocabSplit) the rank holds only its vocabulary rows of the embedding
    and lm_head: lookups are all-reduced, the logits gathered (whole on every rank).
    """

    def __init__(self, arrays, config: ModelConfig, dtype: str, device: Device,
                 compute_dtype: str | None = None, shard: tuple[int, int] = (0, 1),
                 reduce=None, vocab=None):
        """`arrays`: (name, numpy array) pairs in PaddleNLP's layout, in any order; each is
        copied to the device as it comes (the caller may reuse its buffers).  Matrices are
        stored as `dtype`; vectors, activations and the KV cache use `compute_dtype`."""
        self._paddle = import_paddle()
        self.config, self.dtype, self.device = config, dtype, device
        self.compute = compute_dtype or dtype
        self.mixed = self.compute != dtype
        a = config.arch
        self.rank, self.world = shard
        self.reduce, self.vocab = reduce, vocab
        self.n_head, self.head_dim, self.rot = a.n_head // self.world, a.head_dim, a.rotary_dim
        self.eps = config.layer_norm_epsilon
        width = a.n_embd // self.world  # this rank's q (and k, and v) columns
        cols, q_cols = _projection_columns(width, self.n_head, a.head_dim, a.rotary_dim,
                                           4 // self.world)
        scale = np.ones(3 * width, np.float32)
        scale[q_cols] = 1.0 / math.sqrt(a.head_dim)  # attention's scale, folded into q
        order = np.concatenate([cols[part] for part in QKV_PARTS])
        # where qkv_w's row blocks start and end: [0, r1 end, r2 end, pass end, v end]
        self.qkv_bounds = bounds = np.cumsum([0] + [cols[p].size for p in QKV_PARTS]).tolist()
        tensors = {}
        # int8 anywhere, float16/bfloat16 on CPU: matrices packed [out, in] (engine/quant.py)
        pack = Packer(dtype, device, self.compute, order, scale) if packs(dtype, device.kind) else None
        for name, array in arrays:
            if pack is not None and np.ndim(array) == 2:
                tensors[name] = pack(name, array)
                continue
            if name.endswith("attn.qkv_proj.weight"):  # [in, out] -> rows r1 | r2 | pass | v
                array = np.asarray(array, np.float32)
                tensors[name] = self._to_device((array[:, order] * scale[order]).T)
                continue
            matrix = np.ndim(array) == 2
            if name.endswith(TRANSPOSED):
                array = np.asarray(array).T
            tensors[name] = self._to_device(array, None if matrix else self.compute)
        self.layers = []
        for i in range(a.n_layer):
            p = f"transformer.h.{i}."
            layer = _Layer(tensors.pop(p + "ln_1.weight"), tensors.pop(p + "ln_1.bias"),
                           *(tensors.pop(p + n) for n in (
                               "attn.qkv_proj.weight", "attn.out_proj.weight", "mlp.fc_in.weight",
                               "mlp.fc_in.bias", "mlp.fc_out.weight", "mlp.fc_out.bias")))
            layer.parts = tuple(layer.qkv_w[lo:hi] if hi > lo else None
                                for lo, hi in zip(bounds[:-1], bounds[1:]))  # views, no copy
            self.layers.append(layer)
        self.wte = tensors.pop("transformer.wte.weight")
        self.ln_f_w, self.ln_f_b = tensors.pop("transformer.ln_f.weight"), tensors.pop("transformer.ln_f.bias")
        self.lm_w, self.lm_b = tensors.pop("lm_head.weight"), tensors.pop("lm_head.bias")
        inv = 1.0 / (10000 ** (np.arange(0, self.rot, 2, dtype=np.float64) / self.rot))
        angles = np.arange(a.n_positions, dtype=np.float64)[:, None] * inv[None, :]
        self.sin = self._to_device(np.sin(angles), self.compute)  # [positions, rotary_dim / 2]
        self.cos = self._to_device(np.cos(angles), self.compute)
        self._mask_cache: dict[tuple[int, int], object] = {}
        # CPU float32: numpy works on the same memory where Paddle's CPU kernels are slow
        # (decode steps, strided cache writes, the prompt's causal mask; engine/cpu_decode.py)
        self.host = device.kind == "cpu" and self.compute == "float32" and (
            pack is not None or not self.mixed)
        self.numpy_decode = NumpyDecoder(self) if self.host else None
        if self.host:  # compiled now, not in the first request (~10 s on a fresh install)
            warm_kernels()

    def _to_device(self, array: np.ndarray, dtype: str | None = None):
        paddle, dtype = self._paddle, dtype or self.dtype
        if dtype == "bfloat16":
            return paddle.to_tensor(np.ascontiguousarray(array, np.float32)).astype("bfloat16")
        return paddle.to_tensor(np.ascontiguousarray(array, dtype=dtype))

    def _linear(self, x, w, b=None):
        """x @ w.T + b for w stored [out, in] in `dtype`, with x, b and the result in the compute
        dtype."""
        paddle = self._paddle
        if isinstance(w, NARROW):  # packed [out, in] (engine/quant.py)
            y = w.matmul(x)
            if b is not None and self.host:
                writable_view(y)[...] += readonly_view(b)
                return y
            return y if b is None else y + b
        if not self.mixed:
            y = (self._host_gemm(x, w) if self.host and cpu_gemm.fits(
                math.prod(x.shape[:-1]), w.shape) and x.is_contiguous()
                 else paddle.matmul(x, w, transpose_y=True))
            if b is None:
                return y
            if self.host:  # Paddle's CPU broadcast add: 10 ms at [1024, 4096]
                writable_view(y)[...] += readonly_view(b)  # numpy, in place: 1.3 ms
                return y
            return y + b
        if self.device.kind == "cpu":  # no half-precision matmul on CPU: widen the weight
            y = paddle.matmul(x, w.astype(self.compute), transpose_y=True)
        else:  # GPU: half-precision GEMM accumulating in float32 (Paddle's default), widened
            y = paddle.matmul(x.astype(self.dtype), w, transpose_y=True).astype(self.compute)
        return y if b is None else y + b

    def _host_gemm(self, x, w):
        """x @ w.T on the CPU through engine/cpu_gemm (a prompt's large matrices)."""
        out = self._paddle.empty([*x.shape[:-1], w.shape[0]], "float32")
        cpu_gemm.times_transposed(readonly_view(x).reshape(-1, x.shape[-1]), readonly_view(w),
                                  writable_view(out).reshape(-1, w.shape[0]))
        return out

    # ---- pieces -------------------------------------------------------------------------
    def _mask(self, rows: int, first: int, keys: int):
        """Additive mask [rows, keys]: query i (at position first + i) sees keys 0..first+i."""
        key = (rows, first, keys)
        if key not in self._mask_cache:
            at = np.arange(rows)[:, None] + first
            m = np.where(np.arange(keys)[None, :] <= at, 0.0, -np.inf).astype(np.float32)
            if len(self._mask_cache) > 256:
                self._mask_cache.clear()
            self._mask_cache[key] = self._to_device(m, self.compute)
        return self._mask_cache[key]

    def _host_attention(self, qk, v, keys, values, pos: int):
        """CPU float32: write the keys/values into the cache and attend, through numpy views
        of the same memory (Paddle's CPU strided copy runs ~0.4 GB/s: 15 ms per layer at 1024
        tokens for the cache writes alone, numpy's 0.2 ms), in one compiled call over only the
        keys each query sees (engine/cpu_attention.prompt_attend) that reads q where the
        projection put it and writes the [1, T, H * D] the output projection reads."""
        t, heads, dim = qk.shape[1], self.n_head, self.head_dim
        qk_np = readonly_view(qk)  # [1, T, 2, H, D]
        keys_np, values_np = writable_view(keys), writable_view(values)
        keys_np[:, :, pos:pos + t] = qk_np[:, :, 1].transpose(0, 2, 1, 3)
        values_np[:, :, pos:pos + t] = readonly_view(v).reshape(1, t, heads, dim).transpose(
            0, 2, 1, 3)
        out = self._paddle.empty([1, t, heads * dim], "float32")
        prompt_attend(qk_np[0, :, 0], keys_np[0], values_np[0], pos,
                      writable_view(out).reshape(t, heads, dim))
        return out

    def _attend(self, q, keys, values, pos: int):
        """Causal attention of q [1, H, T, D] (positions pos..) over one cache [1, H, cap, D]
        with Paddle's ops (the CPU float32 path is `_host_attention`).

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

    def _sequence_attention(self, qk, v, kv, pos: int):
        """One sequence's rows: write its keys/values at `pos` and attend; [1, T, H * D]."""
        b, t = qk.shape[:2]
        keys, values = kv  # [1, H, capacity, D], contiguous: written in place, never copied
        if self.host:
            return self._host_attention(qk, v, keys, values, pos)
        qk = qk.transpose([2, 0, 3, 1, 4])  # [2, 1, H, T, D]
        keys[:, :, pos:pos + t] = qk[1]
        values[:, :, pos:pos + t] = v.reshape([1, t, self.n_head, self.head_dim]).transpose(
            [0, 2, 1, 3])
        return self._attend(qk[0], keys, values, pos).transpose([0, 2, 1, 3]).reshape([1, t, -1])

    def _block(self, layer: _Layer, x, kv: list, sincos, pos: list[int]):
        """One layer for `x` [rows, T, E]: one sequence's T prompt tokens (rows 1) or one token
        of each of `rows` sequences (T 1); `kv[r]` is row r's (keys, values) of this layer,
        `pos[r]` where its tokens go."""
        paddle, F = self._paddle, self._paddle.nn.functional
        b, t, e = x.shape
        heads, dim, half = self.n_head, self.head_dim, self.rot // 2
        h = F.layer_norm(x, [e], layer.ln_w, layer.ln_b, self.eps)
        cos, sin = sincos
        r1_w, r2_w, pass_w, v_w = layer.parts
        x1, x2 = self._linear(h, r1_w), self._linear(h, r2_w)
        parts = [(x1 * cos - x2 * sin).reshape([b, t, 2, heads, half]),  # [B, T, 2*heads*half]
                 (x2 * cos + x1 * sin).reshape([b, t, 2, heads, half])]
        if pass_w is not None:
            parts.append(self._linear(h, pass_w).reshape(
                [b, t, 2, heads, dim - self.rot]))
        qk = paddle.concat(parts, axis=-1)  # [B, T, 2, H, D]
        v = self._linear(h, v_w)
        if b == 1:
            attn = self._sequence_attention(qk, v, kv[0], pos[0])
        else:  # rows at their own positions, each over its own cache
            attn = paddle.concat([self._sequence_attention(qk[r:r + 1], v[r:r + 1], kv[r], pos[r])
                                  for r in range(b)], axis=0)
        up = F.gelu(self._linear(h, layer.fc_in_w, layer.fc_in_b), approximate=True)
        if self.reduce is None:
            mlp = self._linear(up, layer.fc_out_w, layer.fc_out_b)
            return x + self._linear(attn, layer.out_w) + mlp
        # tensor parallel: this rank's partial sums, one all-reduce, then the shared bias
        partial = self._linear(attn, layer.out_w) + self._linear(
            up, layer.fc_out_w)
        return x + self.reduce(partial) + layer.fc_out_b

    def _sincos(self, positions: np.ndarray, t: int):
        """cos/sin laid out like r1/r2 (q heads, then k heads): [rows, t, ...], no broadcast."""
        paddle = self._paddle
        if len(positions) == 1:
            first = int(positions[0])
            return tuple(paddle.tile(table[first:first + t], [1, 2 * self.n_head]).reshape(
                [1, t, -1]) for table in (self.cos, self.sin))
        index = paddle.to_tensor(positions, dtype="int64")
        return tuple(paddle.tile(paddle.gather(table, index), [1, 2 * self.n_head]).reshape(
            [len(positions), 1, -1]) for table in (self.cos, self.sin))

    def _embed(self, ids: np.ndarray):
        paddle, F = self._paddle, self._paddle.nn.functional
        ids, inside = (ids, None) if self.vocab is None else self.vocab.local_ids(ids)
        ids_t = paddle.to_tensor(ids, dtype="int64")
        x = self.wte.embed(ids_t) if isinstance(self.wte, NARROW) else F.embedding(ids_t, self.wte)
        x = x.astype(self.compute) if self.mixed else x
        return x if self.vocab is None else self.vocab.embedding(x, inside)

    def _head(self, x):
        """Logits [rows, vocab] (numpy float32) of the last position of each row of `x`."""
        F = self._paddle.nn.functional
        last = F.layer_norm(x[:, -1], [x.shape[-1]], self.ln_f_w, self.ln_f_b, self.eps)
        logits = self._linear(last, self.lm_w, self.lm_b).astype("float32")
        return logits.numpy() if self.vocab is None else self.vocab.logits(logits)

    def _reserve(self, cache: KVCache, new: int) -> None:
        """Grow the cache (in blocks of CACHE_BLOCK positions) so `new` more tokens fit, and
        the one after them: a prompt never leaves the first decode step to grow it.

        Attention runs over the whole capacity with a mask, so a block wastes at most
        CACHE_BLOCK - 1 positions of work but no per-step copy is ever made.
        """
        paddle = self._paddle
        limit = self.config.arch.n_positions
        want = min(cache.length + new + 1, limit)
        if want <= cache.capacity:
            return
        size = min(limit, -(-want // CACHE_BLOCK) * CACHE_BLOCK)
        shape = [1, self.n_head, size, self.head_dim]
        # the CPU float32 attention reads only positions < length (its kernels and tests say
        # so), so its cache needs no zero fill: Paddle's CPU fill took 115-530 ms for a 1,024-
        # token 350M cache, more than the prompt's attention; Paddle's masked attention reads
        # the whole capacity, so zeros there
        alloc = paddle.empty if self.host else paddle.zeros
        old, pos = cache.data, cache.length
        grown = [(alloc(shape, self.compute), alloc(shape, self.compute)) for _ in self.layers]
        if old and pos:
            self._copy_positions(old, grown, pos)
        cache.data, cache.capacity = grown, size

    def _copy_positions(self, src: list, dst: list, upto: int) -> None:
        """dst's layers' keys and values at positions [0, upto) = src's (numpy on the host:
        Paddle's CPU strided copy runs ~0.4 GB/s)."""
        for (k, v), (k_new, v_new) in zip(src, dst):
            if self.host:
                writable_view(k_new)[:, :, :upto] = readonly_view(k)[:, :, :upto]
                writable_view(v_new)[:, :, :upto] = readonly_view(v)[:, :, :upto]
            elif upto:
                k_new[:, :, :upto] = k[:, :, :upto]
                v_new[:, :, :upto] = v[:, :, :upto]

    # ---- the engine's model interface (engine/interface.py) -----------------------------------
    def new_cache(self) -> KVCache:
        return KVCache([], self.kv_bytes_per_token(), str(self.device))

    def reserve(self, cache: KVCache, tokens: int) -> None:
        self._reserve(cache, tokens)

    def prefill(self, cache: KVCache, tokens, cancel=None, resume: Paused | None = None) -> Prefill:
        """Run `tokens` at positions cache.length.. (see engine/interface.py); stops between
        two layers once `cancel` is set, returning a `Paused` state to pass back as `resume`
        with the same tokens and cache (None if no layer ran)."""
        paddle = ensure_dygraph(self._paddle)
        ids = np.asarray([list(tokens)], np.int64)
        t, pos = ids.shape[1], cache.length
        capacity = cache.capacity
        self._reserve(cache, t)
        if cache.capacity != capacity or (resume is not None and (resume.start, resume.length)
                                          != (pos, t)):
            resume = None  # a moved cache lost the paused chunk's KV entries
        kv = cache.data
        with paddle.no_grad():
            sincos = self._sincos(np.asarray([pos]), t)
            x, first = (resume.x, resume.layer) if resume is not None else (self._embed(ids), 0)
            for i in range(first, len(self.layers)):
                if cancel is not None and cancel.is_set():
                    return Prefill(None, Paused(pos, t, i, x) if i else None)
                x = self._block(self.layers[i], x, [kv[i]], sincos, [pos])
            logits = self._head(x)[0]
        cache.length = pos + t
        return Prefill(logits)

    def decode(self, tokens: np.ndarray, caches) -> np.ndarray:
        """Logits [rows, vocab]: row i feeds tokens[i] at caches[i].length (each its own)."""
        tokens = np.asarray(tokens, np.int64).reshape(-1)
        for cache in caches:
            self._reserve(cache, 1)
        if self.numpy_decode is not None:
            logits = self.numpy_decode.step(tokens, caches)
        else:
            paddle = ensure_dygraph(self._paddle)
            positions = np.fromiter((c.length for c in caches), np.int64, len(caches))
            with paddle.no_grad():
                x = self._embed(tokens.reshape(-1, 1))
                sincos = self._sincos(positions, 1)
                pos = positions.tolist()
                for i, layer in enumerate(self.layers):
                    x = self._block(layer, x, [c.data[i] for c in caches], sincos, pos)
                logits = self._head(x)
        for cache in caches:
            cache.length += 1
        return logits

    def fork(self, cache: KVCache, upto: int, room: int = 0) -> KVCache:
        """A new cache holding a copy of the first `upto` positions of `cache` (left
        untouched), with capacity for `room` more tokens."""
        fresh = self.new_cache()
        self._reserve(fresh, upto + room)
        self._copy_positions(cache.data, fresh.data, upto)
        fresh.length = upto
        return fresh

    def trim(self, cache: KVCache, length: int) -> None:
        cache.length = min(cache.length, max(0, int(length)))

    def release(self, cache: KVCache) -> None:
        cache.data, cache.capacity, cache.length = [], 0, 0

    def param_count(self) -> int:
        tensors = [self.wte, self.ln_f_w, self.ln_f_b, self.lm_w, self.lm_b]
        tensors += [t for layer in self.layers for t in layer.matrices()]
        return sum(int(np.prod(t.shape)) for t in tensors)

    def kv_bytes_per_token(self) -> int:
        return self.config.arch.kv_bytes_per_token(self.compute) // self.world

    def logits(self, ids: list[int]) -> np.ndarray:
        """Logits for every position (for checks): runs step by step over the cache."""
        cache = self.new_cache()
        rows = [self.prefill(cache, ids[:1]).logits]
        for token in ids[1:]:
            rows.append(self.decode(np.asarray([token]), [cache])[0])
        self.release(cache)
        return np.stack(rows)
