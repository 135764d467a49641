"""Weights stored narrower than float32: int8 quantisation, its file layout, packed matrices.

int8 weights: each matrix's output channel has one symmetric float32 scale,
``w ~= q * scale`` with ``q = rint(w / scale)`` in [-127, 127] and ``scale = max|w| / 127``.
The KV cache, layer norms, attention and every sum stay float32.  A decode step multiplies
float32 activations by the int8 weights (weight-only, engine/cpu_kernels.py: each weight read
once per step, for 1 or several rows).  A prompt's products on CPU quantise each activation row
to int8 too (one scale per row, as CTranslate2's int8 does) and multiply in oneDNN's int8 GEMM
(exact int32 sums, engine/onednn.py): 4-8x the float32 GEMM's speed here, logits NMSE vs
float32 ~1.4e-3 instead of ~0.7e-3 (350M, random weights, 1,024 tokens); each row is
quantised on its own, so a row's result does not depend on the chunk it is computed in.
Without oneDNN (another Paddle build) a prompt runs weight-only: up to MV_ROWS rows through
the kernels, more through one matrix dequantised into a reused float32 buffer and a GEMM.

On disk (``cgconvert cast --dtype int8``; safetensors or pdparams) a quantised tensor is its
int8 data under its own name, in PaddleNLP's layout, beside ``<name>.scale``, float32, one value
per output channel: Linear weights are ``[in, out]``, so ``<name>.scale`` is ``[out]`` (one per
column); the embedding ``transformer.wte.weight`` ``[vocab, n_embd]`` has one per row
(``[vocab]``).  Layer-norm weights and biases stay float32.  :func:`attach_scales` pairs them
when a file is read; a missing, misshapen or non-finite scale is one error naming the tensor.

In memory (:class:`PackedMatrix`), every matrix is ``[out, in]`` row-major, whatever its
float32 layout in the fast model, so decode reads each row once (engine/cpu_kernels.py).  On CPU,
float16/bfloat16 weights are packed the same way (their bits, scale 1): the kernels widen them in
registers instead of a whole matrix per step.  On a GPU int8 is dequantised one matrix at a time
into a float32 buffer for Paddle's GEMM (Paddle's weight_only_linear needs compute capability
7.0+ and a GPU-specific weight layout; the P40 is 6.1): int8 there saves memory, not time.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .dtypes import f32_to_bf16_bits
from . import onednn
from .errors import WeightFileError

SCALE_SUFFIX = ".scale"
QMAX = 127
EMBEDDING = "transformer.wte.weight"  # quantised per row; every other matrix per column
MV_ROWS = 16  # up to this many rows a prompt chunk goes through the kernels, beyond via a GEMM
_CHUNK = 256  # rows quantised at a time (bounds the float32 temporaries)
# a prompt's int8 GEMM: "int8" (oneDNN, activations quantised per row), "numpy" or "paddle"
# (weight-only: dequantised matrix, float32 GEMM); for measurements, not an option users need
_GEMM = os.environ.get("CGW_INT8_PROMPT_GEMM", "int8")


def output_axis(name: str) -> int:
    """The axis of a stored (PaddleNLP-layout) matrix that its scales run along."""
    return 0 if name == EMBEDDING else 1


def quantize(array, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(int8 data, float32 scales along `axis`) of a 2-D float array; see the module docstring."""
    a = np.asarray(array)
    if axis == 0:
        q, scale = quantize(a.T, 1)
        return np.ascontiguousarray(q.T), scale
    amax = np.zeros(a.shape[1], np.float32)
    for i in range(0, a.shape[0], _CHUNK):
        np.maximum(amax, np.max(np.abs(a[i:i + _CHUNK]), axis=0), out=amax)
    scale = (amax / np.float32(QMAX)).astype(np.float32)
    inv = np.divide(np.float32(1), scale, out=np.zeros_like(scale), where=scale > 0)
    q = np.empty(a.shape, np.int8)
    for i in range(0, a.shape[0], _CHUNK):
        block = np.asarray(a[i:i + _CHUNK], np.float32) * inv
        np.rint(block, out=block)
        np.clip(block, -QMAX, QMAX, out=block)
        q[i:i + _CHUNK] = block
    return q, scale


@dataclass(frozen=True)
class QuantizedArray:
    """A stored int8 tensor with its scales; reads as its float32 value (``np.asarray``)."""

    q: np.ndarray
    scale: np.ndarray
    axis: int

    @property
    def shape(self) -> tuple[int, ...]:
        return self.q.shape

    @property
    def ndim(self) -> int:
        return self.q.ndim

    @property
    def dtype(self):
        return self.q.dtype

    def __array__(self, dtype=None, copy=None):
        s = self.scale[:, None] if self.axis == 0 else self.scale[None, :]
        out = self.q.astype(np.float32) * s
        return out if dtype is None else out.astype(dtype, copy=False)


def attach_scales(weights: dict, path) -> dict:
    """Pair each int8 tensor of a read file with its ``.scale`` (in place; returns `weights`)."""
    scales = {n[:-len(SCALE_SUFFIX)]: weights.pop(n) for n in
              [n for n in weights if n.endswith(SCALE_SUFFIX)]}
    for name, arr in list(weights.items()):
        if getattr(arr, "dtype", None) != np.int8:
            continue
        if arr.ndim != 2:
            raise WeightFileError(f"{path}: {name} is int8 but {arr.ndim}-D; only matrices are "
                                  "quantised, the file is corrupt: cast it again")
        scale = scales.pop(name, None)
        if scale is None:
            raise WeightFileError(f"{path}: {name} is int8 but {name}{SCALE_SUFFIX} is missing; the "
                                  "file is incomplete: cast it again with `cgconvert cast --dtype int8`")
        axis = output_axis(name)
        want = (arr.shape[axis],)
        if scale.dtype != np.float32 or tuple(scale.shape) != want:
            raise WeightFileError(f"{path}: {name}{SCALE_SUFFIX} is {scale.dtype} {list(scale.shape)} "
                                  f"but {name} {list(arr.shape)} needs float32 {list(want)} (one "
                                  "scale per output channel); the file is corrupt: cast it again")
        if not np.all(np.isfinite(scale)) or np.any(scale < 0):
            raise WeightFileError(f"{path}: {name}{SCALE_SUFFIX} holds negative or non-finite values; "
                                  "the file is corrupt: cast it again with `cgconvert cast --dtype int8`")
        weights[name] = QuantizedArray(arr, scale, axis)
    if scales:
        first = next(iter(scales))
        raise WeightFileError(f"{path}: {first}{SCALE_SUFFIX} has no int8 tensor {first} beside it "
                              f"({len(scales)} such scale(s)); the file is corrupt: cast it again")
    return weights


def split_scales(infos: dict) -> tuple[dict, list[str]]:
    """For a file's tensor descriptions (name -> object with .shape and .dtype): the
    descriptions without the `.scale` tensors, and what is wrong with those (as for
    :func:`attach_scales`, from the shapes alone)."""
    rest = {n: i for n, i in infos.items() if not n.endswith(SCALE_SUFFIX)}
    problems = []
    for name, info in rest.items():
        if str(info.dtype) != "int8":
            continue
        scale = infos.get(name + SCALE_SUFFIX)
        want = (info.shape[output_axis(name)],) if len(info.shape) == 2 else None
        if scale is None:
            problems.append(f"{name} is int8 but {name}{SCALE_SUFFIX} is missing")
        elif want is None or str(scale.dtype) != "float32" or tuple(scale.shape) != want:
            problems.append(f"{name}{SCALE_SUFFIX} is {scale.dtype} {list(scale.shape)}, {name} "
                            f"{list(info.shape)} needs float32 {list(want or ())}")
    problems += [f"{n} has no int8 tensor {n[:-len(SCALE_SUFFIX)]} beside it" for n in infos
                 if n.endswith(SCALE_SUFFIX) and str(getattr(
                     rest.get(n[:-len(SCALE_SUFFIX)]), "dtype", "")) != "int8"]
    return rest, problems


class _Scratch:
    """One float32 buffer, reused by every matrix of a model for a prompt's dequantised GEMM."""

    def __init__(self):
        self.buffer = np.empty(0, np.float32)

    tensor = None

    def take_tensor(self, shape):
        from .cpu_decode import writable_view
        from .runtime import import_paddle

        size = shape[0] * shape[1]
        if self.tensor is None or self.tensor.shape[0] < size:
            self.tensor = import_paddle().empty([size], "float32")
        t = self.tensor[:size].reshape(list(shape))
        return t, writable_view(t)

    rows8 = np.empty(0, np.int8)
    quantized = None  # (input tensor, its int8 rows in rows8, their scales): PackedMatrix._int8_gemm

    def take_int8(self, shape: tuple[int, int]) -> np.ndarray:
        """A reused int8 buffer (a prompt's quantised activations; memory once touched stays
        mapped, where a fresh array would fault its pages in at every product)."""
        size = shape[0] * shape[1]
        self.quantized = None  # rows8 is about to be overwritten
        if self.rows8.size < size:
            self.rows8 = np.empty(size, np.int8)
        return self.rows8[:size].reshape(shape)

    def take(self, shape: tuple[int, int]) -> np.ndarray:
        size = shape[0] * shape[1]
        if self.buffer.size < size:
            self.buffer = np.empty(size, np.float32)
        return self.buffer[:size].reshape(shape)


class PackedMatrix:
    """A CPU matrix ``[out, in]`` stored narrow (int8 + scales, or float16/bfloat16 bits).

    `mv(x)`: x @ W.T for numpy rows (decode); `matmul(x)`: the same for a Paddle tensor [..., in]
    (a prompt: int8 x int8 in oneDNN where available, see the module docstring; else up to
    MV_ROWS rows through the kernel, more through one dequantised matrix and a GEMM);
    `embed(ids)`: rows as float32 (the embedding).  Slicing rows gives a view.
    """

    def __init__(self, data: np.ndarray, scale: np.ndarray, dtype: str, scratch: _Scratch):
        self.data, self.scale, self.dtype, self._scratch = data, scale, dtype, scratch

    @property
    def shape(self) -> tuple[int, int]:
        return self.data.shape

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + self.scale.nbytes

    def __getitem__(self, rows: slice) -> "PackedMatrix":
        return PackedMatrix(self.data[rows], self.scale[rows], self.dtype, self._scratch)

    def mv(self, x: np.ndarray) -> np.ndarray:
        from .cpu_kernels import mv
        return mv(self.data, self.scale, x)

    def widened(self, rows=slice(None)) -> np.ndarray:
        """Rows as float32 (numpy)."""
        data, scale = self.data[rows], self.scale[rows]
        if self.dtype == "float16":
            out = data.view(np.float16).astype(np.float32)
        elif self.dtype == "bfloat16":
            out = (data.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            out = data.astype(np.float32)
        out *= scale[..., None]
        return out

    def matmul(self, x):
        """x @ W.T as a new float32 CPU Paddle tensor, for a float32 Paddle tensor x [..., in]."""
        from .cpu_decode import readonly_view, writable_view
        from .cpu_kernels import dequantize, mv
        from .runtime import import_paddle

        paddle = import_paddle()
        if not x.is_contiguous():
            x = x.contiguous()
        n_out, n_in = self.shape
        rows = readonly_view(x).reshape(-1, n_in)
        y = paddle.empty(list(x.shape[:-1]) + [n_out], "float32")
        out = writable_view(y).reshape(-1, n_out)
        if self.dtype == "int8" and _GEMM == "int8" and onednn.available():
            self._int8_gemm(x, rows, out)
        elif len(rows) <= MV_ROWS:
            mv(self.data, self.scale, rows, out)
        elif _GEMM == "paddle":
            w_t, w = self._scratch.take_tensor(self.shape)
            dequantize(self.data, self.scale, w)
            return paddle.matmul(x, w_t, transpose_y=True)
        else:
            w = dequantize(self.data, self.scale, self._scratch.take(self.shape))
            np.matmul(rows, w.T, out=out)
        return y

    def _int8_gemm(self, x, rows: np.ndarray, out: np.ndarray) -> None:
        """out = rows @ W.T with the rows quantised to int8 too (one scale per row), the
        products summed exactly in int32 by oneDNN, then scaled to float32.  The quantised
        rows of the last input tensor `x` are kept (the model's scratch holds x itself, so
        the identity check cannot meet a new tensor at the same address): a layer's input
        goes to the four q/k/v row blocks and fc_in one after another and is quantised once
        instead of five times (quantising took 0.11 s of a 1.6 s int8 350M prefill of 1,024
        tokens before; the whole prefill's gain was within the noise).  A tensor
        passed here must not change in place afterwards; the fast model never does that."""
        from .cpu_kernels import quantize_rows, rescale

        memo = self._scratch.quantized
        if memo is not None and memo[0] is x and memo[1].shape == rows.shape:
            q, row_scale = memo[1], memo[2]
        else:
            q = self._scratch.take_int8(rows.shape)
            row_scale = np.empty(len(rows), np.float32)
            quantize_rows(rows, q, row_scale)
            self._scratch.quantized = (x, q, row_scale)
        sums = out.view(np.int32)  # the int32 sums land in out's memory, scaled there in place
        onednn.gemm_s8s8s32(q, self.data, sums)
        rescale(sums, row_scale, self.scale, out)

    def embed(self, ids):
        """Embedding rows for a Paddle int64 tensor of ids, as a float32 Paddle tensor."""
        from .runtime import import_paddle

        idx = np.asarray(ids.numpy())
        return import_paddle().to_tensor(self.widened(idx.reshape(-1)).reshape(*idx.shape, -1))


class DeviceInt8Matrix:
    """A GPU int8 matrix ``[out, in]`` + scales: dequantised into the compute dtype per call."""

    def __init__(self, data, scale, compute: str):
        self.data, self.scale, self.compute, self.dtype = data, scale, compute, "int8"

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.data.shape)

    def __getitem__(self, rows: slice) -> "DeviceInt8Matrix":
        return DeviceInt8Matrix(self.data[rows], self.scale[rows], self.compute)

    def _weight(self):
        return self.data.astype(self.compute) * self.scale.astype(self.compute).unsqueeze(1)

    def matmul(self, x):
        from .runtime import import_paddle

        return import_paddle().matmul(x, self._weight(), transpose_y=True)

    def embed(self, ids):
        from .runtime import import_paddle

        paddle = import_paddle()
        rows = paddle.gather(self.data, ids.reshape([-1])).astype(self.compute)
        rows = rows * paddle.gather(self.scale, ids.reshape([-1])).astype(self.compute).unsqueeze(1)
        return rows.reshape(list(ids.shape) + [self.data.shape[1]])


NARROW = (PackedMatrix, DeviceInt8Matrix)


def packs(dtype: str, device_kind: str) -> bool:
    """Whether a model with weights `dtype` on this device keeps its matrices packed."""
    return dtype == "int8" or (device_kind == "cpu" and dtype in ("float16", "bfloat16"))


class Packer:
    """Turns each stored matrix into a packed [out, in] matrix for one model.

    `qkv_order`/`qkv_scale`: the fast model's column order of qkv and the factor folded into each
    column (attention's scale on q).  int8 is quantised in the stored layout first and then
    reordered, the factor going into the scales, so a tensor quantised by `cgconvert cast` and one
    quantised at load give the same values."""

    def __init__(self, dtype: str, device, compute: str, qkv_order: np.ndarray,
                 qkv_scale: np.ndarray):
        self.dtype, self.device, self.compute = dtype, device, compute
        self.order, self.factor = qkv_order, qkv_scale
        self.scratch = _Scratch()

    def __call__(self, name: str, array):
        axis = output_axis(name)
        qkv = name.endswith("attn.qkv_proj.weight")
        if self.dtype == "int8":
            q, scale = ((array.q, array.scale) if isinstance(array, QuantizedArray)
                        else quantize(array, axis))
            if qkv:
                q, scale = q[:, self.order], scale[self.order] * self.factor[self.order]
            data = q if axis == 0 else q.T
            return self._make(np.ascontiguousarray(data), np.ascontiguousarray(scale, np.float32))
        a = np.asarray(array, np.float32)
        if qkv:
            a = a[:, self.order] * self.factor[self.order]
        a = a if axis == 0 else a.T
        bits = (np.ascontiguousarray(a, np.float16).view(np.uint16) if self.dtype == "float16"
                else f32_to_bf16_bits(a).view(np.int16))
        return self._make(bits, np.ones(a.shape[0], np.float32))

    def _make(self, data: np.ndarray, scale: np.ndarray):
        if self.device.kind == "cpu":
            return PackedMatrix(data, scale, self.dtype, self.scratch)
        from .runtime import import_paddle

        paddle = import_paddle()
        return DeviceInt8Matrix(paddle.to_tensor(data), paddle.to_tensor(scale), self.compute)
