from common import *
import threading
m = get_model()
dec = m.numpy_decode
H, D = 16, 64

def attn_cur(keys, values, q, seen, out=None):
    scores = np.matmul(keys[:, :, :seen], q[..., None])[..., 0]
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    return np.matmul(scores[:, :, None, :], values[:, :, :seen])

def attn_ein(keys, values, q, seen, out=None):
    scores = np.einsum("rhsd,rhd->rhs", keys[:, :, :seen], q)
    scores -= np.maximum.reduce(scores, axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores *= 1.0 / np.add.reduce(scores, axis=-1, keepdims=True)
    return np.einsum("rhs,rhsd->rhd", scores, values[:, :, :seen], out=out)

class Worker:
    def __init__(self):
        self.go = threading.Lock(); self.go.acquire()
        self.done = threading.Lock(); self.done.acquire()
        self.job = None
        self.t = threading.Thread(target=self.run, daemon=True); self.t.start()
    def run(self):
        while True:
            self.go.acquire()
            fn, args = self.job
            try:
                fn(*args)
            finally:
                self.done.release()
    def submit(self, fn, *args):
        self.job = (fn, args); self.go.release()
    def wait(self):
        self.done.acquire()

W = Worker()
def attn_ein_thr(keys, values, q, seen, split=H // 2):
    rows = keys.shape[0]
    out = np.empty((rows, H, D), np.float32)
    W.submit(attn_ein, keys[:, split:], values[:, split:], q[:, split:], seen, out[:, split:])
    attn_ein(keys[:, :split], values[:, :split], q[:, :split], seen, out[:, :split])
    W.wait()
    return out

for rows in (1, 3):
  for ctx in (64, 128, 256, 512, 1024, 2000):
    kv = make_cache(m, ctx + 1, rows)
    views = [(dec._cache_view(k), dec._cache_view(v)) for k, v in kv]
    q = np.random.default_rng(1).standard_normal((rows, H, D), dtype=np.float32) * 0.3
    ref = attn_cur(*views[0], q, ctx)[:, :, 0]
    for f in (attn_ein, attn_ein_thr):
        got = f(*views[0], q, ctx)
        err = ((ref - got) ** 2).mean() / (ref ** 2).mean()
        assert err < 1e-12, (f, err)
    def mk(f):
        return lambda: [f(k, v, q, ctx) for k, v in views]
    res = interleave({"current (20 layers)": mk(attn_cur), "einsum": mk(attn_ein), "einsum threaded": mk(attn_ein_thr)}, rounds=5, per=5)
    print("rows", rows, "ctx", ctx, "KV MB read", 2*20*H*ctx*D*4*rows/1e6); report(res)
