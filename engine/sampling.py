"""Sampling parameters and the per-step token choice (numpy, on the host)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .errors import OptionError

# The request limits: the engine checks them, and serve.protocol (so /openapi.json) reads them.
MAX_STOP_STRINGS = 4
MAX_N = 16  # completions of one prompt
MAX_LOGPROBS = 5  # alternatives reported per token
MAX_PENALTY = 2  # presence and frequency penalties lie in [-MAX_PENALTY, MAX_PENALTY]
MAX_SEED = 2**63 - 1  # a seed fits a signed 64-bit integer (JSON clients' limit)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise OptionError(message)


@dataclass(frozen=True)
class SamplingParams:
    """How to continue a prompt; validated on construction (errors name the field)."""

    max_new_tokens: int = 16
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 means no limit
    seed: int | None = None
    stop: tuple[str, ...] = ()
    n: int = 1
    ignore_eos: bool = False
    logprobs: int | None = None  # also return the top-N alternatives per token
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    truncate: bool = True  # cut over-long prompts from the left (else an OptionError)
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        _check(isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1,
               f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        _check(isinstance(self.temperature, (int, float)) and 0 <= self.temperature <= 100
               and math.isfinite(self.temperature),
               f"temperature must be between 0 and 100, got {self.temperature!r}")
        _check(isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1,
               f"top_p must be in (0, 1], got {self.top_p!r}")
        _check(isinstance(self.top_k, int) and self.top_k >= 0,
               f"top_k must be an integer >= 0, got {self.top_k!r}")
        _check(isinstance(self.n, int) and 1 <= self.n <= MAX_N,
               f"n must be 1 to {MAX_N}, got {self.n!r}")
        _check(self.seed is None or (isinstance(self.seed, int) and 0 <= self.seed <= MAX_SEED),
               f"seed must be an integer from 0 to {MAX_SEED}, got {self.seed!r}")
        _check(len(self.stop) <= MAX_STOP_STRINGS and all(isinstance(s, str) and s for s in self.stop),
               f"stop must be up to {MAX_STOP_STRINGS} non-empty strings, got {self.stop!r}")
        _check(self.logprobs is None
               or (isinstance(self.logprobs, int) and 0 <= self.logprobs <= MAX_LOGPROBS),
               f"logprobs must be null or 0 to {MAX_LOGPROBS}, got {self.logprobs!r}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            _check(isinstance(value, (int, float)) and -MAX_PENALTY <= value <= MAX_PENALTY,
                   f"{name} must be between {-MAX_PENALTY} and {MAX_PENALTY}, got {value!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max()
    return shifted - np.log(np.exp(shifted).sum())


def penalise(logits: np.ndarray, counts: dict[int, int], params: SamplingParams) -> np.ndarray:
    """OpenAI's presence and frequency penalties over the tokens generated so far."""
    if not counts or (params.presence_penalty == 0 and params.frequency_penalty == 0):
        return logits
    ids = np.fromiter(counts.keys(), dtype=np.int64)
    freq = np.fromiter(counts.values(), dtype=np.float32)
    out = logits.copy()
    out[ids] -= params.presence_penalty + params.frequency_penalty * freq
    return out


def choose(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """One token id from one row of logits (already masked and penalised)."""
    if params.greedy:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / params.temperature
    if params.top_k and params.top_k < scaled.size:
        cut = np.partition(scaled, -params.top_k)[-params.top_k]
        scaled = np.where(scaled >= cut, scaled, -np.inf)
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if params.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
        keep = order[: int(np.searchsorted(cumulative, params.top_p)) + 1]
        kept = probs[keep]
        return int(keep[rng.choice(kept.size, p=kept / kept.sum())])
    return int(rng.choice(probs.size, p=probs))
