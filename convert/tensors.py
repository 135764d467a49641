"""Lazy source tensors and dtype casts shared by the readers and writers.

A :class:`SourceTensor` knows its name, shape and stored dtype without holding the data;
``load()`` reads it (bfloat16 comes back as its uint16 bit pattern, Paddle's convention), so a
conversion holds at most the converted tensors plus the one being read.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from engine.dtypes import BF16, DTYPE_NAMES, bf16_bits_to_f32, f32_to_bf16_bits, stored_name
from engine.errors import OptionError

from .filemap import CrcCheck

WEIGHT_DTYPES = DTYPE_NAMES


@dataclass(frozen=True)
class SourceTensor:
    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy name, or "bfloat16" (data as uint16 bits)
    load: Callable[[], np.ndarray]
    origin: str = ""  # the file it comes from, for messages
    # Where the reader can, the same data without copying (see MappedData); else None.
    map: Callable[[], MappedData] | None = None

    @property
    def nbytes(self) -> int:
        size = 1
        for d in self.shape:
            size *= d
        return size * (2 if self.dtype == BF16 else np.dtype(self.dtype).itemsize)


@dataclass(frozen=True)
class MappedData:
    """A tensor's stored data viewed in a read-only file mapping (no copy, no fresh memory).

    `array` has the tensor's shape, is C-contiguous and native-endian, in the stored dtype (bf16 as
    uint16).  `crc`, when the format has a checksum (a .bin storage), covers the bytes `array` lies
    in: the consumer must run all its parts (:meth:`CrcCheck.part`), in order, before relying on
    the data.
    """

    array: np.ndarray
    crc: CrcCheck | None = None


def stored_dtype_name(arr: np.ndarray) -> str:
    """The weight dtype an array stands for (uint16 is Paddle's bfloat16)."""
    return stored_name(arr.dtype.name)


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


_PANEL = 64  # columns per panel
_PANEL_ROWS = 2048  # rows per panel, so a panel (512 KiB float32) stays in cache
PANEL_BYTES = _PANEL * _PANEL_ROWS * 8  # scratch for transpose_into, any dtype up to 8 bytes


def transpose_into(a: np.ndarray, out: np.ndarray, panel: np.ndarray | None = None) -> np.ndarray:
    """``out[...] = a.T`` for a 2-D `a` and a C-contiguous `out`, ~4x faster than numpy's own.

    Panels of up to 64 columns x 2048 rows of `a` are first copied into a small contiguous buffer,
    which fits in cache (rows of 256 bytes are read, not single elements), and the panel is then
    transposed into `out`.  `panel` (uint8, at least PANEL_BYTES) lets a caller reuse that buffer.
    """
    rows, cols = a.shape
    if out.shape != (cols, rows) or out.dtype != a.dtype or not out.flags.c_contiguous:
        raise ValueError(f"transpose_into: out is {out.shape} {out.dtype}, needs C-contiguous "
                         f"{(cols, rows)} {a.dtype}")
    need = min(rows, _PANEL_ROWS) * min(cols, _PANEL) * a.dtype.itemsize
    if panel is None:
        panel = np.empty(need, np.uint8)
    panel = panel[:need].view(a.dtype)
    for r0 in range(0, rows, _PANEL_ROWS):
        r1 = min(rows, r0 + _PANEL_ROWS)
        for j in range(0, cols, _PANEL):
            k = min(_PANEL, cols - j)
            block = panel[:(r1 - r0) * k].reshape(r1 - r0, k)
            np.copyto(block, a[r0:r1, j:j + k])
            np.copyto(out[j:j + k, r0:r1], block.T)
    return out


def transpose2d(a: np.ndarray) -> np.ndarray:
    """A new C-contiguous transpose of a 2-D array (see :func:`transpose_into`)."""
    return transpose_into(a, np.empty(a.shape[::-1], a.dtype))
