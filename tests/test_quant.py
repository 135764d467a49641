"""int8 weights (and float16/bfloat16 packed on CPU): kernels, quantisation, files, the model."""
from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from fakes import run_prompt
from engine import SamplingParams, WeightFileError, load
from engine import cpu_kernels
from engine.dtypes import f32_to_bf16_bits
from engine.quant import SCALE_SUFFIX, attach_scales, quantize
from engine.weights import read_weights, write_pdparams, write_safetensors

INT8_NMSE = 5e-3  # logits vs float32, random weights (measured: tiny ~3e-4, 350M ~1.5e-3)
HALF_NMSE = {"float16": 1e-5, "bfloat16": 1e-3}
IDS = [3, 17, 250, 316, 5, 9, 100, 42, 7, 300, 1, 2, 60, 61, 62, 63, 64, 65, 66, 67]


def nmse(ref, got) -> float:
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    return float(((ref - got) ** 2).sum() / (ref ** 2).sum())


def _stored(kind: str, w: np.ndarray):
    """(kernel data, scale, float32 value it stands for) of a float32 matrix [out, in]."""
    if kind == "int8":
        q, scale = quantize(w.T, 1)  # per row of w
        q = np.ascontiguousarray(q.T)
        return q, scale, q.astype(np.float32) * scale[:, None]
    ones = np.ones(len(w), np.float32)
    if kind == "float16":
        half = w.astype(np.float16)
        return half.view(np.uint16), ones, half.astype(np.float32)
    bits = f32_to_bf16_bits(w)
    return bits.view(np.int16), ones, (bits.astype(np.uint32) << 16).view(np.float32)


@pytest.mark.parametrize("kind", ["int8", "float16", "bfloat16"])
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 7, 16])
@pytest.mark.parametrize("shape", [(64, 48), (1030, 600), (13, 1100)])
def test_kernels_match_numpy(kind, rows, shape):
    rng = np.random.default_rng(rows)
    w = rng.standard_normal(shape).astype(np.float32)
    data, scale, value = _stored(kind, w)
    x = rng.standard_normal((rows, shape[1])).astype(np.float32)
    want = x.astype(np.float64) @ value.T.astype(np.float64)
    got = cpu_kernels.mv(data, scale, x)
    assert got.shape == (rows, shape[0])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    out = np.empty(shape, np.float32)
    np.testing.assert_array_equal(cpu_kernels.dequantize(data, scale, out), value)


@pytest.mark.parametrize("mode", ["int8", "numpy"])
@pytest.mark.parametrize("rows", [1, 5, 40])
def test_prompt_matmul_matches_numpy(monkeypatch, mode, rows):
    from engine import onednn, quant
    from engine.runtime import import_paddle

    if mode == "int8" and not onednn.available():
        pytest.skip("this Paddle build has no oneDNN")
    monkeypatch.setattr(quant, "_GEMM", mode)
    rng = np.random.default_rng(rows)
    w = rng.standard_normal((96, 80)).astype(np.float32)
    data, scale, value = _stored("int8", w)
    matrix = quant.PackedMatrix(data, scale, "int8", quant._Scratch())
    x = rng.standard_normal((1, rows, 80)).astype(np.float32)
    got = matrix.matmul(import_paddle().to_tensor(x)).numpy()
    if mode == "int8":  # each row quantised with its own scale, sums exact
        xs = np.abs(x[0]).max(1, keepdims=True) / 127
        want = np.rint(x[0] / xs) * xs @ value.T
        np.testing.assert_allclose(got[0], want, rtol=1e-4, atol=2e-3)
        alone = matrix.matmul(import_paddle().to_tensor(x[:, -1:])).numpy()
        np.testing.assert_array_equal(alone[0, 0], got[0, -1])  # a row's result: any chunk
    else:
        np.testing.assert_allclose(got[0], x[0] @ value.T, rtol=1e-4, atol=1e-4)


def test_one_input_is_quantised_once_for_several_matrices(monkeypatch):
    """A layer's input goes to several int8 matrices in turn (the q/k/v row blocks, fc_in):
    its quantised rows are reused, and a new input, or new rows in the same buffer, are not
    answered from them."""
    from engine import onednn, quant
    from engine.runtime import import_paddle

    if not onednn.available():
        pytest.skip("this Paddle build has no oneDNN")
    monkeypatch.setattr(quant, "_GEMM", "int8")
    paddle = import_paddle()
    rng = np.random.default_rng(3)
    shared = quant._Scratch()
    stored = [_stored("int8", rng.standard_normal((48, 80)).astype(np.float32)) for _ in range(2)]
    matrices = [quant.PackedMatrix(d, s, "int8", shared) for d, s, _ in stored]
    calls = []
    real = cpu_kernels.quantize_rows
    monkeypatch.setattr(cpu_kernels, "quantize_rows", lambda *a: calls.append(1) or real(*a))

    def alone(i, x):  # the same product with a scratch of its own
        d, s, _ = stored[i]
        return quant.PackedMatrix(d, s, "int8", quant._Scratch()).matmul(x).numpy()

    x = paddle.to_tensor(rng.standard_normal((1, 7, 80)).astype(np.float32))
    y = paddle.to_tensor(rng.standard_normal((1, 7, 80)).astype(np.float32))
    got = [m.matmul(x).numpy() for m in matrices]
    assert len(calls) == 1  # quantised once for both
    other = matrices[0].matmul(y).numpy()
    again = matrices[1].matmul(x).numpy()  # y replaced x: quantised anew
    assert len(calls) == 3
    for i in range(2):
        np.testing.assert_array_equal(got[i], alone(i, x))
    np.testing.assert_array_equal(other, alone(0, y))
    np.testing.assert_array_equal(again, alone(1, x))


def test_float16_kernel_widens_specials_and_subnormals():
    values = np.array([[np.inf, -0.0, 6e-8, -6.1e-5, 65504.0, 1.0]], np.float16)
    out = np.empty(values.shape, np.float32)
    cpu_kernels.dequantize(values.view(np.uint16), np.ones(1, np.float32), out)
    np.testing.assert_array_equal(out, values.astype(np.float32))


def test_quantize_rounds_to_the_nearest_step_and_keeps_zero_channels():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((300, 5)).astype(np.float32)
    w[:, 2] = 0
    q, scale = quantize(w, 1)
    assert q.dtype == np.int8 and scale.shape == (5,) and scale[2] == 0
    assert np.abs(q).max() == 127 and not q[:, 2].any()
    assert np.all(np.abs(q * scale - w) <= scale / 2 + 1e-7)
    rows_q, rows_scale = quantize(w.T, 0)  # per row: the same numbers
    np.testing.assert_array_equal(rows_q, q.T)
    np.testing.assert_array_equal(rows_scale, scale)


@pytest.mark.parametrize("variant,steps", [("tiny", 8), ("350M-mono", 3)])
def test_int8_logits_close_to_float32(variant, steps):
    ids = IDS[:8] if variant == "tiny" else IDS
    got = {}
    for dtype in ("float32", "int8"):
        gen = load(f"random:{variant}", dtype=dtype, prefix_cache_bytes=0)
        logits, cache = run_prompt(gen.model, ids)  # 20 rows: the dequantised-GEMM prompt path
        rows = [logits]
        short, cache_short = run_prompt(gen.model, ids[:4])  # 4 rows: the kernel prompt path
        rows.append(short)
        for token in IDS[:steps]:  # decode steps: the one-row kernel
            rows.append(gen.model.decode(np.asarray([token]), [cache])[0])
        got[dtype] = np.stack(rows)
        del gen
    assert nmse(got["float32"], got["int8"]) <= INT8_NMSE
    assert (got["float32"].argmax(-1) == got["int8"].argmax(-1)).mean() >= 0.5


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_storage_on_cpu_is_close_to_float32(dtype):
    ref = load("random:tiny", prefix_cache_bytes=0).model.logits(IDS)
    gen = load("random:tiny", dtype=dtype, prefix_cache_bytes=0)
    assert type(gen.model.layers[0].fc_in_w).__name__ == "PackedMatrix"  # no per-step widening
    assert nmse(ref, gen.model.logits(IDS)) <= HALF_NMSE[dtype]


def test_several_rows_decode_like_one_row_each():
    gen = load("random:tiny", dtype="int8", prefix_cache_bytes=0)
    _, cache = run_prompt(gen.model, IDS)
    tokens = np.asarray([5, 9, 200, 31, 77])
    caches = [gen.model.fork(cache, cache.length, 1) for _ in tokens]
    batched = gen.model.decode(tokens, caches)
    for row, token in enumerate(tokens):
        _, one = run_prompt(gen.model, IDS)
        alone = gen.model.decode(np.asarray([token]), [one])
        np.testing.assert_allclose(batched[row], alone[0], rtol=1e-4, atol=1e-4)


def test_greedy_tokens_same_with_and_without_the_prefix_cache():
    params = SamplingParams(max_new_tokens=16, ignore_eos=True)
    prompt = "def fibonacci(n):\n    if n < 2:\n        return n\n"
    cached = load("random:tiny", dtype="int8")
    plain = load("random:tiny", dtype="int8", prefix_cache_bytes=0)
    cached.generate(prompt[:-6], params)  # leaves a prefix of the next prompt in the cache
    for _ in range(2):
        assert (cached.generate(prompt, params).choices[0].token_ids
                == plain.generate(prompt, params).choices[0].token_ids)


# ---- files -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def int8_dir(model_dirs, tmp_path_factory):
    from convert.cast import cast_dir

    dst = tmp_path_factory.mktemp("int8") / "m"
    result = cast_dir(model_dirs["safetensors"], dst, "int8")
    assert result.plan.dtype == "int8"
    return dst


def test_cast_int8_round_trip(model_dirs, int8_dir):
    weights = read_weights(int8_dir / "model.safetensors")
    name = "transformer.h.0.mlp.fc_in.weight"
    assert weights[name].dtype == np.int8
    assert weights[name + SCALE_SUFFIX].shape == (weights[name].shape[1],)
    assert weights["transformer.wte.weight" + SCALE_SUFFIX].shape == (
        weights["transformer.wte.weight"].shape[0],)
    assert weights["transformer.h.0.mlp.fc_in.bias"].dtype == np.float32
    # the stored int8 model loads as is, and gives what quantising at load gives
    stored = load(int8_dir, dtype="int8", prefix_cache_bytes=0).model.logits(IDS[:10])
    at_load = load(model_dirs["safetensors"], dtype="int8", prefix_cache_bytes=0).model.logits(IDS[:10])
    np.testing.assert_allclose(stored, at_load, rtol=1e-5, atol=1e-5)
    ref = load(model_dirs["safetensors"], prefix_cache_bytes=0).model.logits(IDS[:10])
    widened = load(int8_dir, dtype="float32", prefix_cache_bytes=0).model.logits(IDS[:10])
    assert nmse(ref, widened) <= INT8_NMSE
    assert nmse(widened, stored) <= INT8_NMSE  # int8 prompts also quantise the activations


def test_cast_from_int8_back_to_float16(int8_dir, tmp_path):
    from convert.cast import cast_dir

    cast_dir(int8_dir, tmp_path / "f16", "float16")
    a = load(int8_dir, dtype="float32", prefix_cache_bytes=0).model.logits(IDS[:6])
    b = load(tmp_path / "f16", dtype="float32", prefix_cache_bytes=0).model.logits(IDS[:6])
    assert nmse(a, b) <= 1e-5


def test_cgconvert_cast_and_inspect_int8(model_dirs, tmp_path):
    from convert.cli import main

    runner = CliRunner()
    out = runner.invoke(main, ["cast", str(model_dirs["modern"]), str(tmp_path / "q"),
                               "--dtype", "int8"])
    assert out.exit_code == 0, out.output
    report = runner.invoke(main, ["inspect", str(tmp_path / "q"), "--json"])
    assert report.exit_code == 0, report.output
    assert "bad-scale" not in report.output and "mixed-dtype" not in report.output


def _broken(int8_dir, tmp_path, change) -> str:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(int8_dir, broken)
    weights = read_weights(broken / "model.safetensors")
    change(weights)
    write_safetensors(broken / "model.safetensors", weights)
    return broken


NAME = "transformer.h.1.attn.out_proj.weight"


@pytest.mark.parametrize("change,words", [
    (lambda w: w.pop(NAME + SCALE_SUFFIX), "is missing"),
    (lambda w: w.__setitem__(NAME + SCALE_SUFFIX, w[NAME + SCALE_SUFFIX][:-1].copy()), "needs float32"),
    (lambda w: w.__setitem__(NAME + SCALE_SUFFIX, w[NAME + SCALE_SUFFIX].astype(np.float16)),
     "needs float32"),
    (lambda w: w[NAME + SCALE_SUFFIX].__setitem__(3, np.nan), "non-finite"),
    (lambda w: w.__setitem__("lm_head.weight" + "x" + SCALE_SUFFIX, np.ones(3, np.float32)),
     "no int8 tensor"),
], ids=["missing", "short", "float16", "nan", "orphan"])
def test_broken_scale_is_one_clear_error(int8_dir, tmp_path, change, words):
    broken = _broken(int8_dir, tmp_path, change)
    with pytest.raises(WeightFileError) as info:
        load(broken, dtype="int8")
    message = str(info.value)
    assert words in message and "\n" not in message and str(broken) in message


def test_int8_matrix_of_the_wrong_shape_names_the_tensor(int8_dir, tmp_path):
    def shrink(w):
        w[NAME] = np.ascontiguousarray(w[NAME][:-1])
        w[NAME + SCALE_SUFFIX] = w[NAME + SCALE_SUFFIX]
    broken = _broken(int8_dir, tmp_path, shrink)
    with pytest.raises(Exception) as info:
        load(broken, dtype="int8")
    assert NAME in str(info.value) and "\n" not in str(info.value)


def test_attach_scales_reads_pdparams_too(tmp_path):
    q, scale = quantize(np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32), 1)
    write_pdparams(tmp_path / "w.pdparams", {"lm_head.weight": q, "lm_head.weight.scale": scale})
    got = attach_scales(read_weights(tmp_path / "w.pdparams"), tmp_path / "w.pdparams")
    np.testing.assert_allclose(np.asarray(got["lm_head.weight"]), q * scale)


def test_int8_needs_the_fast_impl():
    from engine import OptionError

    with pytest.raises(OptionError, match="impl fast"):
        load("random:tiny", dtype="int8", impl="reference")


def test_gpu_int8_matrix_math_runs_on_paddle_tensors():
    """The GPU path's Paddle calls (dequantise per call, gather for the embedding), run here on
    CPU tensors: no GPU on this project's machines."""
    from engine.quant import DeviceInt8Matrix
    from engine.runtime import import_paddle

    paddle = import_paddle()
    rng = np.random.default_rng(3)
    data, scale, value = _stored("int8", rng.standard_normal((24, 16)).astype(np.float32))
    matrix = DeviceInt8Matrix(paddle.to_tensor(data), paddle.to_tensor(scale), "float32")[4:20]
    x = rng.standard_normal((1, 3, 16)).astype(np.float32)
    np.testing.assert_allclose(matrix.matmul(paddle.to_tensor(x)).numpy()[0], x[0] @ value[4:20].T,
                               rtol=1e-5, atol=1e-5)
    ids = paddle.to_tensor(np.array([[2, 0, 15]], np.int64))
    np.testing.assert_allclose(matrix.embed(ids).numpy()[0], value[4:20][[2, 0, 15]], rtol=1e-6)
