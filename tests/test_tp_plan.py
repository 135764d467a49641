"""Tensor-parallel shard plan and shard readers: the shards reassemble into the full tensors."""
from __future__ import annotations

import pickle
from collections import Counter

import numpy as np
import pytest

import builders
from engine.config import config_from_dict
from engine.errors import OptionError, WeightFileError
from engine.model import random_arrays
from engine.tensor_parallel.plan import ShardPlan, check_world, parse_world
from engine.tensor_parallel.shards import random_shards, read_shards
from engine.variants import ARCHITECTURES, TINY, Architecture
from engine.weights import read_weights, write_pdparams


def _assemble(plans, per_rank: list[dict]) -> dict:
    out = {}
    for name in per_rank[0]:
        s = plans[0].shard(name)
        if s is None:
            for arrays in per_rank[1:]:
                np.testing.assert_array_equal(arrays[name], per_rank[0][name])
            out[name] = per_rank[0][name]
        else:
            out[name] = np.concatenate([arrays[name] for arrays in per_rank], axis=s.axis)
    return out


@pytest.mark.parametrize("world", [1, 2, 4])
@pytest.mark.parametrize("size", ["350M", "2B", "6B", "16B"])
def test_plan_covers_every_tensor(size, world):
    arch = ARCHITECTURES[size]
    plans = [ShardPlan(arch, r, world) for r in range(world)]
    full = arch.tensor_shapes()
    assert plans[0].n_head * world == arch.n_head
    for name, shape in full.items():
        s = plans[0].shard(name)
        local = [p.local_shape(name, shape) for p in plans]
        if s is None:
            assert all(loc == shape for loc in local)
        else:
            assert sum(loc[s.axis] for loc in local) == shape[s.axis]
            assert [p.shard(name).start for p in plans] == [
                r * shape[s.axis] // world for r in range(world)]
    total = sum(p.local_bytes(2) for p in plans)
    assert total >= arch.weight_bytes("float16")


def test_qkv_block_is_whole_mp_shards_of_whole_heads():
    arch = ARCHITECTURES["16B"]
    e = arch.n_embd
    for world in (2, 4):
        for r in range(world):
            s = ShardPlan(arch, r, world).shard("transformer.h.0.attn.qkv_proj.weight")
            mp = 3 * e // 4  # one [q | v | k] shard
            assert s.start % mp == 0 and (s.stop - s.start) == mp * 4 // world
            out = ShardPlan(arch, r, world).shard("transformer.h.0.attn.out_proj.weight")
            # the out_proj rows are the rank's heads: mp shards r*4/N .. of E/4 rows each
            assert (out.start, out.stop) == (s.start // 3, s.stop // 3)


@pytest.mark.parametrize("world, fragment", [
    (3, "must divide 4"), (8, "must divide 4"), (0, "give the number"), ("two", "give the number"),
    (-2, "give the number")])
def test_bad_world_is_one_clear_error(world, fragment):
    with pytest.raises(OptionError, match=fragment) as info:
        check_world(ARCHITECTURES["16B"], parse_world(world))
    assert "\n" not in str(info.value) and "--tensor-parallel" in str(info.value)


def test_heads_that_do_not_split():
    arch = Architecture(n_layer=1, n_embd=48, n_head=4, rotary_dim=4)  # 4 heads: N=4 fine
    check_world(arch, 4)
    odd = Architecture(n_layer=1, n_embd=64, n_head=4, rotary_dim=4, n_inner=130)
    with pytest.raises(OptionError, match="MLP"):
        check_world(odd, 4)


def _tiny_config():
    return config_from_dict(TINY.arch.config_dict(), "tiny")


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("vocab_parallel", [False, True])
def test_random_shards_match_random_arrays(world, vocab_parallel):
    config = _tiny_config()
    full = {n: np.array(a) for n, a in random_arrays(config, seed=3)}
    plans = [ShardPlan(config.arch, r, world, vocab_parallel) for r in range(world)]
    per_rank = [dict(random_shards(config, p, seed=3)) for p in plans]
    for p, arrays in zip(plans, per_rank):
        assert {n: a.shape for n, a in arrays.items()} == p.local_shapes()
    joined = _assemble(plans, per_rank)
    assert joined.keys() == full.keys()
    for name in full:
        np.testing.assert_array_equal(joined[name], full[name], err_msg=name)


@pytest.mark.parametrize("n_merges", [60, 61])  # 323 tokens: whole; 324: split by vocabulary
@pytest.mark.parametrize("fmt", ["pdparams", "safetensors"])
@pytest.mark.parametrize("world", [2, 4])
def test_file_shards_reassemble_and_each_tensor_is_read_once(tmp_path, fmt, world, n_merges):
    cfg = builders.write_model_dir(tmp_path / "m", fmt=fmt, n_merges=n_merges)
    config = config_from_dict(cfg, "tiny")
    assert ShardPlan(config.arch, 0, world).vocab_parallel == (n_merges == 61)
    path = tmp_path / "m" / ("model_state.pdparams" if fmt == "pdparams" else "model.safetensors")
    full = read_weights(path)
    plans = [ShardPlan(config.arch, r, world) for r in range(world)]
    per_rank = []
    for p in plans:
        reads = Counter()
        per_rank.append(dict(read_shards(path, config, p, reads)))
        assert set(reads) == set(full) and set(reads.values()) == {1}
        assert {n: a.shape for n, a in per_rank[-1].items()} == p.local_shapes()
    joined = _assemble(plans, per_rank)
    for name in full:
        np.testing.assert_array_equal(joined[name], full[name], err_msg=name)


@pytest.mark.parametrize("fmt", ["pdparams", "safetensors"])
def test_stored_int8_shards_carry_their_scales(tmp_path, fmt):
    """A cast int8 file split 2 ways: each rank's int8 block comes with the scales of its
    output channels (a block of them where the matrix splits its outputs, all of them where
    it splits its inputs), and the blocks reassemble the stored data and scales exactly."""
    from convert.cast import cast_dir
    from engine.quant import SCALE_SUFFIX, QuantizedArray, attach_scales

    cfg = builders.write_model_dir(tmp_path / "m", fmt=fmt, n_merges=61)  # vocabulary splits
    cast_dir(tmp_path / "m", tmp_path / "q", "int8")
    config = config_from_dict(cfg, "tiny")
    path = tmp_path / "q" / ("model_state.pdparams" if fmt == "pdparams" else "model.safetensors")
    full = attach_scales(read_weights(path), path)
    plans = [ShardPlan(config.arch, r, 2) for r in range(2)]
    per_rank = [dict(read_shards(path, config, p)) for p in plans]
    quantized = [n for n, a in full.items() if isinstance(a, QuantizedArray)]
    assert "transformer.h.0.attn.out_proj.weight" in quantized and len(quantized) > 4
    for name in quantized:
        blocks = [rank[name] for rank in per_rank]
        assert all(isinstance(b, QuantizedArray) for b in blocks), name
        data = _assemble(plans, [{name: b.q} for b in blocks])[name]
        np.testing.assert_array_equal(data, full[name].q, err_msg=name)
        split_outputs = plans[0].shard(name + SCALE_SUFFIX) is not None
        scales = np.concatenate([b.scale for b in blocks]) if split_outputs else blocks[0].scale
        np.testing.assert_array_equal(scales, full[name].scale, err_msg=name)
    assert plans[0].shard("transformer.h.0.attn.out_proj.weight" + SCALE_SUFFIX) is None
    assert plans[0].shard("transformer.h.0.mlp.fc_in.weight" + SCALE_SUFFIX) is not None


def test_a_stored_int8_file_with_a_scale_missing_is_one_error(tmp_path):
    from convert.cast import cast_dir
    from engine.weights import write_safetensors

    cfg = builders.write_model_dir(tmp_path / "m", fmt="safetensors")
    cast_dir(tmp_path / "m", tmp_path / "q", "int8")
    path = tmp_path / "q" / "model.safetensors"
    tensors = read_weights(path)
    del tensors["transformer.h.1.mlp.fc_in.weight.scale"]
    write_safetensors(path, tensors, {"format": "pt"})
    config = config_from_dict(cfg, "tiny")
    with pytest.raises(WeightFileError, match=r"fc_in\.weight is int8 but transformer\.h\.1\."
                       r"mlp\.fc_in\.weight\.scale is missing.*cast it again"):
        read_shards(path, config, ShardPlan(config.arch, 0, 2))


def test_pdparams_split_pieces_and_generic_tuples_and_masks(tmp_path):
    """Paddle's protocol-2 `name@@.N` pieces and (param_name, array) values; mask buffers go."""
    cfg = builders.tiny_config(300, 299)
    config = config_from_dict(cfg, "tiny")
    state = builders.random_state(cfg)
    obj = {k: (f"param_{i}", v) for i, (k, v) in enumerate(state.items())}
    wte = obj.pop("transformer.wte.weight")[1]
    flat = wte.reshape(-1)
    obj["transformer.wte.weight@@.0"], obj["transformer.wte.weight@@.1"] = flat[:5000], flat[5000:]
    obj["UnpackBigParamInfor@@"] = {"transformer.wte.weight": {
        "OriginShape": list(wte.shape),
        "slices": ["transformer.wte.weight@@.0", "transformer.wte.weight@@.1"]}}
    obj["transformer.h.0.attn.causal_mask"] = np.ones((1, 1, 4, 4), bool)
    path = tmp_path / "model_state.pdparams"
    path.write_bytes(pickle.dumps(obj, protocol=2))
    plans = [ShardPlan(config.arch, r, 2) for r in range(2)]
    joined = _assemble(plans, [dict(read_shards(path, config, p)) for p in plans])
    assert joined.keys() == state.keys()
    for name in state:
        np.testing.assert_array_equal(joined[name], state[name], err_msg=name)


def test_pdparams_with_code_is_refused(tmp_path):
    import os

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "model_state.pdparams"
    path.write_bytes(pickle.dumps({"x": Evil()}, protocol=4))
    config = _tiny_config()
    with pytest.raises(WeightFileError, match="refusing to load: the pickle asks for"):
        list(read_shards(path, config, ShardPlan(config.arch, 0, 2)))


def test_shapes_are_checked_before_data(tmp_path):
    cfg = builders.write_model_dir(tmp_path / "m", fmt="safetensors")
    cfg["n_layer"] = 3
    config = config_from_dict(cfg, "three layers")
    with pytest.raises(Exception, match="missing"):
        read_shards(tmp_path / "m" / "model.safetensors", config, ShardPlan(config.arch, 0, 2))


@pytest.mark.parametrize("fmt", ["pdparams", "safetensors"])
def test_a_rank_never_holds_the_whole_file(tmp_path, fmt):
    """Peak memory while reading rank 0's half stays well under the file's size (the plain
    readers hold all of it, and the pickle's memo holds the raw bytes once more)."""
    import tracemalloc

    from engine.weights import write_safetensors

    arch = Architecture(n_layer=8, n_embd=128, n_head=4, rotary_dim=8, vocab_size=256,
                        n_positions=64)
    config = config_from_dict({**arch.config_dict(), "eos_token_id": 0, "pad_token_id": 0},
                              "eight layers")
    rng = np.random.default_rng(0)
    state = {n: rng.standard_normal(s).astype(np.float32) for n, s in arch.tensor_shapes().items()}
    path = tmp_path / ("model_state.pdparams" if fmt == "pdparams" else "model.safetensors")
    (write_pdparams if fmt == "pdparams" else write_safetensors)(path, state)
    size = path.stat().st_size
    del state
    tracemalloc.start()
    try:
        kept = dict(read_shards(path, config, ShardPlan(arch, 0, 2)))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    held = sum(a.nbytes for a in kept.values())
    assert held < 0.6 * size
    assert peak < 0.75 * size, f"peak {peak} bytes for a {size}-byte file"


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("size", ["350M", "2B", "6B", "16B"])
def test_the_vocabulary_is_split_by_default(size, world):
    """Every variant's 51200 divides 2 and 4: rank r holds vocabulary rows [r*V/N, (r+1)*V/N)
    of the embedding and the same columns of lm_head (PaddleNLP's [n_embd, V]) and its bias."""
    arch = ARCHITECTURES[size]
    v, e, rows = arch.vocab_size, arch.n_embd, arch.vocab_size // world
    for r in range(world):
        plan = ShardPlan(arch, r, world)
        assert plan.vocab_parallel and plan.vocab_size == rows
        shapes = plan.local_shapes()
        assert shapes["transformer.wte.weight"] == (rows, e)
        assert shapes["lm_head.weight"] == (e, rows) and shapes["lm_head.bias"] == (rows,)
        assert plan.shard("transformer.wte.weight") == plan.shard("lm_head.bias")
        assert (plan.shard("transformer.wte.weight").start, plan.shard("lm_head.weight").start) \
            == (r * rows, r * rows)
    assert not ShardPlan(arch, 0, 1).vocab_parallel and ShardPlan(arch, 0, 1).vocab_size == v


@pytest.mark.parametrize("size, replicated", [("350M", 0.65), ("2B", 0.55)])
def test_a_rank_of_two_holds_half_the_weights(size, replicated):
    """Issue 13's goal, each rank's weights <= 0.55x of one process's: met with the vocabulary
    split (about 0.50x), not for 350M with it whole (0.65x)."""
    arch = ARCHITECTURES[size]
    one = ShardPlan(arch, 0, 1).local_bytes(4)
    assert one == arch.weight_bytes("float32")
    assert 0.5 <= ShardPlan(arch, 0, 2).local_bytes(4) / one < 0.502
    whole = ShardPlan(arch, 0, 2, vocab_parallel=False).local_bytes(4) / one
    assert whole == pytest.approx(replicated, abs=0.005)


def test_a_vocabulary_that_does_not_divide_stays_whole():
    arch = Architecture(n_layer=1, n_embd=64, n_head=4, rotary_dim=8, vocab_size=322)
    plan = ShardPlan(arch, 1, 4)
    assert not plan.vocab_parallel and plan.shard("transformer.wte.weight") is None
    assert plan.local_shapes()["lm_head.weight"] == (64, 322)
    assert ShardPlan(arch, 1, 2).vocab_parallel  # 322 = 2 x 161
    with pytest.raises(OptionError, match="vocab_size 322 does not split 4 ways"):
        ShardPlan(arch, 0, 4, vocab_parallel=True)


def test_the_whole_layout_can_be_asked_for_and_a_bad_value_is_one_error(monkeypatch):
    from engine.tensor_parallel.plan import VOCAB_ENV

    arch = ARCHITECTURES["350M"]
    monkeypatch.setenv(VOCAB_ENV, "whole")
    assert not ShardPlan(arch, 0, 2).vocab_parallel
    monkeypatch.setenv(VOCAB_ENV, "halves")
    with pytest.raises(OptionError, match="CGW_TP_VOCAB='halves': use split"):
        ShardPlan(arch, 0, 2)
