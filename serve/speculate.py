"""Guess the start of an editor's next prompts, so the server can compute them while idle.

Past 150 lines the Fauxpilot extension sends the document's first 31 lines, the 119
lines before the cursor's line, and the cursor's line up to the cursor (see
bench/typing/session.py `fauxpilot_prompt`).  On the next line the window moves down
by one: its first line goes, the line now being typed comes in, complete.  So the
next line's prompt starts with the head plus the window without its first line,
ending where the current line starts; only the current line (unfinished) and the new
one differ.  The same holds further ahead: the prompt k lines down starts with the
head plus the window without its first k lines; the k lines typed until then come
after that text, so it can be computed now and extended by a line at a time later.
The scheduler computes these texts' KV caches in the background (`Generator.warm`),
nearest line first; they are ordinary cached prefixes, so answers never change.

Why look more than one line ahead: a new line's window is ~900 tokens that no earlier
prompt computed (seconds of prefill on a CPU), and a short or blank line is typed in
less time than that.  Computing two lines ahead gives each window the time of two
lines, and the line after a blank one (the window moved two lines) is covered too.
"""
from __future__ import annotations

import math

from engine.errors import OptionError

MAX_LINES = 150  # fauxpilot.maxLines default
LEADING_LINES_PROP = 0.21  # vscode-fauxpilot src/Constants.ts


def window_lines(max_lines: int = MAX_LINES,
                 leading_prop: float = LEADING_LINES_PROP) -> tuple[int, int]:
    """(head, window): the extension's leading lines and the lines before the cursor's."""
    head = math.floor(leading_prop * max_lines)
    return head, max_lines - head


HEAD_LINES, WINDOW_LINES = window_lines()  # 31, 119
LINES_AHEAD = 2  # cgserve --speculate-lines: how many coming lines' prompts to compute
MAX_LINES_AHEAD = 8


def check_lines_ahead(lines: int) -> None:
    """The --speculate-lines value, checked where cgserve and cgbench typing take it."""
    if not 1 <= lines <= MAX_LINES_AHEAD:
        raise OptionError(f"--speculate-lines must be 1 to {MAX_LINES_AHEAD}, got {lines} "
                          "(turn warm-ups off with --no-speculate)")


def line_prefixes(prompt, ahead: int = LINES_AHEAD, head_lines: int = HEAD_LINES,
                  window_lines: int = WINDOW_LINES) -> list[str]:
    """The texts the prompts 1, 2, ... `ahead` lines down will start with, nearest first;
    [] for prompts of other shapes.

    Only a prompt of exactly head + window + 1 lines (split on "\\n") has the
    extension's windowed shape; shorter prompts are whole documents (the next one
    just extends them, which the prefix cache already covers) and longer ones come
    from another client."""
    if not isinstance(prompt, str) or head_lines < 0 or window_lines < 1 or ahead < 1:
        return []
    lines = prompt.split("\n")
    if len(lines) != head_lines + window_lines + 1:
        return []
    head = lines[:head_lines]
    return ["\n".join(head + lines[head_lines + k:-1]) + "\n"
            for k in range(1, min(ahead, window_lines) + 1)]


def next_line_prefix(prompt, head_lines: int = HEAD_LINES,
                     window_lines: int = WINDOW_LINES) -> str | None:
    """The text the prompt of the next line will start with, or None for other shapes."""
    texts = line_prefixes(prompt, 1, head_lines, window_lines)
    return texts[0] if texts else None
