"""Lazy source tensors and dtype casts shared by the readers and writers.

A :class:`SourceTensor` knows its name, shape and stored dtype without holding the data;
``load()`` reads it (bfloat16 comes back as its uint16 bit pattern, Paddle's convention), so a
conversion holds at most the converted tensors plus the one being read.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from engine.errors import OptionError

BF16 = "bfloat16"
WEIGHT_DTYPES = ("float32", "float16", BF16)


@dataclass(frozen=True)
class SourceTensor:
    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy name, or "bfloat16" (data as uint16 bits)
    load: Callable[[], np.ndarray]
    origin: str = ""  # the file it comes from, for messages

    @property
    def nbytes(self) -> int:
        size = 1
        for d in self.shape:
            size *= d
        return size * (2 if self.dtype == BF16 else np.dtype(self.dtype).itemsize)


def stored_dtype_name(arr: np.ndarray) -> str:
    """The weight dtype an array stands for (uint16 is Paddle's bfloat16)."""
    return BF16 if arr.dtype == np.uint16 else arr.dtype.name


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round to nearest even, NaN kept NaN (as torch and Paddle do)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    bits = x.view(np.uint32)
    rounded = ((bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))))
               >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        rounded[nan] = ((bits[nan] >> np.uint32(16)) | np.uint32(0x40)).astype(np.uint16)
    return rounded


def check_weight_dtype(dtype: str) -> str:
    if dtype not in WEIGHT_DTYPES:
        raise OptionError(f"unknown dtype {dtype!r}; use one of {', '.join(WEIGHT_DTYPES)}")
    return dtype


def cast_array(arr: np.ndarray, src: str, dst: str) -> np.ndarray:
    """Cast stored data (`src` names it; bf16 as uint16 bits) to `dst`; same dtype is a no-op."""
    if src == dst:
        return arr
    if src == BF16:
        arr = bf16_bits_to_f32(arr)
    if dst == BF16:
        return f32_to_bf16_bits(arr)
    with np.errstate(over="ignore"):
        return arr.astype(dst)


def overflow_count(before: np.ndarray, after: np.ndarray) -> int:
    """Values that were finite before a cast and are infinite after it (float16 range)."""
    if after.dtype != np.float16:
        return 0
    return int(np.count_nonzero(np.isinf(after) & ~np.isinf(before)))


_PANEL = 64


def transpose2d(a: np.ndarray) -> np.ndarray:
    """A C-contiguous transpose, ~4x faster than ``np.ascontiguousarray(a.T)`` on large arrays.

    Column panels of `a` are first copied into a small contiguous buffer (rows of 256 bytes are
    read, not single elements), and the panel, which fits in cache, is then transposed.
    """
    rows, cols = a.shape
    out = np.empty((cols, rows), a.dtype)
    buf = np.empty((rows, min(_PANEL, cols)), a.dtype)
    for j in range(0, cols, _PANEL):
        k = min(_PANEL, cols - j)
        panel = buf[:, :k]
        np.copyto(panel, a[:, j:j + k])
        out[j:j + k] = panel.T
    return out
