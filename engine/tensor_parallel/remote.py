"""Rank 0's model proxy and the followers' loop: every interface call runs on every rank.

Rank 0's `RemoteModel` implements engine/interface.py's `Model`: each call broadcasts a header
(op and small integers) and a payload (tokens, cache ids) to the followers, then runs on rank
0's own shard model; the followers run the same call on theirs (`follow`), so the sharded
forwards meet in the same collectives (inside the model: one all-reduce per layer and, with the
vocabulary split, one per embedding lookup and an all-gather of the logits).  Caches
are mirrored by id: rank 0 tags each KVCache it hands out (`tp_id`), followers keep theirs in a
dict under the same id.  Cancellation between layers stays collective: the `cancel` the model
polls is relayed (rank 0 broadcasts each answer), so every rank stops at the same layer, and a
paused prompt's state is kept per cache on every rank for the resume.
"""
from __future__ import annotations

import logging
import threading
import weakref

import numpy as np

from ..errors import EngineError

log = logging.getLogger("engine.tp")

NEW, PREFILL, DECODE, FORK, TRIM, RESERVE, RELEASE, LOGITS, STOP = range(1, 10)
HEADER = 8  # int64s: op, payload length, up to 6 arguments


class RankLost(EngineError):
    """The model cannot run: a tensor-parallel rank is gone (cgserve answers 503)."""

    http_status = 503  # the group printed its one line already; an EngineError logs no traceback


class Channel:
    """Broadcasts from rank 0 over Paddle's collectives (NCCL on GPUs, gloo on CPU)."""

    def __init__(self):
        from ..runtime import import_paddle

        self.paddle = import_paddle()
        import paddle.distributed as dist

        self.dist = dist
        self.rank = dist.get_rank()

    def _bcast(self, array: np.ndarray) -> np.ndarray:
        tensor = self.paddle.to_tensor(array)
        self.dist.broadcast(tensor, src=0)
        return tensor.numpy()

    def send(self, op: int, args=(), payload=None) -> None:
        payload = np.asarray([] if payload is None else payload, np.int64).reshape(-1)
        header = np.zeros(HEADER, np.int64)
        header[0], header[1] = op, payload.size
        header[2:2 + len(args)] = args
        self._bcast(header)
        if payload.size:
            self._bcast(payload)

    def receive(self) -> tuple[int, np.ndarray, np.ndarray]:
        header = self._bcast(np.zeros(HEADER, np.int64))
        n = int(header[1])
        payload = self._bcast(np.zeros(n, np.int64)) if n else np.zeros(0, np.int64)
        return int(header[0]), header[2:], payload

    def flag(self, value: bool | None) -> bool:
        """Rank 0 sends `value`; every rank returns it."""
        return bool(self._bcast(np.asarray([int(bool(value))], np.int64))[0])

    def all_reduce(self, x):
        """Sum `x` over the ranks in place: a Paddle tensor, or a numpy array (copied through
        a tensor; the CPU decode's [rows, n_embd] rows are small)."""
        if isinstance(x, np.ndarray):
            tensor = self.paddle.to_tensor(x)
            self.dist.all_reduce(tensor)
            x[...] = tensor.numpy()
            return x
        self.dist.all_reduce(x)
        return x

    def all_gather(self, x) -> np.ndarray:
        """Every rank's `x` [rows, cols] side by side: [rows, world * cols], numpy (a Paddle
        tensor, or a numpy array copied through one); the vocabulary-split logits."""
        tensor = self.paddle.to_tensor(x) if isinstance(x, np.ndarray) else x
        parts: list = []
        self.dist.all_gather(parts, tensor)
        return np.concatenate([part.numpy() for part in parts], axis=-1)


class _CancelRelay:
    """Rank 0: the caller's event, each answer broadcast so the followers stop with us."""

    def __init__(self, event, channel: Channel):
        self.event, self.channel = event, channel

    def is_set(self) -> bool:
        return self.channel.flag(self.event.is_set())


class _CancelMirror:
    """A follower: rank 0's answers."""

    def __init__(self, channel: Channel):
        self.channel = channel

    def is_set(self) -> bool:
        return self.channel.flag(None)


# attributes of the local model rank 0 may read directly (no collective behind them)
_LOCAL = ("config", "dtype", "device", "compute", "supports_prefix_reuse", "kv_bytes_per_token",
          "cache_nbytes", "n_head", "head_dim", "mixed", "host")


class RemoteModel:
    """Rank 0's `Model`: forwards each call to the followers, then runs it on its shard."""

    def __init__(self, local, channel: Channel, group, world: int):
        self.local, self.channel, self.group, self.world = local, channel, group, world
        self._lock = threading.RLock()
        self._next_id = 1
        self._dropped: list[int] = []  # ids of caches collected without release()
        self._finalizers: dict[int, weakref.finalize] = {}
        self.closed = False

    def __getattr__(self, name):
        if name in _LOCAL:
            return getattr(self.local, name)
        raise AttributeError(f"{type(self).__name__} has no {name!r} (only the model interface "
                             "runs under tensor parallelism)")

    @property
    def failure(self) -> str | None:
        """One line when a rank is lost (the model cannot run any more), else None."""
        return None if self.group is None else self.group.failure

    # ---- plumbing ------------------------------------------------------------------------
    def _call(self, op: int, args=(), payload=None, run=None):
        with self._lock:
            if self.failure:
                raise RankLost(self.failure)
            if self.closed:
                raise RankLost("the tensor-parallel model was closed")
            if self.group is not None:
                self.group.step_started()
            try:
                dropped = []
                while self._dropped:  # pop: a finalizer may append from another thread
                    dropped.append(self._dropped.pop())
                if dropped:
                    self.channel.send(RELEASE, (), dropped)
                self.channel.send(op, args, payload)
                return run()
            except EngineError:
                raise  # a user's error, raised the same way on every rank: still in step
            except Exception as exc:
                # anything else may have left the ranks at different collectives: the model
                # cannot be trusted any more, so the group fails (503, then exit)
                first = (str(exc).splitlines() or [""])[0][:200]
                if self.group is not None:  # a collective error usually means a follower died
                    self.group.fail(self.group.exited_follower(wait_s=2.0) or
                                    f"rank 0's model call failed ({type(exc).__name__}: {first})")
                raise RankLost(self.failure or f"tensor-parallel call failed: {first}") from None
            finally:
                if self.group is not None:
                    self.group.step_done()

    def _tag(self, cache):
        cid, self._next_id = self._next_id, self._next_id + 1
        cache.tp_id = cid
        self._finalizers[cid] = weakref.finalize(cache, self._dropped.append, cid)
        return cache

    # ---- the interface -------------------------------------------------------------------
    def new_cache(self):
        with self._lock:
            cid = self._next_id
            return self._tag(self._call(NEW, (cid,), run=self.local.new_cache))

    def prefill(self, cache, tokens, cancel=None, resume=None):
        tokens = np.asarray(tokens, np.int64).reshape(-1)
        resumed = resume is not None and resume is getattr(cache, "tp_paused", None)
        relay = None if cancel is None else _CancelRelay(cancel, self.channel)

        def run():
            result = self.local.prefill(cache, tokens.tolist(), relay, resume if resumed else None)
            cache.tp_paused = result.paused
            return result

        return self._call(PREFILL, (cache.tp_id, cancel is not None, resumed), tokens, run)

    def decode(self, tokens, caches):
        tokens = np.asarray(tokens, np.int64).reshape(-1)
        ids = [c.tp_id for c in caches]
        return self._call(DECODE, (len(ids),), np.concatenate([tokens, ids]),
                          lambda: self.local.decode(tokens, caches))

    def fork(self, cache, upto: int, room: int = 0):
        with self._lock:
            cid = self._next_id
            return self._tag(self._call(FORK, (cache.tp_id, cid, upto, room),
                                        run=lambda: self.local.fork(cache, upto, room)))

    def trim(self, cache, length: int) -> None:
        self._call(TRIM, (cache.tp_id, length), run=lambda: self.local.trim(cache, length))

    def reserve(self, cache, tokens: int) -> None:
        self._call(RESERVE, (cache.tp_id, tokens), run=lambda: self.local.reserve(cache, tokens))

    def release(self, cache) -> None:
        cid = cache.tp_id
        finalizer = self._finalizers.pop(cid, None)
        if finalizer is not None:
            finalizer.detach()
        self._call(RELEASE, (), [cid], run=lambda: self.local.release(cache))

    def logits(self, ids) -> np.ndarray:
        ids = np.asarray(ids, np.int64).reshape(-1)
        return self._call(LOGITS, (), ids, lambda: self.local.logits(ids.tolist()))

    def param_count(self) -> int:
        return self.config.arch.param_count  # every rank's shard together

    # ---- stop ----------------------------------------------------------------------------
    def close(self) -> None:
        """Tell the followers to stop and wait for them (idempotent; at exit too)."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            if self.group is not None:
                self.group.closing = True
            if not self.failure:
                try:
                    self.channel.send(STOP)
                except Exception as exc:  # a follower already gone: close() kills the rest
                    log.warning("tensor parallelism: stopping the followers: %s", exc)
            if self.group is not None:
                self.group.close()


def follow(local, channel: Channel) -> None:
    """A follower's loop: run each call rank 0 broadcasts on the local shard model."""
    caches: dict[int, object] = {}
    mirror = _CancelMirror(channel)
    while True:
        op, args, payload = channel.receive()
        if op == STOP:
            return
        try:
            _execute(local, op, args, payload, caches, mirror)
        except EngineError:
            pass  # a user's error: rank 0 raised the same one and tells its caller
        except Exception:  # out of step with rank 0 now: leave, rank 0 sees us go
            log.exception("tensor-parallel follower: op %d failed", op)
            raise


def _execute(local, op, args, payload, caches, mirror) -> None:
    if op == NEW:
        caches[int(args[0])] = local.new_cache()
    elif op == PREFILL:
        cache = caches[int(args[0])]
        resume = getattr(cache, "tp_paused", None) if args[2] else None
        result = local.prefill(cache, payload.tolist(), mirror if args[1] else None, resume)
        cache.tp_paused = result.paused
    elif op == DECODE:
        rows = int(args[0])
        local.decode(payload[:rows], [caches[int(c)] for c in payload[rows:]])
    elif op == FORK:
        caches[int(args[1])] = local.fork(caches[int(args[0])], int(args[2]), int(args[3]))
    elif op == TRIM:
        local.trim(caches[int(args[0])], int(args[1]))
    elif op == RESERVE:
        local.reserve(caches[int(args[0])], int(args[1]))
    elif op == RELEASE:
        for cid in payload.tolist():
            cache = caches.pop(int(cid), None)
            if cache is not None:
                local.release(cache)
    elif op == LOGITS:
        local.logits(payload.tolist())
    else:
        raise ValueError(f"unknown tensor-parallel op {op}")
