import math

import pytest

from engine import TINY, VARIANTS, UnknownVariantError, get_variant
from engine.errors import OptionError


def test_twelve_variants_with_real_architectures():
    assert len(VARIANTS) == 12
    assert {v.size for v in VARIANTS.values()} == {"350M", "2B", "6B", "16B"}
    assert {v.data for v in VARIANTS.values()} == {"nl", "multi", "mono"}


@pytest.mark.parametrize("size,billions,layers", [
    ("350M", 0.357, 20), ("2B", 2.78, 32), ("6B", 7.06, 33), ("16B", 16.0, 34)])
def test_parameter_counts_come_from_the_shapes(size, billions, layers):
    arch = get_variant(f"{size}-mono").arch
    if size == "350M":
        assert round(arch.param_count / 1e9, 3) == billions
    assert arch.param_count / 1e9 == pytest.approx(billions, rel=3e-3)
    assert len(arch.tensor_shapes()) == 5 + 8 * layers
    assert arch.weight_bytes("float16") * 2 == arch.weight_bytes("float32")
    assert arch.param_count == sum(math.prod(s) for s in arch.tensor_shapes().values())


@pytest.mark.parametrize("name", ["codegen-350M-mono", "350M-mono", "350m-MONO",
                                  "Salesforce/codegen-350M-mono"])
def test_names_accepted(name):
    assert get_variant(name).name == "codegen-350M-mono"


def test_tiny_is_a_valid_small_architecture():
    assert get_variant("tiny") is TINY
    assert TINY.arch.problems() == []
    assert TINY.arch.param_count < 10_000_000


@pytest.mark.parametrize("name,hint", [("350M-mon", "350M-mono"), ("7B", "350M-nl")])
def test_unknown_variant_names_the_value_and_the_choices(name, hint):
    with pytest.raises(UnknownVariantError) as err:
        get_variant(name)
    assert repr(name) in str(err.value) and hint in str(err.value)


def test_unknown_dtype_bytes():
    with pytest.raises(OptionError, match="int3"):
        TINY.arch.weight_bytes("int3")


def test_match_names_sorts_masks_missing_and_extra():
    arch = TINY.arch
    names = list(arch.tensor_shapes())
    names.remove("lm_head.bias")
    names += ["transformer.h.0.attn.causal_mask", "transformer.h.9.ln_1.weight"]
    masks, missing, extra = arch.match_names(names)
    assert masks == ["transformer.h.0.attn.causal_mask"]
    assert missing == ["lm_head.bias"] and extra == ["transformer.h.9.ln_1.weight"]
