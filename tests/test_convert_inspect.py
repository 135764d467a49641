"""cgconvert inspect and config: complete directories pass, each kind of damage is named with its fix."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import builders
from convert.cli import main
from convert.configs import write_config
from convert.inspect import inspect_dir
from engine.errors import ConfigError
from engine.variants import ARCHITECTURES
from engine.weights import read_pdparams, write_pdparams, write_safetensors


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _digest(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


def _run(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.mark.parametrize("layout", ["modern", "legacy", "safetensors"])
def test_good_directories(model_dirs, layout):
    before = _digest(model_dirs[layout])
    res = _run("inspect", str(model_dirs[layout]), "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["ok"] is True and report["problems"] == []
    w = report["weights"]
    assert w["tensors"] == 5 + 8 * 2 and w["dtype"] == "float32"
    assert w["param_count"] == sum(a.size for a in builders.random_state(
        builders.tiny_config(323, 316)).values())
    assert report["tokenizer_ids"] == report["embedding_rows"] == 323
    assert _digest(model_dirs[layout]) == before  # inspect never modifies
    if layout == "legacy":
        assert any("cgconvert config" in n for n in report["notes"])


def test_text_table_and_hashes(model_dirs):
    res = _run("inspect", str(model_dirs["modern"]), "--hash")
    assert res.exit_code == 0
    digest = hashlib.sha256((model_dirs["modern"] / "vocab.json").read_bytes()).hexdigest()
    assert digest in res.output and "result: OK" in res.output


def test_usage_error_exit_2(tmp_path):
    assert _run("inspect", str(tmp_path / "nope")).exit_code == 2
    assert _run("inspect").exit_code == 2


def _evil_pdparams(path: Path, marker: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    path.write_bytes(pickle.dumps({"transformer.wte.weight": Evil()}, protocol=4))


def _damage(d: Path, kind: str, tmp_path: Path) -> None:
    weights = d / "model_state.pdparams"
    if kind == "missing-merges":
        (d / "merges.txt").unlink()
    elif kind == "leftover-part":
        (d / "model_state.pdparams.part").write_bytes(b"xx")
    elif kind == "leftover-tmp":
        (d / "model_state.pdparams_tmp").write_bytes(b"xx")
    elif kind == "empty-file":
        (d / "special_tokens_map.json").write_bytes(b"")
    elif kind == "bad-json":
        (d / "tokenizer_config.json").write_text('{"tokenizer_class": ')
    elif kind == "truncated-weights":
        weights.write_bytes(weights.read_bytes()[:-100])
    elif kind == "malicious-weights":
        _evil_pdparams(weights, tmp_path / "PWNED")
    elif kind == "no-weights":
        weights.unlink()
    elif kind == "hf-layout":
        state = read_pdparams(weights)
        for n in list(state):
            if n.endswith(("qkv_proj.weight", "out_proj.weight", "fc_in.weight", "fc_out.weight")) \
                    or n == "lm_head.weight":
                state[n] = np.ascontiguousarray(state[n].T)
        write_pdparams(weights, state)
    elif kind == "missing-tensor":
        state = read_pdparams(weights)
        del state["transformer.h.1.mlp.fc_out.bias"]
        write_pdparams(weights, state)
    elif kind == "wrong-size-config":
        cfg = json.loads((d / "config.json").read_text())
        cfg["n_layer"] = 3
        (d / "config.json").write_text(json.dumps(cfg))
    elif kind == "bad-config":
        cfg = json.loads((d / "config.json").read_text())
        cfg["n_head"] = 6
        (d / "config.json").write_text(json.dumps(cfg))
    elif kind == "mixed-dtype":
        state = read_pdparams(weights)
        state["transformer.ln_f.bias"] = state["transformer.ln_f.bias"].astype(np.float16)
        write_pdparams(weights, state)
    elif kind == "tokenizer-too-big":
        added = json.loads((d / "added_tokens.json").read_text())
        added["\t\t\t"] = 400
        (d / "added_tokens.json").write_text(json.dumps(added))
    elif kind == "config-mismatch":
        (d / "model_config.json").write_text(json.dumps(builders.legacy_config(
            {**json.loads((d / "config.json").read_text()), "n_layer": 4})))


DAMAGE = {  # kind -> (problem code, a word of the fix)
    "missing-merges": ("missing-file", "copy merges.txt"),
    "leftover-part": ("leftover", "delete it"),
    "leftover-tmp": ("leftover", "delete it"),
    "empty-file": ("empty-file", "copy it again"),
    "bad-json": ("bad-json", "copy it again"),
    "truncated-weights": ("bad-weights", "copy the weight file again"),
    "malicious-weights": ("bad-weights", "never load it"),
    "no-weights": ("missing-file", "copy the model's weights"),
    "hf-layout": ("hf-layout", "cgconvert from-hf"),
    "missing-tensor": ("missing-tensor", "copy it again"),
    "wrong-size-config": ("missing-tensor", "copy it again"),
    "bad-config": ("bad-config", "config"),
    "mixed-dtype": ("mixed-dtype", "cgconvert cast"),
    "tokenizer-too-big": ("tokenizer-size", "matching vocab.json"),
    "config-mismatch": ("config-mismatch", "cgconvert config DIR --force"),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_problems_named_with_fix(model_dirs, tmp_path, kind):
    d = _copy(model_dirs["modern"], tmp_path / "m")
    _damage(d, kind, tmp_path)
    res = _run("inspect", str(d), "--json")
    assert res.exit_code == 1, res.output
    report = json.loads(res.output)
    code, fix = DAMAGE[kind]
    hits = [p for p in report["problems"] if p["code"] == code]
    assert hits, report["problems"]
    assert any(fix in p["fix"] for p in hits), hits
    assert not (tmp_path / "PWNED").exists()


def test_mask_buffers_tolerated(model_dirs, tmp_path):
    d = _copy(model_dirs["safetensors"], tmp_path / "m")
    from engine.weights import read_safetensors

    state = read_safetensors(d / "model.safetensors")
    for i in range(2):
        state[f"transformer.h.{i}.attn.causal_mask"] = np.ones((1, 1, 8, 8), np.float32)
    write_safetensors(d / "model.safetensors", state)
    report = inspect_dir(d)
    assert report.ok and any("mask buffer" in n for n in report.notes)
    assert report.weights.tensors == 21


def test_identifies_official_variant_from_config_and_directory_name(tmp_path):
    d = tmp_path / "codegen-350M-mono"
    builders.write_tokenizer(d)
    (d / "config.json").write_text(json.dumps(ARCHITECTURES["350M"].config_dict()))
    report = inspect_dir(d)
    assert (report.size, report.data, report.variant) == ("350M", "mono", "codegen-350M-mono")
    assert any(p.code == "missing-file" and "weights" in p.fix for p in report.problems)


def test_weights_of_another_size_named(tmp_path):
    """A config of the 350M model next to 2-layer 1024-wide weights: the config is for another size."""
    d = tmp_path / "m"
    builders.write_tokenizer(d)
    (d / "config.json").write_text(json.dumps(ARCHITECTURES["350M"].config_dict()))
    write_safetensors(d / "model.safetensors", {  # header-only check: shapes matter, not values
        "transformer.wte.weight": np.zeros((51200, 2560), np.float16),
        **{f"transformer.h.{i}.ln_1.weight": np.zeros(2560, np.float16) for i in range(32)}})
    report = inspect_dir(d)
    assert any(p.code == "config-mismatch" and "2B" in p.message for p in report.problems)


def test_manifest_hash_mismatch(model_dirs, tmp_path):
    d = _copy(model_dirs["modern"], tmp_path / "m")
    files = {p.name: {"bytes": p.stat().st_size,
                      "sha256": hashlib.sha256(p.read_bytes()).hexdigest()} for p in d.iterdir()}
    (d / "manifest.json").write_text(json.dumps({"variant": "codegen-350M-multi", "files": files}))
    assert inspect_dir(d, hash_files=True).ok
    vocab = d / "vocab.json"
    vocab.write_text(vocab.read_text().replace('"!": 0', '"?": 0'))  # same size, other bytes
    assert inspect_dir(d).ok  # sizes only without --hash
    res = _run("inspect", str(d), "--hash", "--json")
    assert res.exit_code == 1
    report = json.loads(res.output)
    assert [p["code"] for p in report["problems"]] == ["hash-mismatch"]
    assert report["data"] == "multi"


# ------------------------------------------------------------------ cgconvert config

def test_config_from_legacy(model_dirs, tmp_path):
    d = _copy(model_dirs["legacy"], tmp_path / "m")
    legacy = json.loads((d / "model_config.json").read_text())
    legacy["init_args"][0]["eos_token_id"] = 2  # old files say 2: CodeGen's end of text is 50256
    legacy["init_args"][0]["pad_token_id"] = 2
    legacy["init_args"][0]["vocab_size"] = 51200
    (d / "model_config.json").write_text(json.dumps(legacy))
    before = _digest(d)
    res = _run("config", str(d))
    assert res.exit_code == 0 and "written" in res.output
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["eos_token_id"] == cfg["pad_token_id"] == 50256
    assert cfg["architectures"] == ["CodeGenForCausalLM"] and "init_args" not in cfg
    assert cfg["n_layer"] == 2 and "init_class" not in cfg
    after = _digest(d)
    assert {k: v for k, v in after.items() if k != "config.json"} == before  # nothing else touched
    assert sorted(after) == sorted([*before, "config.json"])
    assert "unchanged" in _run("config", str(d)).output


def test_config_refuses_to_replace_different_without_force(model_dirs, tmp_path):
    d = _copy(model_dirs["legacy"], tmp_path / "m")
    (d / "config.json").write_text('{"n_layer": 99}')
    res = _run("config", str(d))
    assert res.exit_code == 1 and "--force" in res.output
    assert json.loads((d / "config.json").read_text()) == {"n_layer": 99}
    res = _run("config", str(d), "--force")
    assert res.exit_code == 0 and "replaced" in res.output
    assert json.loads((d / "config.json").read_text())["n_layer"] == 2
    assert sorted(p.name for p in d.iterdir() if p.name.startswith(".")) == []


def test_config_rejects_invalid_legacy(model_dirs, tmp_path):
    d = _copy(model_dirs["legacy"], tmp_path / "m")
    legacy = json.loads((d / "model_config.json").read_text())
    legacy["init_args"][0]["n_head"] = 6
    (d / "model_config.json").write_text(json.dumps(legacy))
    with pytest.raises(ConfigError, match="n_head"):
        write_config(d)
    assert not (d / "config.json").exists()
