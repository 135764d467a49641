"""Model configuration: read `config.json` or the legacy `model_config.json`.

The legacy file nests the hyper-parameters in `init_args`; PaddleNLP flattens
it (`flatten_model_config`): every key of the dict inside `init_args` is copied
to the top level unless already there, and the top-level `init_class` becomes
`architectures`.  We do the same in memory, so a legacy directory loads without
being modified.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError
from .variants import ARCHITECTURES, EOS_TOKEN_ID, Architecture

CONFIG_FILE = "config.json"
LEGACY_CONFIG_FILE = "model_config.json"
_ARCH_FIELDS = ("n_layer", "n_embd", "n_head", "rotary_dim", "vocab_size", "n_positions")


def flatten_legacy_config(legacy: dict) -> dict:
    """PaddleNLP's flattening of a legacy `model_config.json` (input is not modified)."""
    config = copy.deepcopy(legacy)
    init_args = config.pop("init_args", [])
    rest = []
    for item in init_args:
        if isinstance(item, dict):
            for key, value in item.items():
                config.setdefault(key, value)
        else:
            rest.append(item)
    if rest:
        config["init_args"] = rest
    if "init_class" in config:
        config["architectures"] = [config.pop("init_class")]
    config.setdefault("model_type", "codegen")
    # Old configs sometimes carry eos 2; CodeGen's end of text is 50256.
    if config.get("eos_token_id") in (None, 2):
        config["eos_token_id"] = EOS_TOKEN_ID
    if config.get("pad_token_id") in (None, 2):
        config["pad_token_id"] = EOS_TOKEN_ID
    return config


@dataclass(frozen=True)
class ModelConfig:
    """A validated CodeGen configuration and where it came from."""

    arch: Architecture
    eos_token_id: int = EOS_TOKEN_ID
    bos_token_id: int = 1
    pad_token_id: int = EOS_TOKEN_ID
    activation_function: str = "gelu_new"
    layer_norm_epsilon: float = 1e-5
    source: str = "<built in>"
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def size_name(self) -> str | None:
        """The official size this architecture matches (`350M`...), if any."""
        for size, arch in ARCHITECTURES.items():
            if (arch.n_layer, arch.n_embd, arch.n_head) == (
                self.arch.n_layer, self.arch.n_embd, self.arch.n_head):
                return size
        return None

    def paddlenlp_kwargs(self) -> dict:
        """Arguments for `paddlenlp.transformers.CodeGenConfig`."""
        out = dict(self.raw)
        out.update(self.arch.config_dict())
        out.update(eos_token_id=self.eos_token_id, bos_token_id=self.bos_token_id,
                   pad_token_id=self.pad_token_id, layer_norm_epsilon=self.layer_norm_epsilon,
                   activation_function=self.activation_function)
        for key in ("architectures", "init_args", "init_class", "model_type"):
            out.pop(key, None)
        return out


def config_from_dict(data: dict, source: str) -> ModelConfig:
    """Validate a flat config dict; every problem names `source` and the field."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a JSON object at the top level; copy the file again")
    missing = [k for k in ("n_layer", "n_embd", "n_head") if k not in data]
    if missing:
        raise ConfigError(f"{source}: missing field(s) {', '.join(missing)}; "
                          "this is not a CodeGen config (regenerate it with `cgconvert config`)")
    values = {k: data[k] for k in _ARCH_FIELDS if k in data}
    values.setdefault("rotary_dim", data.get("rotary_dim"))
    n_ctx = data.get("n_ctx")
    if "n_positions" not in values and isinstance(n_ctx, int):
        values["n_positions"] = n_ctx
    arch = Architecture(n_inner=data.get("n_inner"), **values)
    problems = arch.problems()
    if problems:
        raise ConfigError(f"{source}: {problems[0]}; fix the value or use the config that "
                          "came with the weights")
    act = data.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu", "relu", "gelu_fast"):
        raise ConfigError(f"{source}: activation_function {act!r} is not supported; CodeGen uses gelu_new")
    eos = data.get("eos_token_id", EOS_TOKEN_ID)
    if not isinstance(eos, int) or not 0 <= eos < arch.vocab_size:
        raise ConfigError(f"{source}: eos_token_id {eos!r} is outside the vocabulary "
                          f"(vocab_size {arch.vocab_size}); CodeGen uses {EOS_TOKEN_ID}")
    return ModelConfig(
        arch=arch, eos_token_id=eos, bos_token_id=int(data.get("bos_token_id", 1) or 1),
        pad_token_id=int(data.get("pad_token_id", eos) if data.get("pad_token_id") is not None else eos),
        activation_function=act, layer_norm_epsilon=float(data.get("layer_norm_epsilon", 1e-5)),
        source=source, raw=dict(data),
    )


def read_json(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror}); check the file's permissions") from None
    if not text.strip():
        raise ConfigError(f"{path}: the file is empty (an interrupted copy?); copy it again")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); "
                          "the file is truncated or damaged, copy it again") from None


def load_config(model_dir: Path) -> ModelConfig:
    """Read `config.json`, else flatten `model_config.json`, from a model directory."""
    modern, legacy = model_dir / CONFIG_FILE, model_dir / LEGACY_CONFIG_FILE
    if modern.is_file():
        return config_from_dict(read_json(modern), str(modern))
    if legacy.is_file():
        raw = read_json(legacy)
        if not isinstance(raw, dict):
            raise ConfigError(f"{legacy}: expected a JSON object; copy the file again")
        return config_from_dict(flatten_legacy_config(raw), str(legacy))
    raise ConfigError(f"{model_dir}: neither {CONFIG_FILE} nor {LEGACY_CONFIG_FILE} found; "
                      "copy the model's config files into this directory")
