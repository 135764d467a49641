"""The server's routes, errors, auth, CORS, queueing, cancellation and shutdown (fake engine)."""
from __future__ import annotations

import math
import json
import logging
import socket
import threading
import time

import httpx
import pytest

from serve.testing import FakeGenerator, LiveServer

ERROR_KEYS = {"message", "type", "param", "code"}


def wait_for(condition, timeout_s=10.0):
    """Poll until `condition()` holds (a sync point, not a timing assertion)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.005)


def assert_error(response, status, code=None, param=None):
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == ERROR_KEYS
    assert error["message"] and "Traceback" not in error["message"]
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param
    return error


@pytest.fixture(scope="module")
def live():
    with LiveServer(FakeGenerator(), max_body_bytes=4096) as server:
        yield server


@pytest.fixture
def client(live):
    with httpx.Client(base_url=live.url, timeout=10) as c:
        yield c


def metric(client, line_start):
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# ---- routes ----

@pytest.mark.parametrize("path", ["/v1/completions", "/v1/engines/codegen/completions",
                                  "/v1/engines/copilot-codex/completions"])
def test_completion_routes(client, path):
    r = client.post(path, json={"prompt": "def f(", "max_tokens": 20, "stop": ["\n"]})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["choices"][0]["text"] == "hello world"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + \
        body["usage"]["completion_tokens"]


def test_stream_false_is_not_a_stream(client):
    r = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 3, "stream": False})
    assert r.headers["content-type"] == "application/json"
    assert r.json()["choices"][0]["text"] == "hel"


def read_sse(response):
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            events.append(line[6:])
    return events


def test_stream_is_token_deltas_then_done(client):
    with client.stream("POST", "/v1/completions",
                       json={"prompt": "x", "max_tokens": 5, "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = read_sse(r)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) == 5  # one per token, not one blob
    assert len({c["id"] for c in chunks}) == 1
    assert "".join(c["choices"][0]["text"] for c in chunks) == "hello"
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * 4 + ["length"]
    assert all(c["object"] == "text_completion" for c in chunks)


def test_stream_with_n_and_usage(client):
    with client.stream("POST", "/v1/completions",
                       json={"prompt": "x", "max_tokens": 3, "stream": True, "n": 2,
                             "stream_options": {"include_usage": True}}) as r:
        chunks = [json.loads(e) for e in read_sse(r)[:-1]]
    texts = {0: "", 1: ""}
    for c in chunks[:-1]:
        texts[c["choices"][0]["index"]] += c["choices"][0]["text"]
    assert texts == {0: "hel", 1: "hel"}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6


def test_stream_echo_sends_the_prompt_first(client):
    with client.stream("POST", "/v1/completions",
                       json={"prompt": "abc", "max_tokens": 2, "stream": True, "echo": True}) as r:
        chunks = [json.loads(e) for e in read_sse(r)[:-1]]
    assert chunks[0]["choices"][0]["text"] == "abc"
    assert "".join(c["choices"][0]["text"] for c in chunks) == "abche"


def test_stream_logprobs_per_token(client):
    with client.stream("POST", "/v1/completions",
                       json={"prompt": "ab", "max_tokens": 3, "stream": True, "logprobs": 1}) as r:
        chunks = [json.loads(e) for e in read_sse(r)[:-1]]
    lps = [c["choices"][0]["logprobs"] for c in chunks]
    assert [lp["tokens"] for lp in lps] == [["h"], ["e"], ["l"]]
    # the engine's log-softmax of the fake model's logits (chosen 0, runner-up -20)
    assert [lp["token_logprobs"] for lp in lps] == [[pytest.approx(-math.log1p(math.exp(-20)))]] * 3
    assert [lp["text_offset"] for lp in lps] == [[2], [3], [4]]


def test_stop_sequence_spanning_tokens_is_not_streamed(client):
    with client.stream("POST", "/v1/completions",
                       json={"prompt": "x", "max_tokens": 30, "stream": True,
                             "stop": "world"}) as r:
        chunks = [json.loads(e) for e in read_sse(r)[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == "hello "
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_models_health_metrics_openapi(client):
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == "random:tiny"
    assert client.get("/v1/models/random:tiny").json()["id"] == "random:tiny"
    assert_error(client.get("/v1/models/gpt-4"), 404, code="model_not_found")
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ready"
    spec = client.get("/openapi.json").json()
    assert "/v1/engines/{engine}/completions" in spec["paths"]
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    for name in ("cgserve_requests_total", "cgserve_request_latency_seconds_bucket",
                 "cgserve_ttft_seconds_count", "cgserve_completion_tokens_total",
                 "cgserve_queue_depth", "cgserve_ready 1"):
        assert name in metrics.text


def test_metrics_count_requests_and_tokens(client):
    before = metric(client, 'cgserve_requests_total{route="completions",status="200"}')
    tokens = metric(client, "cgserve_completion_tokens_total")
    client.post("/v1/completions", json={"prompt": "x", "max_tokens": 4})
    assert metric(client, 'cgserve_requests_total{route="completions",status="200"}') == before + 1
    assert metric(client, "cgserve_completion_tokens_total") == tokens + 4
    client.post("/v1/completions", content=b"{")
    assert metric(client, 'cgserve_requests_total{route="completions",status="400"}') >= 1


# ---- errors ----

@pytest.mark.parametrize("body", [
    b"{", b"not json", b"[]", b'{"prompt": 1}', b'{"max_tokens": -1}', b'{"temperature": 9}',
    b'{"stop": ["a","b","c","d","e"]}', b'{"n": 1000}', b'{"logprobs": 99}', b'\xff',
    b'{"max_tokens": 10000}', b'{"top_p": 0}', b'{"prompt": {"a": 1}}', b'{"best_of": 4}',
])
def test_client_faults_are_400_never_5xx(client, body):
    assert_error(client.post("/v1/completions", content=body), 400)


def test_prompt_too_long_is_cut_from_the_left_by_default(client):
    r = client.post("/v1/completions", json={"prompt": "x" * 100, "max_tokens": 4})
    assert r.status_code == 200
    usage = r.json()["usage"]
    # 40 tokens must go (context 64, 4 new); the engine cuts in steps of (64 - 4) // 8 = 7: 42
    assert usage["truncated_prompt_tokens"] == 42 and usage["prompt_tokens"] == 58


def test_prompt_too_long_is_400_when_asked(client):
    assert_error(client.post("/v1/completions",
                             json={"prompt": "x" * 100, "max_tokens": 4, "truncate": False}),
                 400, code="context_length_exceeded", param="prompt")


def test_unknown_route_404(client):
    assert_error(client.get("/v2/whatever"), 404, code="not_found")
    assert_error(client.post("/v1/engines/codegen/complete", json={}), 404)


@pytest.mark.parametrize("method, path", [("GET", "/v1/completions"),
                                          ("PUT", "/v1/engines/codegen/completions"),
                                          ("DELETE", "/v1/models"), ("POST", "/health"),
                                          ("OPTIONS", "/v1/completions")])
def test_wrong_method_405_with_allow(client, method, path):
    r = client.request(method, path)
    assert_error(r, 405)
    assert r.headers["allow"]


def test_oversized_body_413(client):
    body = json.dumps({"prompt": "x" * 5000}).encode()
    assert_error(client.post("/v1/completions", content=body), 413, code="request_too_large")


def test_oversized_chunked_body_413(live):
    def chunks():
        for _ in range(10):
            yield b" " * 1000
    with httpx.Client(base_url=live.url, timeout=10) as c:  # generator content: chunked encoding
        assert_error(c.post("/v1/completions", content=chunks()), 413)


def test_no_access_control_header_without_cors(client):
    r = client.post("/v1/completions", json={"max_tokens": 1}, headers={"Origin": "http://x"})
    assert "access-control-allow-origin" not in r.headers


# ---- auth and CORS ----

def test_api_key():
    with LiveServer(FakeGenerator(), api_key="s3cret") as live, \
            httpx.Client(base_url=live.url, timeout=10) as c:
        body = {"prompt": "x", "max_tokens": 1}
        assert_error(c.post("/v1/completions", json=body), 401, code="invalid_api_key")
        assert_error(c.post("/v1/completions", json=body,
                            headers={"Authorization": "Bearer wrong"}), 401)
        assert_error(c.post("/v1/completions", json=body,
                            headers={"Authorization": "Basic s3cret"}), 401)
        assert_error(c.get("/v1/models"), 401)
        ok = c.post("/v1/engines/codegen/completions", json=body,
                    headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert c.get("/health").status_code == 200  # probes need no key


def test_cors_when_an_origin_is_given():
    with LiveServer(FakeGenerator(), cors_origin="http://localhost:3000") as live, \
            httpx.Client(base_url=live.url, timeout=10) as c:
        pre = c.options("/v1/completions", headers={
            "Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        assert pre.status_code == 204
        assert pre.headers["access-control-allow-origin"] == "http://localhost:3000"
        assert "POST" in pre.headers["access-control-allow-methods"]
        r = c.post("/v1/completions", json={"max_tokens": 1})
        assert r.headers["access-control-allow-origin"] == "http://localhost:3000"
        err = c.post("/v1/completions", content=b"{")
        assert err.headers["access-control-allow-origin"] == "http://localhost:3000"


# ---- loading, queueing, cancellation, timeouts, shutdown ----

def test_loading_then_ready():
    release = threading.Event()
    fake = FakeGenerator()

    def loader():
        release.wait(10)
        return fake

    with LiveServer(loader=loader) as live, httpx.Client(base_url=live.url, timeout=10) as c:
        health = c.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "loading"
        busy = c.post("/v1/completions", json={"prompt": "x"})
        assert_error(busy, 503, code="model_loading")
        assert int(busy.headers["retry-after"]) > 0
        release.set()
        wait_for(lambda: live.state.status == "ready")
        assert c.get("/health").json()["status"] == "ready"
        assert c.post("/v1/completions", json={"max_tokens": 2}).json()["choices"][0]["text"] == "he"


def post_in_thread(url, body, results, **kw):
    def run():
        with httpx.Client(timeout=20) as c:
            results.append(c.post(url + "/v1/completions", json=body, **kw))
    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_batch_settings_reach_the_scheduler():
    with LiveServer(FakeGenerator(), max_queue=3, max_batch=4, kv_cache_mb=2) as live:
        scheduler = live.state.scheduler
        assert (scheduler.max_queue, scheduler.max_batch, scheduler.kv_cache_bytes) == \
            (3, 4, 2 << 20)
    fake = FakeGenerator()
    with LiveServer(fake) as live:  # not given: the engine's defaults stay
        assert (live.state.scheduler.max_batch, live.state.scheduler.kv_cache_bytes) == \
            (8, fake.batch.kv_budget_bytes)
        assert fake.batch.kv_budget_bytes == 8 * fake.context_length * fake.model.kv_bytes_per_token()


def test_full_queue_is_503_with_retry_after():
    gate = threading.Event()
    fake = FakeGenerator(gate=gate)
    with LiveServer(fake, max_queue=1) as live:
        results = []
        first = post_in_thread(live.url, {"max_tokens": 2}, results)
        wait_for(fake.started.is_set)
        second = post_in_thread(live.url, {"max_tokens": 2}, results)
        wait_for(lambda: live.state.scheduler.depth == 1)
        with httpx.Client(base_url=live.url, timeout=10) as c:
            r = c.post("/v1/completions", json={"max_tokens": 2})
            assert_error(r, 503, code="queue_full")
            assert int(r.headers["retry-after"]) >= 1
            assert c.get("/health").status_code == 200  # still responsive while generating
        gate.set()
        first.join()
        second.join()
        assert [r.status_code for r in results] == [200, 200]


def raw_post(url, body: dict, stream=False) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    data = json.dumps({**body, "stream": stream}).encode()
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
    return sock


def test_disconnect_cancels_running_generation():
    fake = FakeGenerator(step_s=0.01, context_length=1 << 20)
    with LiveServer(fake) as live:
        sock = raw_post(live.url, {"max_tokens": 5000})
        wait_for(fake.started.is_set)
        sock.close()
        wait_for(lambda: not live.state.scheduler.busy and live.state.active == 0)
        assert fake.results[-1].choices[0].finish_reason == "cancelled"
        assert fake.results[-1].completion_tokens < 5000
        with httpx.Client(base_url=live.url) as c:
            assert metric(c, 'cgserve_cancelled_total{reason="disconnect"}') == 1


def test_stream_disconnect_cancels_generation():
    fake = FakeGenerator(step_s=0.01, context_length=1 << 20)
    with LiveServer(fake) as live:
        sock = raw_post(live.url, {"max_tokens": 5000}, stream=True)
        assert b"data: " in sock.recv(4096)  # streaming has begun
        sock.close()
        wait_for(lambda: not live.state.scheduler.busy and live.state.active == 0)
        assert fake.results[-1].choices[0].finish_reason == "cancelled"


def test_disconnect_while_queued_drops_the_work():
    gate = threading.Event()
    fake = FakeGenerator(gate=gate)
    with LiveServer(fake) as live:
        results = []
        first = post_in_thread(live.url, {"prompt": "first", "max_tokens": 2}, results)
        wait_for(fake.started.is_set)
        sock = raw_post(live.url, {"prompt": "second", "max_tokens": 2})
        wait_for(lambda: live.state.scheduler.depth == 1)
        sock.close()
        wait_for(lambda: live.state.scheduler.depth == 0)
        gate.set()
        first.join()
        wait_for(lambda: live.state.active == 0 and not live.state.scheduler.busy)
        assert [call[0] for call in fake.calls] == ["first"]  # "second" never reached the engine


def test_timeout_cuts_generation_short():
    fake = FakeGenerator(step_s=0.02, context_length=1 << 20)
    with LiveServer(fake, request_timeout_s=0.3) as live, \
            httpx.Client(base_url=live.url, timeout=10) as c:
        r = c.post("/v1/completions", json={"max_tokens": 5000})
        assert r.status_code == 200
        assert r.json()["choices"][0]["finish_reason"] == "length"
        assert r.json()["usage"]["completion_tokens"] < 5000
        assert metric(c, 'cgserve_cancelled_total{reason="timeout"}') == 1


def test_timeout_while_queued_is_503():
    gate = threading.Event()
    fake = FakeGenerator(gate=gate)
    with LiveServer(fake, request_timeout_s=0.3) as live:
        results = []
        first = post_in_thread(live.url, {"max_tokens": 2}, results)
        wait_for(fake.started.is_set)
        with httpx.Client(base_url=live.url, timeout=10) as c:
            assert_error(c.post("/v1/completions", json={"max_tokens": 2}), 503,
                         code="queue_timeout")
        gate.set()
        first.join()
        assert results[0].status_code == 200


def test_shutdown_lets_in_flight_requests_finish():
    fake = FakeGenerator(step_s=0.01, context_length=1 << 20)
    with LiveServer(fake) as live:
        results = []
        thread = post_in_thread(live.url, {"max_tokens": 30}, results)
        wait_for(fake.started.is_set)
        live.shutdown(grace_s=30)
        thread.join()
        assert results[0].status_code == 200
        assert results[0].json()["choices"][0]["finish_reason"] == "length"
        assert results[0].json()["usage"]["completion_tokens"] == 30
        with pytest.raises(httpx.TransportError):  # no longer listening
            httpx.post(live.url + "/v1/completions", json={}, timeout=5)


def test_shutdown_grace_over_cancels_the_rest():
    fake = FakeGenerator(step_s=0.01, context_length=1 << 20)
    with LiveServer(fake) as live:
        results = []
        thread = post_in_thread(live.url, {"max_tokens": 100000}, results)
        wait_for(fake.started.is_set)
        live.shutdown(grace_s=0.05)
        thread.join()
        assert results[0].status_code == 200
        assert results[0].json()["usage"]["completion_tokens"] < 100000


def test_access_log_has_no_prompt_text(caplog):
    secret = "def my_private_function_xyz():"
    with caplog.at_level(logging.INFO, logger="serve.access"), \
            LiveServer(FakeGenerator()) as live, httpx.Client(base_url=live.url) as c:
        c.post("/v1/completions", json={"prompt": secret, "max_tokens": 3})
        wait_for(lambda: any("/v1/completions" in r.getMessage() for r in caplog.records))
    lines = [r.getMessage() for r in caplog.records if r.name == "serve.access"]
    assert any("completion_tokens=3" in line for line in lines)
    assert not any("my_private_function" in line or "hel" in line.split("/v1/completions")[1]
                   for line in lines)
