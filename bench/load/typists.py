"""Typists for `cgbench load`: several typing replays at once, each its own client.

Each typist is one `bench.typing` replay (its pause plan from `plan_session`, its requests
from `replay`, exactly as `cgbench typing --url` sends them) against the same server, in its
own thread: typist k types `files[k mod len(files)]`, lines `lines[k mod len(lines)]` (the
whole file when no range is given), with seed `seed + k`.  Each sends its own bearer token
(`typist-<k>`), so cgserve tells them apart as it would two editors.  The summary is, per
typist, the latency of its answered requests (p50/p90), with the goal of issue 12: two people
typing at once, p50 <= 1.5 s each.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..errors import BenchError
from ..typing.replay import Outcome, replay
from ..typing.report import group_summary
from ..typing.session import MAX_LINES, line_offsets, plan_session

GOAL_P50_MS = 1500.0  # issue 12: two people typing at once (prefix reuse on): p50 <= 1.5 s each


@dataclass(frozen=True)
class Typist:
    name: str  # typist-1, typist-2, ...
    file: Path
    lines: tuple[int, int]  # 1-based, inclusive
    seed: int


@dataclass
class TypistsConfig:
    count: int = 0
    files: tuple[Path, ...] = ()
    lines: tuple[tuple[int, int], ...] = ()  # one range per typist, in turn
    cps: float = 8.0
    pause_ms: tuple[float, float] = (300.0, 1500.0)
    pause_prob: float = 0.15
    max_tokens: int = 12
    max_lines: int = MAX_LINES
    seed: int = 0

    def __post_init__(self):
        if self.count < 0:
            raise BenchError(f"--typists {self.count}: must be 0 or more")
        if self.count and not self.files:
            raise BenchError("--typists needs --typing-file FILE (the file they type)")
        if not self.count and (self.files or self.lines):
            raise BenchError("--typing-file/--typing-lines need --typists N")
        if self.max_tokens < 1:
            raise BenchError("--typing-max-tokens must be at least 1")

    def typists(self) -> list[Typist]:
        out = []
        for k in range(self.count):
            file = Path(self.files[k % len(self.files)])
            try:
                n_lines = len(line_offsets(file.read_text(encoding="utf-8")))
            except (OSError, UnicodeDecodeError) as exc:
                raise BenchError(f"--typing-file {file}: cannot read ({exc})") from None
            first, last = self.lines[k % len(self.lines)] if self.lines else (1, n_lines)
            if not 1 <= first <= last <= n_lines:
                raise BenchError(f"--typing-lines {first}-{last}: {file} has {n_lines} lines")
            out.append(Typist(f"typist-{k + 1}", file, (first, last), self.seed + k))
        return out


def run_typist(url: str, typist: Typist, cfg: TypistsConfig, clock0: float) -> list[Outcome]:
    """One typist's whole replay against `url` (blocks until its last request is answered)."""
    text = typist.file.read_text(encoding="utf-8")
    segments = plan_session(text, *typist.lines, cfg.cps, cfg.pause_ms, cfg.pause_prob,
                            typist.seed)
    return replay({typist.name: url}, text, segments, cfg.max_tokens, max_lines=cfg.max_lines,
                  token=typist.name, clock0=clock0)


def summarise_typists(frame: pd.DataFrame, typists: list[Typist], by: str = "mode") -> dict:
    """Per typist: its file and lines, request counts, latency of the answered, the goal.
    `frame`: the typists' requests (`bench.typing.report.outcomes_frame`), `by` naming them."""
    groups = group_summary(frame, [t.name for t in typists], by=by)
    out = {}
    for t in typists:
        s = groups[t.name]
        p50 = s["latency_ms"]["p50"]
        out[t.name] = {"file": str(t.file), "lines": list(t.lines), **s,
                       "p50_ms": p50, "p90_ms": s["latency_ms"]["p90"],
                       "goal_met": bool(s["answered"]) and p50 <= GOAL_P50_MS}
    return out


def render_typists(typists: dict) -> str:
    lines = [f"{'typist':<9} {'file:lines':<28} {'requests':>8} {'answered':>8} "
             f"{'superseded':>10} {'p50 ms':>8} {'p90 ms':>8}  goal p50 <= {GOAL_P50_MS:.0f} ms"]
    for name, s in typists.items():
        where = f"{Path(s['file']).name}:{s['lines'][0]}-{s['lines'][1]}"
        lines.append(f"{name:<9} {where:<28} {s['requests']:>8} {s['answered']:>8} "
                     f"{s['superseded']:>10} {s['p50_ms']:>8.0f} {s['p90_ms']:>8.0f}  "
                     f"{'met' if s['goal_met'] else 'NOT met'}")
    return "\n".join(lines)

