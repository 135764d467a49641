from common import *
import threading
m = get_model()
dec = m.numpy_decode
H, D = 16, 64
exec(open("attn3.py").read().split("W = Worker()")[0].split("H, D = 16, 64")[1])

def ein3(k3, v3, q3, out):
    scores = np.einsum("hsd,hd->hs", k3, q3)
    scores -= np.maximum.reduce(scores, axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores *= 1.0 / np.add.reduce(scores, axis=-1, keepdims=True)
    np.einsum("hs,hsd->hd", scores, v3, out=out)

def mm3(k3, v3, q3, out):
    scores = np.matmul(k3, q3[..., None])[..., 0]
    scores -= np.maximum.reduce(scores, axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores *= 1.0 / np.add.reduce(scores, axis=-1, keepdims=True)
    np.matmul(scores[:, None, :], v3, out=out[:, None, :])

W = Worker()
def flat(keys, values, q, seen):
    r, h, cap, d = keys.shape
    return keys.reshape(r * h, cap, d)[:, :seen], values.reshape(r * h, cap, d)[:, :seen], q.reshape(r * h, d)

def attn_flat(keys, values, q, seen, f=ein3):
    k3, v3, q3 = flat(keys, values, q, seen)
    out = np.empty(q3.shape, np.float32)
    f(k3, v3, q3, out)
    return out

def attn_flat_thr(keys, values, q, seen, f=ein3):
    k3, v3, q3 = flat(keys, values, q, seen)
    out = np.empty(q3.shape, np.float32)
    s = len(q3) // 2
    W.submit(f, k3[s:], v3[s:], q3[s:], out[s:])
    f(k3[:s], v3[:s], q3[:s], out[:s])
    W.wait()
    return out

for rows in (1, 3):
  for ctx in (64, 128, 256, 512, 1024, 2000):
    kv = make_cache(m, ctx + 1, rows)
    views = [(dec._cache_view(k), dec._cache_view(v)) for k, v in kv]
    q = np.random.default_rng(1).standard_normal((rows, H, D), dtype=np.float32) * 0.3
    ref = attn_cur(*views[0], q, ctx).reshape(rows * H, D)
    vs = {"current (20 layers)": attn_cur, "einsum flat": attn_flat, "einsum flat thr": attn_flat_thr,
          "matmul flat": lambda *a: attn_flat(*a, f=mm3), "matmul flat thr": lambda *a: attn_flat_thr(*a, f=mm3)}
    for name, f in vs.items():
        got = f(*views[0], q, ctx).reshape(rows * H, D)
        err = ((ref - got) ** 2).mean() / (ref ** 2).mean()
        assert err < 1e-12, (name, err)
    def mk(f):
        return lambda: [f(k, v, q, ctx) for k, v in views]
    res = interleave({k: mk(f) for k, f in vs.items()}, rounds=5, per=5)
    print("rows", rows, "ctx", ctx, "KV MB read", 2*20*H*ctx*D*4*rows/1e6); report(res)
