import sys, time, os
sys.path.insert(0, "/tmp/dec/oldpkg")
import numpy as np
from common import make_cache, interleave, report
import engine, engine_old
rows_list = [int(r) for r in os.environ.get("ROWS", "1").split(",")]
ctxs = [int(c) for c in os.environ.get("CTXS", "128,1024,2000").split(",")]
rounds = int(os.environ.get("ROUNDS", "6"))
new = engine.load("random:350M-mono", prefix_cache_bytes=0).model
old = engine_old.load("random:350M-mono", prefix_cache_bytes=0).model
extra = {}
if os.environ.get("EXTRA"):
    exec(open(os.environ["EXTRA"]).read())
for rows in rows_list:
    for ctx in ctxs:
        kv_new = make_cache(new, ctx + 1, rows); kv_old = make_cache(old, ctx + 1, rows)
        tok = np.arange(5, 5 + rows)
        a = old.numpy_decode.step(tok, kv_old, ctx); b = new.numpy_decode.step(tok, kv_new, ctx)
        nm = float(((a - b) ** 2).mean() / (a ** 2).mean())
        vs = {"old step": lambda: old.numpy_decode.step(tok, kv_old, ctx),
              "new step": lambda: new.numpy_decode.step(tok, kv_new, ctx)}
        for k, f in extra.items(): vs[k] = (lambda f=f: f(tok, kv_new, ctx))
        res = interleave(vs, rounds=rounds, per=3)
        print(f"rows {rows} ctx {ctx}  nmse(old,new) {nm:.2e}", flush=True); report(res)
