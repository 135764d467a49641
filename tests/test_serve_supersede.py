"""A newer request from the same client cancels its stale ones; prefix reuse in /metrics."""
from __future__ import annotations

import json
import threading

import httpx
import pytest
from click.testing import CliRunner

import serve.server
from engine import SamplingParams, load
from serve.cli import main
from serve.supersede import client_key, extends
from serve.testing import FakeGenerator, LiveServer
from test_serve_app import metric, wait_for

HEAD = "import os\n" * 40  # 400 characters: the file's first lines
WINDOW = "".join(f"line_{i} = {i}\n" for i in range(60))


# ---- which requests are stale ----

def test_extends_typing_on():
    assert extends("def f", "def f(x")
    assert not extends("def f(x", "def f")  # shorter: a deletion, not typing on
    assert not extends("def f", "def f")  # the same prompt again is answered twice
    assert not extends("", "anything")
    assert not extends("def f", "class A")


def test_extends_fauxpilot_moving_window():
    lines = WINDOW.splitlines(keepends=True)
    old = HEAD + "".join(lines[0:50]) + "x = fo"
    new = HEAD + "".join(lines[1:50]) + "x = foo(1)\ny"  # one line dropped after the head
    assert extends(old, new)
    other_file = "# another file\n" * 30 + "".join(lines[1:50]) + "x = foo(1)\ny"
    assert not extends(old, other_file)
    assert not extends(old, HEAD + "".join(lines[1:50]) + "z = 1\n")  # old cursor text gone


def test_client_key():
    a = client_key(None, "Bearer k", "1.2.3.4", "OpenAI/JS 4.3.1")
    assert a == client_key(None, "Bearer k", "1.2.3.4", "OpenAI/JS 4.3.1")
    assert a != client_key(None, "Bearer k", "1.2.3.5", "OpenAI/JS 4.3.1")
    assert a != client_key(None, "Bearer k", "1.2.3.4", "curl/8")
    assert a != client_key(None, "Bearer other", "1.2.3.4", "OpenAI/JS 4.3.1")
    # the `user` field names the client wherever it connects from
    assert client_key("ann", "Bearer k", "1.2.3.4", "x") == client_key("ann", "Bearer k", "5.6.7.8", "y")
    assert client_key("ann", "Bearer k", "1.2.3.4", "x") != client_key("bob", "Bearer k", "1.2.3.4", "x")
    assert "Bearer k" not in a  # the key itself is not kept


# ---- the server ----

def post_in_thread(url, body, results, key, headers=None):
    def run():
        with httpx.Client(timeout=30, headers=headers) as c:
            results[key] = c.post(url + "/v1/completions", json=body)
    thread = threading.Thread(target=run)
    thread.start()
    return thread


def record_submits(live) -> list:
    """The jobs handed to the scheduler, in order (a sync point for the tests)."""
    scheduler, submitted = live.state.scheduler, []
    submit = scheduler.submit

    def recording(*args, **kwargs):
        job = submit(*args, **kwargs)
        submitted.append(job)
        return job

    scheduler.submit = recording
    return submitted


def burst(live, fake, prompts, headers_for=lambda i: None, extra=None):
    """First prompt running (held at the gate), the others queued one by one; then release."""
    results, threads = {}, []
    submitted = record_submits(live)
    for i, prompt in enumerate(prompts):
        body = {"prompt": prompt, "max_tokens": 5, **(extra or {})}
        threads.append(post_in_thread(live.url, body, results, i, headers_for(i)))
        if i == 0:
            wait_for(fake.started.is_set)
        else:
            wait_for(lambda: len(submitted) == i + 1)
    fake.gate.set()
    for thread in threads:
        thread.join()
    return [results[i] for i in range(len(prompts))]


def test_burst_of_keystrokes_keeps_only_the_newest():
    fake = FakeGenerator(gate=threading.Event())
    with LiveServer(fake) as live:
        first, second, third = burst(live, fake, ["def f", "def f(x", "def f(x):"])
        for stale in (first, second):
            assert stale.status_code == 200
            assert stale.headers["x-cgserve-superseded"] == "true"
            assert stale.json()["choices"] == [{"text": "", "index": 0, "logprobs": None,
                                                 "finish_reason": "length"}]
        assert "x-cgserve-superseded" not in third.headers
        assert third.json()["choices"][0]["text"] == "hello"
        # the running one was stopped before its first token; the queued one never ran
        assert [call[0] for call in fake.calls] == ["def f", "def f(x):"]
        assert fake.results[0].completion_tokens == 0
        with httpx.Client(base_url=live.url) as c:
            assert metric(c, 'cgserve_cancelled_total{reason="superseded"}') == 2
        wait_for(lambda: live.state.active == 0 and not live.state.scheduler.busy)
        assert live.state.scheduler.depth == 0


def test_other_clients_and_unrelated_prompts_are_not_cancelled():
    fake = FakeGenerator(gate=threading.Event())
    agents = ["editor-a", "editor-b", "editor-a"]
    with LiveServer(fake) as live:
        # b extends a's prompt but is another client; the third is a's other file
        results = burst(live, fake, ["def f", "def f(x", "class B:"],
                        headers_for=lambda i: {"User-Agent": agents[i]})
        assert [r.json()["choices"][0]["text"] for r in results] == ["hello"] * 3
        assert not any("x-cgserve-superseded" in r.headers for r in results)


def test_user_field_names_the_client():
    fake = FakeGenerator(gate=threading.Event())
    agents = ["ua-1", "ua-2"]  # one user, two connections that look different
    with LiveServer(fake) as live:
        first, second = burst(live, fake, ["def f", "def f(x"], extra={"user": "ann"},
                              headers_for=lambda i: {"User-Agent": agents[i]})
        assert first.headers["x-cgserve-superseded"] == "true"
        assert second.json()["choices"][0]["text"] == "hello"


def test_no_supersede_answers_every_request():
    fake = FakeGenerator(gate=threading.Event())
    with LiveServer(fake, supersede=False) as live:
        results = burst(live, fake, ["def f", "def f(x", "def f(x):"])
        assert [r.json()["choices"][0]["text"] for r in results] == ["hello"] * 3
        with httpx.Client(base_url=live.url) as c:
            assert metric(c, 'cgserve_cancelled_total{reason="superseded"}') == 0


def test_superseded_stream_ends_cleanly():
    fake = FakeGenerator(gate=threading.Event())
    with LiveServer(fake) as live:
        results = burst(live, fake, ["def f", "def f(x", "def f(x):"], extra={"stream": True})
        queued = results[1]  # dropped before it started: still a well-formed stream
        assert queued.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in queued.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert [c["choices"][0]["text"] for c in chunks] == [""]
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert results[0].headers["x-cgserve-superseded"] == "true"  # stopped before a token
        running = [line for line in results[0].text.splitlines() if line.startswith("data: ")]
        assert running[-1] == "data: [DONE]"
        assert json.loads(running[-2][6:])["choices"][0]["finish_reason"] == "length"
        assert "".join(json.loads(e[6:])["choices"][0]["text"] for e in running[:-1]) == ""
        newest = [json.loads(line[6:]) for line in results[2].text.splitlines()
                  if line.startswith("data: {")]
        assert "".join(c["choices"][0]["text"] for c in newest) == "hello"


# ---- prefix reuse with the real (tiny) model ----

class Gated:
    """A real generator whose requests wait at a gate before reaching the engine."""

    def __init__(self, generator):
        self.generator, self.gate, self.started = generator, threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self.generator, name)

    def request(self, prompt, params, cancel, emit, on_done, client=None, on_start=None):
        def start(req):  # the engine takes it up: hold the worker at the gate
            self.started.set()
            self.gate.wait()
            if on_start is not None:
                on_start(req)
        return self.generator.request(prompt, params, cancel, emit, on_done, client, start)


PROMPT = "def fibonacci(n):\n    if n < 2:\n        return n\n" * 6


@pytest.fixture(scope="module")
def reuse_gen():
    return load("random:tiny")


def test_metrics_count_reused_and_computed_tokens(reuse_gen):
    with LiveServer(reuse_gen) as live, httpx.Client(base_url=live.url, timeout=60) as c:
        body = {"prompt": PROMPT, "max_tokens": 4, "temperature": 0}
        first = c.post("/v1/completions", json=body).json()["usage"]
        second = c.post("/v1/completions", json={**body, "prompt": PROMPT + "    # next"}).json()
        cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
        assert cached >= len(PROMPT) - 1  # byte tokens: the whole first prompt
        reused = metric(c, "cgserve_prompt_tokens_reused_total")
        computed = metric(c, "cgserve_prompt_tokens_computed_total")
        assert reused == cached
        assert reused + computed == first["prompt_tokens"] + second["usage"]["prompt_tokens"]
        assert 0 < metric(c, "cgserve_prefix_cache_bytes") <= \
            metric(c, "cgserve_prefix_cache_budget_bytes")


def test_reuse_off_computes_every_token():
    generator = load("random:tiny", prefix_cache_bytes=0)
    with LiveServer(generator) as live, httpx.Client(base_url=live.url, timeout=60) as c:
        for prompt in (PROMPT, PROMPT + "    # next"):
            usage = c.post("/v1/completions", json={"prompt": prompt, "max_tokens": 4}).json()["usage"]
            assert "prompt_tokens_details" not in usage
        assert metric(c, "cgserve_prompt_tokens_reused_total") == 0
        assert metric(c, "cgserve_prompt_tokens_computed_total") == 2 * len(PROMPT) + 10
        assert metric(c, "cgserve_prefix_cache_budget_bytes") == 0


def test_superseded_request_costs_no_prompt_work(reuse_gen):
    gated = Gated(reuse_gen)
    computed_before = reuse_gen.prefix_cache.computed_tokens
    with LiveServer(gated) as live:
        results, submitted = {}, record_submits(live)
        old_prompt, new_prompt = PROMPT + "# a", PROMPT + "# a comment\n"
        first = post_in_thread(live.url, {"prompt": old_prompt, "max_tokens": 50}, results, 0)
        wait_for(gated.started.is_set)
        second = post_in_thread(live.url, {"prompt": new_prompt, "max_tokens": 4,
                                           "temperature": 0}, results, 1)
        wait_for(lambda: len(submitted) == 2)  # the newer one is in: the old one cancelled
        gated.gate.set()
        first.join()
        second.join()
        assert results[0].headers["x-cgserve-superseded"] == "true"
        assert results[0].json()["choices"][0]["text"] == ""
        usage = results[1].json()["usage"]
        cached = usage["prompt_tokens_details"]["cached_tokens"]
        # the stale request was cancelled before its prompt ran: only the newer one computed
        assert reuse_gen.prefix_cache.computed_tokens - computed_before == \
            usage["prompt_tokens"] - cached
        expected = reuse_gen.generate(new_prompt, SamplingParams(max_new_tokens=4, temperature=0))
        assert results[1].json()["choices"][0]["text"] == expected.text


# ---- options ----

@pytest.mark.parametrize("args, env, supersede, cache_bytes", [
    ([], {}, True, None),
    (["--no-supersede", "--prefix-cache-mb", "0"], {}, False, 0),
    ([], {"CGSERVE_SUPERSEDE": "false", "CGSERVE_PREFIX_CACHE_MB": "8"}, False, 8 << 20),
])
def test_options_turn_supersede_and_reuse_off(captured, args, env, supersede, cache_bytes):
    result = CliRunner().invoke(main, ["random:tiny", *args], env=env)
    assert result.exit_code == 0, result.output
    config = captured["config"]
    assert config.supersede is supersede
    assert config.load_kwargs().get("prefix_cache_bytes") == cache_bytes
