"""engine/interface.py: every model behind a Generator implements the written interface."""
from __future__ import annotations

import pytest

from engine import load
from engine.interface import KVCache, Model, check_model
from fakes import ScriptedModel
from serve.testing import ByteScriptModel


def test_the_engines_models_and_the_fakes_implement_it():
    import threading

    models = [load("random:tiny").model, load("random:tiny", impl="reference").model,
              ScriptedModel([1, 2]), ByteScriptModel(b"ab", 0.0, None, threading.Event(), 257)]
    for model in models:
        check_model(model)  # raises naming what is missing
        assert isinstance(model, Model)
        cache = model.new_cache()
        assert isinstance(cache, KVCache) and cache.length == 0


def test_a_model_missing_calls_is_named_once_at_build():
    class Half:
        config = device = None

        def prefill(self, cache, tokens, cancel=None, resume=None): ...

        def decode(self, tokens, caches): ...

    with pytest.raises(TypeError, match="Half .*missing new_cache, fork, trim, reserve, release"):
        check_model(Half())


def test_cache_bytes_follow_capacity():
    cache = KVCache(None, bytes_per_position=10, length=3, capacity=256)
    assert cache.nbytes == 2560
