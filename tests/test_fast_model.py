"""The fast forward against PaddleNLP's model (the reference): same logits, same tokens."""
from __future__ import annotations

import numpy as np
import pytest

from engine import OptionError, SamplingParams, load
from fakes import decode_rows, run_prompt

PROMPT = "def fibonacci(n):\n    if n < 2:\n        return n\n"


def nmse(ref: np.ndarray, got: np.ndarray) -> float:
    return float(((ref - got) ** 2).mean() / (ref ** 2).mean())


@pytest.fixture(scope="module")
def fast_gen(model_dirs):
    return load(model_dirs["modern"], impl="fast", prefix_cache_bytes=0)


@pytest.fixture(scope="module")
def tiny_gen(ref_gen):  # here the name means the reference model
    return ref_gen


def test_logits_match_the_reference(tiny_gen, fast_gen):
    ids = tiny_gen.tokenizer.encode(PROMPT)
    ref, got = tiny_gen.model.logits(ids), fast_gen.model.logits(ids)
    assert ref.shape == got.shape
    assert nmse(ref, got) <= 1e-6
    prefill_logits, _ = run_prompt(fast_gen.model, ids)  # one batched prefill, not step by step
    assert nmse(ref[-1], prefill_logits) <= 1e-6


@pytest.mark.parametrize("params", [
    SamplingParams(max_new_tokens=24, ignore_eos=True),
    SamplingParams(max_new_tokens=12, temperature=1.2, top_p=0.9, seed=5, n=3, ignore_eos=True),
    SamplingParams(max_new_tokens=12, stop=("(",), logprobs=2),
], ids=["greedy", "sampled-n3", "stop-logprobs"])
def test_same_tokens_as_the_reference(tiny_gen, fast_gen, params):
    ref, got = tiny_gen.generate(PROMPT, params), fast_gen.generate(PROMPT, params)
    assert [c.token_ids for c in got.choices] == [c.token_ids for c in ref.choices]
    assert [c.text for c in got.choices] == [c.text for c in ref.choices]
    assert [c.finish_reason for c in got.choices] == [c.finish_reason for c in ref.choices]


def test_long_prompt_and_truncation_match(tiny_gen, fast_gen):
    ids = list(range(10, 60)) * 3  # longer than the tiny context of 128
    params = SamplingParams(max_new_tokens=8, ignore_eos=True)
    ref, got = tiny_gen.generate(ids, params), fast_gen.generate(ids, params)
    assert got.truncated_tokens == ref.truncated_tokens == 30
    assert got.choices[0].token_ids == ref.choices[0].token_ids


def test_random_variant_is_the_same_model_in_both():
    ref, fast = load("random:tiny", impl="reference"), load("random:tiny", impl="fast")
    ids = list(range(40))
    assert nmse(ref.model.logits(ids), fast.model.logits(ids)) <= 1e-6
    # 600 prompt tokens: three attention blocks; with 20 new ones, three cache blocks
    ids = [int(i) for i in np.random.default_rng(1).integers(0, 256, 600)]
    params = SamplingParams(max_new_tokens=20, temperature=0.9, seed=2, n=2, ignore_eos=True)
    a, b = ref.generate(ids, params), fast.generate(ids, params)
    assert [c.token_ids for c in a.choices] == [c.token_ids for c in b.choices]


def test_unknown_impl():
    with pytest.raises(OptionError, match="impl 'turbo'"):
        load("random:tiny", impl="turbo")


@pytest.mark.parametrize("rotary_dim", [16, 4])
def test_rotary_over_the_whole_head_or_a_sliver(rotary_dim):
    import builders
    from engine.config import config_from_dict
    from engine.model import build_model
    from engine.runtime import parse_device

    cfg = builders.tiny_config(vocab_size=300, eos=299)
    cfg["rotary_dim"] = rotary_dim  # head dim is 16: nothing left unrotated at 16
    config = config_from_dict(cfg, "test")
    state = builders.random_state(cfg, seed=3)
    models = [build_model(state.items(), config, "float32", parse_device("cpu"), impl)
              for impl in ("reference", "fast")]
    ids = list(range(5, 90))
    assert nmse(models[0].logits(ids), models[1].logits(ids)) <= 1e-6
    assert models[1].param_count() == config.arch.param_count


@pytest.mark.parametrize("dtype,bound", [("float16", 1e-5), ("bfloat16", 1e-3)])
def test_half_precision_storage_with_float32_compute(model_dirs, ref_gen, dtype, bound):
    half = load(model_dirs["modern"], dtype=dtype, prefix_cache_bytes=0)
    layer = half.model.layers[0]
    assert str(layer.fc_in_w.dtype).endswith(dtype)  # the matrices are stored half size
    assert str(layer.fc_in_b.dtype).endswith("float32") and half.model.compute == "float32"
    ids = ref_gen.tokenizer.encode(PROMPT)
    assert nmse(ref_gen.model.logits(ids), half.model.logits(ids)) <= bound
    r = half.generate(PROMPT, SamplingParams(max_new_tokens=6, ignore_eos=True))
    assert r.completion_tokens == 6


def test_cache_room_for_the_first_new_token_and_never_past_the_context():
    from engine.fast_model import CACHE_BLOCK

    gen = load("random:tiny", prefix_cache_bytes=0)
    model = gen.model
    _, cache = run_prompt(model, list(range(CACHE_BLOCK)))
    assert cache.length == CACHE_BLOCK and cache.capacity > CACHE_BLOCK  # the next token fits
    keys = cache.data[0][0]
    assert keys.shape[2] == cache.capacity
    model.decode(np.asarray([1]), [cache])
    assert cache.data[0][0] is keys  # no growth, no copy, on the first decode step
    limit = gen.context_length
    _, full = run_prompt(model, [i % 256 for i in range(limit - 1)])
    model.decode(np.asarray([1]), [full])  # the very last position
    assert full.length == limit and full.capacity == limit == full.data[0][0].shape[2]


@pytest.mark.parametrize("rows", [1, 3, 5])
def test_numpy_decode_steps_equal_paddle_steps(rows):
    """On CPU in float32 decode steps run in numpy (engine/cpu_decode.py) over the model's own
    memory; Paddle's step stays for other dtypes and devices.  Both must agree, also across
    a KV-cache growth (the prompt ends 3 positions before a block boundary), for one row and
    for several (cpu_kernels.rows_times for every matrix)."""
    from engine.fast_model import CACHE_BLOCK

    gen = load("random:tiny", prefix_cache_bytes=0)
    model = gen.model
    assert model.numpy_decode is not None
    prompt = [(7 * i) % 256 for i in range(CACHE_BLOCK - 4)]
    fast, fast_tokens = decode_rows(model, prompt, 8, rows)
    kept, model.numpy_decode = model.numpy_decode, None
    try:
        slow, slow_tokens = decode_rows(model, prompt, 8, rows)
    finally:
        model.numpy_decode = kept
    assert fast_tokens == slow_tokens
    assert nmse(slow, fast) <= 1e-10


@pytest.mark.parametrize("numpy_step", [True, False], ids=["numpy", "paddle"])
def test_rows_at_different_positions_decode_together(numpy_step):
    """Sequences of different lengths in one decode step give each exactly the logits it
    gets alone (both decode paths: numpy on CPU, and the Paddle path GPUs take)."""
    model = load("random:tiny", prefix_cache_bytes=0).model
    kept = model.numpy_decode
    if not numpy_step:
        model.numpy_decode = None
    try:
        prompts = [[(3 * i + k) % 256 for i in range(n)] for k, n in enumerate((5, 40, 17, 90))]
        alone = []
        for prompt in prompts:
            logits, cache = run_prompt(model, prompt)
            steps = []
            token = int(logits.argmax())
            for _ in range(4):
                row = model.decode(np.asarray([token]), [cache])[0]
                steps.append(row)
                token = int(row.argmax())
            alone.append(np.stack(steps))
        caches, tokens = [], []
        for prompt in prompts:
            logits, cache = run_prompt(model, prompt)
            caches.append(cache)
            tokens.append(int(logits.argmax()))
        together = []
        for _ in range(4):
            rows = model.decode(np.asarray(tokens), caches)
            together.append(rows)
            tokens = rows.argmax(axis=-1).tolist()
        together = np.stack(together, axis=1)  # [sequences, steps, vocab]
        assert [c.length for c in caches] == [len(p) + 4 for p in prompts]
        for got, want in zip(together, alone):
            assert nmse(want, got) <= 1e-10
    finally:
        model.numpy_decode = kept


def test_cache_written_by_numpy_decode_serves_a_later_paddle_prefill():
    """The numpy step writes the Paddle cache tensors in place: a prompt continued with Paddle's
    prefill on top of decoded positions sees exactly what a fresh prefill computes."""
    gen = load("random:tiny", prefix_cache_bytes=0)
    model = gen.model
    prompt = list(range(40, 90))
    logits, cache = run_prompt(model, prompt)
    token = int(logits.argmax())
    model.decode(np.asarray([token]), [cache])
    more = [5, 6, 7]
    continued, _ = run_prompt(model, prompt + [token] + more, cache, start=len(prompt) + 1)
    fresh, _ = run_prompt(model, prompt + [token] + more)
    assert nmse(fresh, continued) <= 1e-10


def test_fork_trim_and_release():
    model = load("random:tiny", prefix_cache_bytes=0).model
    ids = list(range(60))
    logits, cache = run_prompt(model, ids)
    copy = model.fork(cache, 30, room=10)
    assert copy.length == 30 and cache.length == 60 and copy.capacity >= 40
    again, _ = run_prompt(model, ids, copy, start=30)
    assert nmse(logits, again) <= 1e-10
    model.trim(cache, 20)
    assert cache.length == 20
    redone, _ = run_prompt(model, ids, cache, start=20)
    assert nmse(logits, redone) <= 1e-10
    model.release(copy)
    assert copy.capacity == 0 and copy.nbytes == 0


def test_host_cache_positions_past_the_length_are_never_read(monkeypatch):
    """The CPU float32 cache is allocated unfilled (paddle.empty): positions at and past the
    length may hold anything.  Here they hold NaN in every cache the model allocates: a
    prefill, a second chunk that grows the cache (its positions copied), decode steps of rows
    at different lengths, and a fork give the logits of zero-filled caches."""
    import paddle

    model = load("random:tiny", prefix_cache_bytes=0).model
    assert model.host
    ids = [int(i) for i in np.random.default_rng(3).integers(0, 256, 300)]

    def run():
        first, cache = run_prompt(model, ids[:40])
        more = model.prefill(cache, ids[40:]).logits  # grows the cache past its first block
        short, other = run_prompt(model, ids[:7])
        steps = [model.decode(np.asarray([ids[0], ids[1]]), [cache, other]) for _ in range(3)]
        forked = model.fork(cache, 250, room=5)
        again = model.prefill(forked, ids[250:]).logits
        return np.concatenate([first[None], more[None], short[None], *steps, again[None]])

    monkeypatch.setattr(paddle, "empty", paddle.zeros)
    zeroed = run()
    monkeypatch.setattr(paddle, "empty", lambda shape, dtype: paddle.full(shape, np.nan, dtype))
    poisoned = run()
    assert not np.isnan(poisoned).any()
    np.testing.assert_array_equal(poisoned, zeroed)


def test_numpy_decode_for_every_dtype_on_cpu(model_dirs):
    from engine.quant import PackedMatrix

    half = load(model_dirs["modern"], dtype="bfloat16", prefix_cache_bytes=0)
    assert half.model.numpy_decode is not None  # packed weights, read by engine/cpu_kernels.py
    assert isinstance(half.model.layers[0].qkv_w, PackedMatrix)
