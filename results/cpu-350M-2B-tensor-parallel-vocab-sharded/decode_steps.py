"""Median decode-step ms of random:350M-mono split 2 ways, the layout from CGW_TP_VOCAB (split or
whole): PYTHONPATH=. python results/cpu-350M-2B-tensor-parallel-vocab-sharded/decode_steps.py"""
import json, os, sys, time
import numpy as np
from engine import load

gen = load(sys.argv[1] if len(sys.argv) > 1 else "random:350M-mono", tensor_parallel=2)
m = gen.model
out = {"layout": os.environ.get("CGW_TP_VOCAB", "split"), "wte": list(m.local.wte.shape)}
for rows in (1, 4):
    caches = [m.new_cache() for _ in range(rows)]
    for c in caches:
        m.prefill(c, list(range(100, 164)))
    tokens = np.arange(rows) * 12000 + 7
    times = []
    for _ in range(30):
        t = time.perf_counter()
        m.decode(tokens, caches)
        times.append((time.perf_counter() - t) * 1e3)
    out[f"step_ms_{rows}"] = round(float(np.median(times[5:])), 2)
    for c in caches:
        m.release(c)
m.close()
print(json.dumps(out), flush=True)
