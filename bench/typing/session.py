"""A typing session to replay: where the typist pauses, and the prompt the editor sends then.

The prompt is built as vscode-fauxpilot builds it (src/FauxpilotCompletionProvider.ts,
`getPrompt`, LEADING_LINES_PROP = 0.21, `fauxpilot.maxLines` 150): the whole text before
the cursor while the document has at most 150 lines; past that, the first
floor(0.21 * 150) = 31 lines plus the 119 lines before the cursor's line and the cursor's
line up to the cursor.  The document is the file typed so far (the cursor at its end), so
its line count is the cursor's line + 1.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from serve.speculate import LEADING_LINES_PROP, MAX_LINES, window_lines

from ..errors import BenchError

PAUSE_AFTER = " .(,=:["  # where a typist may stop inside a line


def fauxpilot_prompt(document: str, max_lines: int = MAX_LINES,
                     leading_prop: float = LEADING_LINES_PROP) -> str:
    """The prompt for a cursor at the end of `document`."""
    lines = document.split("\n")
    if len(lines) <= max_lines:
        return document
    leading, window = window_lines(max_lines, leading_prop)
    cursor_line = len(lines) - 1
    first = max(cursor_line - window, 0)  # the extension would fail on a negative line
    return "\n".join(lines[:leading]) + "\n" + "\n".join(lines[first:])


@dataclass(frozen=True)
class Pause:
    """The typist stops after typing text[:offset]; the editor sends a request then."""

    line: int  # 0-based line of the cursor
    offset: int  # characters typed (into the whole file)
    at_s: float  # when the pause starts, from the start of its line's segment
    pause_s: float  # how long the typist waits before typing on


@dataclass(frozen=True)
class Segment:
    """The keystrokes of one line: typed from `start` to `end` in `duration_s`."""

    line: int
    start: int
    end: int
    duration_s: float
    pauses: tuple[Pause, ...]


def line_offsets(text: str) -> list[int]:
    """The offset where each line starts."""
    offsets = [0]
    for i, char in enumerate(text):
        if char == "\n":
            offsets.append(i + 1)
    return offsets


def plan_session(text: str, first_line: int, last_line: int, cps: float,
                 pause_ms: tuple[float, float], pause_prob: float, seed: int = 0) -> list[Segment]:
    """Typing lines first_line..last_line (1-based, inclusive) of `text`, one segment per line.

    Characters come every 1/cps seconds.  The typist pauses once the indentation of a
    new line is typed (where completions matter most) and, with probability
    `pause_prob`, after a space or one of `.(,=:[`; each pause lasts a uniform draw
    from `pause_ms`.  Blank lines get no pause.
    """
    offsets = line_offsets(text)
    if not 1 <= first_line <= last_line <= len(offsets):
        raise BenchError(f"lines {first_line}-{last_line}: the file has {len(offsets)} lines")
    if cps <= 0 or pause_ms[0] < 0 or pause_ms[1] < pause_ms[0] or not 0 <= pause_prob <= 1:
        raise BenchError("need --cps > 0, --pause-ms MIN,MAX with 0 <= MIN <= MAX, "
                         "--pause-prob in [0, 1]")
    rng = np.random.default_rng(seed)
    segments = []
    for line in range(first_line - 1, last_line):
        start = offsets[line]
        end = offsets[line + 1] if line + 1 < len(offsets) else len(text)
        body = text[start:end]
        indent = len(body) - len(body.lstrip(" \t"))
        t, pauses = 0.0, []
        for i in range(start, end + 1):
            typed = i - start  # characters of this line typed so far
            at_code = typed == indent and body.strip()
            at_word = 0 < typed < len(body.rstrip("\n")) and typed > indent \
                and text[i - 1] in PAUSE_AFTER and rng.random() < pause_prob
            if at_code or at_word:
                pause = rng.uniform(*pause_ms) / 1e3
                pauses.append(Pause(line, i, t, pause))
                t += pause
            if i < end:
                t += 1.0 / cps
        segments.append(Segment(line, start, end, t, tuple(pauses)))
    return segments


def prompt_at(text: str, offset: int, max_lines: int = MAX_LINES) -> str:
    return fauxpilot_prompt(text[:offset], max_lines)
