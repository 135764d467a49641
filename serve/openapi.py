"""The OpenAPI 3 description of every route, built from `protocol.FIELDS`."""
from __future__ import annotations

from engine import __version__

from .protocol import FIELDS

ERROR = {"$ref": "#/components/schemas/Error"}
SSE_STREAM = {  # with stream=true (OpenAPI 3.0 cannot type the events themselves)
    "schema": {"type": "string", "description": (
        "Server-sent events, each `data: {json}` and a blank line. Every event but the last is "
        "a Completion without usage whose choices hold one choice's text delta (one id for "
        "all); finish_reason is null until that choice's last event. With "
        "stream_options.include_usage, one more event has empty choices and the usage. An "
        "error after the stream began is sent as `data: {Error}`. The stream ends with "
        "`data: [DONE]`.")},
    "example": 'data: {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": '
               '"codegen", "choices": [{"text": "    return", "index": 0, "logprobs": null, '
               '"finish_reason": null}]}\n\ndata: {"id": "cmpl-1", "object": "text_completion", '
               '"created": 1, "model": "codegen", "choices": [{"text": " 1", "index": 0, '
               '"logprobs": null, "finish_reason": "stop"}]}\n\ndata: [DONE]\n\n',
}


def _error_response(description: str, retry_after: bool = False) -> dict:
    out = {"description": description, "content": {"application/json": {"schema": ERROR}}}
    if retry_after:
        out["headers"] = {"Retry-After": {"schema": {"type": "integer"},
                                          "description": "Seconds to wait before retrying"}}
    return out


def nullable(schema: dict) -> dict:
    """`schema` or null, in OpenAPI 3.0's terms (`nullable` works only beside a `type`)."""
    if not schema:
        return {}  # anything, null included
    if "oneOf" in schema:
        first, *rest = schema["oneOf"]
        return {**schema, "oneOf": [{**first, "nullable": True}, *rest]}
    return {**schema, "nullable": True}


def request_schema() -> dict:
    props = {}
    for field in FIELDS:
        props[field.name] = {**nullable(field.kind.schema), "description": field.doc}
        if field.default not in (None, (), {}):
            props[field.name]["default"] = field.default
    return {"type": "object", "properties": props, "additionalProperties": True,
            "description": "Unknown fields are ignored; null means the default."}


def _schemas() -> dict:
    logprobs = {"type": "object", "nullable": True, "properties": {
        "tokens": {"type": "array", "items": {"type": "string"}},
        "token_logprobs": {"type": "array", "items": {"type": "number"}},
        "top_logprobs": {"type": "array", "items": {"type": "object",
                                                    "additionalProperties": {"type": "number"}}},
        "text_offset": {"type": "array", "items": {"type": "integer"}}}}
    choice = {"type": "object", "required": ["text", "index", "finish_reason", "logprobs"],
              "properties": {"text": {"type": "string"}, "index": {"type": "integer"},
                             "logprobs": logprobs,
                             "finish_reason": {"type": "string", "nullable": True,
                                               "enum": ["stop", "length", None]}}}
    usage = {"type": "object", "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
             "properties": {"prompt_tokens": {"type": "integer"},
                            "completion_tokens": {"type": "integer"},
                            "total_tokens": {"type": "integer"},
                            "truncated_prompt_tokens": {
                                "type": "integer",
                                "description": "Prompt tokens cut from the left to fit the context"}}}
    completion = {"type": "object", "required": ["id", "object", "created", "model", "choices"],
                  "properties": {"id": {"type": "string"}, "object": {"type": "string",
                                                                     "enum": ["text_completion"]},
                                 "created": {"type": "integer"}, "model": {"type": "string"},
                                 "choices": {"type": "array", "items": choice}, "usage": usage}}
    error = {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["message", "type", "param", "code"],
        "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                       "param": {"type": "string", "nullable": True},
                       "code": {"type": "string", "nullable": True}}}}}
    model = {"type": "object", "properties": {"id": {"type": "string"}, "object": {"type": "string"},
                                              "created": {"type": "integer"},
                                              "owned_by": {"type": "string"}}}
    return {"CompletionRequest": request_schema(), "Completion": completion, "Error": error,
            "Model": model,
            "ModelList": {"type": "object", "properties": {
                "object": {"type": "string"},
                "data": {"type": "array", "items": {"$ref": "#/components/schemas/Model"}}}}}


def _completions_op(summary: str, engine_param: bool) -> dict:
    op = {
        "summary": summary,
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/CompletionRequest"}}}},
        "responses": {
            "200": {"description": "A completion (JSON), or with stream=true server-sent events: "
                                   "`data: {chunk}` per token delta, then `data: [DONE]`. A request "
                                   "superseded by a newer one from the same client whose prompt "
                                   "extends it gets an empty text (finish_reason length) and the "
                                   "header X-Cgserve-Superseded: true",
                    "headers": {"X-Cgserve-Superseded": {
                        "schema": {"type": "string", "enum": ["true"]},
                        "description": "Present when a newer request of the same client "
                                       "cancelled this one"}},
                    "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/Completion"}},
                        "text/event-stream": SSE_STREAM}},
            "400": _error_response("Malformed JSON, a wrong type or a value out of range"),
            "401": _error_response("An API key is set and the Bearer token is missing or wrong"),
            "413": _error_response("Request body too large"),
            "503": _error_response("Model loading, queue full or shutting down", retry_after=True),
        },
    }
    if engine_param:
        op["parameters"] = [{"name": "engine", "in": "path", "required": True,
                             "schema": {"type": "string"},
                             "description": "Any name (codegen, copilot-codex, ...)"}]
    return op


def build_spec(config=None) -> dict:
    secured = bool(config and config.api_key)
    not_found = _error_response("Unknown route")
    paths = {
        "/v1/completions": {"post": _completions_op("Complete a prompt (OpenAI)", False)},
        "/v1/engines/{engine}/completions": {
            "post": _completions_op("Complete a prompt (Fauxpilot, Copilot)", True)},
        "/v1/models": {"get": {"summary": "The served model", "responses": {"200": {
            "description": "Model list", "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/ModelList"}}}},
            "401": _error_response("Bad or missing API key")}}},
        "/health": {"get": {"summary": "loading, ready or stopping", "security": [], "responses": {
            "200": {"description": "Ready"},
            "503": {"description": "Loading or stopping", "headers": {
                "Retry-After": {"schema": {"type": "integer"}}}}}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "security": [], "responses": {
            "200": {"description": "Text exposition format",
                    "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/openapi.json": {"get": {"summary": "This document", "security": [],
                                  "responses": {"200": {"description": "OpenAPI 3"}}}},
    }
    for item in paths.values():
        for op in item.values():
            op["responses"].setdefault("404", not_found)
            op["responses"].setdefault("405", _error_response("Method not allowed"))
    spec = {
        "openapi": "3.0.3",
        "info": {"title": "cgserve", "version": __version__,
                 "description": "OpenAI/Fauxpilot-compatible completions for Salesforce CodeGen"},
        "paths": paths,
        "components": {"schemas": _schemas(),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
    if secured:
        spec["security"] = [{"bearer": []}]
    return spec
