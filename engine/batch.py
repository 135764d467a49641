"""Continuous batching: many requests decode together, one step at a time, on one model.

Scheduling is per step, not per request (Orca; vLLM, TGI): every `step()`
1. admits waiting requests, oldest first, while their rows fit `max_batch` and their KV cache
   fits `kv_budget_bytes` (a request reserves room for its whole prompt plus `max_new_tokens`
   for each of its `n` choices, so a running batch never runs out of memory; the oldest
   waiting request is never passed over, so none starves);
2. runs ONE decode step for every running row (each sequence at its own position, over its own
   `KVCache`; engine/interface.py), samples each row with its own parameters, and hands the
   events out; finished sequences leave;
3. runs ONE chunk of the oldest admitted prompt (`engine.reuse`), so a long new prompt delays
   the others' next token by at most one chunk; once its last chunk has run, its first tokens
   are sampled and its rows join the decode steps.
A request that fails (an exception while its rows are computed or sampled) fails alone: a
failed decode step is retried request by request to find it (a failed step changes no cache
length), and the others go on.  `Generator.generate/stream` run a single request through this
same path.

Thread safety: `submit` and `drop` may be called from any thread; `step` from one thread at a
time (the Generator's lock).
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .errors import EngineError, OptionError
from .reuse import PREFILL_CHUNK, PromptRun, Prompts
from .sampling import SamplingParams
from .sequence import ChoiceState, GenerationResult, Sampler, TokenEvent

log = logging.getLogger("engine")

CACHE_GRAIN = 256  # admission rounds each row's reservation up to this many positions


@dataclass(eq=False)
class Row:
    """One choice decoding: its cache, the tokens in it, and the token it feeds next."""

    state: ChoiceState
    cache: object
    fed: list[int]
    next_token: int = -1


@dataclass(eq=False)
class Request:
    """One prompt being answered, with its `n` choices; built by `Generator.request`."""

    ids: list[int]
    truncated: int
    params: SamplingParams
    seed: int
    states: list[ChoiceState]
    cancel: threading.Event
    emit: Callable[[TokenEvent], None]
    on_done: Callable[["Request"], None]
    client: object = None
    need_bytes: int = 0
    load_s: float = 0.0
    submitted: float = field(default_factory=time.perf_counter)
    on_start: Callable[["Request"], None] | None = None
    # filled in by the batch
    start: float | None = None  # when admitted: the clocks count from here
    prompt: PromptRun | None = None
    rows: list[Row] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    prefill_ms: float = 0.0
    result: GenerationResult | None = None
    error: BaseException | None = None
    finished: bool = False

    @property
    def width(self) -> int:
        """Rows this request holds in the batch."""
        return self.params.n


class Batch:
    """The running batch of one model (see the module docstring)."""

    def __init__(self, model, sampler: Sampler, prompts: Prompts, max_batch: int = 8,
                 kv_budget_bytes: int | None = None, chunk: int = PREFILL_CHUNK):
        if max_batch < 1:
            raise OptionError(f"max_batch must be >= 1, got {max_batch}")
        self.model, self.sampler, self.prompts = model, sampler, prompts
        self.max_batch = int(max_batch)
        self.kv_budget_bytes = kv_budget_bytes
        self.chunk = chunk
        self._lock = threading.Lock()  # guards `waiting` (submit/drop come from other threads)
        self.waiting: collections.deque[Request] = collections.deque()
        self.prefilling: collections.deque[Request] = collections.deque()
        self.decoding: list[Request] = []
        self.last_batch_rows = 0  # rows in the most recent decode step
        self._stepping = False

    # ---- sizes ----
    def need_bytes(self, prompt_tokens: int, params: SamplingParams, context: int) -> int:
        """KV-cache bytes a request reserves: each choice's whole sequence, rounded up."""
        positions = min(context, -(-(prompt_tokens + params.max_new_tokens + 1) // CACHE_GRAIN)
                        * CACHE_GRAIN)
        return positions * self.model.kv_bytes_per_token() * params.n

    def check_fits(self, need: int, params: SamplingParams) -> None:
        """Refuse now a request that could never be admitted, naming the option to change."""
        if params.n > self.max_batch:
            raise OptionError(f"n={params.n} choices need {params.n} rows but the batch holds "
                              f"{self.max_batch} (--max-batch); ask for fewer choices")
        if self.kv_budget_bytes is not None and need > self.kv_budget_bytes:
            raise OptionError(f"this request needs {need / 2**20:.0f} MB of KV cache (prompt plus "
                              f"max_tokens, times n) but the budget is "
                              f"{self.kv_budget_bytes / 2**20:.0f} MB (--kv-cache-mb); ask for "
                              "fewer tokens or choices, or raise --kv-cache-mb")

    @property
    def active(self) -> list[Request]:
        return list(self.prefilling) + self.decoding

    @property
    def rows_in_use(self) -> int:
        return sum(r.width for r in self.active)

    @property
    def bytes_in_use(self) -> int:
        return sum(r.need_bytes for r in self.active)

    @property
    def idle(self) -> bool:
        return not (self.waiting or self.prefilling or self.decoding)

    @property
    def busy(self) -> bool:
        """Something is admitted (prefilling or decoding), or a step is running."""
        return bool(self._stepping or self.prefilling or self.decoding)

    # ---- from any thread ----
    def submit(self, request: Request) -> None:
        with self._lock:
            self.waiting.append(request)

    def drop(self, request: Request) -> bool:
        """Take a request out of the queue if it has not been admitted; True if it was."""
        with self._lock:
            try:
                self.waiting.remove(request)
            except ValueError:
                return False
        request.finished = True
        return True

    # ---- one step (one thread at a time) ----
    def step(self) -> bool:
        """One iteration; False when there was nothing to do."""
        self._stepping = True
        try:
            return self._step()
        finally:
            self._stepping = False  # after the step's frames (and their references) are gone

    def _step(self) -> bool:
        self._retire_cancelled()  # first: their caches go back before others look for one
        self._admit()
        worked = False
        if self.decoding:
            self._decode_step()
            worked = True
        if self.prefilling:
            self._prefill_chunk(self.prefilling[0])
            worked = True
        return worked

    def _admit(self) -> None:
        while True:
            with self._lock:
                if not self.waiting:
                    return
                req = self.waiting[0]
                fits = (self.rows_in_use + req.width <= self.max_batch
                        and (self.kv_budget_bytes is None
                             or self.bytes_in_use + req.need_bytes <= self.kv_budget_bytes))
                if not fits and self.active:
                    return  # wait for room; nobody behind it goes first
                self.waiting.popleft()
            req.start = time.perf_counter()
            if req.on_start is not None:
                req.on_start(req)
            if req.cancel.is_set():  # cancelled while waiting: it never takes a cache
                self._finish(req)
                continue
            try:
                req.prompt = self.prompts.start(req.ids, req.client, self.chunk)
            except Exception as exc:  # noqa: BLE001 - the request fails alone
                self._fail(req, exc)
                continue
            self.prefilling.append(req)

    def _retire_cancelled(self) -> None:
        for req in [r for r in self.active if r.cancel.is_set()]:
            self._finish(req)

    def _prefill_chunk(self, req: Request) -> None:
        try:
            logits = req.prompt.step(req.cancel)
        except Exception as exc:  # noqa: BLE001
            self._fail(req, exc)
            return
        if req.prompt.stopped or (logits is not None and req.cancel.is_set()):
            self._finish(req)  # cancelled: no token after it, the prompt's cache is kept
            return
        if logits is None:
            return  # more chunks
        req.prefill_ms = (time.perf_counter() - req.start) * 1e3
        self.prefilling.remove(req)
        try:
            run = req.prompt
            self.prompts.count(run)
            room = req.params.max_new_tokens
            req.rows = [Row(req.states[0], run.cache, list(req.ids))]
            for state in req.states[1:]:
                req.rows.append(Row(state, self.model.fork(run.cache, len(req.ids), room),
                                    list(req.ids)))
            self._sample(req, np.repeat(logits[None, :], len(req.rows), axis=0), req.rows)
        except Exception as exc:  # noqa: BLE001
            self._fail(req, exc)
            return
        if not req.finished:
            self.decoding.append(req)

    def _decode_step(self) -> None:
        work = [(req, [row for row in req.rows if not row.state.done]) for req in self.decoding]
        rows = [row for _, req_rows in work for row in req_rows]
        self.last_batch_rows = len(rows)
        try:
            logits = self._decode(rows)
            parts, at = [], 0
            for req, req_rows in work:
                parts.append((req, req_rows, logits[at:at + len(req_rows)]))
                at += len(req_rows)
        except Exception as exc:  # noqa: BLE001 - find the request whose rows fail
            if len(work) == 1:
                self._fail(work[0][0], exc)
                return
            parts = []
            for req, req_rows in work:
                try:
                    parts.append((req, req_rows, self._decode(req_rows)))
                except Exception as one:  # noqa: BLE001
                    self._fail(req, one)
        for req, req_rows, req_logits in parts:
            if req.cancel.is_set():  # cancelled during the step: no token after it
                self._finish(req)
                continue
            try:
                self._sample(req, req_logits, req_rows)
            except Exception as exc:  # noqa: BLE001
                self._fail(req, exc)

    def _decode(self, rows: list[Row]) -> np.ndarray:
        tokens = np.fromiter((row.next_token for row in rows), np.int64, len(rows))
        logits = self.model.decode(tokens, [row.cache for row in rows])
        for row in rows:
            row.fed.append(row.next_token)
        return logits

    def _sample(self, req: Request, logits: np.ndarray, rows: list[Row]) -> None:
        """Choose each row's next token from its logits and hand out the events."""
        now = time.perf_counter()
        step = len(req.times)
        last = step == req.params.max_new_tokens - 1
        for row, row_logits in zip(rows, logits):
            token, event = self.sampler.advance(row.state, row_logits, req.params,
                                                now - req.start, last)
            row.next_token = token
            req.emit(event)
            if row.state.done and row is not req.rows[0]:
                self.model.release(row.cache)  # a finished extra choice frees its memory now
        req.times.append((now - req.start) * 1e3)
        if last or all(row.state.done for row in req.rows):
            self._finish(req)

    def _finish(self, req: Request) -> None:
        """End a request (done, or cancelled: its unfinished choices say so); keep its cache."""
        if req.finished:
            return
        self._leave(req)
        for state in req.states:
            if not state.done:
                text = state.finish("cancelled")
                req.emit(TokenEvent(state.choice.index, -1, text,
                                    time.perf_counter() - (req.start or req.submitted),
                                    finish_reason=state.choice.finish_reason))
        try:
            self._keep(req)
        except Exception:  # noqa: BLE001 - losing a cache entry never fails a request
            log.exception("keeping a finished request's KV cache failed")
        end = time.perf_counter()
        e2e_ms = (end - (req.start or end)) * 1e3
        req.result = GenerationResult(
            choices=[s.choice for s in req.states], prompt_tokens=len(req.ids),
            completion_tokens=sum(s.generated for s in req.states),
            truncated_tokens=req.truncated,
            reused_tokens=req.prompt.reused if req.prompt is not None else 0,
            seed=req.seed, load_s=req.load_s,
            ttft_ms=req.times[0] if req.times else e2e_ms,
            prefill_ms=req.prefill_ms or e2e_ms, e2e_ms=e2e_ms, token_times_ms=list(req.times),
            queued_ms=((req.start or end) - req.submitted) * 1e3)
        req.finished = True
        req.on_done(req)

    def _keep(self, req: Request) -> None:
        run = req.prompt
        if run is None:
            return
        if req.rows:  # choice 0's sequence, prompt and generated tokens; the others go
            self.prompts.keep(req.rows[0].fed, req.rows[0].cache, req.client)
            for row in req.rows[1:]:
                self.model.release(row.cache)
        else:  # stopped during the prompt: what it computed, down to the layer
            if run.done > run.reused or run.partial is not None:
                self.prompts.count(run)
            self.prompts.keep(req.ids[:run.done], run.cache, req.client, partial=run.partial)

    def _fail(self, req: Request, exc: BaseException) -> None:
        if req.finished:
            return
        self._leave(req)
        if not isinstance(exc, EngineError):  # a known failure says itself in one line
            log.error("a request failed (the others go on)", exc_info=exc)
        for cache in [row.cache for row in req.rows] or (
                [req.prompt.cache] if req.prompt is not None else []):
            try:
                self.model.release(cache)
            except Exception:  # noqa: BLE001
                pass
        req.error = exc
        req.finished = True
        req.on_done(req)

    def _leave(self, req: Request) -> None:
        if req in self.prefilling:
            self.prefilling.remove(req)
        if req in self.decoding:
            self.decoding.remove(req)
