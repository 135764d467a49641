"""From source tensors to a PaddleNLP model directory: name/shape checks, transposes, casts.

Hugging Face and PaddleNLP use the same tensor names; PyTorch's Linear stores ``[out, in]`` and
Paddle's ``[in, out]``, so the 2-D weights of qkv_proj, out_proj, fc_in, fc_out and lm_head are
transposed.  No q/k/v reordering is needed (both use the same 4-shard layout).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from engine.config import ModelConfig
from engine.dtypes import WEIGHT_DTYPES as WEIGHT_DTYPE_TABLE
from engine.quant import SCALE_SUFFIX, attach_scales, output_axis, quantize
from engine.errors import ConfigError

from .configs import config_files
from .errors import SourceError
from .output import PIECE_BYTES, OutTensor, Piece, Scratch, staging_dir, write_weights
from .tensors import (BF16, WEIGHT_DTYPES, MappedData, SourceTensor, bf16_bits_to_f32, cast_array,
                      overflow_count, transpose2d, transpose_into)

TRANSPOSED_SUFFIXES = (".attn.qkv_proj.weight", ".attn.out_proj.weight", ".mlp.fc_in.weight",
                       ".mlp.fc_out.weight")
Progress = Callable[[str, int], None]


def is_transposed(name: str) -> bool:
    return name == "lm_head.weight" or name.endswith(TRANSPOSED_SUFFIXES)


@dataclass
class WeightPlan:
    tensors: list[OutTensor]
    source_dtype: str
    dtype: str
    dropped: list[str]
    overflow: dict[str, int] = field(default_factory=dict)  # float16 overflow to inf, per tensor

    @property
    def param_count(self) -> int:
        return sum(math.prod(t.shape) for t in self.tensors if not t.name.endswith(SCALE_SUFFIX))

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def source_dtype_of(tensors: dict[str, SourceTensor], where: str) -> str:
    dtypes = sorted({t.dtype for t in tensors.values()})
    if len(dtypes) != 1:
        raise SourceError(f"{where}: tensors of mixed dtypes ({', '.join(dtypes)}); pass --dtype "
                          "to choose the output dtype")
    return dtypes[0]


def plan_weights(tensors: dict[str, SourceTensor], config: ModelConfig, dtype: str,
                 transpose: bool, where: str, progress: Progress | None = None) -> WeightPlan:
    """Check every tensor against `config` and prepare lazy producers in PaddleNLP's layout.

    `dtype` "auto" keeps the source dtype.  Mask buffers of old checkpoints are dropped unread.
    """
    tensors = dequantized_sources(dict(tensors), where)
    masks, missing, extra = config.arch.match_names(tensors)
    dropped = sorted(masks)
    for name in dropped:
        del tensors[name]
    expected = config.arch.tensor_shapes()
    if missing:
        raise SourceError(f"{where}: {len(missing)} tensor(s) missing, first {missing[0]!r}; the "
                          "checkpoint is incomplete (copy every shard) or not a CodeGen model")
    if extra:
        raise ConfigError(f"{where}: unexpected tensor {extra[0]!r} ({len(extra)} in all); the "
                          f"weights do not match {config.source}: use the config that came with them")
    source_dtype = source_dtype_of(tensors, where)
    if dtype == "auto":
        if source_dtype not in WEIGHT_DTYPES:
            raise SourceError(f"{where}: weights are {source_dtype}; pass --dtype float32 (or "
                              "float16/bfloat16) to convert them")
        dtype = source_dtype
    elif source_dtype not in WEIGHT_DTYPES + ("float64",):
        raise SourceError(f"{where}: weights are {source_dtype}, not a floating-point dtype; "
                          "this is not a weight checkpoint")
    plan = WeightPlan([], source_dtype, dtype, dropped)
    np_dtype = WEIGHT_DTYPE_TABLE[dtype].numpy
    for name, shape in expected.items():
        src = tensors[name]
        flip = transpose and len(shape) == 2 and is_transposed(name)
        want = shape[::-1] if flip else shape
        if tuple(src.shape) != want:
            hint = ("it is already in Paddle's layout: use `cgconvert cast`, not `from-hf`"
                    if flip and tuple(src.shape) == shape and shape[0] != shape[1] else
                    "use the config that came with these weights")
            raise ConfigError(f"{src.origin or where}: {name} has shape {list(src.shape)} but "
                              f"{config.source} implies {list(want)}; {hint}")
        if dtype == "int8":
            plan.tensors.extend(_int8_tensors(src, name, shape, flip, plan, progress))
            continue
        pieces = (_mapped_pieces(src, flip, progress) if src.map is not None and src.dtype == dtype
                  else None)
        plan.tensors.append(OutTensor(name, shape, np_dtype,
                                      _producer(src, dtype, flip, plan, progress), pieces))
    return plan


def dequantized_sources(tensors: dict[str, SourceTensor], where: str) -> dict[str, SourceTensor]:
    """An int8 source (int8 matrices + `<name>.scale`, engine/quant.py) as float32 tensors, read
    lazily; any other source unchanged.  A scale without its matrix or the reverse is an error."""
    if not any(n.endswith(SCALE_SUFFIX) for n in tensors):
        return tensors
    out = {n: t for n, t in tensors.items() if not n.endswith(SCALE_SUFFIX)}
    for name, t in out.items():
        if t.dtype != "int8":
            continue
        scale = tensors.get(name + SCALE_SUFFIX)
        if scale is None:
            raise SourceError(f"{t.origin or where}: {name} is int8 but {name}{SCALE_SUFFIX} is "
                              "missing; the file is incomplete: cast it again")

        def load(t=t, scale=scale, name=name) -> np.ndarray:
            got = attach_scales({name: t.load(), name + SCALE_SUFFIX: scale.load()}, t.origin or where)
            return np.asarray(got[name], np.float32)

        out[name] = SourceTensor(name, t.shape, "float32", load, t.origin)
    orphans = [n for n in tensors if n.endswith(SCALE_SUFFIX)
               and out.get(n[:-len(SCALE_SUFFIX)], None) is None]
    if orphans:
        raise SourceError(f"{where}: {orphans[0]} has no int8 tensor beside it; the file is "
                          "corrupt: cast it again")
    return out


def _int8_tensors(src: SourceTensor, name: str, shape: tuple[int, ...], flip: bool,
                  plan: WeightPlan, progress: Progress | None) -> list[OutTensor]:
    """A matrix as int8 data + its `.scale` (engine/quant.py's layout); vectors as float32.

    The scale is produced after the data (the writer produces in order) from what quantising
    the data left behind, so a matrix is read and quantised once."""
    as_f32 = _producer(src, "float32", flip, plan, progress)
    if len(shape) != 2:
        return [OutTensor(name, shape, "float32", as_f32)]
    axis = output_axis(name)
    held: dict[str, np.ndarray] = {}

    def data() -> np.ndarray:
        q, held["scale"] = quantize(as_f32(), axis)
        return q

    def scale() -> np.ndarray:
        if "scale" not in held:
            data()
        return held.pop("scale")

    return [OutTensor(name, shape, "int8", data),
            OutTensor(name + SCALE_SUFFIX, (shape[axis],), "float32", scale)]


def _producer(src: SourceTensor, dtype: str, flip: bool, plan: WeightPlan,
              progress: Progress | None):
    def produce() -> np.ndarray:
        arr = src.load()
        out = cast_array(arr, src.dtype, dtype)
        if dtype == "float16" and src.dtype != "float16":
            before = bf16_bits_to_f32(arr) if src.dtype == BF16 else arr
            grown = overflow_count(before, out)
            if grown:
                plan.overflow[src.name] = grown
        del arr
        if flip:
            out = transpose2d(out)
        if progress:
            progress(src.name, out.nbytes)
        return out

    return produce


def _rows_per_piece(row_bytes: int) -> int:
    """Output rows of a transposed tensor per piece: about PIECE_BYTES, a multiple of 16 (whole
    64-byte cache lines of float32 source rows are read)."""
    rows = max(1, PIECE_BYTES // row_bytes)
    return rows - rows % 16 if rows > 16 else rows


def _mapped_pieces(src: SourceTensor, flip: bool, progress: Progress | None
                   ) -> Callable[[], list[Piece]]:
    """The pieces of a tensor kept in its stored dtype, from a view of the source file (no copy).

    Unchanged tensors are written straight from the view, in pieces of up to PIECE_BYTES;
    transposed ones are transposed from the view into the piece's scratch buffer, a block of output
    rows at a time.  A .bin storage's CRC is checked a part per piece, in the checker thread
    (Scratch.verify), the last part comparing.  The file is mapped by the first piece (in the
    producer thread) and let go after the last piece and its CRC part.
    """
    def pieces() -> list[Piece]:
        held: list[MappedData] = []

        def data() -> MappedData:
            if not held:
                held.append(src.map())
            return held[0]

        if flip:
            rows, cols = src.shape  # Hugging Face's [out, in]; Paddle's is [in, out] = [cols, rows]
            per = _rows_per_piece(src.nbytes // cols)
            n = -(-cols // per)
        else:
            n = max(1, -(-src.nbytes // PIECE_BYTES))

        def piece(i: int, scratch: Scratch) -> np.ndarray:
            m = data()
            if flip:
                c0, c1 = i * per, min(cols, (i + 1) * per)
                out = scratch.buffer((c1 - c0) * rows * m.array.itemsize).view(m.array.dtype)
                out = transpose_into(m.array[:, c0:c1], out.reshape(c1 - c0, rows), scratch.panel)
            else:
                flat = m.array.reshape(-1).view(np.uint8)
                out = flat[len(flat) * i // n: len(flat) * (i + 1) // n]
            if m.crc is not None:
                scratch.verify(functools.partial(m.crc.part, i, n))
            if i == n - 1:
                held.clear()
                if progress:
                    progress(src.name, src.nbytes)
            return out

        return [functools.partial(piece, i) for i in range(n)]

    return pieces


def build_model_dir(dst: Path, plan: WeightPlan, config: ModelConfig, fmt: str,
                    other_files: dict[str, bytes]) -> Path:
    """Write weights, config.json + model_config.json and `other_files` into a new `dst`, atomically."""
    files = dict(other_files)
    files.update(config_files(config, plan.dtype))
    with staging_dir(dst) as tmp:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        weight_path = write_weights(tmp, plan.tensors, fmt)
    return dst / weight_path.name
