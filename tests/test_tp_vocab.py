"""The vocabulary split's lookup, rank by rank in one process: each rank gives its rows for the
ids it holds and zeros for the rest, so the ranks' results sum to the whole embedding (the
collectives themselves run in tests/test_tp_generate.py, two and four processes over gloo)."""
from __future__ import annotations

import numpy as np
import pytest

from engine.tensor_parallel.plan import ShardPlan
from engine.tensor_parallel.vocab import EMBEDDING, VocabSplit
from engine.variants import Architecture

ARCH = Architecture(n_layer=1, n_embd=16, n_head=4, rotary_dim=2, vocab_size=40)
IDS = np.array([0, 9, 10, 19, 20, 29, 30, 39, 5, 5, 25])  # both sides of every boundary


def _identity(x):
    return x


def _splits(world: int):
    plans = [ShardPlan(ARCH, r, world) for r in range(world)]
    return plans, [VocabSplit.of(p, _identity, None) for p in plans]


@pytest.mark.parametrize("world", [2, 4])
def test_each_rank_looks_up_only_its_rows_and_they_sum_to_the_embedding(world):
    wte = np.random.default_rng(0).standard_normal((ARCH.vocab_size, ARCH.n_embd)).astype(
        np.float32)
    plans, splits = _splits(world)
    total = np.zeros((len(IDS), ARCH.n_embd), np.float32)
    for r, (plan, split) in enumerate(zip(plans, splits)):
        rows = plan.take(EMBEDDING, wte)
        assert rows.shape == (ARCH.vocab_size // world, ARCH.n_embd) == (split.rows, ARCH.n_embd)
        local, inside = split.local_ids(IDS)
        assert ((IDS >= split.start) & (IDS < split.stop) == inside).all()
        assert local.min() >= 0 and local.max() < split.rows
        out = split.embedding(rows[local], inside)
        np.testing.assert_array_equal(out[inside], wte[IDS[inside]])
        assert not out[~inside].any()
        total += out
    np.testing.assert_array_equal(total, wte[IDS])  # exact: one rank gives each row


def test_a_paddle_tensor_is_masked_the_same_way():
    from engine.runtime import import_paddle

    paddle = import_paddle()
    wte = np.arange(ARCH.vocab_size * ARCH.n_embd, dtype=np.float32).reshape(ARCH.vocab_size, -1)
    plans, splits = _splits(2)
    ids = IDS.reshape(1, -1)  # a prompt: [1, T]
    total = 0
    for plan, split in zip(plans, splits):
        local, inside = split.local_ids(ids)
        rows = paddle.nn.functional.embedding(paddle.to_tensor(local),
                                              paddle.to_tensor(np.array(plan.take(EMBEDDING, wte))))
        total = total + split.embedding(rows, inside).numpy()
    np.testing.assert_array_equal(total, wte[ids])


def test_no_split_where_the_vocabulary_is_whole():
    odd = Architecture(n_layer=1, n_embd=16, n_head=4, rotary_dim=2, vocab_size=41)
    assert VocabSplit.of(ShardPlan(odd, 0, 2), _identity, None) is None
    assert VocabSplit.of(ShardPlan(ARCH, 0, 1), _identity, None) is None
