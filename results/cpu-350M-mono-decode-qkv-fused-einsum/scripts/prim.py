from common import *
m = get_model()
dec = m.numpy_decode
H, D = 16, 64
import threadpoolctl, ctypes
lib = [m_ for m_ in threadpoolctl.threadpool_info() if m_["internal_api"]=="openblas"][0]["filepath"]
ob = ctypes.CDLL(lib); setn = ob.openblas_set_num_threads64_
setn(1)
for ctx in (1024, 2000):
    kv = make_cache(m, ctx + 1, 1)
    views = [(dec._cache_view(k), dec._cache_view(v)) for k, v in kv]
    q = np.random.default_rng(1).standard_normal((1, H, D), dtype=np.float32)
    p = np.random.default_rng(1).random((1, H, ctx), dtype=np.float32)
    sc = np.empty((1, H, ctx), np.float32)
    def k_batched():
        for k, v in views: np.matmul(k[:, :, :ctx], q[..., None])
    def k_batched_vec():  # matmul with 1-D-like core: (seen,64)@(64,) via signature
        for k, v in views: np.matmul(k[:, :, :ctx], q[:, :, :, None], out=sc[..., None])
    def k_loop_gemv():
        for k, v in views:
            for h in range(H): np.matmul(k[0, h, :ctx], q[0, h], out=sc[0, h])
    def k_loop_dot():
        for k, v in views:
            for h in range(H): np.dot(k[0, h, :ctx], q[0, h], out=sc[0, h])
    def k_einsum():
        for k, v in views: np.einsum("rhsd,rhd->rhs", k[:, :, :ctx], q, out=sc)
    def v_batched():
        for k, v in views: np.matmul(p[:, :, None, :], v[:, :, :ctx])
    def v_loop_gemv():
        o = np.empty(D, np.float32)
        for k, v in views:
            for h in range(H): np.matmul(p[0, h], v[0, h, :ctx], out=o)
    def v_loop_dot_T():
        o = np.empty(D, np.float32)
        for k, v in views:
            for h in range(H): np.dot(v[0, h, :ctx].T, p[0, h], out=o)
    def v_einsum():
        for k, v in views: np.einsum("rhs,rhsd->rhd", p, v[:, :, :ctx])
    def copyread():
        for k, v in views: k[:, :, :ctx].sum()
    res = interleave({"K batched": k_batched, "K loop gemv": k_loop_gemv, "K loop dot": k_loop_dot, "K einsum": k_einsum,
                      "V batched": v_batched, "V loop gemv": v_loop_gemv, "V loop dot T": v_loop_dot_T, "V einsum": v_einsum,
                      "K sum (read)": copyread}, rounds=4, per=4)
    print("ctx", ctx, "MB of K (or V) read", 20*H*ctx*D*4/1e6); report(res)
