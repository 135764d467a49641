"""codegen-workbench engine: load CodeGen models on PaddleNLP and generate.

    from engine import load, SamplingParams
    gen = load("random:350M-mono")            # or a model directory
    result = gen.generate("def fib(n):", SamplingParams(max_new_tokens=32, stop=("\\n\\n",)))
"""
from __future__ import annotations

from importlib import metadata
from pathlib import Path

from .errors import (ConfigError, EngineError, ModelFilesError, OptionError,
                     UnknownVariantError, WeightFileError)
from .generate import (DEFAULT_MAX_BATCH, Choice, GenerationResult, Generator, Stream,
                       TokenEvent)
from .runtime import parse_device
from .sampling import SamplingParams
from .variants import TINY, VARIANTS, Architecture, Variant, get_variant

try:
    __version__ = metadata.version("codegen-workbench")
except metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"

RANDOM_PREFIX = "random:"
DEFAULT_MODEL = "random:350M-mono"


def load(model: str | Path = DEFAULT_MODEL, dtype: str = "float32", device: str = "cpu",
         seed: int = 0, impl: str = "fast",
         prefix_cache_bytes: int | None = None,
         tokenizer: str | Path | None = None, max_batch: int = DEFAULT_MAX_BATCH,
         kv_cache_bytes: int | None = None, tensor_parallel: int = 1) -> Generator:
    """Load a model directory or `random:<variant>` and return its Generator.

    `impl`: "fast" (the engine's own Paddle forward) or "reference" (PaddleNLP's
    CodeGenForCausalLM, which the tests compare the fast one against); both give
    the same logits to float rounding.  `prefix_cache_bytes`: KV-cache budget for
    reusing the prompts of earlier requests (0 turns reuse off, None: four full
    contexts).  `max_batch`: sequences decoded together; `kv_cache_bytes`: the KV
    cache running requests may reserve (None: `max_batch` full contexts, at most half the
    memory free after loading).  `tokenizer`: with
    `random:<variant>`, a directory of CodeGen-layout BPE files (vocab.json, merges.txt, added_tokens.json; e.g. from
    `cgbench train-tokenizer`) to use instead of one token per byte.
    `tensor_parallel`: split the model over this many processes (1, 2 or 4; `device` "gpu"
    means GPUs 0..N-1, or a list "gpu:0,1"; see engine/tensor_parallel); this process becomes
    rank 0 and starts the others, which stop when it does.  Never
    contacts a hub or download server.  Raises :class:`EngineError` subclasses, each
    with a one-line message naming the problem and the fix.
    """
    from .model import load_directory, load_random

    spec = str(model)
    if tensor_parallel != 1:
        from .tensor_parallel.load import load_tensor_parallel
        from .tensor_parallel.plan import parse_world

        if tokenizer is not None and not spec.startswith(RANDOM_PREFIX):
            raise OptionError(f"{spec}: a tokenizer directory goes only with random:<variant>; "
                              "a model directory uses the tokenizer files beside its weights")
        loaded = load_tensor_parallel(spec, dtype, device, parse_world(tensor_parallel), seed,
                                      impl, tokenizer)
        return Generator(loaded, prefix_cache_bytes=prefix_cache_bytes, max_batch=max_batch,
                         kv_cache_bytes=kv_cache_bytes)
    dev = parse_device(device)
    if spec.startswith(RANDOM_PREFIX):
        loaded = load_random(spec[len(RANDOM_PREFIX):], dtype, dev, seed, impl,
                             None if tokenizer is None else Path(tokenizer))
    else:
        if tokenizer is not None:
            raise OptionError(f"{spec}: a tokenizer directory goes only with random:<variant>; "
                              "a model directory uses the tokenizer files beside its weights")
        loaded = load_directory(Path(spec).expanduser(), dtype, dev, impl)
    return Generator(loaded, prefix_cache_bytes=prefix_cache_bytes, max_batch=max_batch,
                     kv_cache_bytes=kv_cache_bytes)


__all__ = [
    "load", "Generator", "GenerationResult", "Choice", "Stream", "TokenEvent", "SamplingParams",
    "EngineError", "ConfigError", "ModelFilesError", "OptionError", "UnknownVariantError",
    "WeightFileError", "VARIANTS", "TINY", "Variant", "Architecture", "get_variant",
    "DEFAULT_MODEL", "__version__",
]
