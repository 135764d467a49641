"""The numpy decode step's pieces (engine/cpu_decode.py) and the weight layout it reads."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from engine import load
from engine.cpu_decode import _mv, readonly_view
from fakes import decode_rows


def _softmax_attention(q, keys, values):
    """The plain per-query formula, in float64."""
    q, keys, values = (a.astype(np.float64) for a in (q, keys, values))
    out = []
    for i in range(len(q)):
        s = keys[i] @ q[i]
        p = np.exp(s - s.max())
        out.append((p / p.sum()) @ values[i])
    return np.stack(out)


@pytest.mark.parametrize("rows", [1, 3, 6])  # one GEMV; the several-row kernel, odd and even
def test_matrix_vector_product_of_an_out_in_matrix(rows):
    rng = np.random.default_rng(rows)
    w = rng.standard_normal((24, 40), dtype=np.float32)  # [out, in]
    x = rng.standard_normal((rows, 40), dtype=np.float32)
    got = _mv(w, x)
    assert got.shape == (rows, 24)
    np.testing.assert_allclose(got, x.astype(np.float64) @ w.T.astype(np.float64),
                               rtol=1e-5, atol=1e-5)


def test_projections_are_row_blocks_of_one_matrix():
    """q, k (three row blocks) and v are views of one [out, in] matrix: no weight held twice,
    and the numpy step's one product covers what Paddle's four prompt products read."""
    model = load("random:tiny", prefix_cache_bytes=0).model
    for layer in model.layers:
        qkv = layer.qkv_w
        rows = 0
        for part in layer.parts:
            if part is None:
                continue
            assert part.data_ptr() == qkv.data_ptr() + rows * qkv.shape[1] * 4
            rows += part.shape[0]
        assert rows == qkv.shape[0] == 3 * model.config.arch.n_embd
        embd, inner = model.config.arch.n_embd, model.config.arch.inner_dim
        assert tuple(layer.fc_in_w.shape) == (inner, embd)  # every matrix [out, in]
        assert tuple(layer.fc_out_w.shape) == (embd, inner)
    assert tuple(model.lm_w.shape) == (model.config.arch.vocab_size, embd)
    assert model.param_count() == model.config.arch.param_count


@pytest.mark.parametrize("rows", [1, 2, 3])
def test_numpy_steps_equal_paddle_steps(rows):
    """The whole step, one row or several (n > 1 choices), against Paddle's step on the same
    model and prompt."""
    model = load("random:tiny", prefix_cache_bytes=0).model
    prompt = [(5 * i) % 256 for i in range(70)]
    outs = []
    for numpy_step in (True, False):
        kept = model.numpy_decode
        if not numpy_step:
            model.numpy_decode = None
        try:
            outs.append(decode_rows(model, prompt, 5, rows)[0])
        finally:
            model.numpy_decode = kept
    fast, slow = outs
    assert fast.shape == (5, rows, model.config.arch.vocab_size)
    assert float(((slow - fast) ** 2).mean() / (slow ** 2).mean()) <= 1e-10
    assert np.array_equal(fast.argmax(-1), slow.argmax(-1))


def test_decoder_reads_the_model_memory():
    model = load("random:tiny", prefix_cache_bytes=0).model
    views = model.numpy_decode.layers[0]
    qkv = readonly_view(model.layers[0].qkv_w)
    assert any(v.ctypes.data == qkv.ctypes.data and v.shape == qkv.shape for v in views)


@pytest.mark.parametrize("seen", [1, 7, 300])
def test_compiled_attention_of_one_row_equals_the_formula(seen):
    from engine.cpu_attention import attend

    rng = np.random.default_rng(seen)
    heads, capacity, dim = 4, 320, 16
    q = rng.standard_normal((heads, dim), dtype=np.float32)
    keys = rng.standard_normal((heads, capacity, dim), dtype=np.float32)
    values = rng.standard_normal((heads, capacity, dim), dtype=np.float32)
    want = _softmax_attention(q, keys[:, :seen], values[:, :seen])
    np.testing.assert_allclose(attend(q, keys, values, seen), want, rtol=1e-4, atol=1e-5)


WARM_CHECK = """
import numpy as np
from engine import load
from engine import cpu_attention as ca, cpu_kernels as ck
from engine.fast_model import warm_kernels

warm_kernels()
kernels = [ck._mv_one, ck._mv_pairs, ca._attend_heads, ca._prompt_attend]
before = [list(k.signatures) for k in kernels]
model = load("random:tiny", prefix_cache_bytes=0).model
for rows in (1, 3):
    caches = []
    for r in range(rows):
        cache = model.new_cache()
        model.reserve(cache, 40)
        model.prefill(cache, list(range(1, 12 + r)))
        model.prefill(cache, [7])  # a one-token chunk
        caches.append(cache)
    model.decode(np.arange(rows) + 3, caches)
new = [str(s) for k, b in zip(kernels, before) for s in k.signatures if s not in b]
print("NEW", new)
"""


def test_loading_compiles_every_kernel_a_request_uses():
    """A model on the CPU host path compiles its kernels while it loads (warm_kernels), with the
    argument types prefill and decode pass: the first request compiles nothing more (in a fresh
    process, where no earlier test compiled them)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", WARM_CHECK], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "NEW []" in done.stdout, done.stdout[-2000:]


def test_kernel_cache_follows_every_kernel_source(tmp_path):
    """The compiled kernels are cached under a directory named by a hash of every kernel
    source, so an edit to cpu_vector.py (inlined into cpu_attention's cached kernel, whose own
    file numba's cache watches) gives a new directory; the user's NUMBA_CACHE_DIR wins."""
    import shutil
    import subprocess
    import sys

    from engine import cpu_kernels

    copy = tmp_path / "engine"
    copy.mkdir()
    for name in cpu_kernels.KERNEL_SOURCES:
        shutil.copy(Path(cpu_kernels.__file__).with_name(name), copy / name)
    before = cpu_kernels.kernel_cache_dir(str(copy))
    assert before == cpu_kernels.kernel_cache_dir()  # the same sources, the same directory
    with open(copy / "cpu_vector.py", "a") as f:
        f.write("\n# an edit\n")
    assert cpu_kernels.kernel_cache_dir(str(copy)) != before

    check = ("from engine import cpu_attention as a, cpu_kernels as k; "
             "print(a._prompt_attend._cache._cache_path); print(k.kernel_cache_dir())")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    xdg, mine = tmp_path / "xdg", tmp_path / "mine"
    for extra, kind in (({"XDG_CACHE_HOME": str(xdg)}, "default"),
                        ({"XDG_CACHE_HOME": str(xdg), "NUMBA_CACHE_DIR": str(mine)}, "user's")):
        done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                              timeout=120, env={**env, **extra})
        assert done.returncode == 0, done.stderr[-2000:]
        path, default = done.stdout.split()
        assert Path(default).parent == xdg / "codegen-workbench" / "numba"
        assert Path(path).is_relative_to(default if kind == "default" else mine), (kind, path)


def test_kernels_run_on_tbb_without_paddle_imported_first():
    """cpu_kernels loads Paddle's own libtbb before numba picks its threading layer (its
    OpenMP layer beside Paddle's measured 4-5x slower decode steps): in a fresh process that
    imports nothing else first, the first parallel kernel runs on TBB."""
    import subprocess
    import sys

    check = ("import numpy as np; from engine import cpu_kernels as k; import numba; "
             "k.rows_times(np.ones((4, 8), np.float32), np.ones((2, 8), np.float32)); "
             "print(numba.threading_layer())")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "tbb"
