"""serve.config.ServeConfig: every bad setting is one line naming its option."""
from __future__ import annotations

import pytest

from engine import OptionError
from serve.config import ServeConfig


@pytest.mark.parametrize("settings, option", [
    ({"port": -1}, "--port"), ({"max_queue": -1}, "--max-queue"),
    ({"max_batch": 0}, "--max-batch"), ({"kv_cache_mb": 0}, "--kv-cache-mb"),
    ({"kv_cache_mb": float("nan")}, "--kv-cache-mb"),
    ({"request_timeout_s": 0}, "--request-timeout"),
    ({"max_body_bytes": 10}, "--max-body"), ({"grace_s": -1}, "--grace"), ({"impl": "x"}, "--impl"),
    ({"prefix_cache_mb": -1}, "--prefix-cache-mb"), ({"speculate_lines": 0}, "--speculate-lines"),
])
def test_bad_settings_name_their_option(settings, option):
    with pytest.raises(OptionError) as refused:
        ServeConfig(model="random:tiny", **settings)
    message = str(refused.value)
    assert message.startswith(option) and "\n" not in message


def test_kv_cache_in_bytes_for_the_scheduler():
    assert ServeConfig(model="m").kv_cache_bytes is None
    assert ServeConfig(model="m", kv_cache_mb=1.5).kv_cache_bytes == 3 << 19
    assert ServeConfig(model="m", max_batch=1).max_batch == 1


def test_names_and_urls():
    assert ServeConfig(model="/models/codegen-350M-mono/").served_name == "codegen-350M-mono"
    assert ServeConfig(model="random:tiny", model_name="cg").served_name == "cg"
    assert ServeConfig(model="m", host="::1", port=80).base_url == "http://[::1]:80"
