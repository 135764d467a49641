"""The completions wire protocol: parse and validate requests, format responses.

`FIELDS` is the one source of truth for the request fields: parsing, the
OpenAPI description (`serve.openapi`) and the docs all read it.  Every check
failure is an `ApiError(400)` naming the field; unknown fields are ignored.
"""
from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

from engine import OptionError, SamplingParams
from engine.sampling import MAX_LOGPROBS, MAX_N, MAX_PENALTY, MAX_SEED
from engine.sampling import MAX_STOP_STRINGS as MAX_STOP

from .errors import ApiError, bad_request

MAX_TEMPERATURE = 2  # OpenAI's limit on the wire (the engine itself allows more)


# ---- field kinds: each validates a JSON value and describes itself as a JSON schema ----

class Kind:
    schema: dict = {}

    def check(self, name: str, value: Any) -> Any:
        return value


class Integer(Kind):
    def __init__(self, lo: int, hi: int | None = None):
        self.lo, self.hi = lo, hi
        self.schema = {"type": "integer", "minimum": lo, **({"maximum": hi} if hi is not None else {})}

    def check(self, name, value):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad_request(f"{name} must be an integer, got {_show(value)}", name)
        if value < self.lo or (self.hi is not None and value > self.hi):
            top = f" and {self.hi}" if self.hi is not None else ""
            rule = f"between {self.lo}{top}" if top else f">= {self.lo}"
            raise bad_request(f"{name} must be {rule}, got {value}", name)
        return value


class Number(Kind):
    def __init__(self, lo: float, hi: float, lo_open: bool = False):
        self.lo, self.hi, self.lo_open = lo, hi, lo_open
        # OpenAPI 3.0 (JSON Schema draft 4): exclusiveMinimum is a flag on minimum
        self.schema = {"type": "number", "minimum": lo, "maximum": hi,
                       **({"exclusiveMinimum": True} if lo_open else {})}

    def check(self, name, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad_request(f"{name} must be a number, got {_show(value)}", name)
        low_ok = value > self.lo if self.lo_open else value >= self.lo
        if not low_ok or value > self.hi:
            bracket = "(" if self.lo_open else "["
            raise bad_request(f"{name} must be in {bracket}{self.lo}, {self.hi}], got {value}", name)
        return float(value)


class Boolean(Kind):
    schema = {"type": "boolean"}

    def check(self, name, value):
        if not isinstance(value, bool):
            raise bad_request(f"{name} must be true or false, got {_show(value)}", name)
        return value


class String(Kind):
    schema = {"type": "string"}

    def check(self, name, value):
        if not isinstance(value, str):
            raise bad_request(f"{name} must be a string, got {_show(value)}", name)
        return value


class Prompt(Kind):
    schema = {"oneOf": [{"type": "string"},
                        {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 1}]}

    def check(self, name, value):
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        if isinstance(value, list) and len(value) > 1 and all(isinstance(v, str) for v in value):
            raise bad_request(f"{name} holds {len(value)} strings; send one prompt per request", name)
        if not isinstance(value, str):
            raise bad_request(f"{name} must be a string or a list of one string, got {_show(value)}",
                              name)
        return value


class Stop(Kind):
    schema = {"oneOf": [{"type": "string"},
                        {"type": "array", "items": {"type": "string"}, "maxItems": MAX_STOP}]}

    def check(self, name, value):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
            raise bad_request(f"{name} must be a string or a list of strings, got {_show(value)}", name)
        if len(value) > MAX_STOP:
            raise bad_request(f"{name} holds {len(value)} sequences; at most {MAX_STOP} are allowed",
                              name)
        return tuple(s for s in value if s)  # an empty stop sequence can match nothing useful


class LogitBias(Kind):
    schema = {"type": "object", "maxProperties": 0,
              "description": "Accepted only when empty: this server does not bias logits."}

    def check(self, name, value):
        if not isinstance(value, dict):
            raise bad_request(f"{name} must be an object, got {_show(value)}", name)
        if value:
            raise bad_request(f"{name} is not supported by this server; leave it out", name)
        return {}


class StreamOptions(Kind):
    schema = {"type": "object", "properties": {"include_usage": {"type": "boolean"}}}

    def check(self, name, value):
        if not isinstance(value, dict):
            raise bad_request(f"{name} must be an object, got {_show(value)}", name)
        usage = value.get("include_usage", False)
        if usage is not None and not isinstance(usage, bool):
            raise bad_request(f"{name}.include_usage must be true or false", name)
        return {"include_usage": bool(usage)}


class Anything(Kind):
    schema = {}


def _show(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(frozen=True)
class Field:
    name: str
    kind: Kind
    default: Any
    doc: str


FIELDS: tuple[Field, ...] = (
    Field("model", String(), None, "Any name; the one loaded model answers (see GET /v1/models)."),
    Field("prompt", Prompt(), "", "The text before the cursor: a string or a list of one string."),
    Field("suffix", String(), None,
          "Text after the cursor. CodeGen-1 cannot fill in the middle: accepted and ignored."),
    Field("max_tokens", Integer(1), 16, "Tokens to generate at most."),
    Field("temperature", Number(0, MAX_TEMPERATURE), 1.0,
          "Sampling temperature; 0 is greedy (deterministic)."),
    Field("top_p", Number(0, 1, lo_open=True), 1.0, "Nucleus sampling: keep this probability mass."),
    Field("top_k", Integer(0), 0, "Extension: sample among the k likeliest tokens (0 = all)."),
    Field("n", Integer(1, MAX_N), 1, "Number of completions of the prompt."),
    Field("best_of", Integer(1, MAX_N), None, "Accepted only when equal to n."),
    Field("stream", Boolean(), False, "Send tokens as server-sent events as they are generated."),
    Field("stream_options", StreamOptions(), {"include_usage": False},
          "With include_usage, a last chunk carries usage (and no choices)."),
    Field("logprobs", Integer(0, MAX_LOGPROBS), None,
          "Return the log-probability of each token and of the N likeliest alternatives."),
    Field("echo", Boolean(), False, "Put the prompt in front of the completion."),
    Field("stop", Stop(), (), f"Up to {MAX_STOP} sequences that end the completion (not returned)."),
    Field("presence_penalty", Number(-MAX_PENALTY, MAX_PENALTY), 0.0,
          "Subtracted once from the logit of every token already generated."),
    Field("frequency_penalty", Number(-MAX_PENALTY, MAX_PENALTY), 0.0,
          "Subtracted from a token's logit once per time it was already generated."),
    Field("logit_bias", LogitBias(), {}, "Accepted only when empty."),
    Field("seed", Integer(0, MAX_SEED), None, "Makes sampling repeatable."),
    Field("user", Anything(), None, "Ignored."),
    Field("truncate", Boolean(), None,
          "Extension: cut an over-long prompt from the left (true) or answer 400 (false); "
          "default set by the server (--truncate/--no-truncate)."),
)
FIELD_NAMES = tuple(f.name for f in FIELDS)


@dataclass(frozen=True)
class CompletionRequest:
    model: str | None
    prompt: str
    suffix: str | None
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    n: int
    best_of: int | None
    stream: bool
    stream_options: dict
    logprobs: int | None
    echo: bool
    stop: tuple[str, ...]
    presence_penalty: float
    frequency_penalty: float
    logit_bias: dict
    seed: int | None
    user: Any
    truncate: bool | None

    @property
    def include_usage(self) -> bool:
        return self.stream_options.get("include_usage", False)

    def sampling_params(self, truncate_default: bool = True) -> SamplingParams:
        """The engine's parameters for this request (an engine refusal becomes a 400)."""
        truncate = truncate_default if self.truncate is None else self.truncate
        try:
            return SamplingParams(
                max_new_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p,
                top_k=self.top_k, seed=self.seed, stop=self.stop, n=self.n,
                logprobs=self.logprobs, presence_penalty=self.presence_penalty,
                frequency_penalty=self.frequency_penalty, truncate=truncate)
        except OptionError as exc:
            raise engine_error(exc) from None


def parse_body(body: bytes) -> dict:
    """The JSON object in a request body, or a 400 saying what is wrong with it."""
    try:
        data = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise bad_request("the request body is not UTF-8 text; send JSON") from None
    except json.JSONDecodeError as exc:
        raise bad_request(f"the request body is not valid JSON ({exc.msg} at line {exc.lineno} "
                          f"column {exc.colno})") from None
    if not isinstance(data, dict):
        raise bad_request("the request body must be a JSON object")
    return data


def parse_completion(data: dict) -> CompletionRequest:
    """Validate a completions request; null means "the default" for every field."""
    values = {}
    for field in FIELDS:
        value = data.get(field.name)
        values[field.name] = field.default if value is None else field.kind.check(field.name, value)
    if values["best_of"] is not None and values["best_of"] != values["n"]:
        raise bad_request("best_of different from n is not supported; leave best_of out", "best_of")
    if values["echo"] and values["logprobs"] is not None:
        raise bad_request("echo with logprobs is not supported: the engine does not score prompt "
                          "tokens; drop one of them", "logprobs")
    return CompletionRequest(**values)


def engine_error(exc: OptionError) -> ApiError:
    """An engine refusal as a 400 in the wire protocol's terms."""
    message = str(exc).replace("max_new_tokens", "max_tokens")
    if message.startswith("prompt of"):
        param = "prompt"
    else:
        param = next((f for f in FIELD_NAMES if message.startswith(f)), None)
    return bad_request(message, param, code="context_length_exceeded" if "context" in message else None)


# ---- responses ----

def completion_id() -> str:
    return "cmpl-" + uuid.uuid4().hex[:24]


@dataclass
class ResponseHead:
    """What every response and chunk of one request shares."""

    id: str
    created: int
    model: str

    @classmethod
    def new(cls, model: str) -> "ResponseHead":
        return cls(completion_id(), int(time.time()), model)

    def envelope(self, choices: list[dict]) -> dict:
        return {"id": self.id, "object": "text_completion", "created": self.created,
                "model": self.model, "choices": choices}


def usage(result) -> dict:
    out = {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
           "total_tokens": result.prompt_tokens + result.completion_tokens}
    if result.truncated_tokens:
        out["truncated_prompt_tokens"] = result.truncated_tokens  # cut from the left to fit
    cached = result.reused_tokens
    if cached:  # OpenAI's field for prompt tokens served from a cache
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    return out


def public_finish(reason: str | None) -> str | None:
    """The engine's `cancelled` (a timeout or shutdown cut it short) reads as `length`."""
    return "length" if reason == "cancelled" else reason


def token_text(tokenizer, token_id: int) -> str:
    return tokenizer.token_bytes(token_id).decode("utf-8", errors="replace")


def format_logprobs(tokenizer, token_ids: list[int], logprobs: list[float],
                    tops: list[dict[int, float]], offset: int, text_len: int | None = None) -> dict:
    """OpenAI's legacy logprobs object; tokens past the returned text (a stop) are left out."""
    tokens, offsets = [], []
    pos = offset
    for tid in token_ids:
        if text_len is not None and pos - offset >= text_len:
            break
        piece = token_text(tokenizer, tid)
        tokens.append(piece)
        offsets.append(pos)
        pos += len(piece)
    k = len(tokens)
    return {"tokens": tokens, "token_logprobs": list(logprobs[:k]),
            "top_logprobs": [{token_text(tokenizer, t): lp for t, lp in top.items()}
                             for top in tops[:k]],
            "text_offset": offsets}


def format_completion(req: CompletionRequest, head: ResponseHead, result, tokenizer) -> dict:
    """The non-streaming response body."""
    choices = []
    for choice in result.choices:
        text = req.prompt + choice.text if req.echo else choice.text
        lp = None
        if req.logprobs is not None:
            lp = format_logprobs(tokenizer, choice.token_ids, choice.logprobs, choice.top_logprobs,
                                 len(req.prompt), len(choice.text))
        choices.append({"text": text, "index": choice.index, "logprobs": lp,
                        "finish_reason": public_finish(choice.finish_reason)})
    body = head.envelope(choices)
    body["usage"] = usage(result)
    return body


def format_chunk(head: ResponseHead, index: int, text: str, finish_reason: str | None,
                 logprobs: dict | None = None) -> dict:
    return head.envelope([{"text": text, "index": index, "logprobs": logprobs,
                           "finish_reason": public_finish(finish_reason)}])


def event_logprobs(tokenizer, event, offset: int) -> dict | None:
    """The logprobs of one streamed token (None for the synthetic end-of-choice event)."""
    if event.logprob is None:
        return None
    return {"tokens": [token_text(tokenizer, event.token_id)], "token_logprobs": [event.logprob],
            "top_logprobs": [{token_text(tokenizer, t): lp
                              for t, lp in (event.top_logprobs or {}).items()}],
            "text_offset": [offset]}


def sse(data: dict | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {payload}\n\n".encode("utf-8")


SSE_DONE = sse("[DONE]")
