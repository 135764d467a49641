from common import *
import sys
rows = int(sys.argv[1]) if len(sys.argv) > 1 else 1
rng = np.random.default_rng(0)
NL = 20
E, I = 1024, 4096
def rnd(*shape):
    return (rng.standard_normal(shape, dtype=np.float32) * 0.02)
# in,out layout
hw_sizes = {"r1": 512, "r2": 512, "pass": 1024, "v": 1024, "fc_in": 4096}
tot_h = sum(hw_sizes.values())
L_io = [rnd(E, tot_h) for _ in range(NL)]             # fused h-side [in, out]
L_oi = [rnd(tot_h, E) for _ in range(NL)]             # fused h-side [out, in]
O_io = [rnd(I + E, E) for _ in range(NL)]             # fused fc_out+out [in, out] (row-stacked)
O_oi = [rnd(E, I + E) for _ in range(NL)]             # [out, in]
# separate copies (contiguous each) in [in,out]
def split_cols(W):
    out, c = {}, 0
    for k, n in hw_sizes.items():
        out[k] = np.ascontiguousarray(W[:, c:c+n]); c += n
    return out
S_io = [split_cols(W) for W in L_io]
S_oi = []
for W in L_oi:
    d, c = {}, 0
    for k, n in hw_sizes.items():
        d[k] = W[c:c+n]; c += n   # contiguous row slices
    S_oi.append(d)
OS_io = [(W[:I], W[I:]) for W in O_io]   # contiguous row slices
OS_oi = [(np.ascontiguousarray(W[:, :I]), np.ascontiguousarray(W[:, I:])) for W in O_oi]
h = rnd(rows, E) * 50; ga = rnd(rows, I + E) * 50
g, a = np.ascontiguousarray(ga[:, :I]), np.ascontiguousarray(ga[:, I:])
h1 = h[0]
def A():  # current
    for s in S_io:
        for k in hw_sizes: h @ s[k]
def B():  # fused in,out
    for W in L_io: h @ W
def D():  # separate out,in: W @ h.T
    for s in S_oi:
        for k in hw_sizes: (s[k] @ h.T) if rows > 1 else s[k] @ h1
def D2():  # separate out,in: h @ W.T
    for s in S_oi:
        for k in hw_sizes: h @ s[k].T
def E_():  # fused out,in
    for W in L_oi: (W @ h.T) if rows > 1 else W @ h1
def E2():
    for W in L_oi: h @ W.T
def OA():  # current fc_out, out separate [in,out]
    for fo, o in OS_io: g @ fo; a @ o
def OB():  # fused row-stacked [in,out]
    for W in O_io: ga @ W
def OD():  # separate [out,in]
    for fo, o in OS_oi:
        if rows > 1: fo @ g.T; o @ a.T
        else: fo @ g[0]; o @ a[0]
def OE():
    for W in O_oi: (W @ ga.T) if rows > 1 else W @ ga[0]
MBh = NL * E * tot_h * 4 / 1e6; MBo = NL * E * (I + E) * 4 / 1e6
res = interleave({"h-side: separate [in,out] h@W (now)": A, "h-side: fused [in,out] h@W": B,
                  "h-side: separate [out,in] W@h": D, "h-side: separate [out,in] h@W.T": D2,
                  "h-side: fused [out,in] W@h": E_, "h-side: fused [out,in] h@W.T": E2}, rounds=5, per=3)
print(f"rows {rows}: h-side GEMVs, {MBh:.0f} MB"); report(res)
res = interleave({"out-side: separate [in,out] (now)": OA, "out-side: fused [in,out] row-stack": OB,
                  "out-side: separate [out,in]": OD, "out-side: fused [out,in]": OE}, rounds=5, per=3)
print(f"rows {rows}: fc_out+out GEMVs, {MBo:.0f} MB"); report(res)
