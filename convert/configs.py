"""`cgconvert config`: write `config.json` from a legacy `model_config.json`, and config file bodies."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from engine.config import (CONFIG_FILE, LEGACY_CONFIG_FILE, ModelConfig, config_from_dict,
                           flatten_legacy_config, read_json)
from engine.errors import ConfigError

from .output import atomic_write_bytes, json_bytes


@dataclass(frozen=True)
class ConfigResult:
    path: Path
    action: str  # "written", "replaced", "unchanged"
    config: dict


def flat_config(config: ModelConfig, dtype: str | None = None) -> dict:
    """The flat `config.json` for a validated config (official keys, then the source's extras)."""
    out = config.arch.config_dict()
    out.update(eos_token_id=config.eos_token_id, bos_token_id=config.bos_token_id,
               pad_token_id=config.pad_token_id, layer_norm_epsilon=config.layer_norm_epsilon,
               activation_function=config.activation_function)
    if dtype:
        out["dtype"] = dtype
    return dict(sorted(out.items()))


def legacy_config(flat: dict) -> dict:
    """The nested `model_config.json` of PaddleNLP downloads, for tools that read only it."""
    inner = {k: v for k, v in flat.items() if k not in ("architectures", "model_type", "dtype")}
    inner["init_class"] = "CodeGenModel"
    return {"init_args": [inner], "init_class": "CodeGenForCausalLM"}


def config_files(config: ModelConfig, dtype: str | None = None) -> dict[str, bytes]:
    flat = flat_config(config, dtype)
    return {CONFIG_FILE: json_bytes(flat), LEGACY_CONFIG_FILE: json_bytes(legacy_config(flat))}


def write_config(model_dir: Path, force: bool = False) -> ConfigResult:
    """Flatten `model_config.json` into `config.json` (PaddleNLP's rules; eos/pad 2 -> 50256)."""
    legacy, modern = model_dir / LEGACY_CONFIG_FILE, model_dir / CONFIG_FILE
    if not legacy.is_file():
        if modern.is_file():
            config_from_dict(read_json(modern), str(modern))
            return ConfigResult(modern, "unchanged", read_json(modern))
        raise ConfigError(f"{model_dir}: no {LEGACY_CONFIG_FILE} to convert (and no {CONFIG_FILE}); "
                          "copy the model's config files into this directory")
    raw = read_json(legacy)
    if not isinstance(raw, dict):
        raise ConfigError(f"{legacy}: expected a JSON object; copy the file again")
    flat = dict(sorted(flatten_legacy_config(raw).items()))
    config_from_dict(flat, str(legacy))  # refuse to write a config the engine would reject
    action = "written"
    if modern.exists():
        try:
            existing = json.loads(modern.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            existing = None
        if existing == flat:
            return ConfigResult(modern, "unchanged", flat)
        if not force:
            raise ConfigError(f"{modern}: exists and differs from what {LEGACY_CONFIG_FILE} gives; "
                              "pass --force to replace it (or remove it)")
        action = "replaced"
    atomic_write_bytes(modern, json_bytes(flat))
    return ConfigResult(modern, action, flat)
