"""Loading model directories and random variants; every bad input gives one clear line."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import builders
from engine import (ConfigError, EngineError, ModelFilesError, OptionError, UnknownVariantError,
                    WeightFileError, load)
from engine.weights import read_weights, write_pdparams


def test_loading_is_offline(model_dirs, no_network):
    gen = load(model_dirs["legacy"])
    assert gen.generate("def", None).completion_tokens >= 1
    load("random:tiny")
    assert no_network == []


def test_random_variant_has_the_real_architecture():
    gen = load("random:tiny", impl="reference")
    arch = gen.config.arch
    assert (arch.n_layer, arch.n_embd, arch.vocab_size, arch.n_positions) == (2, 64, 51200, 2048)
    params = {n: p.shape for n, p in gen.model.layer.named_parameters()}
    assert {n: tuple(s) for n, s in params.items()} == arch.tensor_shapes()
    w = gen.model.layer.lm_head.weight.numpy()
    assert 0.015 < w.std() < 0.025 and abs(w.mean()) < 1e-3


def test_random_350m_loads_with_its_real_shapes():
    gen = load("random:350M-mono")
    assert round(gen.config.arch.param_count / 1e9, 3) == 0.357
    assert gen.model.param_count() == gen.config.arch.param_count
    r = gen.generate("def f():", None)
    assert r.completion_tokens == 16 and gen.context_length == 2048


def _copy(model_dirs, tmp_path, layout="modern"):
    dst = tmp_path / "m"
    shutil.copytree(model_dirs[layout], dst)
    return dst


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _wrong_shape_config(d):
    cfg = json.loads((d / "config.json").read_text())
    cfg["n_embd"] = 128
    (d / "config.json").write_text(json.dumps(cfg))


def _hf_layout(d):
    state = read_weights(d / "model_state.pdparams")
    state["lm_head.weight"] = state["lm_head.weight"].T.copy()
    write_pdparams(d / "model_state.pdparams", state)


def _extra_layer(d):
    cfg = json.loads((d / "config.json").read_text())
    cfg["n_layer"] = 1
    (d / "config.json").write_text(json.dumps(cfg))


def _missing_tensor(d):
    state = read_weights(d / "model_state.pdparams")
    del state["transformer.h.1.mlp.fc_in.bias"]
    write_pdparams(d / "model_state.pdparams", state)


def _leftover(d):
    (d / "model_state.pdparams").rename(d / "model_state.pdparams_tmp")


def _small_vocab(d):
    cfg = json.loads((d / "config.json").read_text())
    cfg["vocab_size"] = 100
    cfg["eos_token_id"] = cfg["pad_token_id"] = cfg["bos_token_id"] = 99
    (d / "config.json").write_text(json.dumps(cfg))


CASES = [
    ("missing weights", lambda d: (d / "model_state.pdparams").unlink(), ModelFilesError,
     ["no weight file", "cgconvert from-hf"]),
    ("interrupted copy", _leftover, ModelFilesError, ["model_state.pdparams_tmp", "copy the weights again"]),
    ("truncated weights", lambda d: _truncate(d / "model_state.pdparams"), WeightFileError,
     ["model_state.pdparams", "truncated"]),
    ("empty weights", lambda d: _truncate(d / "model_state.pdparams", 0), WeightFileError,
     ["model_state.pdparams", "empty"]),
    ("missing config", lambda d: (d / "config.json").unlink(), ConfigError, ["config.json", "copy"]),
    ("truncated config", lambda d: _truncate(d / "config.json"), ConfigError, ["config.json", "JSON"]),
    ("missing vocab", lambda d: (d / "vocab.json").unlink(), ModelFilesError, ["vocab.json", "missing"]),
    ("empty merges", lambda d: _truncate(d / "merges.txt", 0), ModelFilesError, ["merges.txt", "empty"]),
    ("config of another size", _wrong_shape_config, ConfigError,
     ["transformer.wte.weight", "config.json", "use the config that came with these weights"]),
    ("config with fewer layers", _extra_layer, ConfigError, ["transformer.h.1", "more layers"]),
    ("hugging face layout", _hf_layout, ConfigError, ["lm_head.weight", "cgconvert from-hf"]),
    ("missing tensor", _missing_tensor, ModelFilesError, ["transformer.h.1.mlp.fc_in.bias", "incomplete"]),
    ("tokenizer of another model", _small_vocab, ConfigError, ["tokenizer has", "vocab_size 100"]),
]


@pytest.mark.parametrize("name,damage,error,words", CASES, ids=[c[0] for c in CASES])
def test_bad_model_directories(model_dirs, tmp_path, name, damage, error, words):
    d = _copy(model_dirs, tmp_path)
    damage(d)
    before = sorted((p.name, p.stat().st_size) for p in d.iterdir())
    with pytest.raises(error) as err:
        load(d)
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message
    assert sorted((p.name, p.stat().st_size) for p in d.iterdir()) == before  # nothing touched


def test_truncated_safetensors(model_dirs, tmp_path):
    d = _copy(model_dirs, tmp_path, "safetensors")
    _truncate(d / "model.safetensors", 0.7)
    with pytest.raises(WeightFileError, match="model.safetensors"):
        load(d)


@pytest.mark.parametrize("spec,kwargs,error,words", [
    ("/no/such/dir", {}, ModelFilesError, ["/no/such/dir", "random:<variant>"]),
    ("random:7B-mono", {}, UnknownVariantError, ["7B-mono", "350M-mono"]),
    ("random:tiny", {"device": "tpu"}, OptionError, ["tpu", "gpu:N"]),
    ("random:tiny", {"dtype": "float16", "impl": "reference"}, OptionError,
     ["float16", "float32 on cpu", "impl fast"]),
    ("random:tiny", {"dtype": "int4"}, OptionError, ["int4", "float32"]),
    ("random:tiny", {"device": "gpu:0"}, OptionError, ["gpu:0", "no CUDA", "--device cpu"]),
])
def test_bad_specs_and_options(spec, kwargs, error, words):
    with pytest.raises(error) as err:
        load(spec, **kwargs)
    assert all(w in str(err.value) for w in words), str(err.value)
    assert isinstance(err.value, EngineError)


def test_a_file_is_not_a_model_directory(tmp_path):
    f = tmp_path / "model_state.pdparams"
    f.write_bytes(b"x")
    with pytest.raises(ModelFilesError, match="not a directory"):
        load(f)


def test_mask_buffers_of_old_files_are_tolerated(model_dirs, tmp_path, tiny_gen):
    d = _copy(model_dirs, tmp_path)
    state = read_weights(d / "model_state.pdparams")
    for i in range(2):
        state[f"transformer.h.{i}.attn.causal_mask"] = np.tril(np.ones((1, 1, 8, 8), np.float32))
    write_pdparams(d / "model_state.pdparams", state)
    ids = tiny_gen.tokenizer.encode("x = 1")
    np.testing.assert_array_equal(load(d).model.logits(ids), tiny_gen.model.logits(ids))
    np.testing.assert_array_equal(load(d, impl="reference").model.logits(ids),
                                  load(model_dirs["modern"], impl="reference").model.logits(ids))


def test_builders_make_a_tokenizer_paddlenlp_reads(tmp_path):
    usable = builders.write_tokenizer(tmp_path)
    from engine.tokenizer import load_tokenizer

    tok = load_tokenizer(tmp_path)
    assert tok.usable_ids() == usable
    ids = tok.encode("def f():\n        return 1")
    assert any(i >= usable - 6 for i in ids)  # an added whitespace token was used
