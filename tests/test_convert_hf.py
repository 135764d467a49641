"""cgconvert from-hf: tiny checkpoints written by transformers itself, converted and compared."""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import builders
from convert.cli import main
from convert.errors import OutputError, SourceError
from convert.hf import convert_hf
from convert.torch_pickle import read_torch_bin
from engine.errors import ConfigError, WeightFileError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 330  # embedding rows; the tokenizer defines 323 ids
LAYOUTS = {  # name -> save_pretrained arguments
    "bin": dict(safe_serialization=False),
    "bin-sharded": dict(safe_serialization=False, max_shard_size="100KB"),
    "safetensors": dict(safe_serialization=True),
    "safetensors-sharded": dict(safe_serialization=True, max_shard_size="100KB"),
}


def _hf_tokenizer(model_dir: Path, scratch: Path) -> None:
    """CodeGen tokenizer files as transformers writes them (added_tokens_decoder and all)."""
    builders.write_tokenizer(scratch)
    tok = transformers.CodeGenTokenizer(str(scratch / "vocab.json"), str(scratch / "merges.txt"))
    tok.add_tokens(list(json.loads((scratch / "added_tokens.json").read_text())))
    tok.save_pretrained(str(model_dir))


def _hf_model():
    """A tiny transformers CodeGen, seeded, with non-trivial layer norms and biases (so a
    wrong mapping shows)."""
    torch.manual_seed(0)
    config = transformers.CodeGenConfig(vocab_size=VOCAB, n_positions=128, n_ctx=128, n_embd=64,
                                        n_layer=2, n_head=4, rotary_dim=8, bos_token_id=316,
                                        eos_token_id=316, pad_token_id=316)
    model = transformers.CodeGenForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="session")
def hf_dirs(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("hf")
    model = _hf_model()
    dirs = {}
    for name, kwargs in LAYOUTS.items():
        dirs[name] = base / name
        model.save_pretrained(str(dirs[name]), **kwargs)
        _hf_tokenizer(dirs[name], base / "scratch")
    return dirs


@pytest.fixture(scope="session")
def reference_logits(hf_dirs):
    ids = [int(i) for i in np.random.default_rng(1).integers(0, 323, size=24)]
    model = transformers.CodeGenForCausalLM.from_pretrained(str(hf_dirs["safetensors"])).eval()
    with torch.no_grad():
        return ids, model(torch.tensor([ids])).logits[0].numpy()


def _digest(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


def _nmse(ref: np.ndarray, got: np.ndarray) -> float:
    return float(np.sum((got.astype(np.float64) - ref) ** 2) / np.sum(ref.astype(np.float64) ** 2))


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_convert_matches_transformers(hf_dirs, reference_logits, layout, tmp_path, no_network):
    from engine import load

    src = hf_dirs[layout]
    before = _digest(src)
    dst = tmp_path / "out"
    result = convert_hf(src, dst, fmt="pdparams" if "bin" in layout else "safetensors")
    assert _digest(src) == before  # the source is never modified
    assert sorted(p.name for p in dst.iterdir()) == sorted([
        "added_tokens.json", "config.json", "merges.txt", "model_config.json",
        result.weight_file.name, "special_tokens_map.json", "tokenizer_config.json", "vocab.json"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left over
    ids, ref = reference_logits
    got = load(dst).model.logits(ids)
    assert got.shape == ref.shape
    assert _nmse(ref, got) <= 1e-8
    assert np.array_equal(np.argmax(got, -1), np.argmax(ref, -1))
    assert result.plan.param_count == sum(p.numel() for p in transformers.CodeGenForCausalLM(
        transformers.CodeGenConfig.from_pretrained(str(src))).parameters())


def test_converted_tokenizer_reads_like_paddlenlp_native(hf_dirs, tmp_path):
    from engine.tokenizer import load_tokenizer

    dst = tmp_path / "out"
    convert_hf(hf_dirs["safetensors"], dst)
    native = tmp_path / "native"
    builders.write_tokenizer(native)
    text = "def add(a, b):\n        return a + b  <|endoftext|>"
    got, want = load_tokenizer(dst), load_tokenizer(native)
    assert got.usable_ids() == want.usable_ids() == 323
    assert got.encode(text) == want.encode(text)
    assert json.loads((dst / "tokenizer_config.json").read_text())["tokenizer_class"] == "CodeGenTokenizer"


def test_config_files_flat_and_legacy(hf_dirs, tmp_path):
    from engine.config import flatten_legacy_config

    dst = tmp_path / "out"
    convert_hf(hf_dirs["bin"], dst, dtype="float16")
    flat = json.loads((dst / "config.json").read_text())
    legacy = json.loads((dst / "model_config.json").read_text())
    assert flat["vocab_size"] == VOCAB and flat["eos_token_id"] == 316 and flat["dtype"] == "float16"
    assert flat["architectures"] == ["CodeGenForCausalLM"] and flat["model_type"] == "codegen"
    again = flatten_legacy_config(legacy)
    assert {k: again[k] for k in ("n_layer", "n_embd", "n_head", "rotary_dim", "vocab_size",
                                  "eos_token_id")} == {k: flat[k] for k in (
                                      "n_layer", "n_embd", "n_head", "rotary_dim", "vocab_size",
                                      "eos_token_id")}


@pytest.mark.parametrize("dtype,np_dtype,limit", [("float16", "float16", 1e-4),
                                                  ("bfloat16", "bfloat16", 1e-2)])
def test_reduced_precision(hf_dirs, reference_logits, tmp_path, dtype, np_dtype, limit):
    from engine import load
    from engine.weights import describe_weights

    dst = tmp_path / "out"
    result = convert_hf(hf_dirs["bin"], dst, dtype=dtype, fmt="safetensors")
    infos = describe_weights(result.weight_file)
    assert {i.dtype for i in infos.values()} == {np_dtype}
    ids, ref = reference_logits
    nmse = _nmse(ref, load(dst).model.logits(ids))
    assert 0 < nmse <= limit


def test_from_hf_int8_against_transformers(hf_dirs, reference_logits, tmp_path):
    from engine import load
    from engine.weights import describe_weights

    result = convert_hf(hf_dirs["bin"], tmp_path / "q", dtype="int8", fmt="safetensors")
    infos = describe_weights(result.weight_file)
    assert infos["transformer.h.0.attn.qkv_proj.weight"].dtype == "int8"
    assert "transformer.h.0.attn.qkv_proj.weight.scale" in infos
    ids, ref = reference_logits
    nmse = _nmse(ref, load(tmp_path / "q", dtype="int8").model.logits(ids))
    assert 0 < nmse <= 5e-3  # int8 weights (and prompt activations); measured ~1e-4


def test_cli_verify_reports_agreement(hf_dirs, tmp_path):
    dst = tmp_path / "out"
    res = CliRunner().invoke(main, ["from-hf", str(hf_dirs["bin-sharded"]), str(dst), "--verify"])
    assert res.exit_code == 0, res.output
    line = [x for x in res.output.splitlines() if x.startswith("logits over")][0]
    nmse = float(line.split("NMSE ")[1].split(",")[0])
    assert nmse <= 1e-8 and "top-1 agreement 100.0%" in line


def test_old_mask_buffers_dropped(hf_dirs, reference_logits, tmp_path):
    from engine import load
    from engine.weights import read_safetensors, write_safetensors

    src = tmp_path / "src"
    src.mkdir()
    for p in hf_dirs["safetensors"].iterdir():
        (src / p.name).write_bytes(p.read_bytes())
    state = read_safetensors(src / "model.safetensors")
    state["transformer.h.0.attn.causal_mask"] = np.tril(np.ones((1, 1, 128, 128), bool))
    state["transformer.h.0.attn.masked_bias"] = np.array(-1e9, np.float32)
    write_safetensors(src / "model.safetensors", state)
    result = convert_hf(src, tmp_path / "out")
    assert result.plan.dropped == ["transformer.h.0.attn.causal_mask",
                                   "transformer.h.0.attn.masked_bias"]
    ids, ref = reference_logits
    assert _nmse(ref, load(tmp_path / "out").model.logits(ids)) <= 1e-8


# ------------------------------------------------------------------ the torch-free .bin reader

def test_bin_reader_strided_bf16_parameter(tmp_path):
    x = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    path = tmp_path / "odd.bin"
    torch.save({"t": x.t(), "half": x.half()[1:], "bf": x.bfloat16(),
                "param": torch.nn.Parameter(torch.ones(3)), "big": x.double()}, str(path))
    got = read_torch_bin(path)
    assert got["t"].shape == (6, 4)
    np.testing.assert_array_equal(got["t"].load(), x.t().numpy())
    np.testing.assert_array_equal(got["half"].load(), x.half()[1:].numpy())
    assert got["bf"].dtype == "bfloat16"
    np.testing.assert_array_equal(got["bf"].load(), x.bfloat16().view(torch.int16).numpy().view(np.uint16))
    np.testing.assert_array_equal(got["param"].load(), np.ones(3, np.float32))
    assert got["big"].load().dtype == np.float64


def _evil_zip(path: Path, payload: object) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps(payload, protocol=2))
        z.writestr("archive/version", "3\n")


class _RunsCommand:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_bin_refused_and_never_run(hf_dirs, tmp_path):
    marker = tmp_path / "PWNED"
    src = tmp_path / "src"
    src.mkdir()
    for p in hf_dirs["bin"].iterdir():
        (src / p.name).write_bytes(p.read_bytes())
    _evil_zip(src / "pytorch_model.bin", {"transformer.wte.weight": _RunsCommand(marker)})
    with pytest.raises(WeightFileError, match="refusing to load.*(posix|os).system"):
        convert_hf(src, tmp_path / "out")
    res = CliRunner().invoke(main, ["from-hf", str(src), str(tmp_path / "out2")])
    assert res.exit_code == 1 and "refusing to load" in res.output
    assert not marker.exists()
    assert not (tmp_path / "out").exists() and not (tmp_path / "out2").exists()


@pytest.mark.parametrize("damage,error,match", [
    ("truncate", WeightFileError, "not a PyTorch zip|truncated|corrupt"),
    ("legacy", WeightFileError, "old .*PyTorch"),
    ("flip-byte", WeightFileError, "CRC check"),
    ("empty", WeightFileError, "empty"),
    ("missing-shard", SourceError, "shard missing"),
    ("no-weights", SourceError, "no Hugging Face weights"),
    ("other-size", ConfigError, "has shape"),
    ("small-vocab", ConfigError, "tokenizer defines 323 ids"),
])
def test_bad_sources(hf_dirs, tmp_path, damage, error, match):
    layout = "bin-sharded" if damage == "missing-shard" else "bin"
    src = tmp_path / "src"
    src.mkdir()
    for p in hf_dirs[layout].iterdir():
        (src / p.name).write_bytes(p.read_bytes())
    weights = src / "pytorch_model.bin"
    cfg = json.loads((src / "config.json").read_text())
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "flip-byte":  # inside wte's storage, which follows data.pkl's zip entry
        raw = bytearray(weights.read_bytes())
        raw[raw.index(b"data/0") + 4000] ^= 0xFF
        weights.write_bytes(bytes(raw))
    elif damage == "legacy":
        weights.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    elif damage == "empty":
        weights.write_bytes(b"")
    elif damage == "missing-shard":
        sorted(src.glob("pytorch_model-*.bin"))[1].unlink()
    elif damage == "no-weights":
        weights.rename(src / "pytorch_model.bin.part")
    elif damage == "other-size":
        cfg["n_embd"] = 128
        (src / "config.json").write_text(json.dumps(cfg))
    elif damage == "small-vocab":
        cfg["vocab_size"] = 320
        (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(error, match=match):
        convert_hf(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_destination_exists_refused(hf_dirs, tmp_path):
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="already exists"):
        convert_hf(hf_dirs["bin"], dst)
    assert (dst / "keep.txt").read_text() == "mine"


def test_unwritable_parent_is_one_line(hf_dirs, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions")
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        res = CliRunner().invoke(main, ["from-hf", str(hf_dirs["bin"]), str(parent / "out")])
    finally:
        parent.chmod(0o755)
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1


def test_write_failure_leaves_nothing(hf_dirs, tmp_path, monkeypatch):
    import convert.output as output

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(output, "write_safetensors_stream", full_disk)
    res = CliRunner().invoke(main, ["from-hf", str(hf_dirs["bin"]), str(tmp_path / "out")])
    assert res.exit_code == 1
    assert "No space left on device" in res.output and len(res.output.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_bin_reader_refuses_out_of_range_tensor(tmp_path):
    """A tensor whose size/stride reach past its storage is refused (no out-of-bounds read)."""
    path = tmp_path / "x.bin"
    torch.save({"w": torch.zeros(4)}, str(path))
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    pkl_name = [n for n in members if n.endswith("data.pkl")][0]
    members[pkl_name] = members[pkl_name].replace(b"K\x04\x85", b"K\x40\x85", 1)  # size (4,) -> (64,)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for n, data in members.items():
            z.writestr(n, data)
    path.write_bytes(buf.getvalue())
    with pytest.raises(WeightFileError, match="refusing"):
        read_torch_bin(path)
