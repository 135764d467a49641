"""The decode loop: prefill, then one step per token with the KV cache.

PaddleNLP's `generate` has no stop strings, streaming, cancellation or
per-token clocks; this loop has them all, for n choices of one prompt.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from .errors import OptionError
from .prefix_cache import PrefixCache
from .sampling import SamplingParams, choose, log_softmax, penalise
from .stops import StopMatcher
from .tokenizer import IncrementalDecoder

TRUNCATE_STEP = 128  # over-long prompts are cut in steps of this many tokens (at most)
PREFILL_CHUNK = 512  # with reuse, prompts run (and are kept when cancelled) in chunks of this size
WARM_CHUNK = 512  # warm-ups' chunks (a cancelled one keeps the layers it finished)
WARM_NEAR_TOKENS = 16  # an entry covering all but this many of a warm-up's tokens is enough
WARM_TAKEOVER_TOKENS = 4  # a warm-up takes over an earlier warm-up's entry ending this close
# default prefix-cache budget, in full contexts: the line being typed plus the windows of the
# next lines that cgserve computes ahead (serve.speculate.LINES_AHEAD = 2), plus one spare
DEFAULT_CACHE_CONTEXTS = 4


def fit_prompt(ids: list[int], params: SamplingParams, context_length: int,
               start_id: int) -> tuple[list[int], int]:
    """Cut a prompt from the left so `max_new_tokens` fits the context; (ids, tokens cut).

    An empty prompt becomes `start_id` (end of text, as CodeGen was trained).  The cut
    is rounded up to a step (128 tokens at CodeGen's context), so the next prompt of
    someone typing, this one plus a few characters, is cut at the same place and can
    reuse this one's KV cache; it keeps up to a step less context.
    """
    room = context_length - params.max_new_tokens
    if room < 1:
        raise OptionError(f"max_new_tokens {params.max_new_tokens} leaves no room for a prompt "
                          f"in the {context_length}-token context; ask for fewer tokens")
    if not ids:
        ids = [start_id]
    if len(ids) <= room:
        return ids, 0
    if not params.truncate:
        raise OptionError(f"prompt of {len(ids)} tokens plus max_new_tokens "
                          f"{params.max_new_tokens} exceeds the {context_length}-token "
                          "context; shorten the prompt or allow truncation")
    step = max(1, min(TRUNCATE_STEP, room // 8))
    cut = -(-(len(ids) - room) // step) * step
    return ids[cut:], cut


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


class _ChoiceState:
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


class Stream:
    """Iterate for `TokenEvent`s; `result` is set once the iteration ends."""

    def __init__(self, events: Iterator[TokenEvent]):
        self._events = events
        self.result: GenerationResult | None = None

    def __iter__(self):
        self.result = yield from self._events


class Generator:
    """Generates completions from a loaded model; one request at a time per instance."""

    def __init__(self, loaded, prefix_cache_bytes: int | None = None):
        """`prefix_cache_bytes`: KV-cache budget for reusing earlier prompts (0 turns reuse
        off; None: `DEFAULT_CACHE_CONTEXTS` full contexts, where the model supports reuse)."""
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.config = loaded.config
        self.source = loaded.source
        self.load_s = loaded.load_s
        self._lock = threading.Lock()
        self._last_cache = None
        self.prefix_cache = None
        if getattr(self.model, "supports_prefix_reuse", False):
            if prefix_cache_bytes is None:
                prefix_cache_bytes = (DEFAULT_CACHE_CONTEXTS * self.context_length
                                      * self.model.kv_bytes_per_token())
            if prefix_cache_bytes > 0:
                self.prefix_cache = PrefixCache(prefix_cache_bytes)
        vocab = self.config.arch.vocab_size
        usable = min(self.tokenizer.usable_ids(), vocab)
        self._bias = None
        if usable < vocab:  # never produce ids the tokenizer cannot turn into text
            self._bias = np.zeros(vocab, np.float32)
            self._bias[usable:] = -np.inf
            self._bias[self.config.eos_token_id] = 0.0

    @property
    def context_length(self) -> int:
        return self.config.arch.n_positions

    def encode(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt)
        return [int(t) for t in prompt]

    def fit_prompt(self, ids: list[int], params: SamplingParams) -> tuple[list[int], int]:
        """Cut the prompt from the left so `max_new_tokens` fits the context (see `fit_prompt`)."""
        return fit_prompt(ids, params, self.context_length, self.config.eos_token_id)

    def generate(self, prompt, params: SamplingParams | None = None,
                 cancel: threading.Event | None = None) -> GenerationResult:
        stream = self.stream(prompt, params, cancel)
        for _ in stream:
            pass
        return stream.result

    def stream(self, prompt, params: SamplingParams | None = None,
               cancel: threading.Event | None = None) -> Stream:
        params = params or SamplingParams()
        return Stream(self._events(prompt, params, cancel or threading.Event()))

    def _step_logits(self, logits: np.ndarray) -> np.ndarray:
        return logits + self._bias if self._bias is not None else logits

    def _events(self, prompt, params: SamplingParams, cancel: threading.Event):
        start = time.perf_counter()
        ids, truncated = self.fit_prompt(self.encode(prompt), params)
        seed = params.seed if params.seed is not None else int(np.random.SeedSequence().entropy % 2**63)
        stops = StopMatcher(params.stop)
        states = [_ChoiceState(i, self.tokenizer, stops, seed) for i in range(params.n)]
        times: list[float] = []
        with self._lock:
            logits, prompt_cache, reused, held, partial = self._prefill(ids, cancel)
            prefill_ms = (time.perf_counter() - start) * 1e3
            if logits is None:  # cancelled during the prompt
                self._keep(ids[:held], prompt_cache, partial=partial)
            else:
                rows = np.repeat(logits[None, :], params.n, axis=0)
                cache = self.model.expand_cache(prompt_cache, params.n)
                fed = list(ids)  # the tokens `cache` holds, for the prefix cache
                try:
                    yield from self._decode_loop(states, rows, cache, fed, params, cancel, start,
                                                 times)
                finally:
                    if params.n == 1:
                        self._keep(fed, self._last_cache)
                    else:  # the choices' rows differ; keep the shared prompt
                        self._keep(ids, prompt_cache)
        for state in states:
            if not state.done:
                text = state.finish("cancelled")
                yield TokenEvent(state.choice.index, -1, text, time.perf_counter() - start,
                                 finish_reason=state.choice.finish_reason)
        e2e_ms = (time.perf_counter() - start) * 1e3
        return GenerationResult(
            choices=[s.choice for s in states], prompt_tokens=len(ids),
            completion_tokens=sum(s.generated for s in states),
            truncated_tokens=truncated, reused_tokens=reused, seed=seed, load_s=self.load_s,
            ttft_ms=times[0] if times else e2e_ms, prefill_ms=prefill_ms, e2e_ms=e2e_ms,
            token_times_ms=times,
        )

    def _prefill(self, ids: list[int], cancel: threading.Event):
        """Run the prompt, starting from the longest cached prefix when there is one.

        With a prefix cache the prompt runs in chunks (`_run_chunks`); a cancelled
        prefill keeps what it computed for the next request, down to the layer its last
        chunk stopped at.  Returns (logits or None when cancelled, cache, reused tokens,
        tokens the cache holds, the stopped chunk or None).
        """
        if self.prefix_cache is None:
            logits, cache = self.model.prefill(ids)
            self._last_cache = cache
            return logits, cache, 0, len(ids), None
        cache, reused, partial = self.prefix_cache.take_partial(ids)
        logits, cache, done, partial = self._run_chunks(ids, cache, reused, PREFILL_CHUNK, cancel,
                                                        partial)
        self.prefix_cache.count(reused, done - reused)
        self._last_cache = cache
        return logits, cache, reused, done, partial

    def _run_chunks(self, ids: list[int], cache, done: int, chunk: int,
                    cancel: threading.Event, partial=None):
        """Run `ids[done:]` on top of `cache` (which holds `ids[:done]`) in chunks of
        `chunk` tokens; once `cancel` is set the model stops between two layers.  Only
        models with prefix reuse get here (`prefill_resumable`).  `partial`: (tokens,
        `Paused`) of a chunk an earlier call stopped in, on this cache; its first chunk
        goes on from there when `ids` continue with those tokens.  Returns (the last
        position's logits, or None unless all of `ids` ran; the cache; how many tokens
        it holds; the (tokens, `Paused`) of a chunk stopped part-way, or None)."""
        logits, resume = None, None
        if partial is not None and done < len(ids):
            tokens, paused = partial
            if paused.start == done and tokens == tuple(ids[done:done + len(tokens)]):
                resume = paused
        while done < len(ids) and not cancel.is_set():
            end = done + resume.length if resume is not None else min(len(ids), done + chunk)
            logits, cache, paused = self.model.prefill_resumable(ids[:end], cache, done, cancel,
                                                                 resume)
            resume = None
            if logits is None:
                stopped = (tuple(ids[done:end]), paused) if paused is not None else None
                return None, cache, done, stopped
            done = end
        return (logits if done == len(ids) else None), cache, done, None

    def _decode_loop(self, states, rows, cache, fed, params, cancel, start, times):
        """Sample, report and feed back one token per choice per step."""
        for step in range(params.max_new_tokens):
            if cancel.is_set():
                return
            tokens = np.zeros(params.n, dtype=np.int64)
            now = time.perf_counter() - start
            for state in states:
                if state.done:
                    continue
                token, event = self._advance(state, rows[state.choice.index], params, now,
                                             last=step == params.max_new_tokens - 1)
                tokens[state.choice.index] = token
                yield event
            times.append(now * 1e3)
            if all(s.done for s in states) or step == params.max_new_tokens - 1:
                return
            rows, cache = self.model.decode(tokens, cache)
            self._last_cache = cache
            fed.append(int(tokens[0]))

    def _keep(self, tokens: list[int], cache, warm: bool = False, partial=None) -> None:
        if self.prefix_cache is not None and cache is not None:
            nbytes = self.model.cache_nbytes(cache) + (partial[1].nbytes if partial else 0)
            self.prefix_cache.put(tokens, cache, nbytes, warm=warm, partial=partial)

    def warm(self, prompt, cancel: threading.Event | None = None,
             chunk: int = WARM_CHUNK) -> WarmResult:
        """Compute the KV cache of `prompt` and keep it in the prefix cache; never decode.

        For a prompt a later request is expected to start with (an editor's next line):
        that request then reuses it as any cached prefix.  Runs in chunks of `chunk`
        tokens and stops between two layers once `cancel` is set; a cancelled warm-up
        keeps the chunks it finished and the layers of the one it stopped in (the next
        warm-up or request for a prompt going on with those tokens continues it).  It
        starts from the cached entry sharing the longest prefix: taken over when the entry
        holds nothing beyond that prefix, or when it is an earlier warm-up's that goes on
        only by its last few tokens (the same guess one line shorter: its final newline
        tokenises differently once the line follows); otherwise its shared part is copied
        (`fork_cache`), so an entry a request still needs (the line being typed) keeps its
        end.  Nothing happens without a prefix cache, or when the prompt would not fit the
        context uncut.
        """
        cancel = cancel or threading.Event()
        if self.prefix_cache is None:
            return WarmResult(skipped="no-cache")
        ids = self.encode(prompt)
        if not ids:
            return WarmResult(skipped="empty")
        if len(ids) >= self.context_length:
            return WarmResult(len(ids), skipped="too-long")
        chunk = max(1, int(chunk))
        with self._lock:
            best, best_key, whole_key, whole = self.prefix_cache.match(ids, WARM_TAKEOVER_TOKENS)
            if best >= len(ids) - min(WARM_NEAR_TOKENS, len(ids) - 1):
                return WarmResult(len(ids), best, skipped="cached")
            cache, reused, partial = None, 0, None
            if whole_key is not None and whole == best:  # ours (a warm-up's tail is rewritten)
                (cache, partial), reused = self.prefix_cache.pop_partial(whole_key), whole
            elif best_key is not None:
                # the entry goes on beyond what we share (say, the line being typed): copy
                # the shared part, so the entry a request still needs keeps its end
                cache, reused = self.model.fork_cache(self.prefix_cache.peek(best_key), best,
                                                      len(ids) - best), best
            _, cache, done, partial = self._run_chunks(ids, cache, reused, chunk, cancel, partial)
            self._keep(ids[:done], cache, warm=True, partial=partial)
        return WarmResult(len(ids), reused, done - reused, cancelled=done < len(ids))

    def _advance(self, state: _ChoiceState, logits: np.ndarray, params: SamplingParams,
                 now: float, last: bool) -> tuple[int, TokenEvent]:
        """Choose one token for one choice and turn it into an event."""
        logits = penalise(self._step_logits(logits), state.counts, params)
        token = choose(logits, params, state.rng)
        state.generated += 1
        logprob = top = None
        if params.logprobs is not None:
            lp = log_softmax(logits.astype(np.float64))
            logprob = float(lp[token])
            best = np.argsort(-lp)[: params.logprobs]
            top = {int(i): float(lp[i]) for i in best}
        choice = state.choice
        if token == self.config.eos_token_id and not params.ignore_eos:
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
