import json

import pytest

import builders
from engine.config import flatten_legacy_config, load_config
from engine.errors import ConfigError


def test_legacy_config_flattens_like_paddlenlp(tmp_path):
    from paddlenlp.transformers.configuration_utils import flatten_model_config

    cfg = builders.tiny_config(vocab_size=400, eos=300)
    legacy = builders.legacy_config(cfg)
    ours = flatten_legacy_config(legacy)
    theirs = flatten_model_config(json.loads(json.dumps(legacy)))
    for key, value in theirs.items():
        assert ours[key] == value, key
    assert ours["architectures"] == ["CodeGenForCausalLM"]
    assert "init_args" not in ours


def test_legacy_and_modern_give_the_same_config(tmp_path):
    cfg = builders.tiny_config(vocab_size=400, eos=300)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "b" / "model_config.json").write_text(json.dumps(builders.legacy_config(cfg)))
    a, b = load_config(tmp_path / "a"), load_config(tmp_path / "b")
    assert a.arch == b.arch and a.eos_token_id == b.eos_token_id == 300
    assert b.source.endswith("model_config.json")


def test_old_eos_2_becomes_50256():
    legacy = {"init_args": [{"n_layer": 2, "n_embd": 64, "n_head": 4, "rotary_dim": 8,
                             "vocab_size": 51200, "n_positions": 64, "eos_token_id": 2}],
              "init_class": "CodeGenForCausalLM"}
    assert flatten_legacy_config(legacy)["eos_token_id"] == 50256
    assert legacy["init_args"][0]["eos_token_id"] == 2  # input untouched


@pytest.mark.parametrize("body,message", [
    ("", "empty"),
    ('{"n_layer": 2', "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ('{"n_layer": 2, "n_embd": 64}', "n_head"),
    ('{"n_layer": 2, "n_embd": 64, "n_head": 4, "rotary_dim": 32}', "rotary_dim 32 exceeds"),
    ('{"n_layer": 2, "n_embd": 64, "n_head": 6, "rotary_dim": 8}', "multiple"),
    ('{"n_layer": 0, "n_embd": 64, "n_head": 4, "rotary_dim": 8}', "n_layer"),
])
def test_bad_configs_name_the_file_and_field(tmp_path, body, message):
    (tmp_path / "config.json").write_text(body)
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path)
    assert "config.json" in str(err.value) and message in str(err.value)


def test_no_config_at_all(tmp_path):
    with pytest.raises(ConfigError, match="neither config.json nor model_config.json"):
        load_config(tmp_path)
