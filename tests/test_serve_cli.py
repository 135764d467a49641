"""The cgserve command: options, env vars, errors, and a real run stopped by SIGTERM."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

import serve.server
from serve.cli import main

ROOT = Path(__file__).resolve().parent.parent


def test_help_and_version():
    runner = CliRunner()
    help_text = runner.invoke(main, ["--help"]).output
    for option in ("--host", "--port", "--dtype", "--device", "--api-key", "--max-queue",
                   "--cors-origin", "--request-timeout", "--no-truncate", "CGSERVE_API_KEY"):
        assert option in help_text
    version = runner.invoke(main, ["--version"])
    assert version.exit_code == 0 and version.output.startswith("cgserve ")


def test_defaults_are_safe(captured):
    result = CliRunner().invoke(main, ["random:tiny"])
    assert result.exit_code == 0, result.output
    config = captured["config"]
    assert (config.host, config.port) == ("127.0.0.1", 8978)
    assert config.cors_origin is None and config.api_key is None
    assert config.truncate is True and config.log_prompts is False


def test_env_vars_and_flag_precedence(captured):
    env = {"CGSERVE_API_KEY": "k1", "CGSERVE_MAX_QUEUE": "3", "CGSERVE_PORT": "9000",
           "CGSERVE_CORS_ORIGIN": "http://localhost:3000", "CGSERVE_TRUNCATE": "false"}
    result = CliRunner().invoke(main, ["random:tiny", "--max-queue", "5"], env=env)
    assert result.exit_code == 0, result.output
    config = captured["config"]
    assert (config.api_key, config.max_queue, config.port) == ("k1", 5, 9000)
    assert config.cors_origin == "http://localhost:3000" and config.truncate is False


def test_batch_options_and_their_env_vars(captured):
    result = CliRunner().invoke(main, ["random:tiny"])
    assert (captured["config"].max_batch, captured["config"].kv_cache_mb) == (8, None)
    assert captured["config"].kv_cache_bytes is None  # the engine decides
    env = {"CGSERVE_MAX_BATCH": "4", "CGSERVE_KV_CACHE_MB": "64"}
    result = CliRunner().invoke(main, ["random:tiny", "--max-batch", "2"], env=env)
    assert result.exit_code == 0, result.output
    config = captured["config"]
    assert (config.max_batch, config.kv_cache_mb, config.kv_cache_bytes) == (2, 64, 64 << 20)


def test_shared_options_keep_their_env_vars(captured, tmp_path):
    env = {"CGSERVE_DTYPE": "float16", "CGSERVE_DEVICE": "gpu:1",
           "CGSERVE_SPECULATE": "false", "CGSERVE_SPECULATE_LINES": "3"}
    result = CliRunner().invoke(main, ["random:tiny"], env=env)
    assert result.exit_code == 0, result.output
    config = captured["config"]
    assert (config.dtype, config.device, config.speculate, config.speculate_lines) == \
        ("float16", "gpu:1", False, 3)
    help_text = CliRunner().invoke(main, ["--help"]).output
    for name in ("CGSERVE_TOKENIZER", "CGSERVE_MAX_BATCH", "CGSERVE_KV_CACHE_MB"):
        assert name in help_text
    bad = CliRunner().invoke(main, ["random:tiny", "--dtype", "float64"])
    assert bad.exit_code == 2 and "--dtype" in bad.output


@pytest.mark.parametrize("args, words", [
    (["--max-batch", "0"], "--max-batch"),
    (["--kv-cache-mb", "0"], "--kv-cache-mb"),
    (["--kv-cache-mb", "-5"], "--kv-cache-mb"),
    (["--kv-cache-mb", "inf"], "--kv-cache-mb"),
    (["--port", "70000"], "--port"),
    (["--max-queue", "-1"], "--max-queue"),
    (["--request-timeout", "0"], "--request-timeout"),
    (["--max-body", "10"], "--max-body"),
])
def test_bad_options_are_one_line_errors(captured, args, words):
    result = CliRunner().invoke(main, ["random:tiny", *args])
    assert result.exit_code == 1
    assert words in result.output and "Traceback" not in result.output
    assert "config" not in captured


def test_unloadable_model_exits_1_with_one_line(tmp_path):
    result = CliRunner().invoke(main, [str(tmp_path / "missing-model"), "--port", "0"])
    assert result.exit_code == 1
    assert "Error:" in result.output and "Traceback" not in result.output


def test_real_run_serves_then_stops_on_sigterm():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from serve.cli import main; main()", "random:tiny", "--port", "0"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # printed once the model is loaded
        assert line.startswith("cgserve: serving random:tiny at http://127.0.0.1:"), line
        url = line.rsplit(" at ", 1)[1].strip()
        fauxpilot = proc.stdout.readline()
        assert f"{url}/v1/engines" in fauxpilot
        request = urllib.request.Request(
            url + "/v1/engines/codegen/completions", method="POST",
            data=json.dumps({"prompt": "def f(", "max_tokens": 4, "temperature": 0}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            assert json.loads(response.read())["usage"]["completion_tokens"] == 4
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read()
    assert "def f(" not in stderr  # the access log keeps the prompt private
    assert "POST /v1/engines/codegen/completions" in stderr


def test_sigterm_during_generation_stops_the_worker_first_and_exits_0():
    """Past the grace period the running request is cancelled and the server waits for the
    engine's worker to leave its step before exiting (a daemon thread killed inside Paddle or
    numba aborts the process: 'FATAL: exception not rethrown')."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from serve.cli import main; main()", "random:tiny", "--port", "0",
         "--grace", "0"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().rsplit(" at ", 1)[1].strip()
        request = urllib.request.Request(
            url + "/v1/completions", method="POST",
            data=json.dumps({"prompt": "x" * 60, "max_tokens": 60, "stream": True,
                             "ignore_eos": True}).encode(),
            headers={"Content-Type": "application/json"})
        response = urllib.request.urlopen(request, timeout=60)
        assert response.readline().startswith(b"data: ")  # generating now
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        response.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "FATAL" not in proc.stderr.read()
