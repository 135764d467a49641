"""Stop strings matched on decoded text, across token boundaries.

Text that could still turn into a stop string is held back, so a stream never
shows the start of a stop string that the final text will not contain.
"""
from __future__ import annotations


class StopMatcher:
    def __init__(self, stops: tuple[str, ...]):
        self.stops = stops
        self.longest = max((len(s) for s in stops), default=0)

    def find(self, text: str, since: int) -> int:
        """Index of the earliest stop string in `text` that ends at or after `since`; -1 if none."""
        if not self.stops:
            return -1
        start = max(0, since - self.longest + 1)
        hits = [i for i in (text.find(s, start) for s in self.stops) if i >= 0]
        return min(hits) if hits else -1

    def safe_end(self, text: str) -> int:
        """Length of the prefix of `text` that no stop string can still claim."""
        for keep in range(min(self.longest - 1, len(text)), 0, -1):
            tail = text[-keep:]
            if any(s.startswith(tail) for s in self.stops):
                return len(text) - keep
        return len(text)
