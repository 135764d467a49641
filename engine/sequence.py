"""One sequence's life outside the model: sampling a token, stop strings, text, and results.

A request has `n` choices; each is a `ChoiceState` (its random stream, penalty counts, stop
matcher, incremental decoder and the text it may show).  `Sampler.advance` turns one row of
logits into the choice's next token and a `TokenEvent`.  The batch (engine.batch) calls it
for every row of every step; nothing here knows about other sequences or the model.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .sampling import SamplingParams, choose, log_softmax, penalise
from .stops import StopMatcher
from .tokenizer import IncrementalDecoder


@dataclass(frozen=True)
class TokenEvent:
    """One generated token of one choice, with the text it adds (may be empty)."""

    index: int
    token_id: int
    text: str
    time_s: float  # seconds since the request started
    logprob: float | None = None
    top_logprobs: dict[int, float] | None = None
    finish_reason: str | None = None  # set on the choice's last event


@dataclass
class Choice:
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[dict[int, float]] = field(default_factory=list)


@dataclass
class GenerationResult:
    choices: list[Choice]
    prompt_tokens: int
    completion_tokens: int
    truncated_tokens: int  # prompt tokens cut from the left to fit the context
    reused_tokens: int  # prompt tokens whose KV cache came from an earlier request
    seed: int
    load_s: float
    ttft_ms: float
    prefill_ms: float
    e2e_ms: float
    token_times_ms: list[float]  # when each decode step's tokens were ready, from the start
    queued_ms: float = 0.0  # waiting for room in the batch before the engine started on it

    @property
    def text(self) -> str:
        return self.choices[0].text

    @property
    def finish_reason(self) -> str:
        return self.choices[0].finish_reason

    @property
    def tpot_ms(self) -> float | None:
        steps = len(self.token_times_ms)
        return (self.e2e_ms - self.ttft_ms) / (steps - 1) if steps > 1 else None


@dataclass(frozen=True)
class WarmResult:
    """What `Generator.warm` did: tokens of the text, taken from the cache, and run."""

    prompt_tokens: int = 0
    reused_tokens: int = 0
    computed_tokens: int = 0
    cancelled: bool = False
    skipped: str | None = None  # why nothing was done: no-cache, empty, cached, too-long


class ChoiceState:
    """Text, stop matching and held-back output of one choice while it decodes."""

    def __init__(self, index: int, tokenizer, stops: StopMatcher, seed: int):
        self.choice = Choice(index)
        self.decoder = IncrementalDecoder(tokenizer)
        self.stops = stops
        self.rng = np.random.default_rng([seed, index])
        self.full = ""  # decoded text so far, stop strings included
        self.emitted = 0  # characters of `full` already handed out
        self.counts: dict[int, int] = {}
        self.generated = 0  # tokens sampled, end of text included

    @property
    def done(self) -> bool:
        return self.choice.finish_reason is not None

    def add_text(self, delta: str, final: bool) -> str:
        """Append decoded text; returns the part now safe to show."""
        before = len(self.full)
        self.full += delta
        hit = self.stops.find(self.full, before)
        if hit >= 0:
            self.full = self.full[:hit]
            self.choice.finish_reason = "stop"
            final = True
        end = len(self.full) if final else self.stops.safe_end(self.full)
        out = self.full[self.emitted:end]
        self.emitted = max(self.emitted, end)
        self.choice.text = self.full[: self.emitted]
        return out

    def finish(self, reason: str) -> str:
        if self.choice.finish_reason is None:
            self.choice.finish_reason = reason
        if reason == "cancelled":
            return ""
        return self.add_text(self.decoder.flush(), final=True)


class Sampler:
    """Chooses tokens for the choices of one model: the vocabulary mask and end of text."""

    def __init__(self, tokenizer, vocab_size: int, eos_token_id: int):
        self.tokenizer = tokenizer
        self.eos = eos_token_id
        usable = min(tokenizer.usable_ids(), vocab_size)
        self._bias = None
        if usable < vocab_size:  # never produce ids the tokenizer cannot turn into text
            self._bias = np.zeros(vocab_size, np.float32)
            self._bias[usable:] = -np.inf
            self._bias[eos_token_id] = 0.0

    def states(self, params: SamplingParams, seed: int) -> list[ChoiceState]:
        stops = StopMatcher(params.stop)
        return [ChoiceState(i, self.tokenizer, stops, seed) for i in range(params.n)]

    def advance(self, state: ChoiceState, logits: np.ndarray, params: SamplingParams,
                now: float, last: bool) -> tuple[int, TokenEvent]:
        """Choose one token for one choice and turn it into an event."""
        if self._bias is not None:
            logits = logits + self._bias
        logits = penalise(logits, state.counts, params)
        token = choose(logits, params, state.rng)
        state.generated += 1
        logprob = top = None
        if params.logprobs is not None:
            lp = log_softmax(logits.astype(np.float64))
            logprob = float(lp[token])
            best = np.argsort(-lp)[: params.logprobs]
            top = {int(i): float(lp[i]) for i in best}
        choice = state.choice
        if token == self.eos and not params.ignore_eos:
            text = state.finish("stop")
            return token, TokenEvent(choice.index, token, text, now, logprob, top, "stop")
        choice.token_ids.append(token)
        state.counts[token] = state.counts.get(token, 0) + 1
        if params.logprobs is not None:
            choice.logprobs.append(logprob)
            choice.top_logprobs.append(top)
        text = state.add_text(state.decoder.push(token), final=False)
        if not state.done and last:
            text += state.finish("length")
        return token, TokenEvent(choice.index, token, text, now, logprob, top, choice.finish_reason)
