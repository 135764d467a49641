"""bench/typing/session.py: the extension's prompt rule and the typist's pause plan."""
from __future__ import annotations

import pytest

from bench.errors import BenchError
from bench.typing.session import fauxpilot_prompt, plan_session


def numbered(n: int) -> str:
    return "".join(f"line{i}\n" for i in range(n))


def test_prompt_is_all_text_before_the_cursor_up_to_150_lines():
    doc = numbered(149) + "x = "  # 150 lines, the cursor on the last
    assert fauxpilot_prompt(doc) == doc


def test_prompt_past_150_lines_is_31_leading_plus_119_before_the_cursor():
    doc = numbered(400) + "    ret"  # cursor on line 400 (0-based)
    prompt = fauxpilot_prompt(doc)
    lines = prompt.split("\n")
    assert lines[:31] == [f"line{i}" for i in range(31)]
    assert lines[31:-1] == [f"line{i}" for i in range(400 - 119, 400)]
    assert lines[-1] == "    ret"
    assert len(lines) == 31 + 119 + 1


def test_plan_pauses_after_each_indentation_and_is_repeatable():
    text = "def f(x):\n    return x + 1\n\n    y = f(2)\n"
    segments = plan_session(text, 1, 4, cps=10, pause_ms=(100, 200), pause_prob=0.0)
    assert [len(s.pauses) for s in segments] == [1, 1, 0, 1]  # the blank line has none
    assert [text[p.offset - 4:p.offset] for p in segments[1].pauses] == ["    "]
    again = plan_session(text, 1, 4, cps=10, pause_ms=(100, 200), pause_prob=0.0)
    assert again == segments
    words = plan_session(text, 1, 4, cps=10, pause_ms=(100, 200), pause_prob=1.0)
    assert sum(len(s.pauses) for s in words) > 3  # also after spaces and "(" when asked
    for segment in words:
        times = [p.at_s for p in segment.pauses]
        assert times == sorted(times) and segment.duration_s >= times[-1] if times else True
        assert all(0.1 <= p.pause_s <= 0.2 for p in segment.pauses)


def test_plan_rejects_lines_outside_the_file():
    with pytest.raises(BenchError, match="lines"):
        plan_session("a\nb\n", 2, 9, cps=10, pause_ms=(1, 2), pause_prob=0.1)


def test_prompt_window_follows_the_max_lines_setting():
    doc = numbered(300) + "x"
    lines = fauxpilot_prompt(doc, max_lines=50).split("\n")
    assert lines[:10] == [f"line{i}" for i in range(10)]  # floor(0.21 * 50) leading lines
    assert lines[10:-1] == [f"line{i}" for i in range(260, 300)] and lines[-1] == "x"
