import sys, time, os
sys.path.insert(0, "/tmp/dec/oldpkg")
import numpy as np
from common import interleave, report
import engine, engine_old
old = engine_old.load("random:350M-mono", prefix_cache_bytes=0).model
new = engine.load("random:350M-mono", prefix_cache_bytes=0).model
T = int(os.environ.get("T", "1024"))
ids = [int(i) for i in np.random.default_rng(0).integers(0, 50000, T)]
a, _ = old.prefill(ids); b, _ = new.prefill(ids)
print("nmse", float(((a - b) ** 2).mean() / (a ** 2).mean()))
res = interleave({"old prefill": lambda: old.prefill(ids), "new prefill": lambda: new.prefill(ids)}, rounds=int(os.environ.get("R", "4")), per=1)
print("prefill", T, "tokens"); report(res, 1, "s")
