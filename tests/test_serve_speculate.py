"""Speculative warm-ups: the next line's prompt start, computed while the server is idle."""
from __future__ import annotations

import threading
import time

import httpx
import pytest
from click.testing import CliRunner

import serve.server
from bench.typing.session import fauxpilot_prompt
from engine import load
from engine.sampling import SamplingParams
from fakes import run_prompt
from serve.cli import main
from serve.config import ServeConfig
from serve.speculate import line_prefixes, next_line_prefix
from serve.testing import FakeGenerator, LiveServer

# 200 short, distinct lines: past line 150 the extension's prompt is a moving window
DOC = "".join(f"v{i} = {i % 7}\n" if i % 5 else f"def f{i}(x):\n" for i in range(200))
LINES = DOC.split("\n")


def prompt_on(line: int, typed: str) -> str:
    """The extension's prompt with the cursor on `line` (0-based) after typing `typed`."""
    return fauxpilot_prompt("\n".join(LINES[:line]) + "\n" + typed)


def test_prediction_is_the_start_of_the_next_lines_prompt():
    for line in (151, 160, 180):
        now = prompt_on(line, LINES[line][:3])
        later = prompt_on(line + 1, "    ")
        guess = next_line_prefix(now)
        assert guess is not None and later.startswith(guess)
        assert guess.endswith("\n") and len(later) - len(guess) < 30
        assert later.count("\n") == guess.count("\n") + 1  # only the new line is missing


def test_predictions_further_ahead_start_the_prompts_of_later_lines():
    for line in (151, 170):
        now = prompt_on(line, LINES[line][:3])
        guesses = line_prefixes(now, 3)
        assert len(guesses) == 3 and guesses[0] == next_line_prefix(now)
        for k, guess in enumerate(guesses, 1):
            later = prompt_on(line + k, "  ")
            assert later.startswith(guess)
            assert later.count("\n") == guess.count("\n") + k  # the k lines typed by then
            assert guess.endswith("\n") and guess.count("\n") == now.count("\n") - k
    lines = ["h0", "h1", "w0", "w1", "w2", "cur"]
    assert line_prefixes("\n".join(lines), 5, head_lines=2, window_lines=3) == \
        ["h0\nh1\nw1\nw2\n", "h0\nh1\nw2\n", "h0\nh1\n"]  # at most the window's lines
    assert line_prefixes("\n".join(lines), 0, head_lines=2, window_lines=3) == []
    assert line_prefixes(prompt_on(120, "x")) == []


def test_prediction_needs_the_window_shape():
    assert next_line_prefix(prompt_on(120, "x")) is None  # whole document: no window yet
    assert next_line_prefix(DOC) is None  # more lines than the window
    assert next_line_prefix(None) is None and next_line_prefix([1, 2, 3]) is None
    lines = ["h0", "h1", "w0", "w1", "w2", "cur"]
    assert next_line_prefix("\n".join(lines), head_lines=2, window_lines=3) == "h0\nh1\nw1\nw2\n"
    assert next_line_prefix("\n".join(lines), head_lines=2, window_lines=2) is None


@pytest.fixture(scope="module")
def gens():
    return load("random:tiny"), load("random:tiny", prefix_cache_bytes=0)


GREEDY = SamplingParams(max_new_tokens=4, temperature=0, ignore_eos=True)


def test_warm_makes_the_next_line_reuse_the_prediction(gens):
    gen, plain = gens
    now = prompt_on(170, LINES[170][:4])
    gen.generate(now, GREEDY)
    guess = next_line_prefix(now)
    warm = gen.warm(guess, chunk=64)
    n = len(gen.encode(guess))
    assert (warm.prompt_tokens, warm.cancelled, warm.skipped) == (n, False, None)
    assert warm.computed_tokens > 0 and warm.reused_tokens + warm.computed_tokens == n
    assert gen.warm(guess).skipped == "cached"  # again: nothing to do
    again = gen.generate(now + "x", GREEDY)  # the current line's own entry survived
    assert again.reused_tokens >= len(gen.encode(now)) - 2
    later = prompt_on(171, "    ")
    result = gen.generate(later, GREEDY)
    assert result.reused_tokens >= n - 2  # byte tokens: all of the prediction
    assert result.choices[0].token_ids == plain.generate(later, GREEDY).choices[0].token_ids


def test_warm_stops_between_chunks_and_keeps_its_work(gens, monkeypatch):
    gen, _ = gens
    cancel, chunks = threading.Event(), []
    real = gen.model.prefill

    def prefill(*args, **kwargs):  # cancel once two chunks have finished
        out = real(*args, **kwargs)
        chunks.append(out)
        if len(chunks) == 2:
            cancel.set()
        return out

    monkeypatch.setattr(gen.model, "prefill", prefill)
    guess = next_line_prefix(prompt_on(185, "y"))
    first = gen.warm(guess, cancel, chunk=100)
    assert first.cancelled and first.computed_tokens == 200
    monkeypatch.undo()
    rest = gen.warm(guess, chunk=100)
    assert rest.reused_tokens == first.reused_tokens + 200 and not rest.cancelled
    assert rest.reused_tokens + rest.computed_tokens == len(gen.encode(guess))


def test_warm_stops_within_a_chunk_between_layers(gens):
    """A set cancel stops the running chunk at the next layer; only whole chunks are kept."""
    gen, _ = gens

    class AfterChecks(threading.Event):
        def __init__(self, n):
            super().__init__()
            self.n = n

        def is_set(self):
            self.n -= 1
            return self.n < 0

    guess = next_line_prefix(prompt_on(188, "z"))
    first = gen.warm(guess, AfterChecks(2), chunk=100)  # the loop's check, then layer 0 runs
    assert first.cancelled and first.computed_tokens == 0
    rest = gen.warm(guess, chunk=100)
    assert not rest.cancelled and rest.reused_tokens == first.reused_tokens
    _, plain = gens
    later = prompt_on(189, "")
    assert gen.generate(later, GREEDY).choices[0].token_ids == \
        plain.generate(later, GREEDY).choices[0].token_ids


def test_warm_copies_the_shared_part_of_a_longer_entry(gens):
    """The current line's entry goes on past the prediction: the warm-up copies the shared
    part instead of recomputing it, and the entry keeps its end."""
    gen, _ = gens
    now = prompt_on(192, LINES[192][:4])
    gen.generate(now, GREEDY)
    guess = next_line_prefix(now)
    shared = gen.prefix_cache.match(gen.encode(guess))[0]
    warm = gen.warm(guess)
    assert warm.reused_tokens == shared > 0  # the head, copied from the current line's entry
    again = gen.generate(now + "x", GREEDY)
    assert again.reused_tokens >= len(gen.encode(now)) - 2
    # the warmed entry holds exactly what a fresh prefill computes: same logits after it
    later = gen.encode(prompt_on(193, "if x"))
    n, key, _, _ = gen.prefix_cache.match(later)
    assert n >= len(gen.encode(guess)) - 2
    cache = gen.model.fork(gen.prefix_cache.peek(key), n, len(later) - n)
    continued, _ = run_prompt(gen.model, later, cache, start=n)
    fresh, _ = run_prompt(gen.model, later)
    assert float(((continued - fresh) ** 2).mean() / (fresh ** 2).mean()) <= 1e-10


def test_a_warm_up_lines_later_takes_over_the_earlier_guess(gens):
    """A line's start warmed three lines ahead, then again one line ahead: the second warm-up
    extends the first one's entry by the lines typed in between (its last newline
    re-tokenised) instead of copying it, and the line's request gets the same tokens as
    without any cache."""
    gen, plain = gens
    now = prompt_on(170, LINES[170][:3])
    gen.generate(now, GREEDY)
    far = line_prefixes(now, 3)[2]  # the start of line 173's prompt, as known on line 170
    first = gen.warm(far)
    assert not first.cancelled and first.computed_tokens > 0
    nearer = prompt_on(172, LINES[172][:2])
    gen.generate(nearer, GREEDY)
    again = next_line_prefix(nearer)  # the same line's start, now with lines 170-171 in it
    assert again.startswith(far) and len(again) > len(far) + 16
    entries = len(gen.prefix_cache)
    second = gen.warm(again)
    assert second.reused_tokens >= first.prompt_tokens - 4  # taken over, not recomputed
    assert second.computed_tokens <= second.prompt_tokens - first.prompt_tokens + 4
    assert len(gen.prefix_cache) == entries  # extended in place: no copy left behind
    later = prompt_on(173, "  ")
    result = gen.generate(later, GREEDY)
    assert result.reused_tokens >= second.prompt_tokens - 2
    assert result.choices[0].token_ids == plain.generate(later, GREEDY).choices[0].token_ids


def test_a_warm_up_never_takes_over_a_requests_entry(gens):
    """A request's entry that ends a few tokens past the shared part (the line being typed)
    is copied from, never taken: the next request on that line still finds all of it."""
    gen, _ = gens
    now = prompt_on(178, LINES[178][:1])
    gen.generate(now, SamplingParams(max_new_tokens=1, temperature=0))
    guess = next_line_prefix(now)
    assert gen.warm(guess).computed_tokens > 0
    again = gen.generate(now + LINES[178][1:2], GREEDY)
    assert again.reused_tokens >= len(gen.encode(now)) - 2


def test_warm_does_nothing_without_a_prefix_cache(gens):
    _, plain = gens
    assert plain.warm("anything\n").skipped == "no-cache"


def metric(client: httpx.Client, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


BODY = {"max_tokens": 3, "temperature": 0, "stop": ["\n"]}


def test_server_warms_the_next_lines_while_idle(gens):
    gen, _ = gens
    with LiveServer(gen) as live, httpx.Client(base_url=live.url, timeout=60) as c:
        c.post("/v1/completions", json={**BODY, "prompt": prompt_on(160, LINES[160][:2])})
        wait_for(lambda: metric(c, 'cgserve_warmups_total{outcome="completed"}') >= 2
                 and metric(c, "cgserve_warmup_running") == 0)
        assert metric(c, "cgserve_warmups_started_total") == 2  # lines 161 and 162
        assert metric(c, "cgserve_warmups_pending") == 0
        assert metric(c, "cgserve_warmup_tokens_computed_total") > 0
        near, far = line_prefixes(prompt_on(160, LINES[160][:2]))
        # line 161 left blank: the window moved two lines, and line 162's guess covers it
        answer = c.post("/v1/completions", json={**BODY, "prompt": prompt_on(162, "")}).json()
        assert answer["usage"]["prompt_tokens_details"]["cached_tokens"] >= len(far) - 2


def test_outputs_are_the_same_with_and_without_speculation():
    texts = {}
    for speculate in (True, False):
        gen = load("random:tiny")
        with LiveServer(gen, speculate=speculate) as live, \
                httpx.Client(base_url=live.url, timeout=60) as c:
            out = []
            for line in (175, 176, 177):
                for typed in ("", LINES[line][:3]):
                    body = {**BODY, "max_tokens": 6, "stop": [], "prompt": prompt_on(line, typed)}
                    out.append(c.post("/v1/completions", json=body).json()["choices"][0]["text"])
                    if speculate:  # let the warm-up finish, so the next line uses it
                        wait_for(lambda: metric(c, "cgserve_warmup_running") == 0
                                 and metric(c, "cgserve_warmups_pending") == 0)
            warmed = metric(c, 'cgserve_warmups_total{outcome="completed"}')
            assert (warmed > 0) == speculate
        texts[speculate] = out
    assert texts[True] == texts[False]


class SlowWarmFake(FakeGenerator):
    """A fake engine whose warm-up takes 10 s in 20 ms chunks unless cancelled."""

    def __init__(self):
        super().__init__(context_length=4096, prefix_cache_bytes=1 << 20)
        self.warms: list[str] = []
        self.warming = threading.Event()

    def warm(self, text, cancel=None, chunk=None, client=None):
        from engine.generate import WarmResult

        self.warms.append(text)
        self.warming.set()
        for step in range(500):
            if cancel.is_set():
                return WarmResult(1, 0, step, cancelled=True)
            time.sleep(0.02)
        return WarmResult(1, 0, 500)


def test_a_request_cancels_a_running_warm_up_and_is_answered():
    fake = SlowWarmFake()
    with LiveServer(fake) as live, httpx.Client(base_url=live.url, timeout=30) as c:
        c.post("/v1/completions", json={**BODY, "prompt": prompt_on(160, "a")})
        assert fake.warming.wait(10)
        wait_for(lambda: metric(c, "cgserve_warmup_running") == 1)
        t0 = time.perf_counter()
        answer = c.post("/v1/completions", json={**BODY, "prompt": "short", "user": "other"})
        assert answer.status_code == 200 and time.perf_counter() - t0 < 2.0
        assert metric(c, 'cgserve_warmups_total{outcome="cancelled"}') == 1
        wait_for(lambda: len(fake.warms) >= 2)  # resumed once the queue was empty
        assert fake.warms[1] == fake.warms[0] == next_line_prefix(prompt_on(160, "a"))
        assert live.state.scheduler.pending_warmups == 1  # the line after, still to come
        # a newer prompt of the same client replaces its pending warm-ups
        c.post("/v1/completions", json={**BODY, "prompt": prompt_on(165, "b")})
        wait_for(lambda: len(fake.warms) >= 3)
        assert fake.warms[-1] == next_line_prefix(prompt_on(165, "b"))
        assert live.state.scheduler.pending_warmups == 1


def test_warm_ups_run_nearest_line_first_and_as_many_lines_as_asked():
    class QuickWarmFake(SlowWarmFake):
        def warm(self, text, cancel=None, chunk=None, client=None):
            from engine.generate import WarmResult

            self.warms.append(text)
            return WarmResult(1, 0, 1)

    for lines in (1, 3):
        fake = QuickWarmFake()
        with LiveServer(fake, speculate_lines=lines) as live, \
                httpx.Client(base_url=live.url, timeout=30) as c:
            c.post("/v1/completions", json={**BODY, "prompt": prompt_on(160, "a")})
            wait_for(lambda: len(fake.warms) >= lines and not live.state.scheduler.warming)
            time.sleep(0.1)
            assert fake.warms == line_prefixes(prompt_on(160, "a"), lines)


def test_hold_warmups_stops_and_holds_them():
    fake = SlowWarmFake()
    with LiveServer(fake) as live, httpx.Client(base_url=live.url, timeout=30) as c:
        scheduler = live.state.scheduler
        c.post("/v1/completions", json={**BODY, "prompt": prompt_on(160, "a")})
        assert fake.warming.wait(10)
        scheduler.hold_warmups(True)
        assert scheduler.wait_warmups_stopped(5) and not scheduler.warming
        assert scheduler.pending_warmups == 2  # kept for later, with the line after
        time.sleep(0.2)
        assert len(fake.warms) == 1
        scheduler.hold_warmups(False)
        wait_for(lambda: len(fake.warms) == 2)
        assert fake.warms[1] == fake.warms[0]  # the stopped one resumes first


def test_off_switch():
    fake = SlowWarmFake()
    with LiveServer(fake, speculate=False) as live, \
            httpx.Client(base_url=live.url, timeout=30) as c:
        c.post("/v1/completions", json={**BODY, "prompt": prompt_on(160, "a")})
        time.sleep(0.3)
        assert fake.warms == [] and metric(c, "cgserve_warmups_started_total") == 0
    plain = FakeGenerator()  # no warm() / no prefix cache: never speculates
    with LiveServer(plain) as live:
        assert live.state.scheduler.speculate is False


def test_cli_option_and_env_var(monkeypatch):
    seen = {}
    monkeypatch.setattr(serve.server, "run", lambda config, loader: seen.update(c=config) or 0)
    for key in [k for k in __import__("os").environ if k.startswith("CGSERVE_")]:
        monkeypatch.delenv(key)
    runner = CliRunner()
    assert runner.invoke(main, ["random:tiny"]).exit_code == 0 and seen["c"].speculate is True
    assert runner.invoke(main, ["random:tiny", "--no-speculate"]).exit_code == 0
    assert seen["c"].speculate is False
    monkeypatch.setenv("CGSERVE_SPECULATE", "0")
    assert runner.invoke(main, ["random:tiny"]).exit_code == 0 and seen["c"].speculate is False
    assert "--no-speculate" in runner.invoke(main, ["--help"]).output
    assert runner.invoke(main, ["random:tiny", "--speculate-lines", "3"]).exit_code == 0
    assert seen["c"].speculate_lines == 3
    bad = runner.invoke(main, ["random:tiny", "--speculate-lines", "0"])
    assert bad.exit_code != 0 and "--speculate-lines must be 1 to 8" in bad.output
    with pytest.raises(Exception, match="--no-speculate"):
        ServeConfig(model="random:tiny", speculate_lines=9)


def test_replay_runs_warm_ups_only_within_their_own_modes_segments():
    from bench.typing.replay import SpeculationGate, replay
    from bench.typing.session import plan_session

    warmer = SlowWarmFake()
    seen = []  # was the warmer's warm-up running while the other server worked?

    class Watching(FakeGenerator):
        def request(self, *args, **kwargs):
            seen.append(live_warm.state.scheduler.warming)
            return super().request(*args, **kwargs)

    other = Watching(context_length=1 << 16)
    text = DOC
    segments = plan_session(text, 160, 163, cps=200, pause_ms=(5, 10), pause_prob=0.3)
    with LiveServer(warmer) as live_warm, LiveServer(other) as live_other:
        gates = {"reuse": SpeculationGate(live_warm.state.scheduler),
                 "no-reuse": SpeculationGate(live_other.state.scheduler)}
        outcomes = replay({"reuse": live_warm.url, "no-reuse": live_other.url}, text, segments,
                          3, gates=gates)
        # held after the last segment: the next two lines' warm-ups wait
        assert live_warm.state.scheduler.pending_warmups == 2
    assert warmer.warms and seen and not any(seen)
    assert all(o.status == 200 for o in outcomes)
