"""Starting tensor-parallel rank-0 processes in tests, and checking none is left behind."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"


def env(**extra) -> dict:
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS), out.get("PYTHONPATH", "")])
    out.setdefault("OMP_NUM_THREADS", "1")
    out.update({k: str(v) for k, v in extra.items()})
    return out


def start(args: list[str], **extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=TESTS, env=env(**extra),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def tree(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def wait_gone(procs: list[psutil.Process], timeout_s: float = 20) -> list[psutil.Process]:
    """Processes of `procs` still running after `timeout_s` (zombies count as gone)."""
    deadline = time.monotonic() + timeout_s
    alive = list(procs)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.1)
    for p in alive:  # never leave them behind, even when the test fails
        p.kill()
    return alive


def exit_code(proc: subprocess.Popen, what: str, timeout_s: float = 30) -> int:
    """`proc`'s exit code once it ends; past `timeout_s` it is killed and the test fails
    naming `what` (e.g. "rank 0, after losing its follower,")."""
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"{what} did not exit within {timeout_s:g} s") from None


def lost_rank_lines(err: str) -> list[str]:
    """The lines of a rank 0's stderr that report a lost tensor-parallel rank."""
    return [ln for ln in err.splitlines() if "tensor parallelism lost a rank" in ln]


def followers_of(pid: int, count: int, timeout_s: float = 60) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = [p for p in tree(pid) if "engine.tensor_parallel.follower" in " ".join(p.cmdline())]
        if len(found) == count:
            return found
        time.sleep(0.1)
    raise AssertionError(f"{count} follower(s) of {pid} did not start")
