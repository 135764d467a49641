"""cgbench load's fixed-length requests against a stub OpenAI-compatible server (bench/load/fixed.py)."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from bench.cli import main
from bench.errors import BenchError
from bench.load.fixed import LoadConfig
from bench.load.run import run_load
from stub_server import STEP_S, StubHandler, stub_server


@pytest.fixture(scope="module")
def stub_url():
    with stub_server() as url:
        yield url


def test_streaming_load_measures_ttft_itl_and_throughput(stub_url):
    StubHandler.seen.clear()
    s = run_load(LoadConfig(stub_url, concurrency=2, requests=6, prompt_tokens=20, max_tokens=5))
    assert (s["completed"], s["failed"]) == (6, 0)
    assert s["output_tokens"] == 30
    assert s["itl_ms"]["count"] == 6 * 4 and s["ttft_ms"]["count"] == 6
    assert s["itl_ms"]["p50"] >= STEP_S * 1e3 * 0.9  # the stub waits between tokens
    assert s["ttft_ms"]["mean"] < s["e2e_ms"]["mean"]
    assert s["ttft_ms"]["p50"] <= s["ttft_ms"]["p90"] <= s["ttft_ms"]["p99"]
    assert s["output_throughput_tokens_per_s"] == pytest.approx(30 / s["duration_s"])
    body = StubHandler.seen[0]
    assert body["stream"] is True and body["max_tokens"] == 5 and body["ignore_eos"] is True
    assert len(body["prompt"].split()) == 20


def test_non_streaming_load_uses_usage_counts(stub_url):
    s = run_load(LoadConfig(stub_url + "/v1", requests=2, max_tokens=3, stream=False))
    assert s["completed"] == 2 and s["output_tokens"] == 6
    assert s["e2e_ms"]["count"] == 2 and "itl_ms" not in s


def test_server_errors_are_counted_and_reported(stub_url):
    s = run_load(LoadConfig(stub_url, requests=3, max_tokens=500))
    assert (s["completed"], s["failed"]) == (0, 3)
    assert s["errors"] == ["HTTP 400: max_tokens too large"]


def test_cli_load_prints_percentiles(stub_url):
    result = CliRunner().invoke(main, ["load", stub_url, "--requests", "3", "--concurrency", "3",
                                       "--max-tokens", "4", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{"):])
    assert summary["completed"] == 3 and summary["concurrency"] == 3
    text = CliRunner().invoke(main, ["load", stub_url, "--requests", "2", "--max-tokens", "3"])
    assert "itl_ms" in text.output and "request throughput" in text.output


def test_cli_load_fails_when_nothing_completes(stub_url):
    result = CliRunner().invoke(main, ["load", stub_url, "--requests", "1", "--max-tokens", "500"])
    assert result.exit_code == 1 and "HTTP 400" in result.output


def test_unreachable_server_is_an_error_row_not_a_crash():
    s = run_load(LoadConfig("http://127.0.0.1:9", requests=1, timeout_s=2))
    assert s["failed"] == 1 and "Error" in s["errors"][0]


@pytest.mark.parametrize("kwargs, words", [
    ({"url": "localhost:5000"}, "base URL"),
    ({"url": "http://127.0.0.1:1", "concurrency": 0}, "--concurrency"),
    ({"url": "http://127.0.0.1:1", "max_tokens": 0}, "--max-tokens"),
])
def test_bad_load_options(kwargs, words):
    with pytest.raises(BenchError, match=words):
        LoadConfig(**kwargs)
