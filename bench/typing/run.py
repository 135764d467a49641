"""`cgbench typing`: plan the session, start in-process servers or use URLs, replay, write."""
from __future__ import annotations

import contextlib
import hashlib
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from ..errors import BenchError
from ..memory import peak_rss_bytes
from ..output import git_commit
from ..http_client import read_metrics
from .replay import SpeculationGate, replay
from .report import render_summary, summarise, write_results
from .session import line_offsets, plan_session
from serve.speculate import LINES_AHEAD, check_lines_ahead

METRICS = ("cgserve_prompt_tokens_reused_total", "cgserve_prompt_tokens_computed_total",
           'cgserve_cancelled_total{reason="superseded"}', "cgserve_prefix_cache_bytes",
           "cgserve_prefix_cache_budget_bytes", "cgserve_warmups_started_total",
           'cgserve_warmups_total{outcome="completed"}', 'cgserve_warmups_total{outcome="cancelled"}',
           'cgserve_warmups_total{outcome="skipped"}', "cgserve_warmup_tokens_computed_total")


@dataclass
class TypingConfig:
    file: Path
    modes: tuple[str, ...] = ("reuse",)  # reuse, no-reuse
    url: str | None = None
    baseline_url: str | None = None  # the no-reuse server for --compare with --url
    model: str | None = None
    cps: float = 8.0
    pause_ms: tuple[float, float] = (300.0, 1500.0)
    pause_prob: float = 0.15
    max_tokens: int = 12
    max_lines: int = 150  # the extension's fauxpilot.maxLines setting
    lines: tuple[int, int] | None = None  # 1-based, inclusive; default the whole file
    more_lines: tuple[tuple[int, int], ...] = ()  # further ranges typed after `lines`, in order
    tokenizer: Path | None = None  # BPE files for random:<variant> (engine.load's tokenizer)
    seed: int = 0
    out: Path | None = None
    speculate: bool = True  # in-process servers: cgserve's next-line warm-ups (--speculate)
    speculate_lines: int = LINES_AHEAD  # ... for this many coming lines (--speculate-lines)

    def __post_init__(self):
        if (self.url is None) == (self.model is None):
            raise BenchError("give exactly one of --url URL (a running cgserve) or --model MODEL "
                             "(an in-process engine)")
        if self.url and "no-reuse" in self.modes and "reuse" in self.modes \
                and not self.baseline_url:
            raise BenchError("--compare with --url needs --baseline-url: a second cgserve started "
                             "with --prefix-cache-mb 0")
        if self.max_tokens < 1:
            raise BenchError("--max-tokens must be at least 1")
        if self.max_lines < 2:
            raise BenchError("--max-lines must be at least 2")
        if self.tokenizer is not None and self.url:
            raise BenchError("--tokenizer goes with --model; for --url start cgserve with "
                             "--tokenizer DIR")
        check_lines_ahead(self.speculate_lines)
        if self.more_lines and not self.lines:
            raise BenchError("further line ranges need a first one (--lines A-B,C-D)")


def default_out(file: Path) -> Path:
    return Path("results") / f"typing-{file.stem}-{datetime.now():%Y%m%d-%H%M%S}"


@contextlib.contextmanager
def servers(cfg: TypingConfig):
    """({mode: base URL}, {mode: load s}, {mode: SpeculationGate}); in-process cgserve
    instances for --model, one per mode.  Gates only with several modes (see bench.typing.replay)."""
    if cfg.url:
        urls = {}
        for mode in cfg.modes:
            urls[mode] = cfg.baseline_url if mode == "no-reuse" and cfg.baseline_url else cfg.url
        gates = {mode: SpeculationGate(url=url) for mode, url in urls.items()} \
            if len(set(urls.values())) > 1 else {}
        yield urls, {}, gates
        return
    from engine import load
    from serve.testing import LiveServer

    with contextlib.ExitStack() as stack:
        urls, load_s, gates = {}, {}, {}
        for mode in cfg.modes:
            t0 = time.perf_counter()
            generator = load(cfg.model, prefix_cache_bytes=0 if mode == "no-reuse" else None,
                             tokenizer=cfg.tokenizer)
            load_s[mode] = time.perf_counter() - t0
            live = stack.enter_context(LiveServer(generator, model=cfg.model,
                                                  speculate=cfg.speculate,
                                                  speculate_lines=cfg.speculate_lines))
            urls[mode] = live.url
            if len(cfg.modes) > 1:
                gates[mode] = SpeculationGate(live.state.scheduler)
        yield urls, load_s, gates


def run_typing(cfg: TypingConfig, log=print) -> tuple[dict, Path]:
    text = cfg.file.read_text(encoding="utf-8")
    n_lines = len(line_offsets(text))
    spans = [cfg.lines or (1, n_lines), *cfg.more_lines]
    segments = [s for first, last in spans for s in
                plan_session(text, first, last, cfg.cps, cfg.pause_ms, cfg.pause_prob, cfg.seed)]
    first, last = spans[0][0], spans[-1][1]
    requests = sum(len(s.pauses) for s in segments)
    typed = sum(s.end - s.start for s in segments)
    shown_spans = ",".join(f"{a}-{b}" for a, b in spans)
    log(f"{cfg.file}: lines {shown_spans} of {n_lines}: {typed} keystrokes, {requests} requests "
        f"per mode, {sum(s.duration_s for s in segments):.0f} s of typing per mode")
    out = cfg.out or default_out(cfg.file)
    started = datetime.now().isoformat(timespec="seconds")
    with servers(cfg) as (urls, load_s, gates):
        before = {mode: read_metrics(url) for mode, url in urls.items()}

        def progress(done, total, outcomes):
            recent = [o for o in outcomes if o.line == segments[done - 1].line + 1]
            shown = ", ".join(f"{o.mode}:{o.latency_ms:.0f}ms{'(s)' if o.superseded else ''}"
                              for o in recent)
            log(f"line {segments[done - 1].line + 1} ({done}/{total}): {shown}")

        outcomes = replay(urls, text, segments, cfg.max_tokens, progress, cfg.max_lines, gates)
        after = {mode: read_metrics(url) for mode, url in urls.items()}
    summary = summarise(outcomes, list(cfg.modes))
    if len(spans) > 1:  # each range on its own too: how deep in the file changes things
        summary["ranges"] = {f"{a}-{b}": summarise([o for o in outcomes if a <= o.line <= b],
                                                   list(cfg.modes)) for a, b in spans}
    for mode in cfg.modes:
        summary["modes"][mode]["server_metrics"] = {
            name: after[mode].get(name, 0.0) - (0 if "bytes" in name else before[mode].get(name, 0.0))
            for name in METRICS}
    env = environment(cfg, text, first, last, n_lines, typed, requests, started, load_s)
    env["line_ranges"] = [list(span) for span in spans]
    if cfg.tokenizer is not None:
        env["tokenizer"] = tokenizer_info(cfg.tokenizer)
    paths = write_results(out, outcomes, summary, env)
    log(render_summary(summary))
    log("wrote " + ", ".join(str(p) for p in paths))
    return summary, out


def environment(cfg, text, first, last, n_lines, typed, requests, started, load_s) -> dict:
    from ..hardware import describe_environment

    env = describe_environment(measure_bandwidth=False)
    env.update(
        started=started, finished=datetime.now().isoformat(timespec="seconds"),
        file=str(cfg.file), file_sha256=hashlib.sha256(text.encode()).hexdigest(),
        file_lines=n_lines, lines_replayed=[first, last], keystrokes=typed,
        requests_per_mode=requests, modes=list(cfg.modes), url=cfg.url,
        baseline_url=cfg.baseline_url, model=cfg.model, load_s=load_s, cps=cfg.cps,
        pause_ms=list(cfg.pause_ms), pause_prob=cfg.pause_prob, max_tokens=cfg.max_tokens,
        seed=cfg.seed, git_commit=git_commit(), peak_rss_bytes=peak_rss_bytes(),
        speculate=cfg.speculate if cfg.model else "see the servers' settings",
        speculate_lines=cfg.speculate_lines if cfg.model else "see the servers' settings",
        speculation_gated=len(cfg.modes) > 1,
        max_lines=cfg.max_lines,
        prompt_rule=f"vscode-fauxpilot getPrompt: maxLines {cfg.max_lines}, LEADING_LINES_PROP "
                    f"0.21 ({int(0.21 * cfg.max_lines)} leading lines + "
                    f"{cfg.max_lines - int(0.21 * cfg.max_lines)} before the cursor)",
        request="POST /v1/engines/codegen/completions, model fastertransformer, temperature 0.1, "
                "stop [\"\\n\"], User-Agent OpenAI/JS 4.3.1, Authorization Bearer dummy",
    )
    return env


def tokenizer_info(path: Path) -> dict:
    """Where the tokenizer came from (its training.json when `cgbench train-tokenizer` made it)."""
    import json

    info = {"dir": str(path)}
    for name in ("vocab.json", "merges.txt", "added_tokens.json"):
        if (path / name).is_file():
            info[name + "_sha256"] = hashlib.sha256((path / name).read_bytes()).hexdigest()
    try:
        info["training"] = json.loads((path / "training.json").read_text())
    except (OSError, ValueError):
        pass
    return info
