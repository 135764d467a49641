"""cgconvert cast: float16/bfloat16 copies that load in the engine and stay close to the source."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from convert.cast import cast_dir
from convert.cli import main
from convert.tensors import bf16_bits_to_f32, f32_to_bf16_bits
from convert.verify import compare_logits
from engine.weights import describe_weights, read_pdparams, write_pdparams

IDS = [3, 17, 250, 316, 5, 9, 100, 42, 7, 300, 1, 2]


def _digest(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


@pytest.mark.parametrize("layout,dtype,fmt,limit", [
    ("modern", "float16", None, 1e-4),
    ("safetensors", "bfloat16", None, 1e-2),
    ("legacy", "bfloat16", "safetensors", 1e-2),
    ("modern", "float16", "safetensors", 1e-4),
])
def test_cast_loads_and_stays_close(model_dirs, tiny_gen, tmp_path, layout, dtype, fmt, limit):
    from engine import load

    src = model_dirs[layout]
    before = _digest(src)
    dst = tmp_path / "out"
    result = cast_dir(src, dst, dtype, fmt)
    assert _digest(src) == before
    expected_file = {"safetensors": "model.safetensors", "pdparams": "model_state.pdparams"}[
        fmt or ("safetensors" if layout == "safetensors" else "pdparams")]
    assert result.weight_file == dst / expected_file
    assert {i.dtype for i in describe_weights(result.weight_file).values()} == {dtype}
    src_bytes = sum(p.stat().st_size for p in src.glob("model*.*") if "config" not in p.name)
    assert result.weight_file.stat().st_size < 0.55 * src_bytes
    assert json.loads((dst / "config.json").read_text())["dtype"] == dtype
    ref = tiny_gen.model.logits(IDS)  # all three layouts hold the same weights
    got = load(dst).model.logits(IDS)
    agreement = compare_logits(ref, got, limit)
    assert 0 < agreement.nmse <= limit and agreement.top1_agreement >= 0.9


def test_cli_reports_nmse(model_dirs, tmp_path):
    res = CliRunner().invoke(main, ["cast", str(model_dirs["modern"]), str(tmp_path / "o"),
                                    "--dtype", "float16"])
    assert res.exit_code == 0, res.output
    line = [x for x in res.output.splitlines() if x.startswith("logits over")][0]
    assert float(line.split("NMSE ")[1].split(",")[0]) < 1e-4 and line.endswith("ok")
    assert "float32 -> float16" in res.output


def test_float16_overflow_warned(model_dirs, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(model_dirs["modern"], src)
    state = read_pdparams(src / "model_state.pdparams")
    state["transformer.h.0.mlp.fc_in.bias"][:3] = 1e6
    write_pdparams(src / "model_state.pdparams", state)
    res = CliRunner().invoke(main, ["cast", str(src), str(tmp_path / "o"), "--dtype", "float16",
                                    "--no-verify"])
    assert res.exit_code == 0 and "3 value(s) overflowed float16" in res.output


def test_cast_needs_complete_source(model_dirs, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(model_dirs["modern"], src)
    (src / "vocab.json").unlink()
    res = CliRunner().invoke(main, ["cast", str(src), str(tmp_path / "o"), "--dtype", "float16"])
    assert res.exit_code == 1 and "vocab.json" in res.output
    assert not (tmp_path / "o").exists()
    assert CliRunner().invoke(main, ["cast", str(src), str(tmp_path / "o"),
                                     "--dtype", "int4"]).exit_code == 2


def test_bf16_rounding_matches_torch():
    torch = pytest.importorskip("torch")
    x = np.concatenate([np.random.default_rng(0).standard_normal(1000).astype(np.float32) * 100,
                        np.array([0.0, -0.0, np.inf, -np.inf, 3.4e38, 1e-40], np.float32)])
    want = torch.from_numpy(x).bfloat16().view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(f32_to_bf16_bits(x), want)
    assert np.isnan(bf16_bits_to_f32(f32_to_bf16_bits(np.array([np.nan], np.float32))))[0]


@pytest.mark.parametrize("shape", [(130, 70), (1, 9), (9, 1), (0, 4), (64, 64), (200, 1000)])
def test_transpose2d(shape):
    from convert.tensors import transpose2d

    a = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    out = transpose2d(a)
    assert out.flags.c_contiguous and np.array_equal(out, a.T)
    bits = f32_to_bf16_bits(a)
    np.testing.assert_array_equal(transpose2d(bits), bits.T)


def test_pdparams_written_after_dill_is_imported(model_dirs, tmp_path):
    """PaddleNLP imports dill, which swaps entries of pickle's dispatch table for its own; a
    pdparams written through them named dill's functions and could not be read back.  In a
    fresh process, so that dill comes before the writer module."""
    import subprocess
    import sys

    pytest.importorskip("dill")
    root = Path(__file__).resolve().parent.parent
    code = ("import dill, sys; from pathlib import Path; from convert.cast import cast_dir; "
            "from engine.weights import read_pdparams; "
            "cast_dir(Path(sys.argv[1]), Path(sys.argv[2]), 'float16', 'pdparams'); "
            "read_pdparams(Path(sys.argv[2]) / 'model_state.pdparams')")
    done = subprocess.run([sys.executable, "-c", code, str(model_dirs["modern"]),
                           str(tmp_path / "out")], cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-500:]
