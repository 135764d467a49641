"""serve.protocol: request validation and response shapes (no server, no model)."""
from __future__ import annotations

import json

import pytest

from engine import OptionError
from engine.generate import Choice
from serve import protocol
from serve.errors import ApiError
from serve.testing import ByteTokenizer, make_result


def parse(**fields):
    return protocol.parse_completion(fields)


def test_defaults_match_openai():
    req = parse()
    assert (req.prompt, req.max_tokens, req.temperature, req.top_p, req.n) == ("", 16, 1.0, 1.0, 1)
    assert (req.stream, req.echo, req.logprobs, req.stop) == (False, False, None, ())


def test_null_means_default_and_unknown_fields_are_ignored():
    req = parse(prompt="x", max_tokens=None, temperature=None, stop=None, logprobs=None,
                extra={"language": "python"}, nwo="a/b", user="u", stream_options=None,
                some_future_field=[1, 2])
    assert req.max_tokens == 16 and req.temperature == 1.0 and req.stop == ()


@pytest.mark.parametrize("value, expected", [
    ("\n", ("\n",)),                       # a string is ONE stop sequence, not a set of characters
    ("\n\n\n", ("\n\n\n",)),
    (["\n", "def "], ("\n", "def ")),
    ([], ()),
    (["", "x"], ("x",)),
])
def test_stop_forms(value, expected):
    assert parse(stop=value).stop == expected


def test_prompt_as_list_of_one_string():
    assert parse(prompt=["def f():"]).prompt == "def f():"


@pytest.mark.parametrize("fields, param", [
    ({"prompt": 5}, "prompt"),
    ({"prompt": ["a", "b"]}, "prompt"),
    ({"prompt": [1, 2, 3]}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": "16"}, "max_tokens"),
    ({"max_tokens": 1.5}, "max_tokens"),
    ({"max_tokens": True}, "max_tokens"),
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.1}, "top_p"),
    ({"n": 0}, "n"),
    ({"n": 17}, "n"),
    ({"stream": "yes"}, "stream"),
    ({"echo": 1}, "echo"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": 7}, "stop"),
    ({"stop": ["a", 1]}, "stop"),
    ({"logprobs": 6}, "logprobs"),
    ({"logprobs": -1}, "logprobs"),
    ({"logprobs": True}, "logprobs"),
    ({"presence_penalty": 3}, "presence_penalty"),
    ({"frequency_penalty": -2.5}, "frequency_penalty"),
    ({"best_of": 3}, "best_of"),
    ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ({"seed": -1}, "seed"),
    ({"truncate": "no"}, "truncate"),
    ({"model": 3}, "model"),
    ({"suffix": 3}, "suffix"),
    ({"stream_options": {"include_usage": "yes"}}, "stream_options"),
    ({"echo": True, "logprobs": 1}, "logprobs"),
])
def test_bad_fields_are_400_naming_the_field(fields, param):
    with pytest.raises(ApiError) as info:
        protocol.parse_completion(fields)
    assert info.value.status == 400
    assert info.value.param == param
    assert param in info.value.message


@pytest.mark.parametrize("body", [b"{bad", b"", b"[1, 2]", b'"text"', b"\xff\xfe{}", b"null"])
def test_bad_bodies_are_400(body):
    with pytest.raises(ApiError) as info:
        protocol.parse_body(body)
    assert info.value.status == 400
    assert info.value.body()["error"]["type"] == "invalid_request_error"


def test_fauxpilot_pretty_printed_body_parses():
    body = json.dumps({"model": "fastertransformer", "prompt": "def f(", "max_tokens": 200,
                       "temperature": 0.1, "stop": ["\n"]}, indent=4).encode()
    req = protocol.parse_completion(protocol.parse_body(body))
    assert (req.model, req.max_tokens, req.stop) == ("fastertransformer", 200, ("\n",))


def test_sampling_params_carry_every_knob():
    req = parse(max_tokens=7, temperature=0.5, top_p=0.9, top_k=3, n=2, stop="\n", seed=1,
                logprobs=2, presence_penalty=0.5, frequency_penalty=-0.5, truncate=False)
    params = req.sampling_params(truncate_default=True)
    assert (params.max_new_tokens, params.temperature, params.top_p, params.top_k, params.n) == \
        (7, 0.5, 0.9, 3, 2)
    assert (params.stop, params.seed, params.logprobs) == (("\n",), 1, 2)
    assert (params.presence_penalty, params.frequency_penalty, params.truncate) == (0.5, -0.5, False)
    assert parse().sampling_params(truncate_default=False).truncate is False


def test_engine_errors_speak_the_wire_names():
    error = protocol.engine_error(OptionError("max_new_tokens 3000 leaves no room for a prompt "
                                              "in the 2048-token context; ask for fewer tokens"))
    assert error.status == 400 and error.param == "max_tokens"
    assert "max_new_tokens" not in error.message
    assert error.code == "context_length_exceeded"


def result(text="ab", ids=(97, 98), reason="stop", truncated=0, logprobs=()):
    choice = Choice(0, text, list(ids), reason, list(logprobs),
                    [{i: lp} for i, lp in zip(ids, logprobs)])
    return make_result([choice], prompt_tokens=5, completion_tokens=len(ids),
                       truncated_tokens=truncated, ttft_ms=1.0, e2e_ms=2.0,
                       token_times_ms=[1.0, 2.0])


def test_completion_body_is_openai_shaped():
    head = protocol.ResponseHead.new("m")
    body = protocol.format_completion(parse(prompt="p"), head, result(), ByteTokenizer())
    assert body["id"].startswith("cmpl-") and body["object"] == "text_completion"
    assert body["model"] == "m" and isinstance(body["created"], int)
    assert body["choices"] == [{"text": "ab", "index": 0, "logprobs": None, "finish_reason": "stop"}]
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}


def test_usage_reports_truncation():
    body = protocol.format_completion(parse(), protocol.ResponseHead.new("m"),
                                      result(truncated=40), ByteTokenizer())
    assert body["usage"]["truncated_prompt_tokens"] == 40


def test_echo_puts_the_prompt_first():
    body = protocol.format_completion(parse(prompt="def ", echo=True),
                                      protocol.ResponseHead.new("m"), result(), ByteTokenizer())
    assert body["choices"][0]["text"] == "def ab"


def test_logprobs_are_the_engines_values_and_stop_at_the_text():
    # three tokens generated, the last one was a stop sequence cut from the text
    res = result(text="ab", ids=(97, 98, 10), logprobs=(-0.1, -0.2, -0.3))
    body = protocol.format_completion(parse(prompt="xy", logprobs=1),
                                      protocol.ResponseHead.new("m"), res, ByteTokenizer())
    lp = body["choices"][0]["logprobs"]
    assert lp["tokens"] == ["a", "b"]
    assert lp["token_logprobs"] == [-0.1, -0.2]
    assert lp["top_logprobs"] == [{"a": -0.1}, {"b": -0.2}]
    assert lp["text_offset"] == [2, 3]


def test_cancelled_reads_as_length():
    assert protocol.public_finish("cancelled") == "length"
    assert protocol.public_finish("stop") == "stop"


def test_sse_framing():
    assert protocol.SSE_DONE == b"data: [DONE]\n\n"
    frame = protocol.sse({"a": "é"})
    assert frame.startswith(b"data: {") and frame.endswith(b"}\n\n")
    assert json.loads(frame[6:]) == {"a": "é"}


@pytest.mark.parametrize("name, limit", [("n", "MAX_N"), ("logprobs", "MAX_LOGPROBS"),
                                         ("presence_penalty", "MAX_PENALTY"),
                                         ("frequency_penalty", "MAX_PENALTY"),
                                         ("seed", "MAX_SEED")])
def test_request_limits_are_the_engines(name, limit):
    from engine import sampling

    top = getattr(sampling, limit)
    assert getattr(parse(**{name: top}), name) == top  # the engine's bound is accepted ...
    with pytest.raises(ApiError) as refused:  # ... and one past it refused, naming the field
        parse(**{name: top + 1})
    assert refused.value.param == name
    with pytest.raises(OptionError):
        sampling.SamplingParams(**{name: top + 1})


def test_stop_limit_is_the_engines():
    from engine.sampling import MAX_STOP_STRINGS

    assert len(parse(stop=["a"] * MAX_STOP_STRINGS).stop) == MAX_STOP_STRINGS
    with pytest.raises(ApiError):
        parse(stop=["a"] * (MAX_STOP_STRINGS + 1))
