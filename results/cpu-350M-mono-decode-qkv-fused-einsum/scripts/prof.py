from common import *
from collections import defaultdict
from engine.cpu_decode import _layer_norm, _gelu_tanh
m = get_model()
self = m.numpy_decode
pc = time.perf_counter
T = defaultdict(float)
def step(tokens, kv, pos):
    rows, heads, dim, half = len(tokens), self.n_head, self.head_dim, self.half
    t = pc()
    x = self.wte[tokens]
    cos, sin = self.cos[pos], self.sin[pos]
    seen = pos + 1
    for layer, (k_t, v_t) in zip(self.layers, kv):
        keys, values = self._cache_view(k_t), self._cache_view(v_t)
        h = _layer_norm(x, layer["ln_w"], layer["ln_b"], self.eps)
        t1 = pc(); T["misc"] += t1 - t; t = t1
        x1, x2 = h @ layer["r1_w"], h @ layer["r2_w"]
        t1 = pc(); T["r1r2"] += t1 - t; t = t1
        parts = [(x1 * cos - x2 * sin).reshape(rows, 2, heads, half),
                 (x2 * cos + x1 * sin).reshape(rows, 2, heads, half)]
        t1 = pc(); T["misc"] += t1 - t; t = t1
        pw = h @ layer["pass_w"]
        t1 = pc(); T["pass"] += t1 - t; t = t1
        parts.append(pw.reshape(rows, 2, heads, dim - 2 * half))
        qk = np.concatenate(parts, axis=-1)
        keys[:, :, pos] = qk[:, 1]
        t1 = pc(); T["misc"] += t1 - t; t = t1
        vv = (h @ layer["v_w"])
        t1 = pc(); T["v"] += t1 - t; t = t1
        values[:, :, pos] = vv.reshape(rows, heads, dim)
        t1 = pc(); T["misc"] += t1 - t; t = t1
        scores = np.matmul(keys[:, :, :seen], qk[:, 0, :, :, None])[..., 0]
        scores -= scores.max(axis=-1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=-1, keepdims=True)
        attn = np.matmul(scores[:, :, None, :], values[:, :, :seen])
        t1 = pc(); T["attn"] += t1 - t; t = t1
        up = h @ layer["fc_in_w"]
        t1 = pc(); T["fc_in"] += t1 - t; t = t1
        up += layer["fc_in_b"]
        g = _gelu_tanh(up)
        t1 = pc(); T["gelu+bias"] += t1 - t; t = t1
        mlp = g @ layer["fc_out_w"]
        t1 = pc(); T["fc_out"] += t1 - t; t = t1
        mlp += layer["fc_out_b"]
        t1 = pc(); T["misc"] += t1 - t; t = t1
        o = attn.reshape(rows, heads * dim) @ layer["out_w"]
        t1 = pc(); T["out"] += t1 - t; t = t1
        mlp += o
        x += mlp
    last = _layer_norm(x, *self.ln_f, self.eps)
    t1 = pc(); T["misc"] += t1 - t; t = t1
    logits = last @ self.lm[0]
    t1 = pc(); T["lm"] += t1 - t; t = t1
    logits += self.lm[1]
    t1 = pc(); T["misc"] += t1 - t; t = t1
    return logits
L = self.layers[0]
MB = {"r1r2": 20*2*L["r1_w"].nbytes, "pass": 20*L["pass_w"].nbytes, "v": 20*L["v_w"].nbytes, "fc_in": 20*L["fc_in_w"].nbytes,
      "fc_out": 20*L["fc_out_w"].nbytes, "out": 20*L["out_w"].nbytes, "lm": self.lm[0].nbytes}
for ctx in (128, 1024):
    kv = make_cache(m, ctx + 1)
    MB["attn"] = 2*20*16*ctx*64*4
    tok = np.array([5])
    for _ in range(3): step(tok, kv, ctx)
    T.clear(); n = 20
    t0 = pc()
    for _ in range(n): step(tok, kv, ctx)
    tot = (pc() - t0) / n
    print("ctx", ctx, f"total {tot*1e3:.2f} ms")
    for k, v in sorted(T.items(), key=lambda kv: -kv[1]):
        gbs = f"{MB[k]/(v/n)/1e9:.1f} GB/s" if k in MB else ""
        print(f"  {k:10s} {v/n*1e3:7.2f} ms  {gbs}")
