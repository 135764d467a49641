"""Vocabulary parallelism: the embedding and lm_head split by vocabulary rows over the ranks.

Rank r of N holds vocabulary rows [r*V/N, (r+1)*V/N) of the token embedding (wte, [V, n_embd])
and of lm_head (stored [out, in] = [V, n_embd] by the fast model; PaddleNLP's [n_embd, V]
columns; plan.py says which block).  Two collectives make whole results of the halves:
- the embedding: each rank looks up its rows for the ids in its block and zeros for the other
  ids; one all-reduce (sum) of the [tokens, n_embd] rows gives every rank the whole embedding,
  exactly (each row's values come from one rank, the others add zeros);
- the logits: each rank computes its vocabulary columns; one all-gather lays them side by side,
  [rows, V], on every rank (rank 0 samples; the followers drop theirs).
The same calls for a Paddle tensor (prefill, the Paddle decode step; NCCL on GPUs, gloo on
CPU) and a numpy array (the CPU decode step, engine/cpu_decode.py): see remote.Channel.
"""
from __future__ import annotations

import numpy as np

EMBEDDING = "transformer.wte.weight"


class VocabSplit:
    """This rank's vocabulary rows [start, stop) and the collectives that join the ranks'.

    `reduce(x)`: sums x over the ranks in place and returns it; `gather(x)`: every rank's
    [rows, cols] side by side as numpy [rows, N * cols] (remote.Channel's all_reduce and
    all_gather)."""

    def __init__(self, start: int, stop: int, reduce, gather):
        self.start, self.stop, self.reduce, self.gather = start, stop, reduce, gather

    @classmethod
    def of(cls, plan, reduce, gather) -> "VocabSplit | None":
        """The split `plan` gives (None where every rank holds the whole vocabulary)."""
        block = plan.shard(EMBEDDING)
        return None if block is None else cls(block.start, block.stop, reduce, gather)

    @property
    def rows(self) -> int:
        return self.stop - self.start

    def local_ids(self, ids) -> tuple[np.ndarray, np.ndarray]:
        """(ids as rows of this rank's block, 0 for ids outside it; where the ids are inside)."""
        local = np.asarray(ids, np.int64) - self.start
        inside = (local >= 0) & (local < self.rows)
        return np.where(inside, local, 0), inside

    def embedding(self, rows, inside: np.ndarray):
        """The whole embedding from this rank's `rows` (looked up at `local_ids`, [..., n_embd],
        a numpy array or a Paddle tensor of its own): the rows of ids outside the block zeroed,
        then summed over the ranks."""
        if isinstance(rows, np.ndarray):
            rows[~inside] = 0.0
        else:
            from ..runtime import import_paddle

            mask = import_paddle().to_tensor(inside[..., None].astype(np.float32))
            rows = rows * mask.astype(rows.dtype)
        return self.reduce(rows)

    def logits(self, local) -> np.ndarray:
        """Logits [rows, V] (numpy float32) from this rank's columns [rows, V / N]."""
        return self.gather(local)
