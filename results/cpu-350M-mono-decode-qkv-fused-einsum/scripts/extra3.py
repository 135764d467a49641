import engine.cpu_decode as cd
from engine.cpu_decode import _layer_norm, _gelu_tanh, _mv, _attend
D = new.numpy_decode
fcin_T = [np.ascontiguousarray(l[4].T) for l in D.layers]
lm_T = np.ascontiguousarray(D.lm[0].T)
def var_step(self, tokens, kv, pos, fcT=False, lmT=False):
    rows, heads, dim, half = len(tokens), self.n_head, self.head_dim, self.half
    rot, rot2, qk_end = self.bounds
    x = self.wte[tokens]
    cos, sin = self.cos[pos], self.sin[pos]
    seen = pos + 1
    for i, ((ln_w, ln_b, qkv_w, out_w, fc_in_w, fc_in_b, fc_out_w, fc_out_b), (k_t, v_t)) in enumerate(zip(self.layers, kv)):
        keys, values = self._cache_view(k_t), self._cache_view(v_t)
        h = _layer_norm(x, ln_w, ln_b, self.eps)
        y = _mv(qkv_w, h)
        x1, x2 = y[:, :rot], y[:, rot:rot2]
        parts = [(x1 * cos - x2 * sin).reshape(rows, 2, heads, half), (x2 * cos + x1 * sin).reshape(rows, 2, heads, half)]
        if qk_end > rot2: parts.append(y[:, rot2:qk_end].reshape(rows, 2, heads, dim - 2 * half))
        qk = np.concatenate(parts, axis=-1)
        keys[:, pos] = qk[:, 1].reshape(rows * heads, dim)
        values[:, pos] = y[:, qk_end:].reshape(rows * heads, dim)
        attn = _attend(qk[:, 0].reshape(rows * heads, dim), keys[:, :seen], values[:, :seen])
        up = _mv(fcin_T[i], h) if fcT else h @ fc_in_w
        up += fc_in_b
        mlp = _mv(fc_out_w, _gelu_tanh(up))
        mlp += fc_out_b
        mlp += _mv(out_w, attn.reshape(rows, heads * dim))
        x += mlp
    last = _layer_norm(x, *self.ln_f, self.eps)
    logits = _mv(lm_T, last) if lmT else last @ self.lm[0]
    logits += self.lm[1]
    return logits
extra["new, fc_in stored [out,in]"] = lambda tok, kv, ctx: var_step(D, tok, kv, ctx, fcT=True)
extra["new, lm head stored [out,in]"] = lambda tok, kv, ctx: var_step(D, tok, kv, ctx, lmT=True)
