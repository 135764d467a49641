"""The process group of tensor parallelism: starting the ranks, collectives, liveness, exit.

Rank 0 is the process the user started (cgserve, cgbench's worker, `python -m engine`): it
starts ranks 1..N-1 itself (`python -m engine.tensor_parallel.follower`) with the environment
Paddle's launcher gives its workers (PADDLE_TRAINER_ID, PADDLE_TRAINERS_NUM,
PADDLE_TRAINER_ENDPOINTS, PADDLE_CURRENT_ENDPOINT, FLAGS_selected_gpus), then every rank calls
`paddle.distributed.init_parallel_env()`: NCCL between GPUs, gloo between CPU processes.
Rank r uses GPU `devices[r]`.

Liveness: each follower writes a heartbeat byte to a pipe every HEARTBEAT_S; rank 0's watchdog
reads them.  A follower that exits (EOF), stops beating for HEARTBEAT_TIMEOUT_S, or leaves a
collective step unfinished for STEP_TIMEOUT_S (CGW_TP_STEP_TIMEOUT) is a failure: rank 0 logs
one line, marks the group failed (cgserve then answers 503), kills the other followers and
exits with EXIT_FOLLOWER_LOST after EXIT_DELAY_S.  A follower whose heartbeat write fails
(rank 0 died) exits at once, so no follower outlives rank 0.  Followers ignore SIGINT/SIGTERM
(a terminal's Ctrl-C or a service manager signals the whole group): rank 0 stops them.
"""
from __future__ import annotations

import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

log = logging.getLogger("engine.tp")

HEARTBEAT_S = 1.0
HEARTBEAT_TIMEOUT_S = float(os.environ.get("CGW_TP_HEARTBEAT_TIMEOUT", "10"))
# One call (a decode step, a 512-token prompt chunk: ~1-2 s for 16B on a P40) past this is a
# hang: on GPUs within 30 s of it the server has answered 503 and exited; CPUs are far slower.
STEP_TIMEOUT_S = {"gpu": 20.0, "cpu": 120.0}
CONNECT_TIMEOUT_S = float(os.environ.get("CGW_TP_CONNECT_TIMEOUT", "600"))  # followers' loading
EXIT_DELAY_S = float(os.environ.get("CGW_TP_EXIT_DELAY", "3"))  # answer 503 this long, then exit
EXIT_FOLLOWER_LOST = 3
JOB_ENV = "CGW_TP_JOB"
_STARTED = False  # Paddle's default process group forms once per process
HEARTBEAT_FD_ENV = "CGW_TP_HEARTBEAT_FD"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank: int, world: int, endpoints: list[str], device: str, gpu: int | None) -> dict:
    """The variables Paddle's launcher sets for worker `rank` (what init_parallel_env reads)."""
    env = {"PADDLE_TRAINER_ID": str(rank), "PADDLE_TRAINERS_NUM": str(world),
           "PADDLE_TRAINER_ENDPOINTS": ",".join(endpoints),
           "PADDLE_CURRENT_ENDPOINT": endpoints[rank], "PADDLE_MASTER": endpoints[0],
           "PADDLE_RANK_IN_NODE": str(rank), "PADDLE_LOCAL_SIZE": str(world)}
    if device == "cpu":
        env["PADDLE_DISTRI_BACKEND"] = "gloo"
    else:
        env["FLAGS_selected_gpus"] = str(gpu)
    return env


def init_collectives() -> None:
    """paddle.distributed.init_parallel_env() (this rank's env must be set)."""
    from ..runtime import import_paddle

    paddle = import_paddle()
    import paddle.distributed as dist

    dist.init_parallel_env()
    if dist.get_world_size() < 2:
        raise RuntimeError("tensor parallelism: the process group did not form")
    del paddle


@dataclass
class Follower:
    rank: int
    process: subprocess.Popen
    heartbeat_fd: int
    last_beat: float = field(default_factory=time.monotonic)


class Group:
    """Rank 0's view of the ranks: followers' processes, watchdog, failure and shutdown."""

    def __init__(self, world: int, device: str, gpus: list[int] | None):
        self.world, self.device, self.gpus = world, device, gpus
        self.followers: list[Follower] = []
        self.failure: str | None = None  # one line once a follower is lost
        self.closing = False
        self.ready = False  # every rank has loaded its shard
        self._step_started: float | None = None
        self.step_timeout_s = (float(os.environ.get("CGW_TP_STEP_TIMEOUT", 0))
                               or STEP_TIMEOUT_S[device])
        self._lock = threading.Lock()
        self._watchdog: threading.Thread | None = None
        self.on_failure = None  # optional callback(message), e.g. to stop a server

    # ---- start ---------------------------------------------------------------------------
    def start(self, job: dict) -> None:
        """Start ranks 1..N-1 with `job` (what to load), then join the collectives as rank 0."""
        global _STARTED
        if _STARTED:
            from ..errors import OptionError

            raise OptionError("one tensor-parallel model per process: Paddle's process group "
                              "is formed once; load the other model in another process")
        _STARTED = True
        endpoints = [f"127.0.0.1:{free_port()}" for _ in range(self.world)]
        for rank in range(1, self.world):
            read_fd, write_fd = os.pipe()
            env = dict(os.environ)
            env.update(rank_env(rank, self.world, endpoints, self.device, self._gpu(rank)))
            env.update({JOB_ENV: json.dumps(job), HEARTBEAT_FD_ENV: str(write_fd)})
            proc = subprocess.Popen([sys.executable, "-m", "engine.tensor_parallel.follower"],
                                    env=env, pass_fds=(write_fd,), stdin=subprocess.DEVNULL)
            os.close(write_fd)
            self.followers.append(Follower(rank, proc, read_fd))
        os.environ.update(rank_env(0, self.world, endpoints, self.device, self._gpu(0)))
        self._watchdog = threading.Thread(target=self._watch, name="tp-watchdog", daemon=True)
        self._watchdog.start()
        try:
            init_collectives()
        except BaseException:
            self.close()
            raise

    def _gpu(self, rank: int) -> int | None:
        return None if self.device == "cpu" else self.gpus[rank]

    # ---- steps ---------------------------------------------------------------------------
    def step_started(self) -> None:
        self._step_started = time.monotonic()

    def step_done(self) -> None:
        self._step_started = None

    # ---- liveness ------------------------------------------------------------------------
    def _watch(self) -> None:
        while not self.closing and self.failure is None:
            fds = {f.heartbeat_fd: f for f in self.followers if f.heartbeat_fd >= 0}
            ready = select.select(list(fds), [], [], HEARTBEAT_S)[0] if fds else []
            now = time.monotonic()
            for fd in ready:
                follower = fds[fd]
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    data = b""
                if data:
                    follower.last_beat = now
                elif not self.closing:
                    code = follower.process.wait(timeout=5) if follower.process else None
                    return self.fail(f"follower rank {follower.rank} (pid {follower.process.pid}) "
                                     f"exited with code {code}")
            for f in self.followers:
                if now - f.last_beat > HEARTBEAT_TIMEOUT_S and not self.closing:
                    return self.fail(f"follower rank {f.rank} (pid {f.process.pid}) stopped "
                                     f"answering (no heartbeat for {HEARTBEAT_TIMEOUT_S:g} s)")
            started = self._step_started
            if started is not None and now - started > self.step_timeout_s and not self.closing:
                return self.fail(f"a tensor-parallel step has not finished after "
                                 f"{self.step_timeout_s:g} s: a follower hangs")

    def exited_follower(self, wait_s: float = 0.0) -> str | None:
        """'follower rank r (pid p) exited with code c' for a follower that has exited (waiting
        up to `wait_s` for one to), else None."""
        deadline = time.monotonic() + wait_s
        while True:
            for f in self.followers:
                code = f.process.poll()
                if code is not None:
                    return f"follower rank {f.rank} (pid {f.process.pid}) exited with code {code}"
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def fail(self, reason: str) -> None:
        """Mark the group failed, log one line, stop the followers, exit after EXIT_DELAY_S."""
        with self._lock:
            if self.failure is not None or self.closing:
                return
            self.failure = (f"tensor parallelism lost a rank: {reason}; the model cannot run, "
                            f"exiting (restart the server)")
        # straight to stderr: Paddle's import can leave the root logger writing elsewhere
        print(f"error: {self.failure}", file=sys.stderr, flush=True)
        if self.on_failure is not None:
            try:
                self.on_failure(self.failure)
            except Exception:  # the exit below must happen whatever the callback does
                log.exception("tensor-parallel failure callback failed")
        threading.Thread(target=self._exit_soon, name="tp-exit", daemon=True).start()

    def _exit_soon(self) -> None:
        self._kill_followers(grace_s=0.5)
        time.sleep(EXIT_DELAY_S)
        logging.shutdown()
        sys.stderr.flush()
        os._exit(EXIT_FOLLOWER_LOST)

    # ---- stop ----------------------------------------------------------------------------
    def close(self, timeout_s: float = 10.0) -> None:
        """Wait for the followers to exit (after they were told to stop), then kill any left."""
        self.closing = True
        deadline = time.monotonic() + timeout_s
        for f in self.followers:
            try:
                f.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        self._kill_followers(grace_s=2.0)
        for f in self.followers:
            if f.heartbeat_fd >= 0:
                try:
                    os.close(f.heartbeat_fd)
                except OSError:
                    pass
                f.heartbeat_fd = -1

    def _kill_followers(self, grace_s: float) -> None:
        alive = [f.process for f in self.followers if f.process.poll() is None]
        for p in alive:
            p.kill()  # followers ignore SIGTERM by design
        for p in alive:
            try:
                p.wait(timeout=grace_s + 5)
            except subprocess.TimeoutExpired:
                log.error("follower pid %d did not exit after SIGKILL", p.pid)


# ---- follower side -------------------------------------------------------------------------
def follower_liveness() -> None:
    """In a follower: ignore SIGINT/SIGTERM and beat the heart until rank 0 is gone."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    fd = int(os.environ[HEARTBEAT_FD_ENV])
    parent = os.getppid()

    def beat():
        while True:
            try:
                os.write(fd, b".")
            except OSError:  # rank 0 is gone (broken pipe)
                os._exit(EXIT_FOLLOWER_LOST)
            if os.getppid() != parent:
                os._exit(EXIT_FOLLOWER_LOST)
            time.sleep(HEARTBEAT_S)

    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # a write to a dead rank 0 ends us
    threading.Thread(target=beat, name="tp-heartbeat", daemon=True).start()
