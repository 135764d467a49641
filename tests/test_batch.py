"""Continuous batching (engine/batch.py): requests decoding together give each exactly what it
gets alone; rows join and leave between steps; cancellation, failures and admission are per
request."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from engine import OptionError, SamplingParams, load
from engine.tokenizer import ByteTokenizer
from fakes import scripted_generator

PROMPTS = ["def fibonacci(n):\n", "import os\nimport sys\n\n\ndef main(argv):\n    ",
           "x = [i * i for i in range(10)]\n# print the squares\n", "class A:\n    pass\n" * 8]
PARAMS = [
    SamplingParams(max_new_tokens=12, ignore_eos=True),
    SamplingParams(max_new_tokens=9, temperature=0.9, top_p=0.95, seed=7, ignore_eos=True),
    SamplingParams(max_new_tokens=14, temperature=1.1, top_k=20, seed=3, n=3, ignore_eos=True),
    SamplingParams(max_new_tokens=10, stop=("e",), logprobs=2, presence_penalty=0.4),
]


@pytest.fixture(scope="module")
def engines():
    """The same random tiny model twice: one serves requests alone, one batches them."""
    return load("random:tiny", prefix_cache_bytes=0), load("random:tiny", prefix_cache_bytes=0)


def run_together(gen, prompts, params, starts=None):
    """Submit requests (request i before step `starts[i]`) and step the batch until all are
    done; returns the results and, per step, the rows decoded together."""
    starts = starts or [0] * len(prompts)
    events = [[] for _ in prompts]
    reqs = [gen.request(p, sp, threading.Event(), events[i].append, lambda r: None)
            for i, (p, sp) in enumerate(zip(prompts, params))]
    step, rows = 0, []
    while not all(r.finished for r in reqs):
        for i, req in enumerate(reqs):
            if starts[i] == step:
                gen.submit(req)
        gen.step()
        rows.append(gen.batch.last_batch_rows)
        step += 1
    return reqs, events, rows


def same(a, b):
    assert [c.token_ids for c in a.choices] == [c.token_ids for c in b.choices]
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    assert [c.finish_reason for c in a.choices] == [c.finish_reason for c in b.choices]
    for x, y in zip(a.choices, b.choices):
        np.testing.assert_allclose(x.logprobs, y.logprobs, rtol=1e-4, atol=1e-4)
        assert [sorted(t) for t in x.top_logprobs] == [sorted(t) for t in y.top_logprobs]


def test_every_request_in_a_batch_equals_it_alone(engines):
    alone_gen, batch_gen = engines
    alone = [alone_gen.generate(p, sp) for p, sp in zip(PROMPTS, PARAMS)]
    reqs, events, rows = run_together(batch_gen, PROMPTS, PARAMS)
    assert max(rows) == 1 + 1 + 3 + 1  # every row of every request in one step
    for req, want, evs in zip(reqs, alone, events):
        assert req.error is None
        same(req.result, want)
        for choice in req.result.choices:  # the stream adds up to the text
            assert "".join(e.text for e in evs if e.index == choice.index) == choice.text


def test_requests_join_and_leave_mid_batch(engines):
    alone_gen, batch_gen = engines
    alone = [alone_gen.generate(p, sp) for p, sp in zip(PROMPTS, PARAMS)]
    reqs, _, rows = run_together(batch_gen, PROMPTS, PARAMS, starts=[0, 3, 5, 9])
    for req, want in zip(reqs, alone):
        same(req.result, want)
    assert rows[1] == 1 and max(rows) > 1  # alone at first; others joined between steps


def test_a_long_prompt_is_prefilled_in_chunks_between_decode_steps():
    from engine import reuse

    gen = load("random:tiny", prefix_cache_bytes=0)
    gen.batch.chunk = 16
    short = gen.request("ab", SamplingParams(max_new_tokens=30, ignore_eos=True),
                        threading.Event(), lambda e: None, lambda r: None)
    long_ids = [int(t) for t in np.random.default_rng(2).integers(0, 256, 100)]
    chunks, decodes, order = [], [], []
    real_prefill, real_decode = gen.model.prefill, gen.model.decode

    def prefill(cache, tokens, cancel=None, resume=None):
        chunks.append(len(tokens))
        order.append("p")
        return real_prefill(cache, tokens, cancel, resume)

    def decode(tokens, caches):
        order.append("d")
        return real_decode(tokens, caches)

    gen.model.prefill, gen.model.decode = prefill, decode
    try:
        gen.submit(short)
        gen.step()  # the short prompt, whole
        long = gen.request(long_ids, SamplingParams(max_new_tokens=3, ignore_eos=True),
                           threading.Event(), lambda e: None, lambda r: None)
        gen.submit(long)
        while not (short.finished and long.finished):
            gen.step()
    finally:
        del gen.model.prefill, gen.model.decode
    assert chunks[1:] == [16] * 6 + [4]  # 100 tokens in chunks of 16
    # the running request decoded between every two chunks of the long prompt
    first, last = order.index("p", 1), len(order) - 1 - order[::-1].index("p")
    between = order[first:last + 1]
    assert all(a != b for a, b in zip(between, between[1:]))
    assert reuse.PREFILL_CHUNK >= 16
    fresh = load("random:tiny", prefix_cache_bytes=0)
    assert long.result.choices[0].token_ids == fresh.generate(
        long_ids, SamplingParams(max_new_tokens=3, ignore_eos=True)).choices[0].token_ids


def test_cancelling_one_row_leaves_the_others_untouched(engines):
    alone_gen, batch_gen = engines
    alone = [alone_gen.generate(p, sp) for p, sp in zip(PROMPTS[:2], PARAMS[:2])]
    cancel = threading.Event()
    events = []
    victim = batch_gen.request(PROMPTS[2], PARAMS[2], cancel, events.append, lambda r: None)
    others = [batch_gen.request(p, sp, threading.Event(), lambda e: None, lambda r: None)
              for p, sp in zip(PROMPTS[:2], PARAMS[:2])]
    for req in [victim] + others:
        batch_gen.submit(req)
    for _ in range(4):
        batch_gen.step()
    cancel.set()
    while not all(r.finished for r in others + [victim]):
        batch_gen.step()
    assert [c.finish_reason for c in victim.result.choices] == ["cancelled"] * 3
    assert 0 < victim.result.completion_tokens < 3 * PARAMS[2].max_new_tokens
    for req, want in zip(others, alone):
        same(req.result, want)


def test_a_failing_request_fails_alone():
    tok = ByteTokenizer()
    gen = scripted_generator([ord("a")] * 5 + [ord("!")] + [ord("b")] * 50, tok)
    gen.model.fail_on = ord("!")  # decoding this token raises inside the model
    params = SamplingParams(max_new_tokens=12)
    done = []
    bad = gen.request("bad", params, threading.Event(), lambda e: None, done.append)
    gen.submit(bad)
    gen.step()
    gen.step()  # the good one joins two steps later and stops before the script's "!"
    good = gen.request("good", SamplingParams(max_new_tokens=5), threading.Event(),
                       lambda e: None, done.append)
    gen.submit(good)
    shared = []
    while not (bad.finished and good.finished):
        gen.step()
        shared.append(gen.batch.last_batch_rows)
    assert isinstance(bad.error, RuntimeError) and bad.result is None
    assert good.error is None and good.result.text == "aaaaa"
    assert done == [bad, good] and 2 in shared  # they were in the failing step together


def test_admission_waits_for_room_and_never_passes_the_oldest():
    tok = ByteTokenizer()
    gen = scripted_generator([ord("a")] * 100, tok, max_batch=2)
    reqs = [gen.request(str(i), SamplingParams(max_new_tokens=4 + i, ignore_eos=True, n=n),
                        threading.Event(), lambda e: None, lambda r: None)
            for i, n in enumerate((1, 2, 1))]
    for req in reqs:
        gen.submit(req)
    gen.step()
    assert [r.start is not None for r in reqs] == [True, False, False]  # 1 + 2 rows > 2
    while not reqs[0].finished:
        gen.step()
    gen.step()
    assert reqs[1].start is not None and reqs[2].start is None  # the n=2 one, not the later one
    while not all(r.finished for r in reqs):
        gen.step()
    assert max(gen.model.rows_per_decode) <= 2


def test_kv_budget_admits_what_fits_and_refuses_what_never_can():
    tok = ByteTokenizer()
    gen = scripted_generator([ord("a")] * 100, tok)
    per_request = gen.batch.need_bytes(2, SamplingParams(max_new_tokens=8), gen.context_length)
    gen.batch.kv_budget_bytes = per_request  # room for one request at a time
    reqs = [gen.request("ab", SamplingParams(max_new_tokens=8, ignore_eos=True), threading.Event(),
                        lambda e: None, lambda r: None) for _ in range(3)]
    for req in reqs:
        gen.submit(req)
    while not all(r.finished for r in reqs):
        gen.step()
        assert gen.batch.bytes_in_use <= per_request
    assert max(gen.model.rows_per_decode) == 1
    with pytest.raises(OptionError, match="--kv-cache-mb"):
        gen.request("ab", SamplingParams(max_new_tokens=8, n=2), threading.Event(),
                    lambda e: None, lambda r: None)
    with pytest.raises(OptionError, match="--max-batch"):
        gen.request("ab", SamplingParams(max_new_tokens=8, n=9), threading.Event(),
                    lambda e: None, lambda r: None)


def test_generate_from_two_threads_batches_them():
    tok = ByteTokenizer()
    both_in = threading.Event()
    gen = scripted_generator([ord("a")] * 100, tok, on_decode=lambda n: both_in.wait(10))
    submit, submitted = gen.submit, []

    def counting_submit(req):  # the first decode waits until both requests are in
        submit(req)
        submitted.append(req)
        if len(submitted) == 2:
            both_in.set()
        return req

    gen.submit = counting_submit
    results = {}

    def run(key):
        results[key] = gen.generate(key, SamplingParams(max_new_tokens=40, ignore_eos=True))

    threads = [threading.Thread(target=run, args=(k,)) for k in ("p", "q")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert [r.completion_tokens for r in results.values()] == [40, 40]
    assert max(gen.model.rows_per_decode) == 2  # the two callers shared decode steps


def test_default_kv_budget_fits_the_memory_left():
    from engine.generate import default_kv_budget

    context = 100
    assert default_kv_budget(8, context, None, 0) == 800  # unknown memory: max_batch contexts
    assert default_kv_budget(8, context, 10_000, 0) == 800
    assert default_kv_budget(8, context, 1_000, 100) == 400  # half of what is free, less the prefix cache
    assert default_kv_budget(8, context, 10, 0) == 100  # one full context always runs
