"""Megatron-style shard plan for CodeGen over N ranks: which block of each tensor a rank holds.

CodeGen's qkv_proj weight ([in, 3E] in PaddleNLP's layout) holds 4 "mp" shards of whole heads,
each [q | v | k] of E/4 columns, heads ordered shard-major.  Rank r of N takes the contiguous
column block of mp shards [r*4/N, (r+1)*4/N): columns [r*3E/N, (r+1)*3E/N), i.e. whole heads
[r*H/N, (r+1)*H/N) of q, k and v.  fc_in is split by output columns (its bias with it),
out_proj and fc_out by input rows (the rows of the rank's heads and of its fc_in columns), so
each rank's attention and MLP outputs are partial sums; CodeGen's parallel block adds both to
the residual together, so ONE all-reduce per layer sums them.  Layer norms and fc_out's bias
are replicated (the bias is added once, after the reduce).  The embedding is replicated (a
step reads one row of it); lm_head is replicated by default or, with `vocab_parallel`, split
by vocabulary columns with a gather of the logits.

Only 4 % N == 0 splits qkv_proj into whole mp shards: N in {1, 2, 4} for every variant.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import OptionError
from ..variants import Architecture

QKV_SHARDS = 4  # CodeGen's qkv_proj holds this many [q | v | k] shards (PaddleNLP's mp_num)


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
    vocab_parallel: bool = False  # lm_head split by vocabulary columns (logits gathered)

    def __post_init__(self):
        check_world(self.arch, self.world)
        if not 0 <= self.rank < self.world:
            raise ValueError(f"rank {self.rank} is outside 0..{self.world - 1}")
        if self.vocab_parallel and self.arch.vocab_size % self.world:
            raise OptionError(f"vocab_size {self.arch.vocab_size} does not split {self.world} "
                              "ways; keep lm_head replicated")

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
        if self.vocab_parallel and name == "lm_head.weight":
            return Shard(1, *self._block(self.arch.vocab_size))
        if self.vocab_parallel and name == "lm_head.bias":
            return Shard(0, *self._block(self.arch.vocab_size))
        return None  # ln_1, ln_f, fc_out.bias, wte (and lm_head unless vocab_parallel)

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
