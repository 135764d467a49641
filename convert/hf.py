"""`cgconvert from-hf`: a Hugging Face `Salesforce/codegen-*` directory to a PaddleNLP one.

Weights come from `model.safetensors`, sharded safetensors, `pytorch_model.bin` (read without
torch, see :mod:`convert.torch_pickle`) or sharded `.bin`; nothing in them is executed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.config import CONFIG_FILE, ModelConfig, config_from_dict, read_json
from engine.errors import ConfigError

from .errors import SourceError
from .mapping import Progress, WeightPlan, build_model_dir, plan_weights
from .output import FORMATS
from .sources import read_index, read_shards
from .tensors import SourceTensor, check_weight_dtype
from .tokenizer_files import paddlenlp_tokenizer_files, usable_ids

# In the order Hugging Face prefers them.
HF_WEIGHT_LAYOUTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                     "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class HFCheckpoint:
    path: Path
    config: ModelConfig
    raw_config: dict
    files: list[Path]
    tensors: dict[str, SourceTensor]


@dataclass(frozen=True)
class ConversionResult:
    source: Path
    destination: Path
    weight_file: Path
    source_files: list[Path]
    plan: WeightPlan
    fmt: str


def find_hf_weights(src: Path) -> tuple[list[Path], dict | None]:
    """The weight files of a checkpoint and, when sharded, its weight map."""
    for name in HF_WEIGHT_LAYOUTS:
        path = src / name
        if path.is_file():
            if name.endswith(".index.json"):
                return read_index(path), read_json(path)["weight_map"]
            return [path], None
    if (src / "model_state.pdparams").is_file():
        raise SourceError(f"{src}: holds model_state.pdparams, a PaddleNLP directory already; use it "
                          "as it is (or `cgconvert cast` to change the dtype)")
    partial = sorted(p.name for p in src.iterdir() if p.name.endswith((".part", ".incomplete", "_tmp")))
    extra = f" (only {', '.join(partial)}: an interrupted download)" if partial else ""
    raise SourceError(f"{src}: no Hugging Face weights{extra}; expected one of "
                      f"{', '.join(HF_WEIGHT_LAYOUTS)}")


def load_hf_config(src: Path) -> tuple[ModelConfig, dict]:
    path = src / CONFIG_FILE
    if not path.is_file():
        raise SourceError(f"{path}: missing; a Hugging Face checkpoint needs its config.json, copy it "
                          "from the same download")
    raw = read_json(path)
    if isinstance(raw, dict) and raw.get("model_type", "codegen") != "codegen":
        raise ConfigError(f"{path}: model_type is {raw.get('model_type')!r}, not 'codegen'; "
                          "this converter handles Salesforce CodeGen checkpoints only")
    return config_from_dict(raw, str(path)), raw


def read_hf_checkpoint(src: Path) -> HFCheckpoint:
    if not src.is_dir():
        raise SourceError(f"{src}: not a directory; give the Hugging Face checkpoint directory")
    config, raw = load_hf_config(src)
    files, weight_map = find_hf_weights(src)
    return HFCheckpoint(src, config, raw, files, read_shards(files, weight_map))


def convert_hf(src: Path, dst: Path, dtype: str = "auto", fmt: str = "safetensors",
               progress: Progress | None = None) -> ConversionResult:
    """Convert `src` into a new complete PaddleNLP directory `dst` (appears only when complete)."""
    if dtype != "auto":
        check_weight_dtype(dtype)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}")
    ckpt = read_hf_checkpoint(src)
    vocab = ckpt.config.arch.vocab_size
    tok_files = paddlenlp_tokenizer_files(src, ckpt.config.arch.n_positions)
    usable = usable_ids(src)
    if usable is not None and usable > vocab:
        raise ConfigError(f"{src}: the tokenizer defines {usable} ids but config.json gives "
                          f"vocab_size {vocab}; the tokenizer files belong to another model")
    plan = plan_weights(ckpt.tensors, ckpt.config, dtype, transpose=True, where=str(src),
                        progress=progress)
    weight_file = build_model_dir(dst, plan, ckpt.config, fmt, tok_files)
    return ConversionResult(src, dst, weight_file, ckpt.files, plan, fmt)
