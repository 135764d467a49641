"""`cgbench serve-overhead`: how much time cgserve adds to each request on top of the engine.

The server runs in this process (a LiveServer thread, the engine wrapped so every
GenerationResult is kept); a client in a separate process (no shared GIL) sends requests one
at a time over loopback with keep-alive, as an editor does, through the shared client
(`bench.http_client`), and times them.  Overhead per request = client-observed time - the
engine's e2e_ms for that request (and, for streams, the client's first-event time - the
engine's ttft_ms).  It covers HTTP, JSON parsing/validation, the queue and the thread
hand-off, response formatting and SSE framing.  The `fake` engine (no model, ~0 ms per
token) is run too: its client time is almost pure overhead.

Writes OUT/requests.csv (one row per request), OUT/summary.json and OUT/env.json.
"""
from __future__ import annotations

import multiprocessing
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from queue import Empty

import pandas as pd

from ..errors import BenchError
from ..http_client import FAUXPILOT_PATH, CompletionClient
from ..latency import LatencyStats
from ..output import atomic_write, git_commit, make_dir, write_json

BUDGET_MS = 5.0  # the limit for server overhead per request
PROMPT = "import os\nimport sys\n\n\ndef read_config(path):\n    \"\"\"Read a config file.\"\"\"\n"
MODES = ("json", "stream")
FIELDS = ["engine", "mode", "client_ms", "engine_e2e_ms", "overhead_ms", "client_first_ms",
          "engine_ttft_ms", "ttft_overhead_ms", "completion_tokens", "prompt_tokens", "chunks",
          "overhead_per_token_ms"]


@dataclass
class OverheadConfig:
    model: str = "random:tiny"
    impl: str = "fast"
    requests: int = 200  # measured per mode
    warmup: int = 10
    max_tokens: int = 16
    prompt: str = PROMPT
    fake: bool = True  # also the no-model baseline
    out: Path | None = None

    def __post_init__(self):
        if self.requests < 1 or self.warmup < 0 or self.max_tokens < 1:
            raise BenchError("need --requests >= 1, --warmup >= 0 and --max-tokens >= 1")


def default_out() -> Path:
    return Path("results") / f"serve-overhead-{datetime.now():%Y%m%d-%H%M%S}"


# ---- the client (a separate process) ----

def client_process(url: str, requests: int, warmup: int, max_tokens: int, prompt: str,
                   queue) -> None:
    client = CompletionClient(url, path=FAUXPILOT_PATH, keep_alive=True, timeout_s=300,
                              headers={"Authorization": "Bearer dummy"})
    rows = []
    for mode in MODES:
        for i in range(warmup + requests):
            body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                    "stream": mode == "stream"}
            reply = client.post(body)
            if not reply.ok:
                client.close()
                queue.put(f"{mode} request {i + 1}: {reply.error}")
                return
            if i >= warmup:
                rows.append({"mode": mode, "client_ms": reply.e2e_ms,
                             "client_first_ms": reply.event_times_ms[0] if reply.event_times_ms
                             else None, "chunks": len(reply.events)})
    client.close()
    queue.put(rows)


# ---- the server side ----

class RecordingGenerator:
    """The engine, with every finished request's GenerationResult kept in order."""

    def __init__(self, generator):
        self.generator = generator
        self.results = []

    def __getattr__(self, name):
        return getattr(self.generator, name)

    def request(self, prompt, params, cancel, emit, on_done, client=None, on_start=None):
        def done(req):  # the batch's worker thread: keep the result, then hand it on
            if req.result is not None:
                self.results.append(req.result)
            on_done(req)

        return self.generator.request(prompt, params, cancel, emit, done, client, on_start)


def measure(engine_name: str, generator, cfg: OverheadConfig, log=print) -> list[dict]:
    from serve.testing import LiveServer

    recorder = RecordingGenerator(generator)
    context = multiprocessing.get_context("spawn")
    with LiveServer(recorder, model=engine_name) as live:
        queue = context.Queue()
        proc = context.Process(target=client_process, args=(
            live.url, cfg.requests, cfg.warmup, cfg.max_tokens, cfg.prompt, queue))
        proc.start()
        rows = None
        while rows is None:
            try:
                rows = queue.get(timeout=1.0)
            except Empty:
                if not proc.is_alive():
                    raise BenchError(f"serve-overhead: the client process failed (exit code "
                                     f"{proc.exitcode})") from None
        proc.join()
        if isinstance(rows, str):
            raise BenchError(f"serve-overhead against {engine_name}: {rows}")
        metrics = live.state.metrics  # queue waits only in aggregate
        mean_wait_ms = metrics.value("cgserve_queue_wait_seconds_sum") / \
            max(metrics.value("cgserve_queue_wait_seconds_count"), 1) * 1e3
    per_mode = cfg.warmup + cfg.requests
    results = [r for k, r in enumerate(recorder.results) if k % per_mode >= cfg.warmup]
    assert len(results) == len(rows), (len(results), len(rows))
    for row, result in zip(rows, results):
        row.update(engine=engine_name, engine_e2e_ms=result.e2e_ms, engine_ttft_ms=result.ttft_ms,
                   completion_tokens=result.completion_tokens, prompt_tokens=result.prompt_tokens,
                   overhead_ms=row["client_ms"] - result.e2e_ms)
        row["ttft_overhead_ms"] = (row["client_first_ms"] - result.ttft_ms
                                   if row["client_first_ms"] is not None else None)
        row["overhead_per_token_ms"] = row["overhead_ms"] / max(result.completion_tokens, 1)
    log(f"{engine_name}: mean queue wait {mean_wait_ms:.3f} ms")
    return rows


def summarise(rows: list[dict]) -> dict:
    """Per engine/mode: statistics of the client time, the engine's and the difference."""
    frame = pd.DataFrame(rows, columns=FIELDS)
    out = {}
    for (engine, mode), sel in frame.groupby(["engine", "mode"], sort=True):
        names = ["client_ms", "engine_e2e_ms", "overhead_ms", "overhead_per_token_ms"]
        if mode == "stream":
            names.append("ttft_overhead_ms")
        entry = {name: LatencyStats.from_values(sel[name].dropna()).to_dict() for name in names}
        entry["completion_tokens_mean"] = float(sel["completion_tokens"].mean())
        entry["within_budget_p50"] = bool(entry["overhead_ms"]["p50"] < BUDGET_MS)
        out[f"{engine}/{mode}"] = entry
    return out


def render(summary: dict) -> str:
    return "\n".join(
        f"{key:28s} overhead p50 {e['overhead_ms']['p50']:6.2f} ms  p90 "
        f"{e['overhead_ms']['p90']:6.2f}  mean {e['overhead_ms']['mean']:6.2f}  (engine p50 "
        f"{e['engine_e2e_ms']['p50']:7.1f} ms)" for key, e in summary.items())


def run_overhead(cfg: OverheadConfig, log=print) -> tuple[dict, Path]:
    import tornado

    from engine import __version__, load
    from engine.runtime import import_paddle
    from serve.testing import FakeGenerator

    from ..hardware import describe_environment

    out = make_dir(cfg.out or default_out())  # before the run: a bad --out fails at once
    import_paddle()  # on the main thread, before the worker thread uses the model
    env = describe_environment(measure_bandwidth=False)
    env["git_commit"] = git_commit("serve", "engine")
    t0 = time.perf_counter()
    generator = load(cfg.model, impl=cfg.impl)
    log(f"loaded {cfg.model} in {time.perf_counter() - t0:.1f} s")
    rows = measure(cfg.model, generator, cfg, log)
    if cfg.fake:
        rows += measure("fake", FakeGenerator(context_length=4096), cfg, log)
    summary = summarise(rows)
    frame = pd.DataFrame(rows, columns=FIELDS)
    atomic_write(out / "requests.csv", frame.round(4).to_csv(index=False))
    meta = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **{k: v for k, v in asdict(cfg).items() if k not in ("prompt", "out", "requests")},
            "requests_per_mode": cfg.requests, "prompt_chars": len(cfg.prompt),
            "budget_ms": BUDGET_MS, "codegen_workbench": __version__, "tornado": tornado.version}
    write_json(out / "summary.json", {"run": meta, "results": summary})
    write_json(out / "env.json", env)
    return summary, out
