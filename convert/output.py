"""Writing outputs so that they appear only when complete.

A converted model is built in a temporary directory next to the destination and renamed into place
at the end (:func:`staging_dir`); a single file in an existing directory goes through a temporary
name and ``os.replace`` (:func:`atomic_write_bytes`).  Weight files are written tensor by tensor
from lazy producers, so a conversion holds about one tensor at a time, not the whole model.
"""
from __future__ import annotations

import collections
import contextlib
import json
import math
import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Callable, Iterator

import numpy as np

from engine.weights import NAME_TABLE, atomic_write

from .errors import OutputError

FORMATS = {"safetensors": "model.safetensors", "pdparams": "model_state.pdparams"}
WRITE_BLOCK = 16 << 20
PRODUCE_AHEAD = 1  # tensors produced in a worker while one is written (2 measured no faster)
_ST_NAMES = {"float32": "F32", "float16": "F16", "uint16": "U16", "float64": "F64",
             "int64": "I64", "int32": "I32", "int8": "I8", "uint8": "U8", "bool": "BOOL"}


@dataclass(frozen=True)
class OutTensor:
    """A tensor to write: declared name, shape and numpy dtype, and how to produce its data."""

    name: str
    shape: tuple[int, ...]
    np_dtype: str  # "uint16" stands for bfloat16 (Paddle's convention)
    produce: Callable[[], np.ndarray]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.np_dtype).itemsize


def _produced(t: OutTensor) -> np.ndarray:
    arr = np.ascontiguousarray(t.produce())
    if tuple(arr.shape) != t.shape or arr.dtype.name != t.np_dtype:
        raise AssertionError(f"{t.name}: produced {arr.shape} {arr.dtype}, declared {t.shape} "
                             f"{t.np_dtype}")
    return arr


def _produce_ahead(tensors: list[OutTensor], ahead: int = PRODUCE_AHEAD
                   ) -> Iterator[tuple[OutTensor, np.ndarray]]:
    """Each tensor with its data, in order; the next `ahead` are produced in worker threads.

    Reading, CRC, casting and transposing (numpy, zlib and file reads release the GIL) overlap one
    another and the writing, for the price of `ahead` extra tensors in memory.
    """
    with ThreadPoolExecutor(max_workers=ahead, thread_name_prefix="cgconvert-produce") as pool:
        pending = collections.deque(pool.submit(_produced, t) for t in tensors[:ahead])
        for i, t in enumerate(tensors):
            arr = pending.popleft().result()
            if i + ahead < len(tensors):
                pending.append(pool.submit(_produced, tensors[i + ahead]))
            yield t, arr
            del arr


def _write_array(f: IO[bytes], arr: np.ndarray) -> None:
    view = memoryview(arr.reshape(-1).view(np.uint8))
    for start in range(0, len(view), WRITE_BLOCK):  # big single writes were slower here
        f.write(view[start:start + WRITE_BLOCK])


def _os_error(path: Path, exc: OSError) -> OutputError:
    return OutputError(f"{path}: writing failed ({exc.strerror or exc}); check free space and "
                       "permissions (nothing was left half-written)")


@contextlib.contextmanager
def staging_dir(dst: Path) -> Iterator[Path]:
    """Yield a temporary directory next to `dst`; rename it to `dst` on success, remove it on error."""
    if dst.exists():
        raise OutputError(f"{dst}: already exists; choose a new output directory or remove it "
                          "first (nothing was written)")
    parent = dst.parent
    if not parent.is_dir():
        raise OutputError(f"{parent}: no such directory; create it first (nothing was written)")
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".tmp", dir=parent))
    except OSError as e:
        raise OutputError(f"{parent}: cannot create a directory there ({e.strerror}); check its "
                          "permissions (nothing was written)") from None
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        os.rename(tmp, dst)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise _os_error(dst, e) from None
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same directory, then rename."""
    with atomic_write(path, OutputError) as f:
        f.write(data)


def json_bytes(data: dict) -> bytes:
    return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def write_safetensors_stream(path: Path, tensors: list[OutTensor],
                             metadata: dict[str, str] | None = None) -> None:
    """A safetensors file (metadata format "np", as PaddleNLP needs), one tensor in memory at a time."""
    header: dict = {"__metadata__": {"format": "np", **(metadata or {})}}
    offset = 0
    for t in tensors:
        header[t.name] = {"dtype": _ST_NAMES[t.np_dtype], "shape": list(t.shape),
                          "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for _, arr in _produce_ahead(tensors):
            _write_array(f, arr)
        f.flush()
        os.fsync(f.fileno())


class _Lazy:
    __slots__ = ("tensor",)

    def __init__(self, tensor: OutTensor):
        self.tensor = tensor


class _StreamPickler(pickle.Pickler):
    """Pickles each `_Lazy` as the ndarray produced for it; no memo, so nothing is kept alive."""

    def __init__(self, f: IO[bytes], tensors: list[OutTensor]):
        super().__init__(f, protocol=4)
        self.fast = True  # no memo: each array's bytes are freed once written
        self._arrays = _produce_ahead(tensors)

    def reducer_override(self, obj):
        if type(obj) is _Lazy:
            tensor, arr = next(self._arrays)
            assert tensor is obj.tensor, "tensors are pickled in list order"
            return arr.__reduce__()
        return NotImplemented


def write_pdparams_stream(path: Path, tensors: list[OutTensor]) -> None:
    """What ``paddle.save(state_dict)`` writes (protocol 4, name table), one tensor at a time."""
    state: dict = {t.name: _Lazy(t) for t in tensors}
    state[NAME_TABLE] = {t.name: t.name for t in tensors}
    with open(path, "wb") as f:
        _StreamPickler(f, tensors).dump(state)
        f.flush()
        os.fsync(f.fileno())


def write_weights(model_dir: Path, tensors: list[OutTensor], fmt: str) -> Path:
    path = model_dir / FORMATS[fmt]
    if fmt == "safetensors":
        write_safetensors_stream(path, tensors)
    else:
        write_pdparams_stream(path, tensors)
    return path
