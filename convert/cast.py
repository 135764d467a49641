"""`cgconvert cast`: a PaddleNLP directory to a new one with float16 or bfloat16 weights."""
from __future__ import annotations

from pathlib import Path

from engine.config import load_config
from engine.model import find_weight_file

from .errors import SourceError
from .hf import ConversionResult
from .mapping import Progress, build_model_dir, plan_weights
from .output import FORMATS
from .sources import read_file_lazy
from .tensors import check_weight_dtype
from .tokenizer_files import REQUIRED, TOKENIZER_FILES


def format_of(weight_file: Path) -> str:
    return "safetensors" if weight_file.suffix == ".safetensors" else "pdparams"


def cast_dir(src: Path, dst: Path, dtype: str, fmt: str | None = None,
             progress: Progress | None = None) -> ConversionResult:
    """Copy `src` to a new `dst` with every weight cast to `dtype` (`src` is only read)."""
    check_weight_dtype(dtype)
    if not src.is_dir():
        raise SourceError(f"{src}: not a directory; give a PaddleNLP model directory")
    config = load_config(src)
    weight_file = find_weight_file(src)
    fmt = fmt or format_of(weight_file)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}")
    for name in REQUIRED:
        if not (src / name).is_file():
            raise SourceError(f"{src / name}: tokenizer file missing; copy it first (the cast "
                              "directory must be complete)")
    others = {name: (src / name).read_bytes() for name in TOKENIZER_FILES if (src / name).is_file()}
    plan = plan_weights(read_file_lazy(weight_file), config, dtype, transpose=False,
                        where=str(weight_file), progress=progress)
    out = build_model_dir(dst, plan, config, fmt, others)
    return ConversionResult(src, dst, out, [weight_file], plan, fmt)
