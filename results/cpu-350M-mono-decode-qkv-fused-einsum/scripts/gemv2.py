from common import *
rng = np.random.default_rng(0)
pool = rng.standard_normal(16 * 1024 * 1024, dtype=np.float32) * 0.02
def rnd(shape):
    n = int(np.prod(shape)); reps = -(-n // pool.size)
    return np.tile(pool, reps)[:n].reshape(shape).copy()
shapes = [(1024, 512), (1024, 1024), (1024, 3072), (1024, 4096), (1024, 7168), (4096, 1024), (5120, 1024), (1024, 51200)]
for i, o in shapes:
    n = max(2, int(300e6 // (i * o * 4)))
    Win = [rnd((i, o)) for _ in range(n)]
    Wout = [np.ascontiguousarray(w.T) for w in Win]
    x = rng.standard_normal((1, i), dtype=np.float32); x1 = x[0]
    yN = np.empty((1, o), np.float32); yT = np.empty(o, np.float32)
    def N():
        for w in Win: np.matmul(x, w, out=yN)
    def T():
        for w in Wout: np.matmul(w, x1, out=yT)
    res = interleave({f"N [in,out] x@W  {i}->{o}": N, f"T [out,in] W@x  {i}->{o}": T}, rounds=6, per=3)
    mb = n * i * o * 4 / 1e9
    for k, ts in res.items():
        print(f"  {k:34s} {mb/np.median(ts):5.1f} GB/s (median)  {mb/np.min(ts):5.1f} (best)")
    del Win, Wout
