"""Writing outputs so that they appear only when complete.

A converted model is built in a temporary directory next to the destination and renamed into place
at the end (:func:`staging_dir`); a single file in an existing directory goes through a temporary
name and ``os.replace`` (:func:`atomic_write_bytes`); both are :mod:`engine.atomic`'s, with
cgconvert's error type.  Weight files are written piece by piece
from lazy producers (:class:`OutTensor`), a worker thread producing the next pieces while one is
written, so a conversion holds a few pieces at a time, not the whole model.
"""
from __future__ import annotations

import collections
import importlib.util
import json
import math
import os
import pickle
import queue
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Callable, Iterator

import numpy as np

from engine import atomic
from engine.dtypes import NUMPY_TO_SAFETENSORS
from engine.weights import NAME_TABLE

from .errors import OutputError
from .tensors import PANEL_BYTES

FORMATS = {"safetensors": "model.safetensors", "pdparams": "model_state.pdparams"}
WRITE_BLOCK = 16 << 20  # big single writes were slower here
# The unit a producer hands the writer (see OutTensor.pieces).  4 MiB measured ~30% faster than 8
# or 16 MiB here, probably because the pieces in flight then stay in cache between transpose and write.
PIECE_BYTES = 4 << 20
PIECES_AHEAD = 2  # pieces produced in a worker thread while one is written
CHECKS_BEHIND = 8  # checksum parts the checker thread may lag before the writer waits for it
WRITEBACK_BYTES = 32 << 20  # ask the kernel to start writing to disk after each this many bytes
_ST_NAMES = NUMPY_TO_SAFETENSORS


class Scratch:
    """What producing one piece may use: reusable memory, and a thread for checksums.

    Each piece in flight gets its own Scratch (they rotate), so a buffer is not refilled before the
    writer has written it; memory once touched stays mapped, so refilling it costs no page faults.
    `panel` is scratch for :func:`~convert.tensors.transpose_into`; `verify(fn)` runs `fn` (a
    checksum part, raising on a mismatch) in a checker thread, in the order given, overlapping the
    producing and writing; the writer takes its errors and waits for all of them before the file ends.
    """

    def __init__(self, panel: np.ndarray, verify: Callable[[Callable[[], None]], None]):
        self.panel = panel  # shared: one worker thread uses it, one piece at a time
        self.verify = verify
        self._buffer = np.empty(0, np.uint8)

    def buffer(self, nbytes: int) -> np.ndarray:
        """`nbytes` bytes (uint8) valid until this Scratch's next piece."""
        if len(self._buffer) < nbytes:
            self._buffer = np.empty(max(nbytes, PIECE_BYTES), np.uint8)
        return self._buffer[:nbytes]


Piece = Callable[[Scratch], np.ndarray]


@dataclass(frozen=True)
class OutTensor:
    """A tensor to write: declared name, shape and numpy dtype, and how to produce its data.

    `produce` returns the whole array.  `pieces`, where given, returns the same bytes as a list of
    consecutive pieces, each a C-contiguous array (often a view of the source file, or written into
    the scratch buffer it is passed), produced in order by one worker thread; writing goes through it
    when present.
    """

    name: str
    shape: tuple[int, ...]
    np_dtype: str  # "uint16" stands for bfloat16 (Paddle's convention)
    produce: Callable[[], np.ndarray]
    pieces: Callable[[], list[Piece]] | None = None

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.np_dtype).itemsize


def _produced(t: OutTensor) -> np.ndarray:
    arr = t.produce()
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    if tuple(arr.shape) != t.shape or arr.dtype.name != t.np_dtype:
        raise AssertionError(f"{t.name}: produced {arr.shape} {arr.dtype}, declared {t.shape} "
                             f"{t.np_dtype}")
    return arr


def _jobs(tensors: list[OutTensor]) -> Iterator[tuple[OutTensor, Piece, bool]]:
    for t in tensors:
        pieces = t.pieces() if t.pieces is not None else [lambda _, t=t: _produced(t)]
        for i, piece in enumerate(pieces):
            yield t, piece, i == len(pieces) - 1


def _produce_ahead(tensors: list[OutTensor], ahead: int = PIECES_AHEAD
                   ) -> Iterator[tuple[OutTensor, np.ndarray, bool]]:
    """Every tensor's data as pieces, in order, each with whether it ends its tensor.

    The next `ahead` pieces are produced in a worker thread while one is written, and checksums run
    in a third: reading, CRC, casting and transposing (numpy, zlib and file reads release the GIL)
    overlap the writing.  Piece k is produced into Scratch k mod (ahead + 1); it is submitted only
    once piece k - ahead - 1, the last user of that Scratch, has been written.  The consumer must
    exhaust the iterator: its end waits for the last checksums (and raises a mismatch).
    """
    panel = np.empty(PANEL_BYTES, np.uint8)
    checks: collections.deque = collections.deque()
    checker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cgconvert-check")

    def verify(fn: Callable[[], None]) -> None:
        checks.append(checker.submit(fn))

    def take_checks(keep: int) -> None:
        while checks and (len(checks) > keep or checks[0].done()):
            checks.popleft().result()

    scratch = [Scratch(panel, verify) for _ in range(ahead + 1)]
    jobs = _jobs(tensors)
    pending: collections.deque = collections.deque()
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cgconvert-produce")

    def submit(k: int) -> None:
        job = next(jobs, None)
        if job is not None:
            t, piece, last = job
            pending.append((t, last, pool.submit(piece, scratch[k % len(scratch)])))

    try:
        for k in range(ahead):
            submit(k)
        k = 0
        while pending:
            t, last, future = pending.popleft()
            arr = future.result()
            take_checks(CHECKS_BEHIND)
            submit(k + ahead)
            yield t, arr, last
            del arr
            k += 1
        take_checks(0)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        checker.shutdown(wait=True, cancel_futures=True)


def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """Linux's sync_file_range(2) through ctypes, or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_SYNC_FILE_RANGE_WRITE = 2


class EarlyWriteback:
    """A file's ``write``, which also has the kernel start writing the data to disk as it goes.

    Every WRITEBACK_BYTES, a thread of its own asks for the bytes written so far to go to disk
    (``sync_file_range(..., SYNC_FILE_RANGE_WRITE)``: start, don't wait), so the disk works while
    the conversion computes and the final fsync waits for the tail only instead of the whole file.
    Only a hint: the fsync still makes the file durable; where the call is missing nothing is done.
    """

    def __init__(self, f: IO[bytes]):
        self._f = f
        self._pos = self._started = 0
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = None
        sync_file_range = _sync_file_range()
        if sync_file_range is not None:
            self._thread = threading.Thread(target=self._run, args=(sync_file_range, f.fileno()),
                                            name="cgconvert-writeback", daemon=True)
            self._thread.start()

    def _run(self, sync_file_range: Callable[[int, int, int, int], int], fd: int) -> None:
        while (job := self._queue.get()) is not None:
            sync_file_range(fd, job[0], job[1], _SYNC_FILE_RANGE_WRITE)  # errors: fsync reports

    def write(self, data) -> int:
        n = self._f.write(data)
        self._pos += n
        if self._thread is not None and self._pos - self._started >= WRITEBACK_BYTES:
            self._queue.put((self._started, self._pos - self._started))
            self._started = self._pos
        return n

    def __enter__(self) -> "EarlyWriteback":
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()


def _write_array(f: IO[bytes], arr: np.ndarray) -> int:
    view = memoryview(arr.reshape(-1).view(np.uint8))
    for start in range(0, len(view), WRITE_BLOCK):
        f.write(view[start:start + WRITE_BLOCK])
    return len(view)


def _check_size(t: OutTensor, written: int) -> None:
    if written != t.nbytes:
        raise AssertionError(f"{t.name}: produced {written} bytes, declared {t.nbytes}")


def staging_dir(dst: Path):
    """A new directory built in a hidden temporary one next to `dst` (see engine.atomic)."""
    return atomic.staging_dir(dst, OutputError)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same directory, then rename."""
    atomic.atomic_write_bytes(path, data, OutputError)


def json_bytes(data: dict) -> bytes:
    return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def write_safetensors_stream(path: Path, tensors: list[OutTensor],
                             metadata: dict[str, str] | None = None) -> None:
    """A safetensors file (metadata format "np", as PaddleNLP needs), a few pieces in memory at a time."""
    header: dict = {"__metadata__": {"format": "np", **(metadata or {})}}
    offset = 0
    for t in tensors:
        header[t.name] = {"dtype": _ST_NAMES[t.np_dtype], "shape": list(t.shape),
                          "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        with EarlyWriteback(f) as out:
            out.write(len(raw).to_bytes(8, "little"))
            out.write(raw)
            written = 0
            for t, arr, last in _produce_ahead(tensors):
                written += _write_array(out, arr)
                del arr
                if last:
                    _check_size(t, written)
                    written = 0
        f.flush()
        os.fsync(f.fileno())


class _Lazy:
    """Stands for a tensor in the state dict."""

    __slots__ = ("tensor",)

    def __init__(self, tensor: OutTensor):
        self.tensor = tensor


class _RawBytes(_Lazy):
    """Stands for a tensor's raw bytes (the last item of its BUILD state)."""

    __slots__ = ()


# numpy's own reconstructor, as ndarray.__reduce__ names it (numpy.core.multiarray._reconstruct)
_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(0))[0]


def _pristine_pickle():
    """A private copy of the standard pickle module: dill (which PaddleNLP imports) replaces
    entries of ``pickle._Pickler.dispatch`` (dict, type, ...) with its own, and a file written
    through them names dill's functions, which our reader rightly refuses."""
    spec = importlib.util.spec_from_file_location("_cgw_pristine_pickle", pickle.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_PICKLE = _pristine_pickle()


class _StreamPickler(_PICKLE._Pickler):  # the pure-Python Pickler: it lets a type write raw opcodes
    """Pickles the state dict, each `_Lazy` as numpy pickles an ndarray for protocol 4.

    numpy's ``__reduce__`` is ``_reconstruct(ndarray, (0,), b"b")`` then BUILD with
    ``(1, shape, dtype, False, <raw bytes>)``; it makes the raw bytes with ``tobytes()``, a full
    copy of each array.  Here the same opcodes are written, but the raw bytes go from the produced
    pieces straight to the file.  Byte for byte what ``pickle.dump(state, f, protocol=4)`` writes
    for the arrays in fast mode (tested).  No memo (fast mode), so nothing is kept alive.
    """

    dispatch = dict(_PICKLE._Pickler.dispatch)

    def __init__(self, f: IO[bytes], tensors: list[OutTensor]):
        super().__init__(f, protocol=4)
        self.fast = True
        self._file = f
        self._pieces = _produce_ahead(tensors)

    def _save_array(self, obj: _Lazy) -> None:
        t = obj.tensor
        shape = tuple(int(d) for d in t.shape)
        self.save_reduce(_RECONSTRUCT, (np.ndarray, (0,), b"b"),
                         (1, shape, np.dtype(t.np_dtype), False, _RawBytes(t)), obj=obj)

    def _tensor_pieces(self, t: OutTensor) -> Iterator[np.ndarray]:
        written = 0
        for got, arr, last in self._pieces:
            assert got is t, "tensors are pickled in list order"
            written += arr.nbytes
            yield arr
            if last:
                _check_size(t, written)
                return
        raise AssertionError(f"{t.name}: no data produced")

    def _save_raw(self, obj: _RawBytes) -> None:
        t = obj.tensor
        n = t.nbytes
        if n < self.framer._FRAME_SIZE_TARGET:  # small: inside the frame, as save_bytes does
            self.save_bytes(b"".join(a.tobytes() for a in self._tensor_pieces(t)))
            return
        # As save_bytes does for a large object: end the frame, then the header and the data
        header = (pickle.BINBYTES8 + n.to_bytes(8, "little") if n > 0xFFFFFFFF else
                  pickle.BINBYTES + n.to_bytes(4, "little"))
        self._write_large_bytes(header, b"")
        for arr in self._tensor_pieces(t):
            _write_array(self._file, arr)

    dispatch[_Lazy] = _save_array
    dispatch[_RawBytes] = _save_raw


def write_pdparams_stream(path: Path, tensors: list[OutTensor]) -> None:
    """What ``paddle.save(state_dict)`` writes (protocol 4, name table), a few pieces at a time."""
    state: dict = {t.name: _Lazy(t) for t in tensors}
    state[NAME_TABLE] = {t.name: t.name for t in tensors}
    with open(path, "wb") as f:
        with EarlyWriteback(f) as out:
            pickler = _StreamPickler(out, tensors)
            try:
                pickler.dump(state)
                if next(pickler._pieces, None) is not None:  # its end waits for the last checksums
                    raise AssertionError("more pieces than tensors")
            finally:
                pickler._pieces.close()  # on an error: stops the producer and checker threads
        f.flush()
        os.fsync(f.fileno())


def write_weights(model_dir: Path, tensors: list[OutTensor], fmt: str) -> Path:
    path = model_dir / FORMATS[fmt]
    if fmt == "safetensors":
        write_safetensors_stream(path, tensors)
    else:
        write_pdparams_stream(path, tensors)
    return path
