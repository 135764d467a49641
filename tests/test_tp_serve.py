"""cgserve --tensor-parallel 2 (two CPU processes over gloo): real clients, supersede,
cancellation, SIGTERM, a lost follower, and a Hugging Face model converted then served."""
from __future__ import annotations

import json
import signal
import subprocess
import threading
import time

import httpx
import openai
import psutil
import pytest

from engine import SamplingParams
from tp_helpers import exit_code, followers_of, lost_rank_lines, start, tree, wait_gone

PROMPT = "def fibonacci(n):\n    if n < 2:\n"


class Served:
    def __init__(self, model: str, *args: str, **env):
        self.proc = start(["-c", "from serve.cli import main; main()", model,
                           "--tensor-parallel", "2", "--port", "0", *args], **env)
        line = self.proc.stdout.readline()
        if not line.startswith("cgserve: serving"):
            self.proc.kill()
            raise AssertionError(line + self.proc.stderr.read()[-3000:])
        self.url = line.rsplit(" at ", 1)[1].strip()
        self.followers = followers_of(self.proc.pid, 1)
        self.children = tree(self.proc.pid)

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0)

    def metric(self, name: str) -> float:
        text = httpx.get(self.url + "/metrics", timeout=10).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        finally:
            left = wait_gone([psutil.Process(self.proc.pid)] if self.proc.poll() is None else []
                             + self.children)
            assert not left, f"processes left behind: {left}"


@pytest.fixture(scope="module")
def served():
    server = Served("random:tiny")
    yield server
    server.stop()


def test_openai_client_plain_and_streaming_match_one_process(served, random_tiny):
    client = served.client()
    want = random_tiny.generate(PROMPT, SamplingParams(max_new_tokens=12, temperature=0.0))
    got = client.completions.create(model="m", prompt=PROMPT, max_tokens=12, temperature=0)
    assert got.choices[0].text == want.text and got.usage.completion_tokens == 12
    chunks = list(client.completions.create(model="m", prompt=PROMPT, max_tokens=12,
                                            temperature=0, stream=True))
    assert len(chunks) > 1 and "".join(c.choices[0].text for c in chunks) == want.text
    sampled = SamplingParams(max_new_tokens=8, temperature=1.0, n=2, seed=7)
    want = random_tiny.generate(PROMPT, sampled)
    got = client.completions.create(model="m", prompt=PROMPT, max_tokens=8, temperature=1.0,
                                    n=2, seed=7)
    assert [c.text for c in got.choices] == [c.text for c in want.choices]


def test_fauxpilot_request_and_logprobs_match_one_process(served, random_tiny):
    """The extension's request (prompt over the context: cut from the left, stop at a newline)
    and logprobs, as one process gives them."""
    prompt = "import os\n" + "# a long file\n" * 200 + "def main():\n    "
    body = {"model": "fastertransformer", "prompt": prompt, "max_tokens": 40,
            "temperature": 0, "stop": ["\n"], "logprobs": 2}
    got = httpx.post(served.url + "/v1/engines/codegen/completions", json=body, timeout=120)
    assert got.status_code == 200
    reply = got.json()
    want = random_tiny.generate(prompt, SamplingParams(max_new_tokens=40, temperature=0.0,
                                                       stop=("\n",), logprobs=2))
    assert reply["usage"]["truncated_prompt_tokens"] == want.truncated_tokens > 0
    assert reply["choices"][0]["text"] == want.text
    lp = reply["choices"][0]["logprobs"]["token_logprobs"]
    assert lp == pytest.approx(want.choices[0].logprobs[:len(lp)], abs=1e-4)


def _busy(served, timeout_s=30):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if httpx.get(served.url + "/health", timeout=10).json().get("busy"):
            return
        time.sleep(0.02)
    raise AssertionError("the server never got busy")


def test_supersede_under_tensor_parallelism(served):
    results = {}
    long = {"prompt": PROMPT, "max_tokens": 1900, "temperature": 0, "user": "ann",
            }

    def first():
        results["a"] = httpx.post(served.url + "/v1/completions", json=long, timeout=120)

    thread = threading.Thread(target=first)
    thread.start()
    _busy(served)
    b = httpx.post(served.url + "/v1/completions", timeout=120,
                   json={"prompt": PROMPT + "        ret", "max_tokens": 4, "temperature": 0,
                         "user": "ann"})
    thread.join(120)
    assert b.status_code == 200 and b.json()["usage"]["completion_tokens"] == 4
    a = results["a"]
    assert a.status_code == 200 and a.headers.get("X-Cgserve-Superseded") == "true"
    assert a.json()["choices"][0]["text"] == ""


def test_cancellation_by_disconnect(served):
    before = served.metric('cgserve_cancelled_total{reason="disconnect"}')
    body = {"prompt": PROMPT, "max_tokens": 1900, "temperature": 0, "stream": True,
            }
    with httpx.stream("POST", served.url + "/v1/completions", json=body, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                break  # one token arrived: hang up
    deadline = time.monotonic() + 30
    while served.metric('cgserve_cancelled_total{reason="disconnect"}') <= before:
        assert time.monotonic() < deadline, "the disconnect never cancelled the request"
        time.sleep(0.05)
    got = served.client().completions.create(model="m", prompt="x", max_tokens=3)
    assert got.usage.completion_tokens == 3  # the ranks are still in step


def test_sigterm_exits_0_and_leaves_no_process():
    server = Served("random:tiny")
    server.client().completions.create(model="m", prompt="x", max_tokens=2)
    assert server.stop() == 0


def test_killed_follower_gives_503_and_a_nonzero_exit():
    server = Served("random:tiny", CGW_TP_EXIT_DELAY=8)
    (follower,) = server.followers
    in_flight = {}

    def long_request():
        in_flight["r"] = httpx.post(server.url + "/v1/completions", timeout=60,
                                    json={"prompt": PROMPT, "max_tokens": 1900})

    thread = threading.Thread(target=long_request)
    thread.start()
    _busy(server)
    follower.kill()
    thread.join(60)
    assert in_flight["r"].status_code == 503  # the request running when the rank was lost
    statuses = []
    deadline = time.monotonic() + 30
    while server.proc.poll() is None and time.monotonic() < deadline:
        try:
            r = httpx.post(server.url + "/v1/completions", timeout=30,
                           json={"prompt": "x", "max_tokens": 2})
            statuses.append(r.status_code)
            if r.status_code == 503:
                assert "tensor parallelism lost a rank" in r.json()["error"]["message"]
                health = httpx.get(server.url + "/health", timeout=10)
                assert health.status_code == 503 and health.json()["status"] == "failed"
                break
        except httpx.TransportError:
            break
        time.sleep(0.1)
    assert 503 in statuses, statuses
    code = exit_code(server.proc, "cgserve, after losing a follower,")
    assert code != 0
    err = server.proc.stderr.read()
    assert len(lost_rank_lines(err)) == 1
    assert not wait_gone(server.children)


def test_converted_hugging_face_model_gives_transformers_greedy_text(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from test_convert_hf import _hf_model, _hf_tokenizer

    from convert.hf import convert_hf

    model = _hf_model()
    src, dst = tmp_path / "hf", tmp_path / "converted"
    model.save_pretrained(str(src), safe_serialization=True)
    _hf_tokenizer(src, tmp_path / "scratch")
    convert_hf(src, dst)
    tok = transformers.AutoTokenizer.from_pretrained(str(src))
    ids = tok(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=10, do_sample=False, pad_token_id=316,
                             eos_token_id=None, min_new_tokens=10)
    want = tok.decode(out[0, ids.shape[1]:])
    server = Served(str(dst))
    try:
        got = httpx.post(server.url + "/v1/completions", timeout=60,
                         json={"prompt": PROMPT, "max_tokens": 10, "temperature": 0,
                               }).json()
        assert got["choices"][0]["text"] == want and want
    finally:
        assert server.stop() == 0


def test_a_damaged_weight_file_is_one_error_and_no_process_left(tmp_path):
    import builders

    builders.write_model_dir(tmp_path / "m")
    weights = tmp_path / "m" / "model_state.pdparams"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    proc = start(["-c", "from serve.cli import main; main()", str(tmp_path / "m"),
                  "--tensor-parallel", "2", "--port", "0"])
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == 1, err[-2000:]
    lines = [ln for ln in err.splitlines() if "truncated" in ln]
    assert len(lines) == 1 and "model_state.pdparams" in lines[0], err[-2000:]
    assert "lost a rank" not in err and "Traceback" not in err
    assert not wait_gone(_followers_for(str(tmp_path)))


def _followers_for(marker: str) -> list:
    """Follower processes whose job names `marker` (started by the test's cgserve)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if ("engine.tensor_parallel.follower" in " ".join(p.info["cmdline"] or [])
                    and marker in p.environ().get("CGW_TP_JOB", "")):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found
