import engine.cpu_decode as cd
def matmul_always(tok, kv, ctx):
    cd.EINSUM_MIN = 10 ** 12
    try: return new.numpy_decode.step(tok, kv, ctx)
    finally: cd.EINSUM_MIN = 4096
extra["new step, attention by matmul"] = matmul_always
