"""The server's side of the engine's batch: jobs in, events out, one worker thread stepping it.

The engine batches requests itself (engine.batch: continuous batching, admission by KV-cache
budget, chunked prefill).  This module connects it to the IO loop: `Scheduler.submit` (on the
loop) turns a request into an engine `Request` and a `Job`, refusing with `QueueFull` beyond
`--max-queue` waiting; the worker thread calls `generator.step()` while anything is admitted
or waiting, and the engine hands every `TokenEvent`, then a `Done`, back to the job's asyncio
queue with `call_soon_threadsafe`.  Cancelling a job sets its `threading.Event` (the batch
drops the row before its next step) and takes it out of the queue if it has not started.
While the batch is idle the worker runs speculative warm-ups (a client's next lines).
"""
from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

from engine.errors import EngineError

from .speculate import LINES_AHEAD, line_prefixes

log = logging.getLogger("serve")


MAX_CLIENTS = 64  # clients whose coming lines are remembered for warm-ups (oldest dropped)


class QueueFull(Exception):
    """More requests are waiting than --max-queue allows."""


class Stopped(Exception):
    """The scheduler no longer takes work (shutting down)."""


@dataclass
class Done:
    """The last item of a job: the engine's result, or the exception it raised."""

    result: Any = None
    error: BaseException | None = None
    dropped: bool = False  # cancelled while still queued: the engine never saw it


@dataclass(eq=False)
class Job:
    prompt: Any
    params: Any
    loop: asyncio.AbstractEventLoop
    cancel: threading.Event = field(default_factory=threading.Event)
    items: asyncio.Queue = field(default_factory=asyncio.Queue)
    enqueued_at: float = field(default_factory=time.perf_counter)
    started_at: float | None = None  # perf_counter when the worker took it
    cancel_reason: str | None = None
    finished: bool = False
    client: str | None = None  # who sent it (serve.supersede.client_key), for superseding
    request: Any = None  # the engine's Request (engine.batch), once built

    def deliver(self, item) -> None:
        """Called from the worker thread: hand one item to the loop."""
        try:
            self.loop.call_soon_threadsafe(self.items.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    async def next_item(self, timeout: float | None = None):
        return await asyncio.wait_for(self.items.get(), timeout)


class Scheduler:
    """Jobs for one generator's batch, stepped by one worker thread."""

    def __init__(self, generator, max_queue: int = 16, speculate: bool = False,
                 lines_ahead: int = LINES_AHEAD, max_batch: int | None = None,
                 kv_cache_bytes: int | None = None):
        """`max_batch`: sequences (rows) decoded together at most; `kv_cache_bytes`: the KV
        cache running sequences may reserve (None: the engine's defaults)."""
        self.generator = generator
        self.max_queue = max_queue
        self.batch = generator.batch
        if max_batch is not None:
            self.batch.max_batch = int(max_batch)
        if kv_cache_bytes is not None:
            self.batch.kv_budget_bytes = int(kv_cache_bytes)
        cache = generator.prefix_cache
        log.info("batching up to %d sequences, KV cache budget %.0f MB for running requests "
                 "(--kv-cache-mb), prefix cache %.0f MB (--prefix-cache-mb)", self.max_batch,
                 (self.kv_cache_bytes or 0) / 2**20, (cache.budget_bytes if cache else 0) / 2**20)
        # warm-ups need a prefix cache to keep what they compute
        self.speculate = bool(speculate and lines_ahead > 0
                              and generator.prefix_cache is not None)
        self.lines_ahead = lines_ahead
        # per client, the texts still to warm, nearest line first (oldest client first)
        self._pending: collections.OrderedDict[Any, list[str]] = collections.OrderedDict()
        self._warm_cancel: threading.Event | None = None  # set while a warm-up runs
        self._held = False
        self.warmups = {"started": 0, "completed": 0, "cancelled": 0, "skipped": 0,
                        "tokens": 0}  # read by /metrics; written by the worker only
        self._jobs: dict[Any, Job] = {}  # engine Request -> its job, oldest first
        self._cond = threading.Condition()
        self._stopping = False
        self._live: weakref.WeakSet[Job] = weakref.WeakSet()  # for leak checks in tests
        self._thread = threading.Thread(target=self._work, name="cgserve-worker", daemon=True)
        self._thread.start()

    # ---- called on the IO loop ----
    def submit(self, prompt, params, client: str | None = None) -> Job:
        job = Job(prompt, params, asyncio.get_running_loop(), client=client)
        with self._cond:
            if self._stopping:
                raise Stopped("the server is shutting down")
            if self.waiting >= self.max_queue and (self.batch.busy or self.waiting):
                raise QueueFull(f"{self.waiting} requests are already waiting")
        try:
            job.request = self.generator.request(
                prompt, params, job.cancel, job.deliver, lambda req: self._done(job, req),
                client=client, on_start=lambda req: self._started(job))
        except Exception as exc:  # EngineError is the client's (a 4xx); the handler maps it
            job.items.put_nowait(Done(error=exc))
            return job
        with self._cond:
            self._jobs[job.request] = job
            self._live.add(job)
            self.generator.submit(job.request)
            if self._warm_cancel is not None:
                self._warm_cancel.set()  # the request goes first; the warm-up resumes later
            self._cond.notify_all()
        return job

    def cancel(self, job: Job, reason: str) -> None:
        """Stop a job: drop it if still queued, else stop it before its next decode step."""
        if job.finished or job.cancel.is_set():
            return
        job.cancel_reason = reason
        job.cancel.set()
        if job.request is not None and self.batch.drop(job.request):
            with self._cond:
                self._jobs.pop(job.request, None)
            job.items.put_nowait(Done(dropped=True))
        with self._cond:
            self._cond.notify_all()  # a cancelled row leaves at the next step

    def jobs_of(self, client: str) -> list[Job]:
        """The running and queued jobs of one client that are not cancelled yet, oldest first."""
        with self._cond:
            jobs = list(self._jobs.values())
        return [job for job in jobs if job.client == client and not job.finished
                and not job.cancel.is_set()]

    @property
    def depth(self) -> int:
        """Requests waiting for room in the batch."""
        return len(self.batch.waiting)

    waiting = depth  # the name /metrics shows it under

    @property
    def max_batch(self) -> int:
        return self.batch.max_batch

    @property
    def kv_cache_bytes(self) -> int | None:
        return self.batch.kv_budget_bytes

    @property
    def running(self) -> int:
        """Sequences (rows: n choices count n) being prefilled or decoded now."""
        return self.batch.rows_in_use

    @property
    def batch_size(self) -> int:
        """Rows in the most recent decode step."""
        return self.batch.last_batch_rows

    @property
    def busy(self) -> bool:
        return self.batch.busy

    @property
    def live_jobs(self) -> int:
        return len(self._live)

    @property
    def warming(self) -> bool:
        """True while a speculative warm-up runs."""
        return self._warm_cancel is not None

    @property
    def pending_warmups(self) -> int:
        with self._cond:  # the worker changes the lists
            return sum(len(texts) for texts in self._pending.values())

    def hold_warmups(self, held: bool = True) -> None:
        """Start no warm-ups while held (a running one is cancelled, keeping its work and
        staying pending); release to let them run again."""
        with self._cond:
            self._held = held
            if held and self._warm_cancel is not None:
                self._warm_cancel.set()
            self._cond.notify_all()

    def wait_warmups_stopped(self, timeout: float | None = None) -> bool:
        """Wait until no warm-up runs; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._warm_cancel is not None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def stop(self, cancel_running: bool = False) -> None:
        """Take no more work; drop what is queued; optionally cancel the running jobs."""
        with self._cond:
            self._stopping = True
            self._pending.clear()
            if self._warm_cancel is not None:
                self._warm_cancel.set()
            queued = [req for req in list(self.batch.waiting) if self.batch.drop(req)]
            jobs = [self._jobs.pop(req) for req in queued if req in self._jobs]
            running = list(self._jobs.values())
            self._cond.notify_all()
        for job in jobs:
            job.cancel_reason = "shutdown"
            job.cancel.set()
            job.deliver(Done(dropped=True))
        if cancel_running:
            for job in running:
                job.cancel_reason = "shutdown"
                job.cancel.set()

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # ---- the worker thread ----
    def _work(self) -> None:
        while True:
            warm = None
            with self._cond:
                while not self._stopping and self.batch.idle and not self._can_warm():
                    self._cond.wait()
                if self._stopping and self.batch.idle:
                    return
                if self.batch.idle:
                    warm = self._next_warmup()
                    self._warm_cancel = threading.Event()
            if warm is not None:
                self._warm(*warm)
                continue
            try:
                self.generator.step()
            except Exception:  # the batch fails requests alone; this would be a bug in it
                log.exception("batch step failed")
                time.sleep(0.1)

    def _started(self, job: Job) -> None:
        job.started_at = time.perf_counter()

    def _done(self, job: Job, req) -> None:
        """(worker thread) The engine finished a request: hand its Done to the job."""
        with self._cond:
            self._jobs.pop(req, None)
            self._expect(job)
        job.deliver(Done(result=req.result, error=req.error))

    def _can_warm(self) -> bool:
        return not self._held and any(self._pending.values())

    def _next_warmup(self) -> tuple[list[str], str, Any]:
        """(lock held, `_can_warm` true) The oldest client's nearest text, taken off its list."""
        client, texts = next((c, t) for c, t in self._pending.items() if t)
        return texts, texts.pop(0), client

    def _expect(self, job: Job) -> None:
        """After a job (lock held): remember the starts of its client's next prompts."""
        if not self.speculate or job.cancel.is_set() or job.started_at is None:
            return
        texts = line_prefixes(job.prompt, self.lines_ahead)
        if not texts:
            return
        self._pending.pop(job.client, None)
        self._pending[job.client] = texts  # newest last; replaces the client's older ones
        while len(self._pending) > MAX_CLIENTS:
            self._pending.popitem(last=False)

    def _warm(self, texts: list[str], text: str, client) -> None:
        cancel = self._warm_cancel
        self.warmups["started"] += 1
        try:
            result = self.generator.warm(text, cancel, client=client)
        except Exception as exc:  # a warm-up is an optimisation: never let it stop the worker
            if not isinstance(exc, EngineError):  # a known one (a lost rank) said itself
                log.exception("speculative warm-up failed")
            result = None
        finally:
            with self._cond:
                self._warm_cancel = None
                self._cond.notify_all()
        if result is None:
            return
        self.warmups["tokens"] += result.computed_tokens
        if result.skipped:
            self.warmups["skipped"] += 1
        elif result.cancelled:
            self.warmups["cancelled"] += 1
            with self._cond:  # try again later unless newer ones replaced the client's list
                if not self._stopping and any(t is texts for t in self._pending.values()):
                    texts.insert(0, text)
        else:
            self.warmups["completed"] += 1
        log.debug("warm-up: %s", result)
