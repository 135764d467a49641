"""Build the model and fill it: from a model directory or random weights.

Every model implements the interface in engine/interface.py; `build_model` picks the
engine's own forward (`FastCodeGen`) or PaddleNLP's (`PaddleCodeGen`, the reference).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import ModelConfig, load_config
from .errors import ConfigError, ModelFilesError, OptionError
from .interface import KVCache, Prefill
from .runtime import (Device, activate_device, check_dtype, compute_dtype_for, ensure_dygraph,
                      import_paddle,
                      import_paddlenlp_transformers)

WEIGHT_FILES = ("model.safetensors", "model_state.pdparams")
PARTIAL_SUFFIXES = ("_tmp", ".part", ".tmp", ".partial", ".incomplete")
_POOL_SIZE = 4_194_301  # prime, so rows of a filled matrix do not repeat in step


@dataclass
class PaddleCodeGen:
    """PaddleNLP's CodeGenForCausalLM behind the engine's `Model` interface (engine/interface.py):
    the reference the fast model is held to.  Its cache is PaddleNLP's own (one (key, value)
    pair per layer, [1, heads, length, head_dim], grown by concatenation); it cannot stop a
    prompt part-way (`cancel` is checked only before it starts) and decodes row by row."""

    layer: object
    config: ModelConfig
    dtype: str
    device: Device

    def __post_init__(self):
        self._paddle = import_paddle()

    def _run(self, ids: np.ndarray, past):
        paddle = ensure_dygraph(self._paddle)
        with paddle.no_grad():
            input_ids = paddle.to_tensor(ids, dtype="int64")
            # An explicit zero mask: PaddleNLP's default masks every token equal
            # to pad (= end of text), which must still be attended to.
            mask = paddle.zeros([ids.shape[0], 1, 1, 1], dtype="float32")
            hidden, new_cache = self.layer.transformer(
                input_ids, attention_mask=mask, cache=past, use_cache=True, return_dict=False)[:2]
            logits = self.layer.lm_head(hidden[:, -1, :]).astype("float32")
            return logits.numpy(), tuple(new_cache)

    def new_cache(self) -> KVCache:
        return KVCache(None, self.kv_bytes_per_token(), str(self.device))

    def prefill(self, cache: KVCache, tokens, cancel=None, resume=None) -> Prefill:
        if cancel is not None and cancel.is_set():
            return Prefill(None)
        logits, cache.data = self._run(np.asarray([list(tokens)], np.int64), cache.data or None)
        cache.length = cache.capacity = cache.data[0][0].shape[2]
        return Prefill(logits[0])

    def decode(self, tokens: np.ndarray, caches) -> np.ndarray:
        """One step for each row: `tokens` [rows] -> logits [rows, vocab], row by row."""
        rows = []
        for token, cache in zip(np.asarray(tokens).reshape(-1), caches):
            logits, data = self._run(np.asarray([[int(token)]], np.int64), cache.data)
            rows.append(logits[0])
            cache.data, cache.length, cache.capacity = data, cache.length + 1, cache.length + 1
        return np.stack(rows)

    def fork(self, cache: KVCache, upto: int, room: int = 0) -> KVCache:
        fresh = self.new_cache()
        if upto:
            fresh.data = tuple((k[:, :, :upto].clone(), v[:, :, :upto].clone())
                               for k, v in cache.data)
            fresh.length = fresh.capacity = upto
        return fresh

    def trim(self, cache: KVCache, length: int) -> None:
        if length >= cache.length:
            return
        cache.data = (tuple((k[:, :, :length], v[:, :, :length]) for k, v in cache.data)
                      if length else None)
        cache.length = cache.capacity = length

    def reserve(self, cache: KVCache, tokens: int) -> None:
        """Nothing to do: PaddleNLP grows its cache by concatenation at every call."""

    def release(self, cache: KVCache) -> None:
        cache.data, cache.length, cache.capacity = None, 0, 0

    def kv_bytes_per_token(self) -> int:
        return self.config.arch.kv_bytes_per_token(compute_dtype_for(self.dtype, self.device))

    def param_count(self) -> int:
        return sum(int(np.prod(p.shape)) for p in self.layer.parameters())

    def logits(self, ids: list[int]) -> np.ndarray:
        """Logits for every position of `ids` ([len, vocab]); for checks, not serving."""
        paddle = ensure_dygraph(self._paddle)
        with paddle.no_grad():
            input_ids = paddle.to_tensor([ids], dtype="int64")
            mask = paddle.zeros([1, 1, 1, 1], dtype="float32")
            hidden = self.layer.transformer(input_ids, attention_mask=mask, use_cache=False,
                                            return_dict=False)[0]
            return self.layer.lm_head(hidden[0]).astype("float32").numpy()


def _construct(config: ModelConfig, dtype: str):
    """CodeGenForCausalLM with parameters not yet initialised (we fill them)."""
    paddle = import_paddle()
    transformers = import_paddlenlp_transformers()
    from paddlenlp.transformers.model_utils import no_init_weights

    previous = paddle.get_default_dtype()
    paddle.set_default_dtype("float32")  # the causal-mask buffer; parameters are cast below
    try:
        with paddle.LazyGuard(), no_init_weights():
            layer = transformers.CodeGenForCausalLM(
                transformers.CodeGenConfig(**config.paddlenlp_kwargs()))
    finally:
        paddle.set_default_dtype(previous)
    # Each layer builds its own [1, 1, n_pos, n_pos] mask (16 MB each at 2048): share one.
    shared = layer.transformer.h[0].attn.causal_mask
    for block in layer.transformer.h:
        block.attn.causal_mask = shared
    layer.eval()
    return layer


def _set_parameters(layer, arrays, dtype: str) -> None:
    """Copy numpy arrays (float32 or already `dtype`) into the parameters."""
    paddle = import_paddle()
    params = dict(layer.named_parameters())
    for name, array in arrays:
        param = params[name]
        if dtype == "bfloat16":
            param.set_value(paddle.to_tensor(np.asarray(array, np.float32)).astype("bfloat16"))
        else:
            param.set_value(np.ascontiguousarray(array, dtype=dtype))


IMPLEMENTATIONS = ("fast", "reference")


def build_model(arrays, config: ModelConfig, dtype: str, device: Device, impl: str):
    """The model behind the engine's interface: `fast` (ours) or `reference` (PaddleNLP's)."""
    if impl == "fast":
        from .fast_model import FastCodeGen

        return FastCodeGen(arrays, config, dtype, device, compute_dtype_for(dtype, device))
    if impl == "reference":
        layer = _construct(config, dtype)
        _set_parameters(layer, arrays, dtype)
        return PaddleCodeGen(layer, config, dtype, device)
    raise OptionError(f"impl {impl!r} is not known; use one of {', '.join(IMPLEMENTATIONS)}")


def random_arrays(config: ModelConfig, seed: int = 0):
    """Random weights of the right shapes, fast: one pool of normals, tiled.

    PaddleNLP's initializer takes ~19 s for 350M.  Here every tensor is the pool
    tiled from a random offset into one reused staging buffer (fresh pages cost
    more than the copy), so yielded arrays are only valid until the next one.
    Layer-norm weights are 1 and biases 0, as after a real initialisation.
    """
    rng = np.random.default_rng(seed)
    pool = rng.standard_normal(_POOL_SIZE, dtype=np.float32) * np.float32(0.02)
    shapes = config.arch.tensor_shapes()
    staging = np.empty(max(math.prod(s) for s in shapes.values()), np.float32)
    for name, shape in shapes.items():
        size = math.prod(shape)
        out = staging[:size]
        if name.endswith(("ln_1.weight", "ln_f.weight")):
            out.fill(1.0)
        elif name.endswith("bias"):
            out.fill(0.0)
        else:
            pos = int(rng.integers(_POOL_SIZE))
            filled = 0
            while filled < size:
                chunk = min(_POOL_SIZE - pos, size - filled)
                out[filled:filled + chunk] = pool[pos:pos + chunk]
                filled += chunk
                pos = 0
        yield name, out.reshape(shape)


def find_weight_file(model_dir: Path) -> Path:
    for name in WEIGHT_FILES:
        path = model_dir / name
        if path.is_file():
            return path
    leftovers = sorted(p.name for p in model_dir.iterdir()
                       if p.name.startswith(("model_state", "model.safetensors"))
                       and p.name.endswith(PARTIAL_SUFFIXES))
    if leftovers:
        raise ModelFilesError(f"{model_dir}: no complete weight file, only {', '.join(leftovers)} "
                              "(left by an interrupted copy or download); copy the weights again")
    raise ModelFilesError(f"{model_dir}: no weight file ({' or '.join(WEIGHT_FILES)}); copy the "
                          "model's weights here, or convert a Hugging Face checkpoint with "
                          "`cgconvert from-hf`")


def check_weights(weights: dict[str, np.ndarray], config: ModelConfig, path: Path) -> None:
    """Every expected tensor present with the shape the config gives (mask buffers dropped)."""
    masks, missing, extra = config.arch.match_names(weights)
    for name in masks:
        del weights[name]
    expected = config.arch.tensor_shapes()
    if missing:
        raise ModelFilesError(f"{path}: {len(missing)} tensor(s) missing, first {missing[0]!r}; "
                              "the file is incomplete or not a CodeGen checkpoint, copy it again")
    if extra:
        raise ConfigError(f"{path}: unexpected tensor {extra[0]!r} ({len(extra)} in all): the "
                          f"weights have more layers than {config.source} says; use the config "
                          "that came with these weights")
    for name, shape in expected.items():
        got = tuple(weights[name].shape)
        if got != shape:
            hint = ("it looks like a Hugging Face checkpoint, convert it with `cgconvert from-hf`"
                    if got == shape[::-1] and len(shape) == 2 else
                    "the config and the weights are of different sizes: use the config that "
                    "came with these weights")
            raise ConfigError(f"{path}: {name} has shape {list(got)} but {config.source} "
                              f"implies {list(shape)}; {hint}")


@dataclass(frozen=True)
class LoadedModel:
    model: object  # engine.interface.Model
    tokenizer: object
    config: ModelConfig
    source: str
    load_s: float


def load_random(variant_name: str, dtype: str, device: Device, seed: int = 0,
                impl: str = "fast", tokenizer_dir: Path | None = None) -> LoadedModel:
    """Random weights of a variant; bytes as tokens, or the BPE tokenizer in `tokenizer_dir`."""
    from .config import config_from_dict
    from .tokenizer import ByteTokenizer
    from .variants import get_variant

    start = time.perf_counter()
    variant = get_variant(variant_name)
    check_dtype(dtype, device, impl)
    source = f"random:{variant.short_name}"
    config_dict = variant.arch.config_dict()
    tokenizer = None
    if tokenizer_dir is not None:
        tokenizer, eos = random_tokenizer(Path(tokenizer_dir).expanduser(), source,
                                          variant.arch.vocab_size)
        config_dict.update(eos_token_id=eos, pad_token_id=eos)
    config = config_from_dict(config_dict, source)
    activate_device(device, dtype)
    model = build_model(random_arrays(config, seed), config, dtype, device, impl)
    return LoadedModel(model, tokenizer or ByteTokenizer(config.eos_token_id), config,
                       source, time.perf_counter() - start)


def random_tokenizer(tokenizer_dir: Path, source: str, vocab_size: int):
    """A CodeGen-layout tokenizer directory for random weights, and its end-of-text id."""
    from .tokenizer import TOKENIZER_FILES, load_tokenizer

    missing = [f for f in TOKENIZER_FILES if not (tokenizer_dir / f).is_file()]
    if missing:
        what = "no such directory" if not tokenizer_dir.is_dir() else f"no {' or '.join(missing)}"
        raise ModelFilesError(f"{tokenizer_dir}: {what}; give a tokenizer directory holding "
                              f"{' and '.join(TOKENIZER_FILES)} (train one with "
                              "`cgbench train-tokenizer`)")
    # Encoded as CodeGen's own tokenizer does (newlines before indentation kept).
    tokenizer = load_tokenizer(tokenizer_dir)
    eos = tokenizer.paddlenlp.encoder.get("<|endoftext|>")
    if eos is None:
        raise ModelFilesError(f"{tokenizer_dir}: vocab.json has no <|endoftext|> token; train the "
                              "tokenizer with `cgbench train-tokenizer` (it adds one)")
    usable = tokenizer.usable_ids()
    if usable > vocab_size:
        added = usable - len(tokenizer.paddlenlp.encoder)
        raise ConfigError(f"{tokenizer_dir}: the tokenizer has {usable} token ids but {source} "
                          f"has {vocab_size} embedding rows; train it with a smaller vocabulary "
                          f"(`cgbench train-tokenizer --vocab-size N`, N at most "
                          f"{vocab_size - added}) or use a larger variant")
    tokenizer.eos_token_id = eos
    return tokenizer, eos


def load_directory(model_dir: Path, dtype: str, device: Device, impl: str = "fast") -> LoadedModel:
    from .tokenizer import load_tokenizer
    from .quant import attach_scales
    from .weights import read_weights

    start = time.perf_counter()
    if not model_dir.exists():
        raise ModelFilesError(f"{model_dir}: no such directory; give a model directory or "
                              "random:<variant> (e.g. random:350M-mono)")
    if not model_dir.is_dir():
        raise ModelFilesError(f"{model_dir}: not a directory; give the directory that holds "
                              "config.json and the weights")
    check_dtype(dtype, device, impl)
    config = load_config(model_dir)
    weight_path = find_weight_file(model_dir)
    tokenizer = load_tokenizer(model_dir, config.eos_token_id)
    if tokenizer.usable_ids() > config.arch.vocab_size:
        raise ConfigError(f"{model_dir}: the tokenizer has {tokenizer.usable_ids()} tokens but "
                          f"{config.source} gives vocab_size {config.arch.vocab_size}; the "
                          "tokenizer files belong to another model, copy the matching ones")
    weights = attach_scales(read_weights(weight_path), weight_path)  # int8 files: data + scale
    check_weights(weights, config, weight_path)
    activate_device(device, dtype)
    model = build_model(weights.items(), config, dtype, device, impl)
    del weights
    return LoadedModel(model, tokenizer, config, str(model_dir), time.perf_counter() - start)
