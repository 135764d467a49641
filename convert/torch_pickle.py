"""Read PyTorch ``.bin`` checkpoints (``torch.save`` zip files) without torch and without running code.

A ``pytorch_model.bin`` is a zip holding ``<archive>/data.pkl`` (a pickle of the state dict) and
``<archive>/data/<key>`` (the raw bytes of each storage).  The pickle names
``torch._utils._rebuild_tensor_v2`` and storage types such as ``torch.FloatStorage``, and refers to
storages through persistent ids ``('storage', <type>, <key>, <location>, <numel>)``.  The unpickler
below maps exactly those names to numpy stand-ins and refuses everything else, so a crafted pickle
cannot import or call anything.  Tensors are returned lazily: the bytes of a storage are read from the
zip only when its tensor is loaded.
"""
from __future__ import annotations

import io
import math
import zipfile
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from engine.errors import WeightFileError
from engine.weights import AllowListUnpickler, RefusedPickle

from .filemap import CrcCheck, map_range
from .tensors import BF16, MappedData, SourceTensor

# torch storage type name -> (numpy dtype of the stored bytes, weight dtype name)
STORAGE_DTYPES: dict[str, tuple[str, str]] = {
    "FloatStorage": ("<f4", "float32"), "HalfStorage": ("<f2", "float16"),
    "BFloat16Storage": ("<u2", BF16), "DoubleStorage": ("<f8", "float64"),
    "LongStorage": ("<i8", "int64"), "IntStorage": ("<i4", "int32"),
    "ShortStorage": ("<i2", "int16"), "CharStorage": ("i1", "int8"),
    "ByteStorage": ("u1", "uint8"), "BoolStorage": ("?", "bool"),
}


@dataclass(frozen=True)
class _StorageType:
    name: str


@dataclass(frozen=True)
class _Storage:
    key: str
    np_dtype: str
    dtype: str
    numel: int


@dataclass(frozen=True)
class _TensorRef:
    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(type(v) is int and v >= 0 for v in value):
        raise RefusedPickle(f"a tensor {what} that is not a tuple of non-negative integers ({value!r})")
    return tuple(value)


def _rebuild_tensor_v2(storage: Any, offset: Any, size: Any, stride: Any, *rest: Any) -> _TensorRef:
    if not isinstance(storage, _Storage) or type(offset) is not int or offset < 0:
        raise RefusedPickle("_rebuild_tensor_v2 with unexpected arguments")
    shape, strides = _ints(size, "size"), _ints(stride, "stride")
    if len(shape) != len(strides):
        raise RefusedPickle("a tensor whose size and stride differ in length")
    if math.prod(shape):
        last = offset + sum((n - 1) * s for n, s in zip(shape, strides))
        if last >= storage.numel:
            raise RefusedPickle(f"a tensor reaching element {last} of a storage of {storage.numel}")
    return _TensorRef(storage, offset, shape, strides)


def _rebuild_parameter(data: Any, *rest: Any) -> _TensorRef:
    if not isinstance(data, _TensorRef):
        raise RefusedPickle("_rebuild_parameter of something that is not a tensor")
    return data


_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): OrderedDict,
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
}


class _TorchUnpickler(AllowListUnpickler):
    """Only the names in ``_ALLOWED``; storages become :class:`_Storage` references."""

    allowed = _ALLOWED

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)
                and type(pid[4]) is int and pid[4] >= 0):
            raise RefusedPickle(f"a persistent object {pid!r:.80}")
        np_dtype, dtype = STORAGE_DTYPES[pid[1].name]
        return _Storage(pid[2], np_dtype, dtype, pid[4])


def _open_zip(path: Path) -> tuple[zipfile.ZipFile, str]:
    if not path.is_file():
        raise WeightFileError(f"{path}: weight file not found; check the path")
    size = path.stat().st_size
    if size == 0:
        raise WeightFileError(f"{path}: file is empty (an interrupted copy?); copy it again")
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        with open(path, "rb") as f:
            head = f.read(2)
        if head[:1] == b"\x80":
            raise WeightFileError(f"{path}: an old (pre-1.6) PyTorch file, not a zip; re-save it with "
                                  "a current torch.save or use the model.safetensors of the same "
                                  "checkpoint") from None
        raise WeightFileError(f"{path}: not a PyTorch zip checkpoint (truncated, or another format); "
                              "copy the file again") from None
    except OSError as e:
        raise WeightFileError(f"{path}: cannot read ({e.strerror}); check its permissions") from None
    pickles = [n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pickles) != 1:
        zf.close()
        raise WeightFileError(f"{path}: expected one data.pkl in the zip, found {len(pickles)}; "
                              "this is not a torch.save checkpoint")
    return zf, pickles[0][: -len("data.pkl")]


def _byteorder(zf: zipfile.ZipFile, prefix: str) -> str:
    try:
        return zf.read(prefix + "byteorder").decode().strip()
    except KeyError:
        return "little"


def _check_size(path: Path, info: zipfile.ZipInfo, key: str, nbytes: int) -> None:
    if info.file_size != nbytes:
        raise WeightFileError(f"{path}: storage {key!r} has {info.file_size} bytes, its "
                              f"tensor needs {nbytes}; the file is corrupt, copy it again")


def _member_data(path: Path, f: IO[bytes], info: zipfile.ZipInfo, key: str) -> int:
    """Where a stored member's bytes start in the file, after checking its local header."""
    f.seek(info.header_offset)
    header = f.read(30)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise WeightFileError(f"{path}: storage {key!r} has a damaged zip header; copy the "
                              "file again")
    skip = int.from_bytes(header[26:28], "little") + int.from_bytes(header[28:30], "little")
    return info.header_offset + 30 + skip


def _crc_error(path: Path, key: str) -> str:
    return f"{path}: storage {key!r} fails its CRC check; the file is corrupt, copy it again"


def _read_member(path: Path, info: zipfile.ZipInfo, key: str, nbytes: int,
                 np_dtype: np.dtype) -> np.ndarray:
    """A storage's bytes straight into a numpy array (stored members), CRC checked."""
    _check_size(path, info, key, nbytes)
    if info.compress_type != zipfile.ZIP_STORED:  # torch.save never compresses; be general
        with zipfile.ZipFile(path) as zf:
            return np.frombuffer(zf.read(info), dtype=np_dtype)
    with open(path, "rb") as f:
        f.seek(_member_data(path, f, info, key))
        arr = np.empty(nbytes // np_dtype.itemsize, dtype=np_dtype)
        if f.readinto(memoryview(arr).cast("B")) != nbytes:
            raise WeightFileError(f"{path}: file is truncated (storage {key!r} is short); copy it "
                                  "again")
    if zlib.crc32(memoryview(arr).cast("B")) != info.CRC:
        raise WeightFileError(_crc_error(path, key))
    return arr


def _map_member(path: Path, info: zipfile.ZipInfo, key: str, nbytes: int) -> tuple[np.ndarray, CrcCheck]:
    """A stored member's bytes as a read-only view of the file, with its CRC still to check."""
    _check_size(path, info, key, nbytes)
    with open(path, "rb") as f:
        start = _member_data(path, f, info, key)
    data = map_range(path, start, nbytes, f"file is truncated (storage {key!r} is short); copy it "
                     "again")
    return data, CrcCheck(data, info.CRC, _crc_error(path, key))


_READ_ERRORS = (zipfile.BadZipFile, EOFError, OSError, ValueError)


def _unreadable(path: Path, key: str, e: Exception) -> WeightFileError:
    return WeightFileError(f"{path}: storage {key!r} cannot be read ({e}); the file is "
                           "truncated or corrupt, copy it again")


def _dense(ref: _TensorRef) -> bool:
    """Whether the tensor is one C-contiguous run of its storage."""
    contiguous = tuple(int(math.prod(ref.shape[i + 1:])) for i in range(len(ref.shape)))
    return all(s == c or d == 1 for s, c, d in zip(ref.stride, contiguous, ref.shape))


def _loader(path: Path, ref: _TensorRef, byteorder: str, members: dict[str, zipfile.ZipInfo]):
    def load() -> np.ndarray:
        st = ref.storage
        np_dtype = np.dtype(st.np_dtype).newbyteorder("<" if byteorder == "little" else ">")
        info = _member(path, members, st.key)
        try:
            data = _read_member(path, info, st.key, st.numel * np_dtype.itemsize, np_dtype)
        except _READ_ERRORS as e:
            raise _unreadable(path, st.key, e) from None
        n = math.prod(ref.shape)
        item = np_dtype.itemsize
        if n == 0:
            arr = np.zeros(ref.shape, data.dtype)
        elif _dense(ref):
            arr = data[ref.offset: ref.offset + n].reshape(ref.shape)
        else:
            arr = np.ascontiguousarray(np.lib.stride_tricks.as_strided(
                data[ref.offset:], ref.shape, tuple(s * item for s in ref.stride), writeable=False))
        if not arr.dtype.isnative:
            arr = arr.astype(arr.dtype.newbyteorder("="))
        return arr

    return load


def _member(path: Path, members: dict[str, zipfile.ZipInfo], key: str) -> zipfile.ZipInfo:
    info = members.get(key)
    if info is None:
        raise WeightFileError(f"{path}: storage {key!r} is missing from the zip; the file is "
                              "incomplete, copy it again")
    return info


def _mapper(path: Path, ref: _TensorRef, byteorder: str, members: dict[str, zipfile.ZipInfo]):
    """The zero-copy reader of a tensor, where one applies (else None: use its loader)."""
    np_dtype = np.dtype(ref.storage.np_dtype).newbyteorder("<" if byteorder == "little" else ">")
    info = members.get(ref.storage.key)
    if (not np_dtype.isnative or not math.prod(ref.shape) or not _dense(ref) or info is None
            or info.compress_type != zipfile.ZIP_STORED):
        return None

    def map_() -> MappedData:
        st = ref.storage
        try:
            data, crc = _map_member(path, info, st.key, st.numel * np_dtype.itemsize)
        except _READ_ERRORS as e:
            raise _unreadable(path, st.key, e) from None
        n = math.prod(ref.shape)
        arr = data.view(np_dtype)[ref.offset: ref.offset + n].reshape(ref.shape)
        return MappedData(arr, crc)

    return map_


def read_torch_bin(path: Path) -> dict[str, SourceTensor]:
    """Names, shapes and dtypes of a ``torch.save`` state dict; data is read on ``load()``."""
    zf, prefix = _open_zip(path)
    with zf:
        try:
            pkl = zf.read(prefix + "data.pkl")
        except (zipfile.BadZipFile, EOFError, OSError) as e:
            raise WeightFileError(f"{path}: data.pkl cannot be read ({e}); the file is truncated "
                                  "or corrupt, copy it again") from None
        byteorder = _byteorder(zf, prefix)
        members = {i.filename[len(prefix) + 5:]: i for i in zf.infolist()
                   if i.filename.startswith(prefix + "data/")}
    try:
        obj = _TorchUnpickler(io.BytesIO(pkl)).load()
    except RefusedPickle as e:
        raise WeightFileError(f"{path}: refusing to load: the pickle asks for {e}; this file is not "
                              "a plain weight file (never load it with torch.load)") from None
    except Exception as e:  # any other decoding failure means a damaged file
        raise WeightFileError(f"{path}: data.pkl is corrupt ({type(e).__name__}: {e}); "
                              "copy the file again") from None
    if not isinstance(obj, dict):
        raise WeightFileError(f"{path}: holds a {type(obj).__name__}, not a state dict; save "
                              "model.state_dict() (save_pretrained does)")
    out: dict[str, SourceTensor] = {}
    for name, ref in obj.items():
        if not isinstance(name, str) or not isinstance(ref, _TensorRef):
            raise WeightFileError(f"{path}: entry {name!r} is not a tensor; this is not a plain "
                                  "state dict")
        out[name] = SourceTensor(name, ref.shape, ref.storage.dtype,
                                 _loader(path, ref, byteorder, members), str(path),
                                 _mapper(path, ref, byteorder, members))
    return out
