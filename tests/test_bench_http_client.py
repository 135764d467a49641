"""bench/http_client.py: the one client of cgbench, against a stub server on loopback."""
from __future__ import annotations

import pytest

from bench.errors import BenchError
from bench.http_client import CompletionClient, openai_path, read_metrics
from stub_server import STEP_S, StubHandler, stub_server


@pytest.fixture(scope="module")
def url():
    with stub_server() as base:
        yield base


def test_stream_times_every_event_and_the_ones_with_text(url):
    reply = CompletionClient(url).post({"prompt": "x", "max_tokens": 4, "stream": True})
    assert reply.ok and reply.status == 200
    assert len(reply.events) == 5  # an empty event, then one per token; [DONE] left out
    assert len(reply.event_times_ms) == 6 and len(reply.text_times_ms) == 4
    assert reply.event_times_ms[0] < reply.text_times_ms[0] <= reply.e2e_ms
    gaps = [b - a for a, b in zip(reply.text_times_ms, reply.text_times_ms[1:])]
    assert min(gaps) >= STEP_S * 1e3 * 0.9  # the stub waits between tokens
    assert reply.text == "t0t1t2t3"


def test_json_answer_and_its_usage(url):
    reply = CompletionClient(url + "/v1").post({"prompt": "x", "max_tokens": 3})
    assert reply.ok and reply.text == "xxx" and reply.usage["completion_tokens"] == 3
    assert reply.events == [] and reply.e2e_ms >= 3 * STEP_S * 1e3 * 0.9


def test_error_answer_is_one_line_with_the_servers_message(url):
    reply = CompletionClient(url).post({"prompt": "x", "max_tokens": 500})
    assert not reply.ok and reply.status == 400
    assert reply.error == "HTTP 400: max_tokens too large"


def test_unreachable_server_is_a_reply_not_an_exception():
    reply = CompletionClient("http://127.0.0.1:9", timeout_s=2).post({"prompt": "x"})
    assert reply.status == 0 and not reply.ok and "Error" in reply.error


def test_keep_alive_reuses_one_connection_and_sends_the_headers(url):
    StubHandler.peers.clear()
    client = CompletionClient(url, keep_alive=True, headers={"User-Agent": "editor/1"})
    for _ in range(3):
        assert client.post({"prompt": "x", "max_tokens": 1}).ok
    client.close()
    assert len({addr for addr, _ in StubHandler.peers}) == 1
    assert all(h["User-Agent"] == "editor/1" for _, h in StubHandler.peers)
    StubHandler.peers.clear()
    one_shot = CompletionClient(url)
    for _ in range(2):
        assert one_shot.post({"prompt": "x", "max_tokens": 1}).ok
    assert len({addr for addr, _ in StubHandler.peers}) == 2


def test_body_given_as_text_is_sent_as_is(url):
    StubHandler.seen.clear()
    reply = CompletionClient(url).post('{\n  "prompt": "x",\n  "max_tokens": 2\n}')
    assert reply.ok and StubHandler.seen == [{"prompt": "x", "max_tokens": 2}]


@pytest.mark.parametrize("base, path", [
    ("http://h:1", "/v1/completions"), ("http://h:1/v1", "/v1/completions"),
    ("http://h:1/v1/", "/v1/completions"), ("http://h:1/x/completions", "/x/completions"),
])
def test_openai_path(base, path):
    assert openai_path(base) == path


def test_bad_url_is_a_one_line_error():
    with pytest.raises(BenchError, match="base URL"):
        CompletionClient("localhost:5000")


def test_metrics_of_an_unreachable_server_are_empty():
    assert read_metrics("http://127.0.0.1:9") == {}
