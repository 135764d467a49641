"""Zero-copy, read-only views of byte ranges of weight files, and checksums computed piecewise.

A conversion copies most bytes unchanged or transposed; reading them through a read-only ``mmap``
instead of into fresh arrays saves a copy and the page faults of new memory.  The range is checked
against the file's size *before* the mapping is made, so a truncated file gives a clear
:class:`WeightFileError` instead of a SIGBUS on access.  Each range gets its own mapping, released
when the last view of it is gone, so mapped pages do not pile up in the process's memory.
"""
from __future__ import annotations

import mmap
import os
import zlib
from pathlib import Path

import numpy as np

from engine.errors import WeightFileError


def map_range(path: Path, offset: int, nbytes: int, truncated: str) -> np.ndarray:
    """A read-only uint8 view of ``nbytes`` bytes at ``offset`` of `path`.

    `truncated` is the message (after "<path>: ") when the file is too short for the range.
    """
    if nbytes == 0:
        empty = np.empty(0, np.uint8)
        empty.flags.writeable = False
        return empty
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size < offset + nbytes:
                raise WeightFileError(f"{path}: {truncated}")
            mm = mmap.mmap(f.fileno(), offset + nbytes - start, offset=start, access=mmap.ACCESS_READ)
    except OSError as e:
        raise WeightFileError(f"{path}: cannot read ({e.strerror or e}); check its permissions") from None
    return np.frombuffer(mm, np.uint8, count=nbytes, offset=offset - start)


class CrcCheck:
    """The CRC-32 of `data` (a zip member) against `expected`, computed in parts, in order.

    The parts let the check run alongside the copying instead of before it; the conversion's output
    only appears when complete, so a mismatch found at the last part still leaves nothing behind.
    """

    def __init__(self, data: np.ndarray, expected: int, error: str):
        self.data = memoryview(data).cast("B")
        self.expected = expected
        self.error = error
        self.crc = 0
        self.done = 0

    def part(self, i: int, n: int) -> None:
        """Checksum the `i`-th of `n` equal parts (call each once, in order); the last compares."""
        start, end = len(self.data) * i // n, len(self.data) * (i + 1) // n
        if start != self.done:
            raise AssertionError(f"CRC parts out of order: {start} after {self.done}")
        self.crc = zlib.crc32(self.data[start:end], self.crc)
        self.done = end
        if i == n - 1:
            self.data = memoryview(b"")  # let the mapping go
            if self.crc != self.expected:
                raise WeightFileError(self.error)
