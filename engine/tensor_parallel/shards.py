"""Read only this rank's shard of each tensor: safetensors, .pdparams or random weights.

A 16B checkpoint is never held whole in one process:
- safetensors: the file is memory-mapped and each tensor's block copied out of the map (only
  the pages of the block are read);
- .pdparams: a streaming form of the allow-list unpickler (engine/weights.py's allow-list, no
  fallback, nothing executed) that slices each array as soon as it is built and drops the full
  one (and the raw bytes the pickle's memo holds), so at most one full tensor is in memory;
  Paddle's ``name@@.N`` pieces of a tensor over 1 GiB are joined, then sliced;
- random:<variant>: the same values `engine.model.random_arrays` gives (same seed, same pool),
  but only the shard is generated.
Each reader yields (name, local array) pairs one at a time, in file order, and counts the
tensors it read in `reads` so tests can check that each is read once.
"""
from __future__ import annotations

import math
import pickle
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import numpy as np

from ..errors import WeightFileError
from ..model import _POOL_SIZE, check_weights
from ..quant import SCALE_SUFFIX, attach_scales, split_scales
from ..variants import MASK_BUFFER_SUFFIXES
from ..weights import (_ALLOWED, _ST_DTYPES, NAME_TABLE, SPLIT_TABLE, RefusedPickle,
                       _bf16_to_f32, _file_size, _join_split, safetensors_header)
from .plan import ShardPlan

_BIG = 1024  # bytes/str objects above this size in the pickle's memo are dropped once used


def _copy_block(plan: ShardPlan, name: str, array: np.ndarray) -> np.ndarray:
    block = plan.take(name, array)
    return np.array(block) if block is not array else array


class _StreamingUnpickler(pickle._Unpickler):  # the pure-Python unpickler: its stack is visible
    """engine.weights' allow-list unpickler, calling `on_array(key, array)` for each array as
    soon as it is built and keeping what that returns; the full array and its raw bytes are
    released from the memo right away."""

    allowed = _ALLOWED
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, on_array):
        super().__init__(file, encoding="latin1")
        self.on_array = on_array
        self._mark = 0  # memo keys below this were already cleaned

    def find_class(self, module, name):
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise RefusedPickle(f"{module}.{name}") from None

    def persistent_load(self, pid):
        raise RefusedPickle("a persistent (external) object")

    def _load_build(self):
        state = self.stack[-1]
        pickle._Unpickler.load_build(self)  # pops state, calls inst.__setstate__(state)
        inst = self.stack[-1]
        if type(inst) is not np.ndarray:
            return
        stack = self.stack
        key = None
        if len(stack) >= 3 and isinstance(stack[-2], str) and isinstance(stack[-3], str):
            key = stack[-3]  # Paddle's generic pickler: key, (param_name, array)
        elif len(stack) >= 2 and isinstance(stack[-2], str):
            key = stack[-2]
        kept = self.on_array(key, inst)
        stack[-1] = kept
        memo = self.memo
        for k in range(self._mark, len(memo)):
            v = memo.get(k)
            if v is inst:
                memo[k] = kept
            elif v is state or (isinstance(v, (bytes, bytearray, str)) and len(v) > _BIG):
                memo[k] = None
        self._mark = len(memo)
        del inst, state

    dispatch[pickle.BUILD[0]] = _load_build


def _stream_pdparams(path: Path, plan: ShardPlan, reads: Counter, shapes: dict):
    """(name, local array) from a .pdparams, read once, sliced as it is built."""
    size = _file_size(path)
    if size == 0:
        raise WeightFileError(f"{path}: file is empty; copy the file again")

    def on_array(key, array):
        if key is None or key.endswith(MASK_BUFFER_SUFFIXES):
            return array if key is None else np.zeros(0, array.dtype)  # masks: dropped later
        reads[key] += 1
        shapes[key] = array.shape
        if "@@." in key:
            return array  # a piece of a tensor over 1 GiB: joined below, then sliced
        return _copy_block(plan, key, array)

    with open(path, "rb") as f:
        if f.read(1) != b"\x80":
            raise WeightFileError(f"{path}: not a .pdparams file (a Paddle pickle starts with byte "
                                  "0x80); check the file name and format")
        f.seek(0)
        try:
            obj = _StreamingUnpickler(f, on_array).load()
        except RefusedPickle as e:
            raise WeightFileError(f"{path}: refusing to load: the pickle asks for {e}; "
                                  "this file is not a plain weight file") from None
        except WeightFileError:
            raise
        except Exception as e:  # any decoding failure means a damaged file
            raise WeightFileError(f"{path}: file is truncated or corrupt ({type(e).__name__}: "
                                  f"{e}); copy the file again") from None
    if not isinstance(obj, dict):
        raise WeightFileError(f"{path}: holds a {type(obj).__name__}, not a dict of tensors; "
                              "save model.state_dict() with paddle.save")
    obj.pop(NAME_TABLE, None)
    split = obj.pop(SPLIT_TABLE, None)
    tensors = {}
    for key, value in obj.items():
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
            value = value[1]
        if not isinstance(key, str) or not isinstance(value, np.ndarray):
            raise WeightFileError(f"{path}: entry {key!r} is a {type(value).__name__}, not a "
                                  "tensor; this is not a plain state_dict")
        tensors[key] = value
    obj.clear()
    if split is not None:
        pieces = {k for k in tensors if "@@." in k}
        _join_split(tensors, split, path)
        for key in set(split) & set(tensors):
            shapes[key] = tensors[key].shape
            reads[key] += 1
            tensors[key] = _copy_block(plan, key, tensors[key])
        for key in pieces:
            shapes.pop(key, None)
            reads.pop(key, None)
    for key in list(tensors):
        arr = tensors.pop(key)
        if arr.dtype.kind not in "biuf":
            raise WeightFileError(f"{path}: tensor {key!r} has dtype {arr.dtype}, which is not a "
                                  "numeric weight dtype; this is not a plain weight file")
        if not arr.dtype.isnative:
            arr = arr.astype(arr.dtype.newbyteorder("="))
        yield key, _bf16_to_f32(arr) if arr.dtype == np.uint16 else arr


def _stream_safetensors(path: Path, plan: ShardPlan, entries: dict, start: int, reads: Counter):
    """(name, local array) from a memory-mapped safetensors file, one block at a time."""
    mapped = np.memmap(path, dtype=np.uint8, mode="r")
    try:
        for name, (dt, shape, begin) in entries.items():
            if name.endswith(MASK_BUFFER_SUFFIXES):
                continue
            dtype = np.dtype(_ST_DTYPES[dt])
            nbytes = math.prod(shape) * dtype.itemsize
            full = mapped[start + begin:start + begin + nbytes].view(dtype).reshape(shape)
            reads[name] += 1
            block = np.array(plan.take(name, full))  # copies the block's pages only
            yield name, _bf16_to_f32(block) if dt in ("BF16", "U16") else block
    finally:
        del mapped


def shapes_of(path: Path) -> dict[str, tuple[int, ...]] | None:
    """Full tensor shapes from the file's header (safetensors); None for .pdparams."""
    if path.suffix != ".safetensors":
        return None
    _, entries, _ = safetensors_header(path)
    return {name: shape for name, (_, shape, _) in entries.items()}


def check_shapes(shapes: dict[str, tuple[int, ...]], config, path: Path,
                 dtypes: dict[str, str] | None = None) -> None:
    """engine.model.check_weights on shapes alone (names, counts and shapes vs the config);
    with `dtypes`, a stored int8 file's `.scale` tensors checked against their matrices (as
    engine.quant.split_scales does for `cgconvert inspect`) and set aside."""
    infos = {n: SimpleNamespace(shape=tuple(s), dtype=(dtypes or {}).get(n, "float32"))
             for n, s in shapes.items()}
    infos, problems = split_scales(infos)
    if problems:
        raise WeightFileError(f"{path}: {problems[0]} ({len(problems)} problem(s) with the int8 "
                              "scales); the file is corrupt: cast it again with `cgconvert cast "
                              "--dtype int8`")
    check_weights(infos, config, path)


def _with_scales(pairs, path: Path):
    """The pairs, each int8 matrix joined with its `.scale` as an engine.quant.QuantizedArray
    (the rank's blocks of both) once both have come, in whichever order the file holds them."""
    waiting: dict[str, dict] = {}
    for name, array in pairs:
        base = name[:-len(SCALE_SUFFIX)] if name.endswith(SCALE_SUFFIX) else name
        if base == name and array.dtype != np.int8:
            yield name, array
            continue
        waiting.setdefault(base, {})[name] = array
        if len(waiting[base]) == 2:
            yield base, attach_scales(waiting.pop(base), path)[base]
    if waiting:  # split_scales saw to the pairs: only a file changed while it was read
        attach_scales({n: a for pair in waiting.values() for n, a in pair.items()}, path)
        raise WeightFileError(f"{path}: changed while it was read; copy the file again")


def read_shards(path: Path, config, plan: ShardPlan, reads: Counter | None = None):
    """This rank's (name, array) pairs from a weight file, checked against `config`.

    safetensors are checked from the header before any data is read; a .pdparams is checked
    once it has been streamed (its shapes are only known then), before anything is yielded."""
    reads = Counter() if reads is None else reads
    path = Path(path)
    if path.suffix == ".safetensors":
        _, entries, start = safetensors_header(path)
        check_shapes({n: e[1] for n, e in entries.items()}, config, path,
                     {n: np.dtype(_ST_DTYPES[e[0]]).name for n, e in entries.items()})
        return _with_scales(_stream_safetensors(path, plan, entries, start, reads), path)
    if path.suffix != ".pdparams":
        raise WeightFileError(f"{path}: unknown weight file type {path.suffix!r}; "
                              "expected a .pdparams or .safetensors file")
    shapes: dict = {}
    arrays = dict(_stream_pdparams(path, plan, reads, shapes))
    for name in [n for n in arrays if n.endswith(MASK_BUFFER_SUFFIXES)]:
        del arrays[name]
        shapes.pop(name, None)
    check_shapes(shapes, config, path, {n: a.dtype.name for n, a in arrays.items()})
    return iter(attach_scales(arrays, path).items())


def _tiled(pool: np.ndarray, start: int, out: np.ndarray) -> None:
    """out[i] = pool[(start + i) % len(pool)] for a flat `out`."""
    size, filled, pos = out.size, 0, start % len(pool)
    while filled < size:
        chunk = min(len(pool) - pos, size - filled)
        out[filled:filled + chunk] = pool[pos:pos + chunk]
        filled += chunk
        pos = 0


def random_shards(config, plan: ShardPlan, seed: int = 0) -> Iterator[tuple[str, np.ndarray]]:
    """The shard of `engine.model.random_arrays(config, seed)` for `plan`, without making the
    full tensors: the same pool and the same draw per tensor, only the block filled."""
    rng = np.random.default_rng(seed)
    pool = rng.standard_normal(_POOL_SIZE, dtype=np.float32) * np.float32(0.02)
    for name, shape in config.arch.tensor_shapes().items():
        local = plan.local_shape(name, shape)
        if name.endswith(("ln_1.weight", "ln_f.weight")):
            yield name, np.ones(local, np.float32)
            continue
        if name.endswith("bias"):
            yield name, np.zeros(local, np.float32)
            continue
        pos = int(rng.integers(_POOL_SIZE))
        out = np.empty(local, np.float32)
        s = plan.shard(name)
        if s is None or s.axis == 0:  # whole rows: one contiguous run of the flat tensor
            row = math.prod(shape[1:])
            _tiled(pool, pos + (s.start * row if s else 0), out.reshape(-1))
        else:  # a column block: one run per row
            cols = shape[1]
            for r in range(shape[0]):
                _tiled(pool, pos + r * cols + s.start, out[r])
        yield name, out
