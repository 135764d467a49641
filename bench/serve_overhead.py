"""How much time cgserve adds to each request on top of the engine's own clocks.

    python bench/serve_overhead.py [--model random:tiny] [--requests 200] [--out DIR]

The server runs in this process (a LiveServer thread, the engine wrapped so
every GenerationResult is kept); a client in a separate process (no shared GIL)
sends requests one at a time over loopback with keep-alive, as an editor does,
and times them.  Overhead per request = client-observed time - the engine's
e2e_ms for that request (and, for streams, client first-chunk time - the
engine's ttft_ms).  It covers HTTP, JSON parsing/validation, the queue and the
thread hand-off, response formatting and SSE framing.  The `fake` engine (no
model, ~0 ms per token) is run too: its client time is almost pure overhead.

Writes DIR/requests.csv (one row per request), DIR/summary.json and DIR/env.json.
"""
from __future__ import annotations

import argparse
import csv
import http.client
import json
import multiprocessing
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from queue import Empty

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BUDGET_MS = 5.0  # the limit for server overhead per request
PROMPT = "import os\nimport sys\n\n\ndef read_config(path):\n    \"\"\"Read a config file.\"\"\"\n"


# ---- the client (a separate process) ----

def client_process(url: str, modes: list[str], requests: int, warmup: int, max_tokens: int,
                   prompt: str, queue) -> None:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=300)
    rows = []
    for mode in modes:
        for i in range(warmup + requests):
            row = time_one(conn, mode, prompt, max_tokens)
            if i >= warmup:
                rows.append(row)
    conn.close()
    queue.put(rows)


def time_one(conn, mode: str, prompt: str, max_tokens: int) -> dict:
    stream = mode == "stream"
    body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                       "stream": stream})
    start = time.perf_counter()
    conn.request("POST", "/v1/engines/codegen/completions", body=body,
                 headers={"Content-Type": "application/json", "Authorization": "Bearer dummy"})
    response = conn.getresponse()
    first = None
    if stream:
        chunks = 0
        while True:
            line = response.readline()
            if line.startswith(b"data: "):
                if first is None:
                    first = time.perf_counter()
                if line.strip() == b"data: [DONE]":
                    break
                chunks += 1
        response.read()
    else:
        json.loads(response.read())
        chunks = 0
    end = time.perf_counter()
    assert response.status == 200, response.status
    return {"mode": mode, "client_ms": (end - start) * 1e3,
            "client_first_ms": (first - start) * 1e3 if first else None, "chunks": chunks}


# ---- the server side ----

class RecordingGenerator:
    """The engine, with every finished request's GenerationResult kept in order."""

    def __init__(self, generator):
        self.generator = generator
        self.results = []

    def __getattr__(self, name):
        return getattr(self.generator, name)

    def stream(self, prompt, params, cancel=None):
        from engine.generate import Stream

        inner = self.generator.stream(prompt, params, cancel)

        def events():
            yield from inner
            self.results.append(inner.result)
            return inner.result

        return Stream(events())


def measure(engine_name: str, generator, args) -> list[dict]:
    from serve.testing import LiveServer

    recorder = RecordingGenerator(generator)
    modes = ["json", "stream"]
    with LiveServer(recorder, model=engine_name) as live:
        queue = multiprocessing.get_context("spawn").Queue()
        proc = multiprocessing.get_context("spawn").Process(
            target=client_process,
            args=(live.url, modes, args.requests, args.warmup, args.max_tokens, args.prompt, queue))
        proc.start()
        rows = None
        while rows is None:
            try:
                rows = queue.get(timeout=1.0)
            except Empty:
                if not proc.is_alive():
                    raise SystemExit(f"the client process failed (exit code {proc.exitcode})")
        proc.join()
        metrics = live.state.metrics  # queue waits only in aggregate
        mean_wait_ms = metrics.value("cgserve_queue_wait_seconds_sum") / \
            max(metrics.value("cgserve_queue_wait_seconds_count"), 1) * 1e3
    per_mode = args.warmup + args.requests
    results = [r for k, r in enumerate(recorder.results) if k % per_mode >= args.warmup]
    assert len(results) == len(rows), (len(results), len(rows))
    for row, result in zip(rows, results):
        row.update(engine=engine_name, engine_e2e_ms=result.e2e_ms, engine_ttft_ms=result.ttft_ms,
                   completion_tokens=result.completion_tokens, prompt_tokens=result.prompt_tokens,
                   overhead_ms=row["client_ms"] - result.e2e_ms)
        row["ttft_overhead_ms"] = (row["client_first_ms"] - result.ttft_ms
                                   if row["client_first_ms"] is not None else None)
        row["overhead_per_token_ms"] = row["overhead_ms"] / max(result.completion_tokens, 1)
    print(f"{engine_name}: mean queue wait {mean_wait_ms:.3f} ms", file=sys.stderr)
    return rows


def summarise(rows: list[dict]) -> dict:
    from bench.latency import LatencyStats

    out = {}
    for engine in sorted({r["engine"] for r in rows}):
        for mode in ("json", "stream"):
            sel = [r for r in rows if r["engine"] == engine and r["mode"] == mode]
            if not sel:
                continue
            entry = {name: LatencyStats.from_values(r[name] for r in sel).to_dict()
                     for name in ("client_ms", "engine_e2e_ms", "overhead_ms",
                                  "overhead_per_token_ms")}
            if mode == "stream":
                entry["ttft_overhead_ms"] = LatencyStats.from_values(
                    r["ttft_overhead_ms"] for r in sel).to_dict()
            entry["completion_tokens_mean"] = sum(r["completion_tokens"] for r in sel) / len(sel)
            entry["within_budget_p50"] = entry["overhead_ms"]["p50"] < BUDGET_MS
            out[f"{engine}/{mode}"] = entry
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="random:tiny",
                        help="model directory or random:<variant> (default random:tiny)")
    parser.add_argument("--impl", default="fast", choices=["fast", "reference"],
                        help="engine forward (cgserve's default: fast)")
    parser.add_argument("--requests", type=int, default=200, help="measured requests per mode")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--no-fake", action="store_true", help="skip the no-model baseline")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "serve_overhead")
    args = parser.parse_args(argv)

    from bench.hardware import describe_environment
    from engine import __version__, load
    from engine.runtime import import_paddle
    from serve.testing import FakeGenerator

    import_paddle()  # on the main thread, before the worker thread uses the model
    env = describe_environment(measure_bandwidth=False)
    env["git_commit"] = git_commit()
    t0 = time.perf_counter()
    generator = load(args.model, impl=args.impl)
    print(f"loaded {args.model} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    rows = measure(args.model, generator, args)
    if not args.no_fake:
        rows += measure("fake", FakeGenerator(context_length=4096), args)
    summary = summarise(rows)

    import tornado

    args.out.mkdir(parents=True, exist_ok=True)
    fields = ["engine", "mode", "client_ms", "engine_e2e_ms", "overhead_ms", "client_first_ms",
              "engine_ttft_ms", "ttft_overhead_ms", "completion_tokens", "prompt_tokens",
              "chunks", "overhead_per_token_ms"]
    write_atomic(args.out / "requests.csv", lambda fh: write_csv(fh, fields, rows))
    meta = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
            "model": args.model, "impl": args.impl, "requests_per_mode": args.requests, "warmup": args.warmup,
            "max_tokens": args.max_tokens, "prompt_chars": len(args.prompt),
            "budget_ms": BUDGET_MS, "codegen_workbench": __version__,
            "tornado": tornado.version}
    write_atomic(args.out / "summary.json",
                 lambda fh: json.dump({"run": meta, "results": summary}, fh, indent=2))
    write_atomic(args.out / "env.json", lambda fh: json.dump(env, fh, indent=2))
    for key, entry in summary.items():
        o = entry["overhead_ms"]
        print(f"{key:28s} overhead p50 {o['p50']:6.2f} ms  p90 {o['p90']:6.2f}  mean {o['mean']:6.2f}"
              f"  (engine p50 {entry['engine_e2e_ms']['p50']:7.1f} ms)")
    return 0


def git_commit() -> str | None:
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "serve", "engine"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() + ("+uncommitted" if dirty else "") if out.returncode == 0 else None


def write_csv(fh, fields, rows) -> None:
    writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})


def write_atomic(path: Path, write) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        write(fh)
    tmp.replace(path)


if __name__ == "__main__":
    raise SystemExit(main())
