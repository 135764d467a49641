"""The `ct2` backend: CTranslate2, the CPU engine users pick for CodeGen, on the same weights.

The engine's own weights (``random:<variant>`` from the same seed as the `paddle` backend, or a
model directory's, int8 files widened) are put into transformers' CodeGenForCausalLM in memory
and converted by CTranslate2's own converter (its ``ct2-transformers-converter``, without the
disk round trip) into a temporary directory; the point's dtype is CTranslate2's compute type
(``int8``: int8 weights and int8 GEMMs; ``float32``; ``int8_float32`` is what ``int8`` means on
CPU).  Generation is greedy through ``Generator.generate_tokens`` with no end token, so every run
makes exactly the asked tokens; ttft is the first token's arrival (prefill + the first step).
Needs the ``ct2`` extra (``ctranslate2==4.6.0``: 4.8.5's converter passes ``dtype=`` to
transformers 4.55, which rejects it) and the ``hf`` one (torch, transformers).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time

from ..errors import BenchError

COMPUTE_TYPES = {"float32": "float32", "int8": "int8", "float16": "float16",
                 "bfloat16": "bfloat16"}


def _token(i: int) -> str:
    return f"<t{i}>"


class _Vocabulary:
    """What the converter asks of a tokenizer: one made-up token per embedding row."""

    def __init__(self, size: int, eos: int, bos: int):
        self._size = size
        self.bos_token, self.eos_token, self.unk_token = _token(bos), _token(eos), _token(eos)

    def get_vocab(self) -> dict[str, int]:
        return {_token(i): i for i in range(self._size)}


def _engine_state(point, config) -> dict:
    """The engine's tensors for this point in Hugging Face's layout (torch tensors)."""
    import numpy as np
    import torch

    from convert.mapping import is_transposed

    if point.weights == "random":
        from engine.model import random_arrays

        arrays = random_arrays(config, point.seed)
    else:
        from pathlib import Path

        from engine.model import find_weight_file
        from engine.quant import attach_scales
        from engine.weights import read_weights

        path = find_weight_file(Path(point.weights))
        arrays = attach_scales(read_weights(path), path).items()
    state = {}
    for name, array in arrays:
        a = np.asarray(array, np.float32)  # random_arrays reuses one buffer: always copy
        state[name] = torch.from_numpy(np.array(a.T if is_transposed(name) else a, order="C"))
    return state


def convert(point, out_dir: str):
    """Write the CTranslate2 model of `point` into `out_dir`; returns the engine config."""
    try:
        import ctranslate2.converters as converters
        import torch
        from transformers import CodeGenConfig, CodeGenForCausalLM
    except ImportError as exc:
        raise BenchError(f"--backend ct2 needs ctranslate2, torch and transformers ({exc}); "
                         "pip install 'codegen-workbench[ct2,hf]'") from None
    from engine.config import config_from_dict, load_config
    from engine.variants import get_variant

    if point.weights == "random":
        variant = get_variant(point.variant)
        config = config_from_dict(variant.arch.config_dict(), f"random:{variant.short_name}")
    else:
        from pathlib import Path

        config = load_config(Path(point.weights))
    fields = {k: v for k, v in config.arch.config_dict().items()
              if k not in ("architectures", "model_type")}
    fields.update(bos_token_id=config.eos_token_id, eos_token_id=config.eos_token_id)
    hf_config = CodeGenConfig(**fields)
    source = tempfile.mkdtemp(prefix="cgbench-ct2-src-")
    try:
        hf_config.save_pretrained(source)  # the converter reads the config from a directory
        with torch.device("meta"):
            model = CodeGenForCausalLM(hf_config)
        state = _engine_state(point, config)
        missing = [n for n in model.state_dict() if n not in state and not n.endswith(
            ("causal_mask", "masked_bias", "attn.bias"))]
        assert not missing, f"tensors not set: {missing[:3]}"
        model.load_state_dict(state, strict=False, assign=True)
        model.eval()
        vocabulary = _Vocabulary(config.arch.vocab_size, config.eos_token_id, config.eos_token_id)

        class _InMemory(converters.TransformersConverter):
            def load_model(self, model_class, name, **kwargs):
                return model

            def load_tokenizer(self, tokenizer_class, name, **kwargs):
                return vocabulary

        _InMemory(source).convert(out_dir, force=True)
    finally:
        shutil.rmtree(source, ignore_errors=True)
    return config


class Ct2Backend:
    """CTranslate2's Generator on the point's weights, greedy, exactly `new_tokens` tokens."""

    name = "ct2"

    def __init__(self, point):
        start = time.perf_counter()
        if point.dtype not in COMPUTE_TYPES:
            raise BenchError(f"--dtype {point.dtype} has no CTranslate2 compute type")
        if point.batch != 1:
            raise BenchError("--backend ct2 measures --batch 1 only (its n choices are a "
                             "different request shape); drop ct2 or use --batch 1")
        self.point = point
        self._dir = tempfile.mkdtemp(prefix="cgbench-ct2-")
        config = convert(point, self._dir)
        import ctranslate2

        device = "cpu" if point.device == "cpu" else "cuda"
        index = 0 if point.device == "cpu" else int(point.device.split(":")[1])
        threads = int(os.environ.get("OMP_NUM_THREADS") or len(os.sched_getaffinity(0)))
        self.generator = ctranslate2.Generator(self._dir, device=device, device_index=index,
                                               compute_type=COMPUTE_TYPES[point.dtype],
                                               intra_threads=threads)
        self.arch = config.arch
        if point.weights == "random":
            self.usable_ids = 256  # as the paddle backend's byte tokenizer
        else:
            from .backends import _dir_usable_ids

            self.usable_ids = _dir_usable_ids(point)
        self.load_s = time.perf_counter() - start

    def run(self, ids: list[int], new_tokens: int, batch: int):
        from .backends import Timing

        tokens = [_token(i) for i in ids]
        times: list[float] = []
        start = time.perf_counter()
        for _ in self.generator.generate_tokens(tokens, max_length=new_tokens, sampling_topk=1,
                                                end_token=[]):
            times.append((time.perf_counter() - start) * 1e3)
        e2e_ms = (time.perf_counter() - start) * 1e3
        return Timing(times[0], times[0], e2e_ms, times, len(times))

    def framework_memory(self) -> dict:
        return {"allocator_strategy": "ctranslate2"}

    def device_uuid(self) -> str | None:
        return None

    def __del__(self):
        shutil.rmtree(getattr(self, "_dir", ""), ignore_errors=True)
