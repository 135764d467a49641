"""A scripted model: the engine's model interface, choosing tokens from a list."""
from __future__ import annotations

import threading

import numpy as np

from engine.config import config_from_dict
from engine.generate import Generator
from engine.model import LoadedModel
from engine.variants import TINY


class ScriptedModel:
    """Greedy decoding of this model yields `script` (then repeats its last token)."""

    def __init__(self, script: list[int], vocab: int = 51200, on_decode=None):
        self.script, self.vocab, self.on_decode = script, vocab, on_decode
        self.prefills: list[list[int]] = []
        self.decodes = 0

    def _row(self, step: int) -> np.ndarray:
        row = np.zeros(self.vocab, np.float32)
        row[self.script[min(step, len(self.script) - 1)]] = 10.0
        return row

    def prefill(self, ids):
        self.prefills.append(list(ids))
        return self._row(0), {"step": 0, "rows": 1}

    def expand_cache(self, cache, rows):
        return {"step": cache["step"], "rows": rows}

    def decode(self, tokens, cache):
        self.decodes += 1
        if self.on_decode:
            self.on_decode(self.decodes)
        step = cache["step"] + 1
        return np.stack([self._row(step)] * len(tokens)), {"step": step, "rows": cache["rows"]}


def scripted_generator(script, tokenizer, n_positions: int = 2048, on_decode=None) -> Generator:
    arch = TINY.arch.config_dict()
    arch["n_positions"] = arch["n_ctx"] = n_positions
    config = config_from_dict(arch, "scripted")
    model = ScriptedModel(script, on_decode=on_decode)
    return Generator(LoadedModel(model, tokenizer, config, "scripted", 0.0))


def cancel_after(n_decodes: int) -> tuple[threading.Event, callable]:
    event = threading.Event()

    def hook(count):
        if count >= n_decodes:
            event.set()

    return event, hook
