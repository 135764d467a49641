"""Guess the start of an editor's next prompt, so the server can compute it while idle.

Past 150 lines the Fauxpilot extension sends the document's first 31 lines, the 119
lines before the cursor's line, and the cursor's line up to the cursor (see
bench/typing_session.py `fauxpilot_prompt`).  On the next line the window moves down
by one: its first line goes, the line now being typed comes in, complete.  So the
next line's prompt starts with the head plus the window without its first line,
ending where the current line starts; only the current line (unfinished) and the new
one differ.  The scheduler computes that text's KV cache in the background
(`Generator.warm`); it is an ordinary cached prefix, so answers never change.
"""
from __future__ import annotations

import math

MAX_LINES = 150  # fauxpilot.maxLines default
LEADING_LINES_PROP = 0.21  # vscode-fauxpilot src/Constants.ts


def window_lines(max_lines: int = MAX_LINES,
                 leading_prop: float = LEADING_LINES_PROP) -> tuple[int, int]:
    """(head, window): the extension's leading lines and the lines before the cursor's."""
    head = math.floor(leading_prop * max_lines)
    return head, max_lines - head


HEAD_LINES, WINDOW_LINES = window_lines()  # 31, 119


def next_line_prefix(prompt, head_lines: int = HEAD_LINES,
                     window_lines: int = WINDOW_LINES) -> str | None:
    """The text the prompt of the next line will start with, or None for other shapes.

    Only a prompt of exactly head + window + 1 lines (split on "\\n") has the
    extension's windowed shape; shorter prompts are whole documents (the next one
    just extends them, which the prefix cache already covers) and longer ones come
    from another client."""
    if not isinstance(prompt, str) or head_lines < 0 or window_lines < 1:
        return None
    lines = prompt.split("\n")
    if len(lines) != head_lines + window_lines + 1:
        return None
    return "\n".join(lines[:head_lines] + lines[head_lines + 1:-1]) + "\n"
