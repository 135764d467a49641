"""Megatron-style shard plan for CodeGen over N ranks: which block of each tensor a rank holds.

CodeGen's qkv_proj weight ([in, 3E] in PaddleNLP's layout) holds 4 "mp" shards of whole heads,
each [q | v | k] of E/4 columns, heads ordered shard-major.  Rank r of N takes the contiguous
column block of mp shards [r*4/N, (r+1)*4/N): columns [r*3E/N, (r+1)*3E/N), i.e. whole heads
[r*H/N, (r+1)*H/N) of q, k and v.  fc_in is split by output columns (its bias with it),
out_proj and fc_out by input rows (the rows of the rank's heads and of its fc_in columns), so
each rank's attention and MLP outputs are partial sums; CodeGen's parallel block adds both to
the residual together, so ONE all-reduce per layer sums them.  Layer norms and fc_out's bias
are replicated (the bias is added once, after the reduce).

The vocabulary (`vocab_parallel`, by default wherever vocab_size % N == 0: every CodeGen
variant's 51200 at N = 2 and 4): rank r holds vocabulary rows [r*V/N, (r+1)*V/N) of the
embedding wte [V, n_embd] and the same columns of lm_head [n_embd, V] (and of its bias); a
lookup is all-reduced, the logits all-gathered (vocab.py).  Where N does not divide V both are
replicated, whole on every rank.  350M's vocabulary tensors are 0.42 GB of its 1.42 GB: split,
a rank of 2 holds 0.50x of the weights instead of 0.65x.  `local_bytes` is the one home of what
a rank holds (cgbench recommend reads it).

Only 4 % N == 0 splits qkv_proj into whole mp shards: N in {1, 2, 4} for every variant.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import OptionError
from ..quant import SCALE_SUFFIX, output_axis
from ..variants import Architecture

QKV_SHARDS = 4  # CodeGen's qkv_proj holds this many [q | v | k] shards (PaddleNLP's mp_num)
# "whole" keeps the embedding and lm_head whole on every rank where the vocabulary divides too:
# for measuring the two layouts against each other, not an option users need
VOCAB_ENV = "CGW_TP_VOCAB"


@dataclass(frozen=True)
class Shard:
    """Rank's block of a tensor: indices [start, stop) along `axis`."""

    axis: int
    start: int
    stop: int

    def index(self, ndim: int) -> tuple:
        return tuple(slice(self.start, self.stop) if d == self.axis else slice(None)
                     for d in range(ndim))


def parse_world(value, option: str = "--tensor-parallel") -> int:
    """The N of `--tensor-parallel N` as an int >= 1, or one clear error."""
    try:
        world = int(value)
    except (TypeError, ValueError):
        world = 0
    if world < 1 or str(value).strip() not in (str(world), f"+{world}"):
        raise OptionError(f"{option} {value!r}: give the number of GPUs (processes) to split the "
                          "model over: 1, 2 or 4")
    return world


def splits_vocab(arch: Architecture, world: int) -> bool:
    """The default layout: the vocabulary split over the ranks when it divides, else whole."""
    mode = os.environ.get(VOCAB_ENV, "split")
    if mode not in ("split", "whole"):
        raise OptionError(f"{VOCAB_ENV}={mode!r}: use split (the default) or whole")
    return mode == "split" and world > 1 and arch.vocab_size % world == 0


def check_world(arch: Architecture, world: int, source: str = "the model",
                option: str = "--tensor-parallel") -> None:
    """Raise OptionError (one line, before anything loads) if `arch` cannot split `world` ways."""
    if world == 1:
        return
    reasons = []
    if QKV_SHARDS % world:
        reasons.append(f"CodeGen's qkv_proj holds {QKV_SHARDS} shards of whole heads, so N must "
                       f"divide {QKV_SHARDS}")
    elif arch.n_head % world:
        reasons.append(f"{arch.n_head} attention heads do not split {world} ways")
    elif arch.inner_dim % world:
        reasons.append(f"the MLP's {arch.inner_dim} columns do not split {world} ways")
    if reasons:
        raise OptionError(f"{option} {world}: {source} cannot be split {world} ways "
                          f"({reasons[0]}); use 1, 2 or 4")


@dataclass(frozen=True)
class ShardPlan:
    """What rank `rank` of `world` holds of every tensor (PaddleNLP's names and layout)."""

    arch: Architecture
    rank: int = 0
    world: int = 1
    # embedding and lm_head split by vocabulary (lookups all-reduced, logits gathered); None:
    # wherever the vocabulary divides (splits_vocab)
    vocab_parallel: bool | None = None

    def __post_init__(self):
        if self.vocab_parallel is None:
            object.__setattr__(self, "vocab_parallel", splits_vocab(self.arch, self.world))
        check_world(self.arch, self.world)
        if not 0 <= self.rank < self.world:
            raise ValueError(f"rank {self.rank} is outside 0..{self.world - 1}")
        if self.vocab_parallel and self.arch.vocab_size % self.world:
            raise OptionError(f"vocab_size {self.arch.vocab_size} does not split {self.world} "
                              "ways; keep the embedding and lm_head replicated")

    # ---- local sizes ---------------------------------------------------------------------
    @property
    def n_head(self) -> int:
        return self.arch.n_head // self.world

    @property
    def qkv_shards(self) -> int:
        """mp shards of qkv_proj on this rank (each [q | v | k] of n_embd / 4 columns)."""
        return QKV_SHARDS // self.world

    @property
    def inner_dim(self) -> int:
        return self.arch.inner_dim // self.world

    @property
    def vocab_size(self) -> int:
        return self.arch.vocab_size // self.world if self.vocab_parallel else self.arch.vocab_size

    def _block(self, total: int) -> tuple[int, int]:
        size = total // self.world
        return self.rank * size, (self.rank + 1) * size

    # ---- per tensor ----------------------------------------------------------------------
    def shard(self, name: str) -> Shard | None:
        """The rank's block of tensor `name`, or None when every rank holds all of it."""
        if self.world == 1:
            return None
        if name.endswith(SCALE_SUFFIX):  # a stored int8 matrix's scales, one per output channel,
            base = name[:-len(SCALE_SUFFIX)]  # split with it where it splits its outputs
            s = self.shard(base)
            return Shard(0, s.start, s.stop) if s is not None and s.axis == output_axis(base) \
                else None
        e = self.arch.n_embd
        if name.endswith("attn.qkv_proj.weight"):
            return Shard(1, *self._block(3 * e))
        if name.endswith("attn.out_proj.weight"):
            return Shard(0, *self._block(e))
        if name.endswith("mlp.fc_in.weight"):
            return Shard(1, *self._block(self.arch.inner_dim))
        if name.endswith("mlp.fc_in.bias"):
            return Shard(0, *self._block(self.arch.inner_dim))
        if name.endswith("mlp.fc_out.weight"):
            return Shard(0, *self._block(self.arch.inner_dim))
        if self.vocab_parallel:
            if name in ("transformer.wte.weight", "lm_head.bias"):  # [V, n_embd], [V]
                return Shard(0, *self._block(self.arch.vocab_size))
            if name == "lm_head.weight":  # [n_embd, V]
                return Shard(1, *self._block(self.arch.vocab_size))
        return None  # ln_1, ln_f, fc_out.bias (wte and lm_head unless vocab_parallel)

    def local_shape(self, name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        s = self.shard(name)
        if s is None:
            return tuple(shape)
        return tuple(s.stop - s.start if d == s.axis else n for d, n in enumerate(shape))

    def local_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor's shape on this rank."""
        return {n: self.local_shape(n, s) for n, s in self.arch.tensor_shapes().items()}

    def take(self, name: str, array):
        """The rank's block of a full tensor (a view; copy it to drop the full one)."""
        s = self.shard(name)
        return array if s is None else array[s.index(array.ndim)]

    def local_bytes(self, dtype_bytes: int) -> int:
        """Weight bytes this rank holds."""
        import math

        return sum(math.prod(s) for s in self.local_shapes().values()) * dtype_bytes
