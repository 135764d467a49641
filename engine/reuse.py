"""Prompt reuse and resumable prefill, used by the batch: where a prompt's KV cache comes from,
how it is computed a chunk at a time, and where it goes afterwards.

- `Prompts.start(ids, client)` takes the client's cached entry sharing the longest prefix
  (engine.prefix_cache) or a fresh cache, as a `PromptRun`;
- `PromptRun.step(cancel)` runs the next chunk (`PREFILL_CHUNK` tokens) on the model; a chunk
  stopped between two layers keeps those layers (the model's `Paused` state), and the next
  run over the same tokens goes on from that layer;
- `Prompts.keep(...)` hands a cache back to the prefix cache under the tokens it holds;
- `Prompts.warm(...)` computes a prompt's cache ahead of its request (cgserve's warm-ups).
Without a prefix cache (budget 0) prompts still run in chunks, and caches are released.
"""
from __future__ import annotations

import threading

from .prefix_cache import PrefixCache
from .sequence import WarmResult

PREFILL_CHUNK = 512  # prompts run (and are kept when cancelled) in chunks of this size
WARM_CHUNK = 512  # warm-ups' chunks (a cancelled one keeps the layers it finished)
WARM_NEAR_TOKENS = 16  # an entry covering all but this many of a warm-up's tokens is enough
WARM_TAKEOVER_TOKENS = 4  # a warm-up takes over an earlier warm-up's entry ending this close


class PromptRun:
    """One prompt's prefill in progress: `ids[:done]` are in `cache`; `step` runs the next
    chunk.  `partial`: (tokens, paused state) of a chunk stopped part-way on this cache."""

    def __init__(self, model, ids: list[int], cache, done: int, partial=None,
                 chunk: int = PREFILL_CHUNK):
        self.model, self.ids, self.cache, self.done = model, ids, cache, done
        self.reused = done
        self.partial = partial
        self.chunk = max(1, int(chunk))
        self.stopped = False  # the last chunk was stopped by `cancel`

    @property
    def finished(self) -> bool:
        return self.done == len(self.ids)

    def step(self, cancel: threading.Event | None = None):
        """Run the next chunk; the last position's logits once the whole prompt has run, else
        None (more chunks to go, or stopped: then `stopped` is set)."""
        if cancel is not None and cancel.is_set():
            self.stopped = True
            return None
        resume, end = None, min(len(self.ids), self.done + self.chunk)
        if self.partial is not None:
            tokens, paused = self.partial
            if paused.start == self.done and tokens == tuple(self.ids[self.done:self.done + len(tokens)]):
                resume, end = paused, self.done + paused.length
            self.partial = None
        chunk = self.ids[self.done:end]
        out = self.model.prefill(self.cache, chunk, cancel, resume)
        if not out.finished:
            self.stopped = True
            self.partial = (tuple(chunk), out.paused) if out.paused is not None else None
            return None
        self.done = end
        return out.logits if self.finished else None


class Prompts:
    """The engine's prompt caches: taken from and given back to one `PrefixCache`, if any."""

    def __init__(self, model, prefix_cache: PrefixCache | None, context_length: int):
        self.model = model
        self.prefix_cache = prefix_cache
        self.context_length = context_length

    def start(self, ids: list[int], client=None, chunk: int = PREFILL_CHUNK) -> PromptRun:
        cache, reused, partial = (self.prefix_cache.take_partial(ids, client)
                                  if self.prefix_cache is not None else (None, 0, None))
        if cache is None:
            cache = self.model.new_cache()
        else:
            self.model.trim(cache, reused)  # positions past the shared prefix are rewritten
        return PromptRun(self.model, ids, cache, reused, partial, chunk)

    def count(self, run: PromptRun) -> None:
        if self.prefix_cache is not None:
            self.prefix_cache.count(run.reused, run.done - run.reused)

    def keep(self, tokens: list[int], cache, client=None, warm: bool = False,
             partial=None) -> None:
        """Give `cache` (holding `tokens`) to the prefix cache, or release it."""
        if cache is None:
            return
        if self.prefix_cache is None:
            self.model.release(cache)
            return
        nbytes = cache.nbytes + (partial[1].nbytes if partial else 0)
        self.prefix_cache.put(tokens, cache, nbytes, warm=warm, partial=partial, client=client)

    def warm(self, ids: list[int], cancel: threading.Event, chunk: int = WARM_CHUNK,
             client=None) -> WarmResult:
        """Compute the KV cache of `ids` and keep it in the prefix cache; never decode.

        For a prompt a later request is expected to start with (an editor's next line): that
        request then reuses it as any cached prefix.  Runs in chunks of `chunk` tokens and
        stops between two layers once `cancel` is set; a cancelled warm-up keeps the chunks it
        finished and the layers of the one it stopped in.  It starts from the client's cached
        entry sharing the longest prefix: taken over when the entry holds nothing beyond that
        prefix, or when it is an earlier warm-up's that goes on only by its last few tokens
        (the same guess one line shorter: its final newline tokenises differently once the
        line follows); otherwise its shared part is copied (`fork`), so an entry a request
        still needs (the line being typed) keeps its end.  Nothing happens without a prefix
        cache, or when the prompt would not fit the context uncut.
        """
        if self.prefix_cache is None:
            return WarmResult(skipped="no-cache")
        if not ids:
            return WarmResult(skipped="empty")
        if len(ids) >= self.context_length:
            return WarmResult(len(ids), skipped="too-long")
        cache = self.prefix_cache
        best, best_key, whole_key, whole = cache.match(ids, WARM_TAKEOVER_TOKENS, client)
        if best >= len(ids) - min(WARM_NEAR_TOKENS, len(ids) - 1):
            return WarmResult(len(ids), best, skipped="cached")
        kv, reused, partial = None, 0, None
        if whole_key is not None and whole == best:  # ours (a warm-up's tail is rewritten)
            (kv, partial), reused = cache.pop_partial(whole_key), whole
            self.model.trim(kv, reused)
        elif best_key is not None:
            # the entry goes on beyond what we share (say, the line being typed): copy the
            # shared part, so the entry a request still needs keeps its end
            kv, reused = self.model.fork(cache.peek(best_key), best, len(ids) - best), best
        run = PromptRun(self.model, ids, kv if kv is not None else self.model.new_cache(),
                        reused, partial, chunk)
        while not run.finished and not run.stopped:
            run.step(cancel)
        self.keep(ids[:run.done], run.cache, client, warm=True, partial=run.partial)
        return WarmResult(len(ids), reused, run.done - reused, cancelled=not run.finished)
