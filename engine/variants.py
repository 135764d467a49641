"""The CodeGen variant table: one source of truth for every size and data set.

Parameter counts and byte sizes are computed from the architecture (the tensor
shapes), never typed in.
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass

from .dtypes import DTYPE_BYTES
from .errors import OptionError, UnknownVariantError

SIZES = ("350M", "2B", "6B", "16B")
DATA = ("nl", "multi", "mono")
DATA_NOTES = {
    "nl": "The Pile (natural language and some code)",
    "multi": "nl, then C, C++, Go, Java, JavaScript and Python",
    "mono": "multi, then Python only",
}
EOS_TOKEN_ID = 50256
BOS_TOKEN_ID = 1
MASK_BUFFER_SUFFIXES = (".attn.causal_mask", ".attn.bias", ".attn.masked_bias")


@dataclass(frozen=True)
class Architecture:
    """Hyper-parameters that fix every tensor shape of a CodeGen model."""

    n_layer: int
    n_embd: int
    n_head: int
    rotary_dim: int
    vocab_size: int = 51200
    n_positions: int = 2048
    n_inner: int | None = None  # None means 4 * n_embd, as in the official configs

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def inner_dim(self) -> int:
        return self.n_inner or 4 * self.n_embd

    def problems(self) -> list[str]:
        """Reasons this architecture cannot be a CodeGen model (empty when valid)."""
        out = []
        for field in ("n_layer", "n_embd", "n_head", "vocab_size", "n_positions"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                out.append(f"{field} must be a positive integer, got {value!r}")
        if out:
            return out
        if self.n_embd % self.n_head:
            out.append(f"n_embd {self.n_embd} is not a multiple of n_head {self.n_head}")
        if self.n_head % 4:
            out.append(f"n_head {self.n_head} must be a multiple of 4 (qkv_proj holds 4 shards)")
        if not isinstance(self.rotary_dim, int) or self.rotary_dim <= 0 or self.rotary_dim % 2:
            out.append(f"rotary_dim must be a positive even integer, got {self.rotary_dim!r}")
        elif self.n_embd % self.n_head == 0 and self.rotary_dim > self.head_dim:
            out.append(f"rotary_dim {self.rotary_dim} exceeds the head dim {self.head_dim}")
        return out

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every weight tensor in PaddleNLP's layout (Linear weights are [in, out])."""
        e, i, v = self.n_embd, self.inner_dim, self.vocab_size
        shapes: dict[str, tuple[int, ...]] = {"transformer.wte.weight": (v, e)}
        for n in range(self.n_layer):
            p = f"transformer.h.{n}."
            shapes.update({
                p + "ln_1.weight": (e,), p + "ln_1.bias": (e,),
                p + "attn.qkv_proj.weight": (e, 3 * e),
                p + "attn.out_proj.weight": (e, e),
                p + "mlp.fc_in.weight": (e, i), p + "mlp.fc_in.bias": (i,),
                p + "mlp.fc_out.weight": (i, e), p + "mlp.fc_out.bias": (e,),
            })
        shapes.update({
            "transformer.ln_f.weight": (e,), "transformer.ln_f.bias": (e,),
            "lm_head.weight": (e, v), "lm_head.bias": (v,),
        })
        return shapes

    def match_names(self, names) -> tuple[list[str], list[str], list[str]]:
        """Sort a weight file's tensor names against this architecture.

        Returns (old attention-mask buffers, to be dropped; expected names that are
        missing; names that are neither), each in the order met."""
        names = list(names)
        masks = [n for n in names if n.endswith(MASK_BUFFER_SUFFIXES)]
        present = set(names)
        expected = self.tensor_shapes()
        missing = [n for n in expected if n not in present]
        extra = [n for n in names if n not in expected and not n.endswith(MASK_BUFFER_SUFFIXES)]
        return masks, missing, extra

    @property
    def param_count(self) -> int:
        return sum(math.prod(s) for s in self.tensor_shapes().values())

    def weight_bytes(self, dtype: str = "float32") -> int:
        if dtype not in DTYPE_BYTES:
            raise OptionError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPE_BYTES)}")
        return self.param_count * DTYPE_BYTES[dtype]

    def kv_bytes_per_token(self, dtype: str = "float32") -> int:
        """KV-cache bytes one token of context costs (keys and values, every layer)."""
        return 2 * self.n_layer * self.n_embd * DTYPE_BYTES[dtype]

    def config_dict(self) -> dict:
        """The flat `config.json` content PaddleNLP's `save_pretrained` writes."""
        return {
            "architectures": ["CodeGenForCausalLM"], "model_type": "codegen",
            "activation_function": "gelu_new", "attn_pdrop": 0.0, "embd_pdrop": 0.0,
            "resid_pdrop": 0.0, "initializer_range": 0.02, "layer_norm_epsilon": 1e-5,
            "bos_token_id": BOS_TOKEN_ID, "eos_token_id": EOS_TOKEN_ID,
            "pad_token_id": EOS_TOKEN_ID, "tie_word_embeddings": False,
            "n_layer": self.n_layer, "n_embd": self.n_embd, "n_head": self.n_head,
            "rotary_dim": self.rotary_dim, "vocab_size": self.vocab_size,
            "n_positions": self.n_positions, "n_ctx": self.n_positions, "n_inner": self.n_inner,
        }


@dataclass(frozen=True)
class Variant:
    size: str
    data: str
    arch: Architecture

    @property
    def name(self) -> str:
        return f"codegen-{self.size}-{self.data}" if self.data else f"codegen-{self.size}"

    @property
    def short_name(self) -> str:
        return f"{self.size}-{self.data}" if self.data else self.size


ARCHITECTURES: dict[str, Architecture] = {
    "350M": Architecture(n_layer=20, n_embd=1024, n_head=16, rotary_dim=32),
    "2B": Architecture(n_layer=32, n_embd=2560, n_head=32, rotary_dim=64),
    "6B": Architecture(n_layer=33, n_embd=4096, n_head=16, rotary_dim=64),
    "16B": Architecture(n_layer=34, n_embd=6144, n_head=24, rotary_dim=64),
}
# A test architecture: the real vocabulary and context, two small layers.
TINY = Variant("tiny", "", Architecture(n_layer=2, n_embd=64, n_head=4, rotary_dim=8))

VARIANTS: dict[str, Variant] = {
    v.name: v for v in (Variant(s, d, ARCHITECTURES[s]) for s in SIZES for d in DATA)
}


def _normalise(name: str) -> str:
    key = name.strip().lower()
    for prefix in ("salesforce/", "codegen-"):
        if key.startswith(prefix):
            key = key[len(prefix):]
    return key


_LOOKUP = {_normalise(v.name): v for v in VARIANTS.values()}
_LOOKUP["tiny"] = TINY


def get_variant(name: str) -> Variant:
    """Find a variant by full or short name (`codegen-350M-mono`, `350M-mono`, `tiny`)."""
    found = _LOOKUP.get(_normalise(name))
    if found is None:
        close = difflib.get_close_matches(_normalise(name), list(_LOOKUP), n=1)
        hint = f"did you mean {_LOOKUP[close[0]].short_name!r}? " if close else ""
        raise UnknownVariantError(
            f"unknown variant {name!r}; {hint}use one of "
            f"{', '.join(v.short_name for v in VARIANTS.values())} or tiny"
        )
    return found


def variant_names(include_tiny: bool = False) -> list[str]:
    names = [v.name for v in VARIANTS.values()]
    return names + ["tiny"] if include_tiny else names
