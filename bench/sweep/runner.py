"""Run a sweep: each point in its own worker process, results rewritten after every point.

A crash or out-of-memory ends only its point (recorded as a row with status oom/error); the
sweep goes on.  `resume=True` skips points already done (status ok or oom) and retries errors.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from ..errors import BenchError
from ..output import atomic_write
from .plan import Point, estimated_cost
from .schema import COLUMNS, ENV_FILE, POINTS_FILE, point_key, read_points, write_points
from .worker import identity

DONE_STATUSES = ("ok", "oom")
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Progress:
    """Progress line with ETA; the ETA scales elapsed time by each point's estimated cost."""

    points: list[Point]
    stream: object = sys.stderr
    done_cost: float = 0.0
    elapsed_s: float = 0.0
    finished: int = 0
    started: float = field(default_factory=time.monotonic)

    def _eta(self, remaining: list[Point]) -> str:
        if not self.done_cost:
            return "ETA --"
        secs = self.elapsed_s / self.done_cost * sum(estimated_cost(p) for p in remaining)
        return f"ETA {int(secs // 60)}m{int(secs % 60):02d}s"

    def begin(self, index: int, point: Point) -> None:
        total = len(self.points)
        bar_width = 20
        filled = int(bar_width * index / total) if total else bar_width
        bar = "#" * filled + "." * (bar_width - filled)
        print(f"[{bar}] {index + 1}/{total} {point.point_id}  {self._eta(self.points[index:])}",
              file=self.stream, flush=True)

    def end(self, point: Point, row: dict, seconds: float) -> None:
        self.done_cost += estimated_cost(point)
        self.elapsed_s += seconds
        self.finished += 1
        if row["status"] == "ok":
            tpot = row.get("tpot_ms_mean")
            tpot_text = f", tpot {tpot:.1f} ms" if isinstance(tpot, (int, float)) and tpot == tpot else ""
            summary = f"ok: ttft {row['ttft_ms_mean']:.1f} ms{tpot_text}, {seconds:.0f} s"
        else:
            summary = f"{row['status']}: {row['message']}"
        print(f"    {summary}", file=self.stream, flush=True)


def _failure_row(point: Point, status: str, message: str) -> dict:
    row = identity(point)
    row.update(status=status, message=message[:500])
    return row


def run_point(point: Point, job_extra: dict, timeout_s: float | None = None) -> dict:
    """Run one point in a fresh `python -m bench.sweep.worker` process and return its row."""
    with tempfile.TemporaryDirectory(prefix="cgbench-") as tmp:
        job_path, out_path = Path(tmp) / "job.json", Path(tmp) / "row.json"
        job_path.write_text(json.dumps({"point": point.to_dict(), **job_extra}), encoding="utf-8")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
        proc = subprocess.Popen([sys.executable, "-m", "bench.sweep.worker", str(job_path), str(out_path)],
                                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, errors="replace")
        try:
            _, stderr = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            return _failure_row(point, "error", f"timed out after {timeout_s:g} s")
        if out_path.is_file():
            return json.loads(out_path.read_text(encoding="utf-8"))
        last = [ln for ln in (stderr or "").strip().splitlines() if ln.strip()]
        tail = last[-1] if last else ""
        if proc.returncode == -signal.SIGKILL:
            return _failure_row(point, "oom", "killed by SIGKILL (most likely the kernel's OOM "
                                f"killer: not enough host memory){'; ' + tail if tail else ''}")
        return _failure_row(point, "error", f"worker exited with code {proc.returncode}"
                            f"{': ' + tail if tail else ''}")


def prepare_run_dir(out: Path, resume: bool) -> list[dict]:
    """Check the output directory; return the rows already there (when resuming)."""
    points = out / POINTS_FILE
    if out.exists() and not out.is_dir():
        raise BenchError(f"--out {out}: exists and is not a directory; choose another --out")
    if resume:
        if not points.is_file():
            raise BenchError(f"--resume: {points} not found; run without --resume to start this run")
        return read_points(out)
    if points.exists():
        raise BenchError(f"--out {out}: already holds {POINTS_FILE}; use --resume to finish it or "
                         "choose another --out (existing results are left untouched)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BenchError(f"--out {out}: cannot create ({exc.strerror})") from None
    return []


def write_env(out: Path, env: dict) -> None:
    atomic_write(out / ENV_FILE, json.dumps(env, indent=2, sort_keys=True) + "\n")


def run_sweep(points: list[Point], out: Path, resume: bool = False, env: dict | None = None,
              progress: Progress | None = None, timeout_s: float | None = None,
              on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """Run every point not yet done; `points.csv` is rewritten after each point."""
    from engine.runtime import configure_cpu_threads

    from ..hardware import describe_environment

    configure_cpu_threads()  # the workers inherit the thread/MKL settings; env.json records them
    out = Path(out)
    rows = prepare_run_dir(out, resume)
    env_path = out / ENV_FILE
    if env is None:
        if resume and env_path.is_file():
            env = json.loads(env_path.read_text(encoding="utf-8"))
        else:
            env = describe_environment()
    env.setdefault("started_at", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    write_env(out, env)
    if not rows:
        write_points(out, [])
    done = {point_key(r) for r in rows if r.get("status") in DONE_STATUSES}
    todo = [p for p in points if tuple(p.key()) not in done]
    progress = progress or Progress(todo)
    print(f"cgbench: {len(todo)} of {len(points)} point(s) to run -> {out}", file=progress.stream,
          flush=True)
    job_extra = {"cpu_bandwidth_gbps": env.get("cpu_bandwidth_gbps")}
    for index, point in enumerate(todo):
        progress.begin(index, point)
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        t0 = time.perf_counter()
        row = run_point(point, job_extra, timeout_s)
        seconds = time.perf_counter() - t0
        row["started_at"] = started
        row["point_wall_s"] = seconds
        cuda = row.pop("cuda_version", None)
        if cuda and not env.get("cuda_version"):
            env["cuda_version"] = cuda
            write_env(out, env)
        row = {k: v for k, v in row.items() if k in COLUMNS}
        rows = [r for r in rows if point_key(r) != point_key(row)] + [row]
        write_points(out, rows)
        progress.end(point, row, seconds)
        if on_row:
            on_row(row)
    return rows
