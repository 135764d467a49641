"""Median ms of the gloo collectives a split 350M step makes, two CPU processes (rank 0 starts
rank 1): PYTHONPATH=. python results/cpu-350M-2B-tensor-parallel-vocab-sharded/collectives.py"""
import json, os, subprocess, sys, time
import numpy as np
from engine.tensor_parallel.group import rank_env, free_port, init_collectives

if "RANK_CHILD" not in os.environ:
    eps = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    env = dict(os.environ, RANK_CHILD="1", **rank_env(1, 2, eps, "cpu", None))
    child = subprocess.Popen([sys.executable, __file__], env=env)
    os.environ.update(rank_env(0, 2, eps, "cpu", None))
else:
    child = None
init_collectives()
import paddle, paddle.distributed as dist
rank = dist.get_rank()
out = {}
def timeit(name, fn, n=50):
    fn(); fn()
    ts = []
    for _ in range(n):
        t = time.perf_counter(); fn(); ts.append((time.perf_counter() - t) * 1e3)
    out[name] = round(float(np.median(ts)), 3)
x1 = paddle.to_tensor(np.ones((1, 1024), np.float32))
x4 = paddle.to_tensor(np.ones((4, 1024), np.float32))
g1 = paddle.to_tensor(np.ones((1, 25600), np.float32))
g4 = paddle.to_tensor(np.ones((4, 25600), np.float32))
big1 = paddle.to_tensor(np.ones((1, 51200), np.float32))
timeit("all_reduce_1x1024", lambda: dist.all_reduce(x1))
timeit("all_reduce_4x1024", lambda: dist.all_reduce(x4))
timeit("all_gather_1x25600", lambda: dist.all_gather([], g1))
timeit("all_gather_4x25600", lambda: dist.all_gather([], g4))
timeit("all_reduce_1x51200", lambda: dist.all_reduce(big1))
def gather_np():
    parts = []
    dist.all_gather(parts, paddle.to_tensor(np.ones((1, 25600), np.float32)))
    return np.concatenate([p.numpy() for p in parts], axis=-1)
timeit("channel_gather_1x25600", gather_np)
if rank == 0:
    print(json.dumps(out), flush=True)
    child.wait()
