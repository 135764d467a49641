from common import *
import sys
rows = int(sys.argv[1]) if len(sys.argv) > 1 else 1
rng = np.random.default_rng(0)
pool = rng.standard_normal(16 * 1024 * 1024, dtype=np.float32) * 0.02
def rnd(shape):
    n = int(np.prod(shape)); reps = -(-n // pool.size)
    return np.tile(pool, reps)[:n].reshape(shape).copy()
NL, E, I = 20, 1024, 4096
QKV = 3072
# one set of memory per layout family, views for subparts
hN = [rnd((E, QKV + I)) for _ in range(NL)]        # [in, out]: qkv cols then fc_in cols (fused N)
hT = [rnd((QKV + I, E)) for _ in range(NL)]        # [out, in]
sepN = [dict(r1=np.ascontiguousarray(w[:, :512]), r2=np.ascontiguousarray(w[:, 512:1024]), p=np.ascontiguousarray(w[:, 1024:2048]),
             v=np.ascontiguousarray(w[:, 2048:3072]), fc_in=np.ascontiguousarray(w[:, 3072:])) for w in hN]
qkvN = [np.ascontiguousarray(w[:, :QKV]) for w in hN]
oN = [rnd((I + E, E)) for _ in range(NL)]          # [in, out]: fc_out rows then out rows
oT = [rnd((E, I + E)) for _ in range(NL)]
oT_sep = [(np.ascontiguousarray(w[:, :I]), np.ascontiguousarray(w[:, I:])) for w in oT]
h = rng.standard_normal((rows, E), dtype=np.float32)
ga = rng.standard_normal((rows, I + E), dtype=np.float32)
g, a = np.ascontiguousarray(ga[:, :I]), np.ascontiguousarray(ga[:, I:])
def mv(W, x):  # T-orientation product, rows x out
    return (W @ x[0])[None] if rows == 1 else (W @ x.T).T
def C0():
    for s, o in zip(sepN, oN):
        for k in ("r1", "r2", "p", "v", "fc_in"): h @ s[k]
        g @ o[:I]; a @ o[I:]
def C4():
    for s, (fo, oo) in zip(sepN, oT_sep):
        for k in ("r1", "r2", "p", "v", "fc_in"): h @ s[k]
        mv(fo, g); mv(oo, a)
def C1():
    for q, s, (fo, oo) in zip(qkvN, sepN, oT_sep):
        h @ q; h @ s["fc_in"]; mv(fo, g); mv(oo, a)
def C2():
    for w, s, (fo, oo) in zip(hT, sepN, oT_sep):
        mv(w[:QKV], h); h @ s["fc_in"]; mv(fo, g); mv(oo, a)
def C3():
    for w, o in zip(hN, oT):
        h @ w; mv(o, ga)
def C5():
    for w, o in zip(hT, oT):
        mv(w, h); mv(o, ga)
MB = NL * (E * (QKV + I) + (I + E) * E) * 4 / 1e9
res = interleave({"C0 now: 7 separate, [in,out] x@W": C0, "C4: now + fc_out,out [out,in]": C4,
                  "C1: qkv fused N + fc_in N + out-side T": C1, "C2: qkv fused T + fc_in N + out-side T": C2,
                  "C3: h-side fused N + out-side fused T": C3, "C5: all T, fused h-side, fused out-side": C5}, rounds=12, per=1)
print(f"rows {rows}, {MB*1e3:.0f} MB"); report(res)
for k, ts in res.items(): print(f"  {k:40s} {MB/np.median(ts):5.1f} GB/s")
