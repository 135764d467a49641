"""Reusing the KV cache of earlier prompts: same outputs, fewer tokens computed."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from engine import SamplingParams, load
from engine.prefix_cache import PrefixCache, common_prefix
from fakes import run_prompt


@pytest.fixture(scope="module")
def pair():
    """The same random model (same seed) with and without reuse."""
    return load("random:tiny", impl="fast"), load("random:tiny", impl="fast", prefix_cache_bytes=0)


def typing_prompts(n=6, seed=0):
    rng = np.random.default_rng(seed)
    text = "".join(chr(c) for c in rng.integers(97, 123, 300))
    return [text[: 200 + 7 * i] for i in range(n)]


def test_outputs_identical_with_and_without_reuse(pair):
    with_reuse, without = pair
    params = SamplingParams(max_new_tokens=12, ignore_eos=True)
    reused_total = 0
    for prompt in typing_prompts():
        a, b = with_reuse.generate(prompt, params), without.generate(prompt, params)
        assert a.choices[0].token_ids == b.choices[0].token_ids
        reused_total += a.reused_tokens
        assert b.reused_tokens == 0
    assert reused_total > 5 * 190  # every prompt after the first reused its predecessor
    assert with_reuse.prefix_cache.reused_tokens >= reused_total


def test_logits_identical_after_reuse(pair):
    with_reuse, _ = pair
    model = with_reuse.model
    ids = list(range(30, 130))
    fresh, _ = run_prompt(model, ids)
    _, cache = run_prompt(model, ids[:70])
    resumed, _ = run_prompt(model, ids, cache, start=60)  # back off below what it holds
    nmse = ((fresh - resumed) ** 2).mean() / (fresh ** 2).mean()
    assert nmse <= 1e-6
    # a long remainder on top of a cached prefix: several attention and cache blocks
    long_ids = [int(i) for i in np.random.default_rng(5).integers(0, 256, 700)]
    fresh, _ = run_prompt(model, long_ids)
    _, cache = run_prompt(model, long_ids[:100])
    resumed, _ = run_prompt(model, long_ids, cache, start=100)
    assert ((fresh - resumed) ** 2).mean() / (fresh ** 2).mean() <= 1e-6


def test_a_cancelled_request_leaves_a_consistent_entry(pair):
    with_reuse, without = pair
    prompt = typing_prompts(seed=3)[0]
    cancel = threading.Event()
    stream = with_reuse.stream(prompt, SamplingParams(max_new_tokens=50, ignore_eos=True), cancel)
    for i, _ in enumerate(stream):
        if i == 3:
            cancel.set()
    assert stream.result.finish_reason == "cancelled"
    params = SamplingParams(max_new_tokens=8, ignore_eos=True)
    a, b = with_reuse.generate(prompt + "xyz", params), without.generate(prompt + "xyz", params)
    assert a.reused_tokens > 0 and a.choices[0].token_ids == b.choices[0].token_ids


def test_sampling_n_choices_with_reuse(pair):
    with_reuse, without = pair
    prompt = typing_prompts(seed=4)[0]
    params = SamplingParams(max_new_tokens=6, temperature=1.0, seed=9, n=3, ignore_eos=True)
    with_reuse.generate(prompt, params)
    a, b = with_reuse.generate(prompt + "q", params), without.generate(prompt + "q", params)
    assert a.reused_tokens == len(prompt)
    assert [c.token_ids for c in a.choices] == [c.token_ids for c in b.choices]


def test_budget_evicts_least_recently_used():
    cache = PrefixCache(budget_bytes=250)
    cache.put([1, 2, 3], "a", 100)
    cache.put([4, 5, 6], "b", 100)
    cache.put([7, 8, 9], "c", 100)  # over budget: "a" goes
    assert len(cache) == 2 and cache.used_bytes == 200
    assert cache.take([1, 2, 3, 4]) == (None, 0)
    assert cache.take([4, 5, 6, 7]) == ("b", 3)
    assert cache.take([4, 5, 6, 7]) == (None, 0)  # taken: owned by that request now


def test_budget_too_small_for_one_prompt_works_without_reuse(caplog):
    cache = PrefixCache(budget_bytes=10)
    with caplog.at_level("WARNING", logger="engine"):
        cache.put([1, 2], "x", 100)
        cache.put([1, 2], "x", 100)
    assert len(cache) == 0
    assert sum("smaller than one prompt" in r.message for r in caplog.records) == 1


def test_at_least_one_prompt_token_is_recomputed():
    cache = PrefixCache(budget_bytes=1000)
    cache.put([1, 2, 3], "a", 1)
    assert cache.take([1, 2, 3]) == ("a", 2)


def test_match_counts_a_warm_entry_a_few_tokens_longer_as_a_prefix():
    cache = PrefixCache(budget_bytes=1000)
    cache.put([1, 2, 3, 9], "guess", 10, warm=True)  # its last token re-tokenises later
    cache.put([1, 2, 3, 8], "request", 10)
    want = [1, 2, 3, 4, 5]
    assert cache.match(want) == (3, 0, None, 0)  # neither is a prefix
    best, _, whole_key, whole = cache.match(want, warm_slack=1)
    assert (best, whole) == (3, 3) and cache.pop_partial(whole_key) == ("guess", None)
    assert cache.match(want, warm_slack=1)[2:] == (None, 0)  # a request's entry never counts


def test_common_prefix():
    assert common_prefix(np.array([1, 2, 3]), np.array([1, 2, 4, 5])) == 2
    assert common_prefix(np.array([1, 2]), np.array([1, 2, 3])) == 2
    assert common_prefix(np.array([], dtype=np.int64), np.array([1])) == 0


def test_cancel_during_a_long_prompt_keeps_what_was_computed():
    from engine.reuse import PREFILL_CHUNK

    gen = load("random:tiny", impl="fast")
    ids = [int(i) for i in np.random.default_rng(8).integers(0, 256, PREFILL_CHUNK * 2 + 100)]
    cancel = threading.Event()
    real = gen.model.prefill
    calls = []

    def prefill_then_cancel(cache, tokens, cancel=None, resume=None):
        calls.append(cache.length)
        out = real(cache, tokens, cancel, resume)
        cancel.set()  # as if the client went away after the first chunk
        return out

    gen.model.prefill = prefill_then_cancel
    r = gen.generate(ids, SamplingParams(max_new_tokens=5), cancel=cancel)
    assert r.finish_reason == "cancelled" and r.completion_tokens == 0 and calls == [0]
    del gen.model.prefill
    again = gen.generate(ids, SamplingParams(max_new_tokens=5, ignore_eos=True))
    assert again.reused_tokens == PREFILL_CHUNK  # the first chunk was kept
    fresh = load("random:tiny", impl="fast", prefix_cache_bytes=0)
    assert fresh.generate(ids, SamplingParams(max_new_tokens=5, ignore_eos=True)).choices[0].token_ids \
        == again.choices[0].token_ids


class CancelAfterBlocks:
    """Counts the model's layer calls; sets `cancel` once `n` have run."""

    def __init__(self, model, n: int):
        self.model, self.n, self.ran = model, n, 0
        self.cancel = threading.Event()
        self.real = model._block

    def __enter__(self):
        def block(*args, **kwargs):
            out = self.real(*args, **kwargs)
            self.ran += 1
            if self.ran >= self.n:
                self.cancel.set()
            return out

        self.model._block = block
        return self

    def __exit__(self, *exc):
        del self.model._block  # the class's method again


@pytest.mark.parametrize("stop_after", [1, 3])  # within the first chunk, within the second
def test_a_prompt_stopped_between_layers_goes_on_from_that_layer(stop_after):
    """A prefill cancelled part-way through a chunk keeps the layers it finished: the next
    request for a prompt going on with those tokens runs only the layers left for that
    chunk, and answers exactly as a fresh engine does."""
    from engine.reuse import PREFILL_CHUNK

    gen = load("random:tiny", impl="fast")
    n_layers = len(gen.model.layers)
    assert n_layers >= 2
    stop = 1 if stop_after == 1 else n_layers + 1  # in chunk 1 after 1 layer, or in chunk 2
    ids = [int(i) for i in np.random.default_rng(9).integers(0, 256, PREFILL_CHUNK + 100)]
    with CancelAfterBlocks(gen.model, stop) as first:
        r = gen.generate(ids, SamplingParams(max_new_tokens=3), cancel=first.cancel)
    assert r.finish_reason == "cancelled" and first.ran == stop
    longer = ids + [7, 8, 9]  # the next keystrokes
    with CancelAfterBlocks(gen.model, 10**9) as second:
        again = gen.generate(longer, SamplingParams(max_new_tokens=4, ignore_eos=True))
    # layers run the second time: the rest of the stopped chunk, then the tokens after it
    done_chunks, layers_done = divmod(stop, n_layers)
    chunk_end = min(len(ids), (done_chunks + 1) * PREFILL_CHUNK)  # the stopped chunk
    expected = (n_layers - layers_done) + (n_layers if chunk_end < len(longer) else 0)
    assert second.ran == expected
    assert again.reused_tokens == done_chunks * PREFILL_CHUNK
    fresh = load("random:tiny", impl="fast", prefix_cache_bytes=0)
    want = fresh.generate(longer, SamplingParams(max_new_tokens=4, ignore_eos=True))
    assert again.choices[0].token_ids == want.choices[0].token_ids


def test_a_stopped_chunk_is_not_resumed_for_other_tokens():
    gen = load("random:tiny", impl="fast")
    ids = [int(i) for i in np.random.default_rng(10).integers(0, 256, 300)]
    with CancelAfterBlocks(gen.model, 1) as first:
        gen.generate(ids, SamplingParams(max_new_tokens=3), cancel=first.cancel)
    other = ids[:100] + [(t + 1) % 256 for t in ids[100:]]  # same start, then different
    with CancelAfterBlocks(gen.model, 10**9) as second:
        result = gen.generate(other, SamplingParams(max_new_tokens=4, ignore_eos=True))
    assert second.ran == len(gen.model.layers)  # the whole chunk again, from layer 0
    fresh = load("random:tiny", impl="fast", prefix_cache_bytes=0)
    want = fresh.generate(other, SamplingParams(max_new_tokens=4, ignore_eos=True))
    assert result.choices[0].token_ids == want.choices[0].token_ids


def test_entries_belong_to_their_client():
    cache = PrefixCache(100)
    cache.put([1, 2, 3, 4], "alice's", 10, client="alice")
    assert cache.take([1, 2, 3, 4, 5], client="bob") == (None, 0)
    assert cache.match([1, 2, 3, 4, 5], client="bob")[0] == 0
    assert cache.take([1, 2, 3, 4, 5], client="alice") == ("alice's", 4)


def test_one_busy_client_cannot_evict_everyone_else():
    released = []
    cache = PrefixCache(40, release=released.append)
    cache.put([1], "bob-1", 10, client="bob")
    cache.put([2], "carol-1", 10, client="carol")
    for i in range(6):  # alice types fast: her entries push out her own oldest ones
        cache.put([10 + i], f"alice-{i}", 10, client="alice")
    assert cache.take([1, 0], client="bob") == ("bob-1", 1)
    assert cache.take([2, 0], client="carol") == ("carol-1", 1)
    assert cache.bytes_by_client() == {"alice": 20}
    assert released == ["alice-0", "alice-1", "alice-2", "alice-3"]  # evicted caches freed
    # of two clients holding the same, the one whose entry is older gives way
    cache = PrefixCache(30)
    cache.put([1], "a", 10, client="a")
    cache.put([2], "b", 10, client="b")
    cache.put([3], "c", 10, client="c")
    cache.put([4], "d", 10, client="d")
    assert sorted(cache.bytes_by_client()) == ["b", "c", "d"]


def test_a_request_of_one_client_reuses_its_own_entry_in_the_engine():
    gen = load("random:tiny", impl="fast")
    params = SamplingParams(max_new_tokens=4, ignore_eos=True)
    prompt = typing_prompts(seed=4)[0]
    gen.generate(prompt, params, client="alice")
    other = gen.generate(prompt + "xy", params, client="bob")
    own = gen.generate(prompt + "xy", params, client="alice")
    assert other.reused_tokens == 0 and own.reused_tokens >= len(prompt) - 1
    assert own.choices[0].token_ids == other.choices[0].token_ids
