from common import *
from engine.runtime import import_paddle
paddle = import_paddle()
F = paddle.nn.functional
rng = np.random.default_rng(0)
T = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
def t(a): return paddle.to_tensor(np.ascontiguousarray(a, np.float32))
E, I = 1024, 4096
WN = rng.standard_normal((E, 3072), dtype=np.float32)
fin = t(rng.standard_normal((E, I), dtype=np.float32))
foN = rng.standard_normal((I, E), dtype=np.float32); oN = rng.standard_normal((E, E), dtype=np.float32)
partsN = [t(WN[:, a:b]) for a, b in ((0, 512), (512, 1024), (1024, 2048), (2048, 3072))]
WT = t(WN.T)
partsT = [WT[a:b] for a, b in ((0, 512), (512, 1024), (1024, 2048), (2048, 3072))]
foNt, oNt, foT, oT = t(foN), t(oN), t(foN.T), t(oN.T)
h = t(rng.standard_normal((1, T, E), dtype=np.float32)); g = t(rng.standard_normal((1, T, I), dtype=np.float32))
for a, b in zip(partsN, partsT):
    assert np.allclose(np.from_dlpack(F.linear(h, a)), np.from_dlpack(paddle.matmul(h, b, transpose_y=True)), rtol=1e-3, atol=1e-3)
def now():
    with paddle.no_grad():
        for w in partsN: F.linear(h, w)
        F.linear(h, fin); F.linear(g, foNt); F.linear(h, oNt)
def tv():
    with paddle.no_grad():
        for w in partsT: paddle.matmul(h, w, transpose_y=True)
        F.linear(h, fin); paddle.matmul(g, foT, transpose_y=True); paddle.matmul(h, oT, transpose_y=True)
def tv_fused():
    with paddle.no_grad():
        paddle.matmul(h, WT, transpose_y=True)
        F.linear(h, fin); paddle.matmul(g, foT, transpose_y=True); paddle.matmul(h, oT, transpose_y=True)
def only_qkv_now():
    with paddle.no_grad():
        for w in partsN: F.linear(h, w)
def only_qkv_T():
    with paddle.no_grad():
        for w in partsT: paddle.matmul(h, w, transpose_y=True)
def only_out_now():
    with paddle.no_grad(): F.linear(g, foNt); F.linear(h, oNt)
def only_out_T():
    with paddle.no_grad(): paddle.matmul(g, foT, transpose_y=True); paddle.matmul(h, oT, transpose_y=True)
res = interleave({"now (N, F.linear)": now, "T slices transpose_y": tv, "T fused qkv one matmul": tv_fused,
                  "qkv now": only_qkv_now, "qkv T": only_qkv_T, "out-side now": only_out_now, "out-side T": only_out_T}, rounds=6, per=2)
print("T =", T, "one layer's GEMMs"); report(res)
