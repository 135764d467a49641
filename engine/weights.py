"""Safe reading and atomic writing of weight files (``.pdparams`` and ``.safetensors``).

Writes go through :mod:`engine.atomic` (a temporary name, then rename).

Nothing in a weight file is ever executed: pickles go through an allow-list unpickler (numpy array
reconstruction, ``OrderedDict``, ``tuple``, latin-1 bytes; no fallback), safetensors are parsed by hand.

``paddle.save(state_dict)`` pickles a dict of plain numpy arrays plus a ``"StructuredToParameterName@@"``
name table (dropped here); Paddle's generic pickler (non-state_dict objects) writes each tensor as
``tuple((param_name, ndarray))`` (taken as the array).  With protocol 2/3, arrays over ~1 GiB are
flattened and split into ``"<key>@@.0"``, ``"<key>@@.1"``... listed in ``"UnpackBigParamInfor@@"`` as
``{key: {"OriginShape": shape, "slices": [names]}}``; they are joined back here.

bfloat16: numpy has none.  Paddle stores bf16 as its uint16 bit pattern (a uint16 array in pdparams,
safetensors dtype ``"U16"`` from PaddleNLP ``save_pretrained``) and ``paddle.load`` turns uint16 back
into bf16.  So the readers return uint16 pdparams arrays and ``"U16"``/``"BF16"`` safetensors tensors
widened exactly to float32 (bits << 16); :func:`describe_weights` reports them as ``"bfloat16"``.
"""
from __future__ import annotations

import json
import math
import os
import pickle
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

from .atomic import atomic_write
from .dtypes import (BF16_CODES, NUMPY_TO_SAFETENSORS, SAFETENSORS_TO_NUMPY, bf16_bits_to_f32,
                     stored_name)
from .errors import WeightFileError

PathLike = Union[str, "os.PathLike[str]"]
NAME_TABLE = "StructuredToParameterName@@"
SPLIT_TABLE = "UnpackBigParamInfor@@"
_MAX_HEADER = 100 * 1024 * 1024  # the safetensors format's own limit
_ST_DTYPES = SAFETENSORS_TO_NUMPY
_NP_TO_ST = NUMPY_TO_SAFETENSORS


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape and stored dtype (numpy-style name, or ``"bfloat16"``) of one tensor."""

    name: str
    shape: tuple[int, ...]
    dtype: str


class RefusedPickle(Exception):
    """Raised inside an allow-list unpickler for anything outside the allow-list."""



def _latin1_encode(text: Any, encoding: Any = "latin1") -> bytes:
    """Stand-in for ``_codecs.encode``, which protocol 2 uses for bytes: latin-1 text only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise RefusedPickle(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin-1")


_RECONSTRUCT = np.zeros(0).__reduce__()[0]  # numpy's own pickling helpers, without importing names
_SCALAR = np.float32(0).__reduce__()[0]
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.multiarray", "scalar"): _SCALAR,
    ("numpy._core.multiarray", "scalar"): _SCALAR,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "tuple"): tuple,
    ("__builtin__", "tuple"): tuple,  # protocol 2 writes Python 2 names
}


class AllowListUnpickler(pickle.Unpickler):
    """Resolves only the globals in the subclass's ``allowed`` table; imports nothing.

    Anything else raises :class:`RefusedPickle` naming it.  Used for Paddle's
    ``.pdparams`` here and for PyTorch's ``.bin`` in cgconvert."""

    allowed: dict[tuple[str, str], Any] = {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise RefusedPickle(f"{module}.{name}") from None


class _StrictUnpickler(AllowListUnpickler):
    """Paddle's state dicts: numpy arrays, OrderedDict, tuples."""

    allowed = _ALLOWED

    def persistent_load(self, pid: Any) -> Any:
        raise RefusedPickle("a persistent (external) object")


def _human(n: int) -> str:
    return f"{n} bytes" if n < 1024 * 1024 else f"{n / 2**20:.1f} MB"


def _file_size(path: Path) -> int:
    if not path.is_file():
        raise WeightFileError(f"{path}: weight file not found (or not a file); check the path")
    if not os.access(path, os.R_OK):
        raise WeightFileError(f"{path}: permission denied; make the file readable (chmod a+r)")
    return path.stat().st_size


_bf16_to_f32 = bf16_bits_to_f32


def _unpickle(path: Path) -> Any:
    size = _file_size(path)
    if size == 0:
        raise WeightFileError(f"{path}: file is empty; copy the file again")
    with open(path, "rb") as f:
        head = f.read(4)
        if head[:1] != b"\x80":
            raise WeightFileError(f"{path}: not a .pdparams file (a Paddle pickle starts with byte 0x80,"
                                  f" this one with {head!r}); check the file name and format")
        f.seek(0)
        try:
            obj = _StrictUnpickler(f, encoding="latin1").load()
        except RefusedPickle as e:
            raise WeightFileError(f"{path}: refusing to load: the pickle asks for {e}; "
                                  "this file is not a plain weight file") from None
        except Exception as e:  # any decoding failure means a damaged file
            if isinstance(e, EOFError) or "truncated" in str(e):
                raise WeightFileError(f"{path}: file is truncated (read {_human(size)} of a pickle "
                                      "that is not complete); copy the file again") from None
            raise WeightFileError(f"{path}: file is corrupt ({type(e).__name__}: {e}); "
                                  "copy the file again") from None
        if f.read(1):
            raise WeightFileError(f"{path}: unexpected bytes after the end of the pickle; "
                                  "the file is corrupt, copy it again")
    return obj


def _join_split(tensors: dict[str, np.ndarray], table: Any, path: Path) -> None:
    """Reassemble Paddle's ``name@@.N`` slices in place (mirrors ``_pack_loaded_dict``)."""
    if not isinstance(table, dict):
        raise WeightFileError(f"{path}: {SPLIT_TABLE} is a {type(table).__name__}, not a dict; "
                              "the file is corrupt, copy it again")
    for key, info in table.items():
        try:
            shape = tuple(int(d) for d in info["OriginShape"])
            parts = [tensors.pop(n).reshape(-1) for n in info["slices"]]
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise WeightFileError(f"{path}: split tensor {key!r} is incomplete or malformed "
                                  f"({type(e).__name__}: {e}); the file is corrupt, copy it again") from None
        if not parts or len({p.dtype for p in parts}) != 1:
            raise WeightFileError(f"{path}: split tensor {key!r} has no slices or mixed dtypes; "
                                  "the file is corrupt, copy it again")
        joined = np.concatenate(parts)
        if joined.size != math.prod(shape):
            raise WeightFileError(f"{path}: split tensor {key!r} has {joined.size} elements, its shape "
                                  f"{shape} needs {math.prod(shape)}; the file is corrupt, copy it again")
        tensors[str(key)] = joined.reshape(shape)


def read_pdparams_raw(path: Path) -> dict[str, np.ndarray]:
    """Arrays as stored (bf16 still uint16), name table dropped, split tensors joined."""
    obj = _unpickle(path)
    if not isinstance(obj, dict):
        raise WeightFileError(f"{path}: holds a {type(obj).__name__}, not a dict of tensors; "
                              "save model.state_dict() with paddle.save")
    obj = dict(obj)
    obj.pop(NAME_TABLE, None)
    split = obj.pop(SPLIT_TABLE, None)
    out: dict[str, np.ndarray] = {}
    for key, value in obj.items():
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
            value = value[1]  # Paddle's generic pickler: (param_name, ndarray)
        if not isinstance(key, str) or not isinstance(value, np.ndarray):
            raise WeightFileError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor; "
                                  "this is not a plain state_dict (save model.state_dict())")
        out[key] = value
    if split is not None:
        _join_split(out, split, path)
    for key, arr in out.items():
        if arr.dtype.kind not in "biuf":
            raise WeightFileError(f"{path}: tensor {key!r} has dtype {arr.dtype}, which is not a "
                                  "numeric weight dtype; this is not a plain weight file")
        if not arr.dtype.isnative:
            out[key] = arr.astype(arr.dtype.newbyteorder("="))
    return out


def read_pdparams(path: PathLike) -> dict[str, np.ndarray]:
    """Read a ``paddle.save`` state_dict safely; uint16 (Paddle's bf16) comes back as float32."""
    raw = read_pdparams_raw(Path(path))
    return {k: _bf16_to_f32(v) if v.dtype == np.uint16 else v for k, v in raw.items()}


def safetensors_header(path: Path) -> tuple[dict[str, Any], dict[str, tuple[str, tuple[int, ...], int]], int]:
    """Validate a safetensors header: (metadata, {name: (dtype, shape, begin)}, data start)."""
    size = _file_size(path)
    if size < 8:
        raise WeightFileError(f"{path}: file is truncated ({size} bytes; a safetensors file starts "
                              "with an 8-byte header length); copy the file again")
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n > _MAX_HEADER:
            raise WeightFileError(f"{path}: header length {n} is not plausible; "
                                  "this is not a safetensors file")
        if 8 + n > size:
            raise WeightFileError(f"{path}: file is truncated (header needs {8 + n} bytes, the file "
                                  f"has {size}); copy the file again")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except ValueError:  # includes UnicodeDecodeError
        raise WeightFileError(f"{path}: header is not valid JSON; this is not a safetensors file "
                              "or it is corrupt, copy it again") from None
    if not isinstance(header, dict):
        raise WeightFileError(f"{path}: header is not a JSON object; the file is corrupt, copy it again")
    meta = header.pop("__metadata__", None) or {}
    data_len = size - 8 - n
    entries: dict[str, tuple[str, tuple[int, ...], int]] = {}
    for name, e in header.items():
        try:
            dt, shape, (begin, end) = e["dtype"], tuple(e["shape"]), e["data_offsets"]
            ok = isinstance(dt, str) and all(type(x) is int and x >= 0 for x in (*shape, begin, end))
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise WeightFileError(f"{path}: header entry {name!r} is malformed (needs dtype, shape and "
                                  "data_offsets of non-negative integers); the file is corrupt")
        if dt not in _ST_DTYPES:
            raise WeightFileError(f"{path}: tensor {name!r} has unsupported dtype {dt!r} (known: "
                                  f"{', '.join(_ST_DTYPES)}); convert the file to F32, F16 or BF16")
        nbytes = math.prod(shape) * np.dtype(_ST_DTYPES[dt]).itemsize
        if end - begin != nbytes:
            raise WeightFileError(f"{path}: tensor {name!r} has data_offsets [{begin}, {end}] but shape "
                                  f"{list(shape)} {dt} needs {nbytes} bytes; the file is corrupt")
        if end > data_len:
            raise WeightFileError(f"{path}: tensor {name!r} ends at data byte {end} but the file has "
                                  f"{data_len} data bytes (truncated, or offsets out of range); "
                                  "copy the file again")
        entries[name] = (dt, shape, begin)
    return meta, entries, 8 + n


def read_safetensors(path: PathLike) -> dict[str, np.ndarray]:
    """Read a safetensors file without the safetensors package; BF16/U16 come back as float32."""
    p = Path(path)
    _, entries, start = safetensors_header(p)
    out: dict[str, np.ndarray] = {}
    with open(p, "rb") as f:
        for name, (dt, shape, begin) in entries.items():
            arr = np.empty(shape, dtype=_ST_DTYPES[dt])
            f.seek(start + begin)
            if f.readinto(arr.reshape(-1).view(np.uint8)) != arr.nbytes:
                raise WeightFileError(f"{p}: file is truncated (tensor {name!r} is short); copy it again")
            out[name] = _bf16_to_f32(arr) if dt in BF16_CODES else arr
    return out


def _kind(path: Path) -> str:
    if path.suffix in (".pdparams", ".safetensors"):
        return path.suffix
    raise WeightFileError(f"{path}: unknown weight file type {path.suffix!r}; "
                          "expected a .pdparams or .safetensors file")


def read_weights(path: PathLike) -> dict[str, np.ndarray]:
    """Read a weight file, dispatching on its suffix (.pdparams or .safetensors)."""
    p = Path(path)
    return read_pdparams(p) if _kind(p) == ".pdparams" else read_safetensors(p)


def describe_weights(path: PathLike) -> dict[str, TensorInfo]:
    """Names, shapes and stored dtypes; safetensors from the header only, pdparams by unpickling."""
    p = Path(path)
    if _kind(p) == ".safetensors":
        _, entries, _ = safetensors_header(p)
        return {n: TensorInfo(n, shape, "bfloat16" if dt in BF16_CODES else
                              np.dtype(_ST_DTYPES[dt]).name) for n, (dt, shape, _) in entries.items()}
    return {n: TensorInfo(n, tuple(a.shape), stored_name(a.dtype.name))
            for n, a in read_pdparams_raw(p).items()}


def _checked(path: Path, tensors: dict[str, np.ndarray], contiguous: bool) -> dict[str, np.ndarray]:
    """Validate arrays to write (programming errors raise ValueError); returns plain ndarrays."""
    out: dict[str, np.ndarray] = {}
    for name, arr in tensors.items():
        if not isinstance(name, str) or name in (NAME_TABLE, SPLIT_TABLE, "__metadata__"):
            raise ValueError(f"{path}: tensor name {name!r} is not a str or is reserved")
        if not isinstance(arr, np.ndarray):
            raise ValueError(f"{path}: tensor {name!r} is a {type(arr).__name__}, not a numpy array; "
                             "convert it with .numpy() or np.asarray first")
        if arr.dtype.name not in _NP_TO_ST:
            raise ValueError(f"{path}: tensor {name!r} has dtype {arr.dtype} which cannot be stored; "
                             f"use one of {', '.join(_NP_TO_ST)}")
        if contiguous and not arr.flags.c_contiguous:
            raise ValueError(f"{path}: tensor {name!r} is not C-contiguous; "
                             "pass np.ascontiguousarray(tensor)")
        arr = np.asarray(arr)  # drop subclasses such as np.memmap
        out[name] = arr if arr.dtype.isnative else arr.astype(arr.dtype.newbyteorder("="))
    return out


def write_pdparams(path: PathLike, tensors: dict[str, np.ndarray]) -> None:
    """Atomically write a state_dict as ``paddle.save`` does (protocol 4, with a name table).

    uint16 arrays are read back by Paddle (and by :func:`read_pdparams`) as bfloat16.
    """
    p = Path(path)
    state: dict[str, Any] = dict(_checked(p, tensors, contiguous=False))
    state[NAME_TABLE] = {name: name for name in tensors}
    with atomic_write(p, WeightFileError) as f:
        pickle.dump(state, f, protocol=4)


def write_safetensors(path: PathLike, tensors: dict[str, np.ndarray],
                      metadata: dict[str, str] | None = None) -> None:
    """Atomically write a safetensors file; metadata is merged over ``{"format": "np"}``.

    Arrays must be C-contiguous numeric numpy arrays; uint16 is written as ``"U16"`` (PaddleNLP's
    bf16 convention, which numpy loaders can read).
    """
    p = Path(path)
    meta = {"format": "np", **(metadata or {})}
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise ValueError(f"{p}: safetensors metadata must map str to str, got {meta!r}")
    arrays = _checked(p, tensors, contiguous=True)
    header: dict[str, Any] = {"__metadata__": meta}
    offset = 0
    for name, arr in arrays.items():
        header[name] = {"dtype": _NP_TO_ST[arr.dtype.name], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    with atomic_write(p, WeightFileError) as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for arr in arrays.values():
            f.write(arr.reshape(-1).view(np.uint8).data)
