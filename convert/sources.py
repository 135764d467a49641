"""Lazy readers for weight files: safetensors (header only until loaded), .bin, .pdparams, shards."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from engine.dtypes import BF16_CODES, SAFETENSORS_TO_NUMPY
from engine.errors import WeightFileError
from engine.weights import safetensors_header

from .errors import SourceError
from .filemap import map_range
from .tensors import BF16, MappedData, SourceTensor, stored_dtype_name
from .torch_pickle import read_torch_bin

_ST_NP = SAFETENSORS_TO_NUMPY


def read_safetensors_lazy(path: Path) -> dict[str, SourceTensor]:
    _, entries, start = safetensors_header(path)
    out = {}
    for name, (dt, shape, begin) in entries.items():
        def load(dt=dt, shape=shape, begin=begin, name=name) -> np.ndarray:
            arr = np.empty(shape, dtype=_ST_NP[dt])
            with open(path, "rb") as f:
                f.seek(start + begin)
                if f.readinto(arr.reshape(-1).view(np.uint8)) != arr.nbytes:
                    raise WeightFileError(f"{path}: file is truncated (tensor {name!r} is short); "
                                          "copy it again")
            return arr.astype(arr.dtype.newbyteorder("=")) if not arr.dtype.isnative else arr
        dtype = BF16 if dt in BF16_CODES else np.dtype(_ST_NP[dt]).name
        out[name] = SourceTensor(name, shape, dtype, load, str(path),
                                 _st_mapper(path, name, np.dtype(_ST_NP[dt]), shape, start + begin))
    return out


def _st_mapper(path: Path, name: str, np_dtype: np.dtype, shape: tuple[int, ...], offset: int):
    """The zero-copy reader of a safetensors tensor, where one applies (else None)."""
    if not np_dtype.isnative or not math.prod(shape):
        return None

    def map_() -> MappedData:
        data = map_range(path, offset, math.prod(shape) * np_dtype.itemsize,
                         f"file is truncated (tensor {name!r} is short); copy it again")
        return MappedData(data.view(np_dtype).reshape(shape))

    return map_


def read_pdparams_eager(path: Path) -> dict[str, SourceTensor]:
    """A .pdparams has its data inline: read it all (safely), then serve it as source tensors."""
    from engine.weights import read_pdparams_raw  # keeps bf16 as uint16 bits

    arrays = read_pdparams_raw(path)
    return {n: SourceTensor(n, tuple(a.shape), stored_dtype_name(a), (lambda a=a: a), str(path))
            for n, a in arrays.items()}


def read_file_lazy(path: Path) -> dict[str, SourceTensor]:
    if path.name.endswith(".safetensors"):
        return read_safetensors_lazy(path)
    if path.name.endswith(".bin"):
        return read_torch_bin(path)
    if path.name.endswith(".pdparams"):
        return read_pdparams_eager(path)
    raise WeightFileError(f"{path}: unknown weight file type; expected .safetensors, .bin or .pdparams")


def read_index(index_path: Path) -> list[Path]:
    """The shard files a ``*.index.json`` names, each checked to exist."""
    from engine.config import read_json

    data = read_json(index_path)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map or not all(
            isinstance(v, str) for v in weight_map.values()):
        raise SourceError(f"{index_path}: no weight_map of tensor name to shard file; the index "
                          "is damaged, copy it again")
    shards = sorted(set(weight_map.values()))
    for name in shards:
        if Path(name).name != name:
            raise SourceError(f"{index_path}: shard name {name!r} is not a plain file name; "
                              "the index is damaged, copy it again")
        if not (index_path.parent / name).is_file():
            raise SourceError(f"{index_path.parent / name}: shard missing ({len(shards)} shards "
                              "listed in the index); copy every shard")
    return [index_path.parent / n for n in shards]


def read_shards(files: list[Path], weight_map: dict[str, str] | None = None) -> dict[str, SourceTensor]:
    out: dict[str, SourceTensor] = {}
    for path in files:
        for name, t in read_file_lazy(path).items():
            if name in out:
                raise SourceError(f"{path}: tensor {name!r} is also in {out[name].origin}; the "
                                  "shards belong to different checkpoints, copy them again")
            out[name] = t
    if weight_map:
        missing = [n for n in weight_map if n not in out]
        if missing:
            raise SourceError(f"{files[0].parent / weight_map[missing[0]]}: tensor {missing[0]!r} "
                              f"listed in the index is not in it ({len(missing)} missing); copy "
                              "the shards again")
    return out
