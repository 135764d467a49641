"""Compare logits of two implementations on the same token ids (max |Δ|, NMSE, top-1 agreement).

NMSE = Σ(got − ref)² / Σ ref².  Peers' yardsticks: fp32 → fp32 ~1e-10 (must be ≤ 1e-8 here);
llama.cpp calls < 1e-4 good and < 1e-2 the outer bound for reduced precision.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from engine.errors import OptionError

LOSSLESS_NMSE = 1e-8
LOSSY_NMSE = 1e-2
GOOD_NMSE = 1e-4


@dataclass(frozen=True)
class Agreement:
    tokens: int
    max_abs_diff: float
    nmse: float
    top1_agreement: float
    threshold: float

    @property
    def ok(self) -> bool:
        return self.nmse <= self.threshold

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}

    def line(self) -> str:
        verdict = "ok" if self.ok else f"FAILED (threshold {self.threshold:g})"
        return (f"logits over {self.tokens} tokens: max |diff| {self.max_abs_diff:.3g}, "
                f"NMSE {self.nmse:.3g}, top-1 agreement {self.top1_agreement:.1%}: {verdict}")


def compare_logits(ref: np.ndarray, got: np.ndarray, threshold: float) -> Agreement:
    ref = np.asarray(ref, np.float64)
    got = np.asarray(got, np.float64)
    if ref.shape != got.shape:
        raise ValueError(f"logit shapes differ: {ref.shape} vs {got.shape}")
    diff = got - ref
    denom = float(np.sum(ref * ref)) or 1.0
    return Agreement(
        tokens=int(ref.shape[0]), max_abs_diff=float(np.max(np.abs(diff))),
        nmse=float(np.sum(diff * diff) / denom),
        top1_agreement=float(np.mean(np.argmax(ref, -1) == np.argmax(got, -1))),
        threshold=threshold)


def sample_ids(n_tokens: int, usable: int, seed: int = 0) -> list[int]:
    """Deterministic token ids the tokenizer could produce (no tokenizer needed)."""
    rng = np.random.default_rng(seed)
    return [int(i) for i in rng.integers(0, usable, size=n_tokens)]


def engine_logits(model_dir: Path, ids: list[int]) -> np.ndarray:
    """Logits of every position from the engine (float32 compute, whatever the stored dtype)."""
    from engine import load

    return load(model_dir, dtype="float32").model.logits(ids)


def transformers_logits(raw_config: dict, tensors, ids: list[int]) -> np.ndarray:
    """Hugging Face's CodeGen on the source tensors (read safely here, never with torch.load)."""
    try:
        import torch
        from transformers import CodeGenConfig, CodeGenForCausalLM
    except ImportError:
        raise OptionError("--verify needs transformers and torch (pip install "
                          "'codegen-workbench[hf]'); run without --verify otherwise") from None
    from engine.variants import MASK_BUFFER_SUFFIXES

    from .tensors import cast_array

    config = CodeGenConfig.from_dict({k: v for k, v in raw_config.items()
                                      if k not in ("torch_dtype", "transformers_version")})
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = CodeGenForCausalLM(config)
    state = {name: torch.from_numpy(np.array(cast_array(t.load(), t.dtype, "float32")))
             for name, t in tensors.items() if not name.endswith(MASK_BUFFER_SUFFIXES)}
    model.load_state_dict(state, strict=True)
    del state
    model.eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def _threshold(plan) -> float:
    """Lossless when the dtype is kept or widened to float32, else the outer bound for reduced precision."""
    return LOSSLESS_NMSE if plan.dtype in (plan.source_dtype, "float32") else LOSSY_NMSE


def _n_tokens(config, n_tokens: int) -> int:
    return max(1, min(n_tokens, config.arch.n_positions))


def verify_hf_conversion(src: Path, dst: Path, plan, n_tokens: int = 32) -> Agreement:
    """transformers on the source checkpoint vs the engine on the converted directory."""
    from .hf import read_hf_checkpoint
    from .tokenizer_files import usable_ids

    ckpt = read_hf_checkpoint(src)
    usable = min(usable_ids(src) or ckpt.config.arch.vocab_size, ckpt.config.arch.vocab_size)
    ids = sample_ids(_n_tokens(ckpt.config, n_tokens), usable)
    ref = transformers_logits(ckpt.raw_config, ckpt.tensors, ids)
    return compare_logits(ref, engine_logits(dst, ids), _threshold(plan))


def verify_cast(src: Path, dst: Path, plan, n_tokens: int = 32) -> Agreement:
    """The engine on the source directory vs the engine on the cast one (both computing in fp32)."""
    from engine.config import load_config

    from .tokenizer_files import usable_ids

    config = load_config(src)
    usable = min(usable_ids(src) or config.arch.vocab_size, config.arch.vocab_size)
    ids = sample_ids(_n_tokens(config, n_tokens), usable)
    ref = engine_logits(src, ids)
    return compare_logits(ref, engine_logits(dst, ids), _threshold(plan))
