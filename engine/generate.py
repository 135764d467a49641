"""The Generator: a loaded model with its tokenizer, prefix cache and running batch.

PaddleNLP's `generate` has no stop strings, streaming, cancellation or per-token clocks; the
engine's loop has them all.  Every request, a lone `generate` call included, runs through the
one batch path (engine.batch): `submit` puts a request in the batch and `step` advances it;
`stream`/`generate` do both for one caller, and cgserve's worker steps the batch for everyone.
"""
from __future__ import annotations

import collections
import threading
from typing import Iterator

import numpy as np

from .batch import Batch, Request
from .errors import OptionError
from .interface import check_model
from .runtime import available_memory_bytes
from .prefix_cache import PrefixCache
from .reuse import WARM_CHUNK, Prompts
from .sampling import SamplingParams
from .sequence import (Choice, GenerationResult, Sampler, TokenEvent,  # noqa: F401 - re-exported
                       WarmResult)

TRUNCATE_STEP = 128  # over-long prompts are cut in steps of this many tokens (at most)
DEFAULT_MAX_BATCH = 8  # rows (sequences) decoded together
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


KV_MEMORY_SHARE = 0.5  # of the memory free after loading, at most, for running KV caches


def default_kv_budget(max_batch: int, context_bytes: int, available: int | None,
                      prefix_cache_bytes: int) -> int:
    """What running requests may reserve when --kv-cache-mb is not given: `max_batch` full
    contexts, but at most half the memory free after loading (less the prefix cache's budget),
    and never less than one full context (one request of any length always runs)."""
    budget = max_batch * context_bytes
    if available is not None:
        budget = min(budget, int(KV_MEMORY_SHARE * available) - prefix_cache_bytes)
    return max(context_bytes, budget)


class Stream:
    """Iterate for `TokenEvent`s; `result` is set once the iteration ends."""

    def __init__(self, events: Iterator[TokenEvent]):
        self._events = events
        self.result: GenerationResult | None = None

    def __iter__(self):
        self.result = yield from self._events


class Generator:
    """Generates completions from a loaded model: one batch, stepped by whoever waits on it."""

    def __init__(self, loaded, prefix_cache_bytes: int | None = None,
                 max_batch: int = DEFAULT_MAX_BATCH, kv_cache_bytes: int | None = None):
        """`prefix_cache_bytes`: KV-cache budget for reusing earlier prompts (0 turns reuse
        off; None: `DEFAULT_CACHE_CONTEXTS` full contexts).  `max_batch`: rows decoded
        together; `kv_cache_bytes`: what running requests may reserve (None:
        `default_kv_budget`)."""
        self.model = loaded.model
        check_model(self.model)
        self.tokenizer = loaded.tokenizer
        self.config = loaded.config
        self.source = loaded.source
        self.load_s = loaded.load_s
        self._lock = threading.Lock()  # one batch step (or warm-up) at a time
        context_bytes = self.context_length * self.model.kv_bytes_per_token()
        if prefix_cache_bytes is None:
            prefix_cache_bytes = DEFAULT_CACHE_CONTEXTS * context_bytes
        self.prefix_cache = (PrefixCache(prefix_cache_bytes, self.model.release)
                             if prefix_cache_bytes > 0 else None)
        if kv_cache_bytes is None:
            kv_cache_bytes = default_kv_budget(max_batch, context_bytes,
                                               available_memory_bytes(self.model.device),
                                               prefix_cache_bytes)
        self.prompts = Prompts(self.model, self.prefix_cache, self.context_length)
        self.sampler = Sampler(self.tokenizer, self.config.arch.vocab_size,
                               self.config.eos_token_id)
        self.batch = Batch(self.model, self.sampler, self.prompts, max_batch, kv_cache_bytes)

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

    # ---- requests into the batch ----
    def request(self, prompt, params: SamplingParams, cancel: threading.Event, emit,
                on_done, client=None, on_start=None) -> Request:
        """A `Request` for the batch; raises OptionError for a prompt or parameters that can
        never run (too long without truncation, more rows or KV cache than the batch has)."""
        ids, truncated = self.fit_prompt(self.encode(prompt), params)
        need = self.batch.need_bytes(len(ids), params, self.context_length)
        self.batch.check_fits(need, params)
        seed = params.seed if params.seed is not None else int(np.random.SeedSequence().entropy % 2**63)
        return Request(ids, truncated, params, seed, self.sampler.states(params, seed), cancel,
                       emit, on_done, client=client, need_bytes=need, load_s=self.load_s,
                       on_start=on_start)

    def submit(self, request: Request) -> Request:
        self.batch.submit(request)
        return request

    def step(self) -> bool:
        """Advance the batch by one step (admit, decode, one prompt chunk); False when idle."""
        with self._lock:
            return self.batch.step()

    # ---- one caller ----
    def generate(self, prompt, params: SamplingParams | None = None,
                 cancel: threading.Event | None = None, client=None) -> GenerationResult:
        stream = self.stream(prompt, params, cancel, client)
        for _ in stream:
            pass
        return stream.result

    def stream(self, prompt, params: SamplingParams | None = None,
               cancel: threading.Event | None = None, client=None) -> Stream:
        params = params or SamplingParams()
        inbox: collections.deque = collections.deque()
        req = self.request(prompt, params, cancel or threading.Event(), inbox.append,
                           lambda _: None, client)
        return Stream(self._events(req, inbox))

    def _events(self, req: Request, inbox: collections.deque):
        self.submit(req)
        try:
            while True:
                while inbox:
                    yield inbox.popleft()
                if req.finished:
                    break
                self.step()
        finally:
            if not req.finished:  # the caller stopped iterating: stop the request
                req.cancel.set()
                if not self.batch.drop(req):
                    while not req.finished:
                        self.step()
        if req.error is not None:
            raise req.error
        return req.result

    def warm(self, prompt, cancel: threading.Event | None = None,
             chunk: int = WARM_CHUNK, client=None) -> WarmResult:
        """Compute the KV cache of `prompt` ahead of its request and keep it (see
        `engine.reuse.Prompts.warm`); call it only while the batch is idle."""
        ids = self.encode(prompt) if self.prefix_cache is not None else []
        with self._lock:
            return self.prompts.warm(ids, cancel or threading.Event(), chunk, client)
