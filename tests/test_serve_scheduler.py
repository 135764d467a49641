"""The server's scheduler over the engine's batch: concurrent requests decode together,
admission by KV budget (wait, never fail), the never-fitting request is a 400, and one
client's cancel leaves the others' rows alone."""
from __future__ import annotations

import httpx

from serve.testing import FakeGenerator, LiveServer
from test_serve_app import assert_error, post_in_thread, wait_for


def test_concurrent_requests_decode_in_one_batch():
    fake = FakeGenerator(step_s=0.01, context_length=1 << 12)
    rows = []
    decode = fake.model.decode

    def counting(tokens, caches):
        rows.append(len(caches))
        return decode(tokens, caches)

    fake.model.decode = counting
    with LiveServer(fake) as live:
        results = []
        threads = [post_in_thread(live.url, {"prompt": f"p{i}", "max_tokens": 40}, results)
                   for i in range(4)]
        for t in threads:
            t.join()
        assert [r.status_code for r in results] == [200] * 4
        assert all(r.json()["choices"][0]["text"] == ("hello world\nsecond line\n" * 2)[:40]
                   for r in results)
        assert max(rows) >= 2  # rows of different requests shared decode steps
        assert live.state.scheduler.running == 0 and live.state.scheduler.waiting == 0


def test_kv_budget_full_waits_then_answers():
    fake = FakeGenerator(step_s=0.005, context_length=1 << 12)
    need = fake.batch.need_bytes(2, __import__("engine").SamplingParams(max_new_tokens=20),
                                 fake.context_length)
    rows, decode = [], fake.model.decode
    fake.model.decode = lambda tokens, caches: rows.append(len(caches)) or decode(tokens, caches)
    with LiveServer(fake, kv_cache_mb=need * 1.5 / 2**20) as live:  # one request at a time
        results = []
        threads = [post_in_thread(live.url, {"prompt": "ab", "max_tokens": 20}, results)
                   for _ in range(3)]
        wait_for(lambda: live.state.scheduler.waiting >= 1)  # the others wait for room
        for t in threads:
            t.join()
        assert [r.status_code for r in results] == [200] * 3
        assert max(rows) == 1  # never two requests' rows at once: the budget held one
        with httpx.Client(base_url=live.url, timeout=10) as c:  # can never fit: one clear 400
            r = c.post("/v1/completions", json={"prompt": "ab", "max_tokens": 20, "n": 2})
            assert_error(r, 400)
            assert "--kv-cache-mb" in r.json()["error"]["message"]


def test_one_clients_disconnect_leaves_the_other_untouched():
    fake = FakeGenerator(step_s=0.01, context_length=1 << 12)
    with LiveServer(fake) as live:
        results = []
        keep = post_in_thread(live.url, {"prompt": "a", "max_tokens": 30, "user": "keep"},
                              results)
        wait_for(lambda: live.state.scheduler.running == 1)
        with httpx.Client(base_url=live.url, timeout=0.2) as c:
            try:
                c.post("/v1/completions", json={"prompt": "b", "max_tokens": 3000, "user": "x"})
            except httpx.TimeoutException:
                pass  # hung up while it decodes beside the other
        keep.join()
        assert results[0].status_code == 200
        assert results[0].json()["choices"][0]["text"] == ("hello world\nsecond line\n" * 2)[:30]
        wait_for(lambda: live.state.scheduler.running == 0)
        assert fake.results[-1].choices[0].finish_reason in ("length", "cancelled")
        assert any(r.choices[0].finish_reason == "cancelled" for r in fake.results)
