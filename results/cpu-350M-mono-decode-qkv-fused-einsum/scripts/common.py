import time, sys, os
import numpy as np
sys.path.insert(0, "/work/main")
from engine import load

def get_model():
    gen = load("random:350M-mono", prefix_cache_bytes=0)
    return gen.model

def make_cache(model, ctx, rows=1, seed=0):
    kv, _ = model._reserve(([], 0), ctx)
    if rows > 1:
        kv, _ = model.expand_cache((kv, 0), rows)
    from engine.cpu_decode import writable_view
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(4 * 1024 * 1024, dtype=np.float32)
    for k, v in kv:
        for t in (k, v):
            w = writable_view(t).reshape(-1)
            n = w.size
            reps = -(-n // noise.size)
            w[:] = np.tile(noise, reps)[:n] * 0.5
    return kv

def timeit(fn, n):
    ts = []
    for _ in range(n):
        t0 = time.perf_counter(); fn(); ts.append(time.perf_counter() - t0)
    return ts

def interleave(variants, rounds=5, per=5):
    """variants: dict name -> fn. Returns name -> list of times (s)."""
    res = {k: [] for k in variants}
    for r in range(rounds):
        for k, fn in variants.items():
            res[k] += timeit(fn, per)
    return res

def report(res, unit=1e3, label="ms"):
    base = None
    for k, ts in res.items():
        ts = np.array(ts) * unit
        med = np.median(ts)
        if base is None: base = med
        print(f"  {k:40s} median {med:8.3f} {label}  min {ts.min():8.3f}  p90 {np.percentile(ts,90):8.3f}  ratio {med/base:.3f}", flush=True)
