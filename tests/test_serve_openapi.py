"""/openapi.json: valid for the OpenAPI version it declares, and complete."""
from __future__ import annotations

import pytest
from openapi_spec_validator import OpenAPIV30SpecValidator

from serve import protocol
from serve.config import ServeConfig
from serve.openapi import build_spec


@pytest.mark.parametrize("config", [None, ServeConfig(model="random:tiny", api_key="k")],
                         ids=["open", "with-key"])
def test_the_document_is_valid_openapi_3_0(config):
    spec = build_spec(config)
    assert spec["openapi"] == "3.0.3"
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}"
              for e in OpenAPIV30SpecValidator(spec).iter_errors()]
    assert errors == []


def test_open_interval_uses_3_0_exclusive_minimum():
    top_p = build_spec()["components"]["schemas"]["CompletionRequest"]["properties"]["top_p"]
    assert (top_p["minimum"], top_p["exclusiveMinimum"], top_p["maximum"]) == (0, True, 1)


def test_every_field_is_nullable():
    props = build_spec()["components"]["schemas"]["CompletionRequest"]["properties"]
    for name, schema in props.items():
        if set(schema) <= {"description"}:
            continue  # any value, null included
        alternatives = schema.get("oneOf", [schema])
        assert any(a.get("nullable") for a in alternatives), name


def test_openapi_lists_every_field_and_route():
    spec = build_spec()
    props = spec["components"]["schemas"]["CompletionRequest"]["properties"]
    assert set(props) == set(protocol.FIELD_NAMES)
    assert {"/v1/completions", "/v1/engines/{engine}/completions", "/v1/models", "/health",
            "/metrics", "/openapi.json"} <= set(spec["paths"])
    responses = spec["paths"]["/v1/completions"]["post"]["responses"]
    assert {"200", "400", "401", "404", "405", "413", "503"} <= set(responses)
    assert "Retry-After" in responses["503"]["headers"]


def test_the_event_stream_is_described():
    ok = build_spec()["paths"]["/v1/completions"]["post"]["responses"]["200"]
    stream = ok["content"]["text/event-stream"]
    assert "[DONE]" in stream["schema"]["description"]
    assert stream["example"].endswith("data: [DONE]\n\n")
