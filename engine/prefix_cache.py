"""Reuse the KV cache of recent prompts: an editor's next prompt extends its last one.

Entries are owned: `take_partial` removes the best entry of the asking client, the request
then writes into it, and `put` stores the result under exactly the tokens it now holds.  So
no entry is ever shared between two requests and none can be left inconsistent (a cancelled
request stores what it computed so far).  The longest common prefix is taken over token ids,
which backs off by itself when a re-tokenised prompt differs from the cached one in its last
tokens.

A team shares one budget: entries belong to a client (`client`, None for a lone user), a
request only takes its own client's entries, and eviction is fair: over budget, the least
recently used entry of the client holding the most bytes goes first, so one busy client
cannot push everyone else's context out.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import numpy as np

log = logging.getLogger("engine")


@dataclass
class _Entry:
    tokens: np.ndarray
    cache: object
    nbytes: int
    warm: bool = False  # stored by a speculative warm-up, not by a request
    partial: object = None  # (tokens, state) of a chunk stopped part-way after `tokens`
    client: object = None


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if diff.size else n


class PrefixCache:
    """LRU of (token ids, KV cache) per client, within one byte budget, fair between clients."""

    def __init__(self, budget_bytes: int, release: Callable[[object], None] | None = None):
        """`release(cache)` is called for each evicted entry's cache (the model's `release`)."""
        self.budget_bytes = int(budget_bytes)
        self._release = release
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # least recently used first
        self._next = 0
        self._lock = threading.Lock()
        self._warned = False
        self.reused_tokens = 0
        self.computed_tokens = 0

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return sum(e.nbytes for e in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def bytes_by_client(self) -> dict:
        with self._lock:
            return self._bytes_by_client()

    def _bytes_by_client(self) -> dict:
        out: dict = {}
        for entry in self._entries.values():
            out[entry.client] = out.get(entry.client, 0) + entry.nbytes
        return out

    def take(self, ids: list[int], client=None) -> tuple[object | None, int]:
        """`take_partial` without the stopped chunk: (cache or None, tokens it shares)."""
        cache, n, _ = self.take_partial(ids, client)
        return cache, n

    def take_partial(self, ids: list[int], client=None) -> tuple[object | None, int, object]:
        """Remove and return the entry of `client` sharing the longest prefix with `ids`, that
        length, and the entry's stopped chunk (`put(..., partial=)`) when all of the entry is
        reused (else None: the chunk would start past what is reused).

        At most len(ids) - 1 tokens are reused: the last prompt token must be run
        to get the logits of the first new token.
        """
        want = np.asarray(ids, dtype=np.int64)
        with self._lock:
            best, best_len = None, 0
            for key, entry in self._entries.items():
                if entry.client != client:
                    continue
                n = min(common_prefix(entry.tokens, want), len(ids) - 1)
                if n > best_len:
                    best, best_len = key, n
            if best is None:  # an entry of no whole token may hold a first chunk stopped part-way
                best = next((key for key, entry in self._entries.items()
                             if entry.client == client and not len(entry.tokens)
                             and entry.partial is not None and len(ids) > len(entry.partial[0])
                             and tuple(ids[:len(entry.partial[0])]) == entry.partial[0]), None)
                if best is None:
                    return None, 0, None
            entry = self._entries.pop(best)
            return entry.cache, best_len, (entry.partial if best_len == len(entry.tokens)
                                           else None)

    def match(self, ids: list[int], warm_slack: int = 0,
              client=None) -> tuple[int, int | None, int | None, int]:
        """Among `client`'s entries: (longest prefix of `ids` any shares, that entry's key, the
        key of the longest entry that is itself a prefix of `ids`, the length it shares); keys
        for `peek` and `pop_partial`.  A warm-up's entry (`put(..., warm=True)`) that goes on by
        at most `warm_slack` tokens past what it shares counts as a prefix too: a guess whose
        last tokens tokenise differently once more text follows, to be taken over and
        rewritten."""
        want = np.asarray(ids, dtype=np.int64)
        best, best_key, whole_key, whole = 0, None, None, 0
        with self._lock:
            for key, entry in self._entries.items():
                if entry.client != client:
                    continue
                n = common_prefix(entry.tokens, want)
                if n > best:
                    best, best_key = n, key
                beyond = len(entry.tokens) - n
                if n > whole and (beyond == 0 or (entry.warm and beyond <= warm_slack)):
                    whole_key, whole = key, n
        return best, best_key, whole_key, whole

    def peek(self, key: int) -> object | None:
        """The cache of entry `key`, left in place (read it, never write into it)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry.cache if entry is not None else None

    def pop_partial(self, key: int) -> tuple[object | None, object]:
        """Remove entry `key`; (its cache, which the caller now owns, and its stopped chunk
        or None)."""
        with self._lock:
            entry = self._entries.pop(key, None)
        return (entry.cache, entry.partial) if entry is not None else (None, None)

    def put(self, tokens: list[int], cache: object, nbytes: int, warm: bool = False,
            partial: object = None, client=None) -> bool:
        """Keep `cache` (holding `tokens`) for `client`; False (and the cache released) when
        one entry alone is larger than the budget."""
        if nbytes > self.budget_bytes:
            if not self._warned:
                log.warning("prefix cache budget %.0f MB is smaller than one prompt's KV cache "
                            "(%.0f MB): completions work, without reuse", self.budget_bytes / 2**20,
                            nbytes / 2**20)
                self._warned = True
            self._free(cache)
            return False
        with self._lock:
            self._entries[self._next] = _Entry(np.asarray(tokens, np.int64), cache, nbytes, warm,
                                               partial, client)
            self._next += 1
            evicted = self._evict()
        for entry in evicted:
            self._free(entry.cache)
        return True

    def _evict(self) -> list[_Entry]:
        """(lock held) Drop entries until within budget: the least recently used entry of the
        client holding the most bytes first (of two such, the one whose entry is older)."""
        evicted = []
        used = sum(e.nbytes for e in self._entries.values())
        while used > self.budget_bytes and self._entries:
            held = self._bytes_by_client()
            top = max(held.values())
            key = next(k for k, e in self._entries.items() if held[e.client] == top)
            entry = self._entries.pop(key)
            used -= entry.nbytes
            evicted.append(entry)
        return evicted

    def _free(self, cache) -> None:
        if self._release is not None and cache is not None:
            self._release(cache)

    def clear(self) -> None:
        with self._lock:
            entries, self._entries = list(self._entries.values()), OrderedDict()
        for entry in entries:
            self._free(entry.cache)

    def count(self, reused: int, computed: int) -> None:
        with self._lock:
            self.reused_tokens += reused
            self.computed_tokens += computed
