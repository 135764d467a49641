"""Server settings: a dataclass validated on construction (flag > env var > default)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from engine import OptionError
from engine.generate import DEFAULT_MAX_BATCH

from .speculate import LINES_AHEAD, check_lines_ahead

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8978


@dataclass(frozen=True)
class ServeConfig:
    model: str
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    dtype: str = "float32"
    device: str = "cpu"
    api_key: str | None = None
    max_queue: int = 16
    max_batch: int = DEFAULT_MAX_BATCH  # sequences (n choices count n) decoded together
    kv_cache_mb: float | None = None  # KV cache the running sequences may reserve; None: engine's
    cors_origin: str | None = None
    request_timeout_s: float = 120.0
    max_body_bytes: int = 1 << 20
    grace_s: float = 10.0
    truncate: bool = True
    log_prompts: bool = False  # off: the prompt is the user's private code
    model_name: str | None = None
    impl: str = "fast"  # the engine's own Paddle forward; "reference" is PaddleNLP's model
    prefix_cache_mb: float | None = None  # KV cache kept to reuse earlier prompts; None: engine's
    supersede: bool = True  # a newer request from the same client cancels its stale ones
    speculate: bool = True  # while idle, compute the start of a client's next-line prompts
    speculate_lines: int = LINES_AHEAD  # ... for this many coming lines
    tensor_parallel: int = 1  # processes (GPUs) the model is split over

    def __post_init__(self):
        if not 0 <= self.port <= 65535:
            raise OptionError(f"--port must be 0 to 65535, got {self.port}")
        if self.max_queue < 0:
            raise OptionError(f"--max-queue must be >= 0, got {self.max_queue}")
        if self.max_batch < 1:
            raise OptionError(f"--max-batch must be >= 1 (sequences decoded together), "
                              f"got {self.max_batch}")
        if self.kv_cache_mb is not None and not (self.kv_cache_mb > 0
                                                   and math.isfinite(self.kv_cache_mb)):
            raise OptionError(f"--kv-cache-mb must be > 0 (leave it out to let the engine size "
                              f"it), got {self.kv_cache_mb}")
        if self.request_timeout_s <= 0:
            raise OptionError(f"--request-timeout must be > 0 seconds, got {self.request_timeout_s}")
        if self.max_body_bytes < 1024:
            raise OptionError(f"--max-body must be at least 1024 bytes, got {self.max_body_bytes}")
        if self.grace_s < 0:
            raise OptionError(f"--grace must be >= 0 seconds, got {self.grace_s}")
        if self.impl not in ("fast", "reference"):
            raise OptionError(f"--impl must be fast or reference, got {self.impl!r}")
        if self.prefix_cache_mb is not None and self.prefix_cache_mb < 0:
            raise OptionError(f"--prefix-cache-mb must be >= 0 (0 turns reuse off), "
                              f"got {self.prefix_cache_mb}")
        check_lines_ahead(self.speculate_lines)
        if self.tensor_parallel != 1:
            from engine.tensor_parallel.load import model_config, parse_devices
            from engine.tensor_parallel.plan import check_world, parse_world

            parse_devices(self.device, parse_world(self.tensor_parallel))
            if self.impl != "fast":
                raise OptionError(f"--impl {self.impl} cannot run split over GPUs (PaddleNLP's "
                                  "CodeGen has no tensor parallelism); use --impl fast")
            config = model_config(str(self.model))  # config.json only: nothing loads yet
            check_world(config.arch, self.tensor_parallel, config.source)
        if self.api_key is not None and not self.api_key.strip():
            object.__setattr__(self, "api_key", None)

    @property
    def served_name(self) -> str:
        """The model id shown in /v1/models and in every response."""
        if self.model_name:
            return self.model_name
        text = str(self.model).rstrip("/")
        if text.startswith("random:"):
            return text
        return text.rsplit("/", 1)[-1] or text

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def kv_cache_bytes(self) -> int | None:
        """`--kv-cache-mb` in bytes, for the scheduler (None: the engine decides)."""
        return None if self.kv_cache_mb is None else int(self.kv_cache_mb * 2**20)

    def load_kwargs(self) -> dict:
        """Arguments for `engine.load`."""
        kwargs = {"dtype": self.dtype, "device": self.device, "impl": self.impl}
        if self.tensor_parallel != 1:
            kwargs["tensor_parallel"] = self.tensor_parallel
        if self.prefix_cache_mb is not None:
            kwargs["prefix_cache_bytes"] = int(self.prefix_cache_mb * 2**20)
        return kwargs
