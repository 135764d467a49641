"""Tensor-parallel plumbing over real processes (gloo on CPU) with a toy sharded model:
every interface call mirrored, cancellation and resume collective, failures and exits."""
from __future__ import annotations

import json
import signal
import time

import numpy as np
import pytest

from tp_helpers import exit_code, followers_of, lost_rank_lines, start, tree, wait_gone


def _close(a, b):
    if isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _close(x, y)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _close(a[k], b[k])
    elif isinstance(a, float):
        assert abs(a - b) <= 1e-9 * max(1.0, abs(b))
    else:
        assert a == b


@pytest.mark.parametrize("world", [2, 4])
def test_every_call_matches_one_process(world):
    proc = start(["tp_toy.py", str(world)])
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-2000:]
    result = json.loads(out.strip().splitlines()[-1])
    local = result.pop("local")
    assert result["cancelled"] == [True, 0]
    _close(result, local)
    assert not np.allclose(result["decode"][0], result["decode"][1])  # rows really differ


def _serving(**extra):
    proc = start(["tp_toy.py", "2", "serve-forever"], **extra)
    line = proc.stdout.readline()
    assert line.strip() == "READY", proc.stderr.read()[-2000:]
    return proc, followers_of(proc.pid, 1)


@pytest.mark.parametrize("how", ["kill", "stop"])
def test_lost_follower_is_one_line_and_nonzero_exit(how):
    proc, (follower,) = _serving(CGW_TP_HEARTBEAT_TIMEOUT=4, CGW_TP_EXIT_DELAY=1)
    t0 = time.monotonic()
    follower.send_signal(signal.SIGKILL if how == "kill" else signal.SIGSTOP)
    try:
        code = exit_code(proc, "rank 0, after losing its follower,")
    finally:
        if how == "stop" and follower.is_running():
            follower.kill()
    err = proc.stderr.read()
    assert code != 0 and time.monotonic() - t0 < 30
    lines = lost_rank_lines(err)
    assert len(lines) == 1, err[-2000:]
    assert ("exited with code" if how == "kill" else "no heartbeat") in lines[0]
    assert not wait_gone([follower])


def test_hung_step_is_detected():
    """A follower alive (heartbeat running) but stuck in its step: the step timeout."""
    proc, (follower,) = _serving(TOY_HANG_RANK=1, TOY_HANG_AT=3, CGW_TP_STEP_TIMEOUT=3,
                                 CGW_TP_EXIT_DELAY=1)
    code = exit_code(proc, "rank 0, after a hung step,")
    err = proc.stderr.read()
    assert code != 0 and "has not finished after 3 s" in err, err[-2000:]
    assert not wait_gone([follower])


@pytest.mark.parametrize("rank", [0, 1])
def test_a_call_failing_on_one_rank_fails_the_group(rank):
    """The ranks may now be at different collectives: 503 and exit, not a silent hang."""
    proc, (follower,) = _serving(TOY_FAIL_RANK=rank, CGW_TP_EXIT_DELAY=1)
    code = exit_code(proc, "rank 0, after a failed call,")
    err = proc.stderr.read()
    assert code != 0
    assert len(lost_rank_lines(err)) == 1
    assert ("rank 0's model call failed (RuntimeError" if rank == 0 else "exited with code") in err
    assert not wait_gone([follower])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_rank0_gone_takes_the_followers(sig):
    proc, followers = _serving()
    children = tree(proc.pid)
    proc.send_signal(sig)
    proc.wait(timeout=30)
    assert not wait_gone(children + followers, timeout_s=15)


def test_followers_ignore_a_group_sigterm_until_rank0_stops():
    """A terminal or service manager signals every process: followers wait for rank 0."""
    proc, (follower,) = _serving()
    follower.send_signal(signal.SIGTERM)
    time.sleep(1.5)
    assert follower.is_running() and proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    assert not wait_gone([follower], timeout_s=15)
