from common import *
m = get_model()
dec = m.numpy_decode
def anon_huge():
    for line in open("/proc/self/smaps_rollup"):
        if "AnonHugePages" in line: return line.strip()
print("after load", anon_huge())
W_p = [l["fc_in_w"] for l in dec.layers] + [l["fc_out_w"] for l in dec.layers]
W_n = [w.copy() for w in W_p]
print("after copies", anon_huge())
x = np.random.rand(1, 1024).astype(np.float32); x2 = np.random.rand(1, 4096).astype(np.float32)
def run(ws):
    def f():
        for w in ws[:20]: x @ w
        for w in ws[20:]: x2 @ w
    return f
res = interleave({"paddle-owned weights": run(W_p), "numpy copies (madvise hugepage)": run(W_n)}, rounds=10, per=2)
report(res)
mb = sum(w.nbytes for w in W_p) / 1e9
for k, ts in res.items(): print(f"  {k:40s} {mb/np.median(ts):5.1f} GB/s")
