import numpy as np, threading, time
N = 64 * 1024 * 1024  # 256MB each
a = np.ones(N, np.float32); b = np.ones(N, np.float32)
qa = a.reshape(-1, 64); qb = b.reshape(-1, 64); v = np.ones(64, np.float32)
def rd(x):
    np.einsum("sd,d->s", x, v)
def rd2(x):
    np.matmul(x, v)
import threadpoolctl, ctypes
lib = [m_ for m_ in threadpoolctl.threadpool_info() if m_["internal_api"]=="openblas"][0]["filepath"]
ob = ctypes.CDLL(lib); setn = ob.openblas_set_num_threads64_
for rep in range(3):
    for name, f in (("einsum", rd), ("gemv", rd2)):
        setn(1)
        t=time.perf_counter(); f(qa); f(qb); t1=time.perf_counter()-t
        t=time.perf_counter(); th=threading.Thread(target=f, args=(qb,)); th.start(); f(qa); th.join(); t2=time.perf_counter()-t
        setn(2)
        t=time.perf_counter(); f(qa); f(qb); t3=time.perf_counter()-t
        print(f"{name}: 1 thread {2*N*4/t1/1e9:.1f} GB/s, 2 py threads {2*N*4/t2/1e9:.1f} GB/s, blas2 serial {2*N*4/t3/1e9:.1f}")
