import sys, time, os
sys.path.insert(0, "/tmp/dec/oldpkg")
import numpy as np
from common import make_cache, interleave, report
import engine, engine_old
order = os.environ.get("ORDER", "NONO")
ms = []
for c in order:
    mod = engine if c == "N" else engine_old
    ms.append((c, mod.load("random:350M-mono", prefix_cache_bytes=0).model))
for ctx in [int(c) for c in os.environ.get("CTXS", "128,1024").split(",")]:
    kvs = [make_cache(m, ctx + 1, 1) for _, m in ms]
    tok = np.array([5])
    vs = {f"{'new' if c == 'N' else 'old'} #{i}": (lambda m=m, kv=kv: m.numpy_decode.step(tok, kv, ctx)) for i, ((c, m), kv) in enumerate(zip(ms, kvs))}
    res = interleave(vs, rounds=8, per=2)
    print(f"ctx {ctx}", flush=True); report(res)
