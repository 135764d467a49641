"""Real clients against a live server on loopback with the tiny real models.

The openai package's `completions.create` (JSON and SSE), a request shaped
exactly like the vscode-fauxpilot extension's, and a Copilot-shaped stream.
"""
from __future__ import annotations

import http.client
import json

import openai
import pytest

from engine import SamplingParams
from serve.testing import LiveServer


@pytest.fixture(scope="module")
def bpe_server(tiny_gen):
    """The tiny BPE model (context 128)."""
    with LiveServer(tiny_gen, model="tiny-bpe") as server:
        yield server


@pytest.fixture(scope="module")
def long_server(random_tiny):
    """random:tiny: byte tokenizer, the real 2048-token context."""
    with LiveServer(random_tiny, api_key="dummy") as server:
        yield server


@pytest.fixture
def client(bpe_server):
    return openai.OpenAI(base_url=bpe_server.url + "/v1", api_key="unused", max_retries=0)


PROMPT = "def fibonacci(n):\n    if n < 2:\n"


def test_openai_client_non_stream_matches_the_engine(client, tiny_gen):
    got = client.completions.create(model="codegen", prompt=PROMPT, max_tokens=12, temperature=0)
    want = tiny_gen.generate(PROMPT, SamplingParams(max_new_tokens=12, temperature=0.0))
    assert got.object == "text_completion" and got.id.startswith("cmpl-")
    assert got.choices[0].text == want.text
    assert got.choices[0].finish_reason == want.finish_reason
    assert got.usage.prompt_tokens == want.prompt_tokens
    assert got.usage.completion_tokens == want.completion_tokens
    assert got.usage.total_tokens == want.prompt_tokens + want.completion_tokens


def test_openai_client_stream_is_token_deltas(client, tiny_gen):
    chunks = list(client.completions.create(model="codegen", prompt=PROMPT, max_tokens=12,
                                            temperature=0, stream=True))
    want = tiny_gen.generate(PROMPT, SamplingParams(max_new_tokens=12, temperature=0.0))
    assert len(chunks) > 1
    assert len({c.id for c in chunks}) == 1
    assert "".join(c.choices[0].text for c in chunks) == want.text
    assert [c.choices[0].finish_reason for c in chunks][-1] == want.finish_reason
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])


def test_openai_client_sees_400_as_bad_request(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="codegen", prompt="x", max_tokens=0)
    assert info.value.status_code == 400
    assert info.value.body["param"] == "max_tokens"


def test_openai_client_n_choices_with_seed(client):
    got = client.completions.create(model="m", prompt=PROMPT, max_tokens=6, temperature=1.0,
                                    n=3, seed=7)
    again = client.completions.create(model="m", prompt=PROMPT, max_tokens=6, temperature=1.0,
                                      n=3, seed=7)
    assert [c.index for c in got.choices] == [0, 1, 2]
    assert [c.text for c in got.choices] == [c.text for c in again.choices]


def test_logprobs_are_real_values(client, tiny_gen):
    got = client.completions.create(model="m", prompt=PROMPT, max_tokens=5, temperature=0,
                                    logprobs=2)
    want = tiny_gen.generate(PROMPT, SamplingParams(max_new_tokens=5, logprobs=2))
    lp = got.choices[0].logprobs
    assert lp.token_logprobs == pytest.approx(want.choices[0].logprobs[: len(lp.tokens)])
    assert "".join(lp.tokens) == got.choices[0].text
    assert all(len(top) <= 2 and all(v <= 0 for v in top.values()) for top in lp.top_logprobs)
    assert lp.text_offset[0] == len(PROMPT)


def test_long_prompt_is_cut_from_the_left(client, tiny_gen):
    prompt = "for i in range(10):\n    print(i)\n" * 40
    got = client.completions.create(model="m", prompt=prompt, max_tokens=8, temperature=0)
    usage = got.usage.model_dump()
    assert usage["truncated_prompt_tokens"] > 0
    room = tiny_gen.context_length - 8  # cut in steps of room // 8 tokens (engine.fit_prompt)
    assert room - room // 8 < usage["prompt_tokens"] <= room
    assert usage["prompt_tokens"] + usage["truncated_prompt_tokens"] == \
        len(tiny_gen.tokenizer.encode(prompt))
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="m", prompt=prompt, max_tokens=8,
                                  extra_body={"truncate": False})
    assert info.value.body["code"] == "context_length_exceeded"


def raw_request(server, path, body: bytes, headers: dict):
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.request("POST", path, body=body, headers=headers)
    response = conn.getresponse()
    return response, response.read()


def test_fauxpilot_extension_request(long_server):
    """Exactly what vscode-fauxpilot sends: pretty JSON, Bearer dummy, stop ["\\n"], 200 tokens."""
    prompt = "import os\n" + "# a long file\n" * 200 + "def main():\n    "  # > 2048 tokens
    body = json.dumps({"model": "fastertransformer", "prompt": prompt, "max_tokens": 200,
                       "temperature": 0.1, "stop": ["\n"]}, indent=4).encode()
    response, data = raw_request(long_server, "/v1/engines/codegen/completions", body, {
        "Content-Type": "application/json", "Authorization": "Bearer dummy",
        "User-Agent": "OpenAI/JS 4.3.1", "Accept": "application/json"})
    assert response.status == 200
    assert response.getheader("Content-Type") == "application/json"
    reply = json.loads(data)
    text = reply["choices"][0]["text"]
    assert isinstance(text, str) and "\n" not in text
    assert reply["choices"][0]["finish_reason"] in ("stop", "length")
    assert reply["usage"]["truncated_prompt_tokens"] > 0  # the prompt did not fit: cut, not refused


def test_copilot_shaped_stream(long_server):
    body = json.dumps({
        "prompt": "# language: python\ndef add(a, b):\n    ", "suffix": "\n\nprint(add(1, 2))\n",
        "max_tokens": 500, "temperature": 0, "top_p": 1, "n": 1, "stop": ["\n"], "stream": True,
        "nwo": "octo/repo", "extra": {"language": "python", "next_indent": 0,
                                      "trim_by_indentation": True, "prompt_tokens": 12,
                                      "suffix_tokens": 6},
        "logit_bias": {}, "user": "vscode"}).encode()
    response, data = raw_request(long_server, "/v1/engines/copilot-codex/completions", body, {
        "Content-Type": "application/json", "Authorization": "Bearer dummy",
        "OpenAI-Intent": "copilot-ghost"})
    assert response.status == 200
    assert response.getheader("Content-Type").startswith("text/event-stream")
    frames = [f for f in data.decode().split("\n\n") if f]
    assert all(f.startswith("data: ") for f in frames)
    assert frames[-1] == "data: [DONE]"
    chunks = [json.loads(f[6:]) for f in frames[:-1]]
    assert len({c["id"] for c in chunks}) == 1
    assert "\n" not in "".join(c["choices"][0]["text"] for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


def test_penalties_change_repetition(long_server, random_tiny):
    """With a strong frequency penalty the greedy output repeats tokens less."""
    client = openai.OpenAI(base_url=long_server.url + "/v1", api_key="dummy", max_retries=0)
    plain = client.completions.create(model="m", prompt="aaaa", max_tokens=40, temperature=0)
    want = random_tiny.generate("aaaa", SamplingParams(max_new_tokens=40, frequency_penalty=2.0))
    got = client.completions.create(model="m", prompt="aaaa", max_tokens=40, temperature=0,
                                    frequency_penalty=2.0)
    assert got.choices[0].text == want.text  # the penalty reaches the engine unchanged
    assert len(set(got.choices[0].text)) >= len(set(plain.choices[0].text))
