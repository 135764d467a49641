"""The sweep plan: options in, validated points out (nothing runs here)."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from engine.errors import EngineError
from engine.runtime import DTYPES, check_dtype, parse_device
from engine.tensor_parallel.plan import check_world
from engine.variants import DATA, SIZES, get_variant

from ..errors import BenchError

BACKENDS = ("paddle", "paddle-ref", "hf", "ct2")
# the weight dtypes each backend other than the engine's runs
BACKEND_DTYPES = {"hf": ("float32", "float16", "bfloat16"), "ct2": ("float32", "int8", "float16",
                                                                   "bfloat16")}
DEFAULTS = {
    "prompt_tokens": (128,), "new_tokens": (16,), "batch": (1,), "repeats": 3, "warmup": 1,
    "dtype": ("float32",), "backend": ("paddle",), "seed": 0,
}
CPU_QUICK_VARIANTS = ("350M-mono", "350M-multi", "350M-nl")
GPU_QUICK_VARIANTS = ("350M-mono", "2B-mono")


@dataclass(frozen=True)
class Point:
    """One measurement: a model, a backend and one request shape."""

    variant: str  # full name, e.g. codegen-350M-mono
    weights: str  # "random" or a model directory
    backend: str
    dtype: str
    device: str
    prompt_tokens: int
    new_tokens: int
    batch: int = 1
    repeats: int = 3
    warmup: int = 1
    seed: int = 0
    tensor_parallel: int = 1  # processes (GPUs) the model is split over

    @property
    def load_device(self) -> str:
        """What `engine.load` takes: the device, or N GPUs from it under tensor parallelism."""
        if self.tensor_parallel == 1 or self.device == "cpu":
            return self.device
        first = int(self.device.split(":")[1])
        return "gpu:" + ",".join(str(first + i) for i in range(self.tensor_parallel))

    @property
    def model_spec(self) -> str:
        """What `engine.load` takes for this point."""
        if self.weights == "random":
            return "random:" + get_variant(self.variant).short_name
        return self.weights

    @property
    def point_id(self) -> str:
        weights = "random" if self.weights == "random" else Path(self.weights).name
        return (f"{get_variant(self.variant).short_name}/{weights}/{self.backend}/{self.dtype}/"
                f"{self.device}/p{self.prompt_tokens}/n{self.new_tokens}/b{self.batch}"
                + (f"/tp{self.tensor_parallel}" if self.tensor_parallel > 1 else ""))

    def key(self) -> tuple:
        return tuple(str(getattr(self, c)) for c in (
            "variant", "weights", "backend", "dtype", "device", "prompt_tokens", "new_tokens",
            "batch", "tensor_parallel"))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Point":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def split_list(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def parse_ints(text: str | None, option: str, default: tuple[int, ...], minimum: int = 1) -> list[int]:
    items = split_list(text)
    if not items:
        return list(default)
    out = []
    for item in items:
        if not item.isdigit() or int(item) < minimum:
            raise BenchError(f"{option} {item!r}: expected whole numbers >= {minimum}, comma-separated "
                             f"(e.g. {option} 128,1024)")
        out.append(int(item))
    return out


def resolve_variants(variants: str | None, sizes: str | None, data: str | None,
                     device: str) -> list[str]:
    """Variant names from --variants, or the product of --sizes and --data, or the quick set."""
    names = split_list(variants)
    if names and (sizes or data):
        raise BenchError("give either --variants or --sizes/--data, not both")
    if not names and (sizes or data):
        size_list = split_list(sizes) or list(SIZES)
        data_list = split_list(data) or list(DATA)
        for s in size_list:
            if s not in SIZES and s != "tiny":
                raise BenchError(f"--sizes {s!r}: use {', '.join(SIZES)}")
        for d in data_list:
            if d not in DATA:
                raise BenchError(f"--data {d!r}: use {', '.join(DATA)}")
        names = ["tiny" if s == "tiny" else f"{s}-{d}" for s in size_list for d in data_list]
        names = list(dict.fromkeys(names))
    if not names:
        names = list(CPU_QUICK_VARIANTS if device == "cpu" else GPU_QUICK_VARIANTS)
    try:
        return [get_variant(n).name for n in names]
    except EngineError as exc:
        raise BenchError(f"--variants: {exc}") from None


def find_weights_dir(root: Path, variant: str) -> Path:
    """`codegen-<size>-<data>` under root (case-insensitive), or a clear error."""
    wanted = variant.lower()
    for child in sorted(root.iterdir()):
        if child.is_dir() and child.name.lower() == wanted:
            return child
    raise BenchError(f"--weights {root}: no {variant} directory in it; put the model in "
                     f"{root / variant} or use --weights random")


def weights_for(weights: str, variants: list[str]) -> dict[str, str]:
    if weights == "random":
        return {v: "random" for v in variants}
    root = Path(weights).expanduser()
    if not root.is_dir() or not os.access(root, os.R_OK | os.X_OK):
        raise BenchError(f"--weights {weights}: not a readable directory; give the directory that "
                         "holds codegen-<size>-<data> model directories, or `random`")
    out = {}
    for v in variants:
        out[v] = "random" if v == "codegen-tiny" else str(find_weights_dir(root, v))
    return out


def build_plan(variants: str | None = None, sizes: str | None = None, data: str | None = None,
               weights: str = "random", dtype: str | None = None, device: str = "cpu",
               prompt_tokens: str | None = None, new_tokens: str | None = None,
               batch: str | None = None, repeats: int | None = None, warmup: int | None = None,
               backend: str | None = None, seed: int = 0,
               tensor_parallel: str | None = None) -> list[Point]:
    """Every point of the sweep, in the order they will run (backends of one shape together)."""
    try:
        dev = str(parse_device(device))
    except EngineError as exc:
        raise BenchError(f"--device: {exc}") from None
    dtypes = split_list(dtype) or list(DEFAULTS["dtype"])
    backends = split_list(backend) or list(DEFAULTS["backend"])
    for b in backends:
        if b not in BACKENDS:
            raise BenchError(f"--backend {b!r}: use {', '.join(BACKENDS)} (comma-separated for several)")
    for d in dtypes:
        if d not in DTYPES:
            raise BenchError(f"--dtype {d!r}: use one of {', '.join(DTYPES)}")
        for b in backends:
            try:
                if b.startswith("paddle"):
                    check_dtype(d, parse_device(dev), "reference" if b == "paddle-ref" else "fast")
            except EngineError as exc:
                raise BenchError(f"--dtype: {exc}") from None
            if d not in BACKEND_DTYPES.get(b, DTYPES):
                raise BenchError(f"--dtype {d} is not one --backend {b} runs; it runs "
                                 f"{', '.join(BACKEND_DTYPES[b])}: drop {b} or that dtype")
    names = resolve_variants(variants, sizes, data, dev)
    sources = weights_for(weights, names)
    prompts = parse_ints(prompt_tokens, "--prompt-tokens", DEFAULTS["prompt_tokens"])
    news = parse_ints(new_tokens, "--new-tokens", DEFAULTS["new_tokens"])
    batches = parse_ints(batch, "--batch", DEFAULTS["batch"])
    ways = parse_ints(tensor_parallel, "--tensor-parallel", (1,))
    for n in ways:
        if n > 1 and any(b != "paddle" for b in backends):
            raise BenchError(f"--tensor-parallel {n}: only the paddle backend splits a model over "
                             "processes; use --backend paddle")
        for name in names:
            try:
                check_world(get_variant(name).arch, n, name)
            except EngineError as exc:
                raise BenchError(str(exc)) from None
    repeats = DEFAULTS["repeats"] if repeats is None else repeats
    warmup = DEFAULTS["warmup"] if warmup is None else warmup
    if repeats < 1:
        raise BenchError(f"--repeats {repeats}: need at least 1 measured run")
    if warmup < 0:
        raise BenchError(f"--warmup {warmup}: must be 0 or more")
    context = get_variant(names[0]).arch.n_positions
    for p in prompts:
        for n in news:
            if p + n > context:
                raise BenchError(f"--prompt-tokens {p} + --new-tokens {n} exceed the {context}-token "
                                 "context; use shorter prompts or fewer new tokens")
    points = []
    for name in names:  # backends innermost: their points run side by side in time
        for d in dtypes:
            for p in prompts:
                for n in news:
                    for bs in batches:
                        for tp in ways:
                            for b in backends:
                                points.append(Point(name, sources[name], b, d, dev, p, n, bs,
                                                    repeats, warmup, seed, tp))
    return points


def estimated_cost(point: Point) -> float:
    """Relative cost of a point, for the ETA (prefill ~ prompt tokens, decode ~ new tokens)."""
    params = get_variant(point.variant).arch.param_count / 3.6e8
    per_run = params * (point.prompt_tokens / 60 + point.new_tokens * point.batch ** 0.3)
    return 60 * params + (point.repeats + point.warmup) * per_run
