"""Backends: load a point's model and time one request the same way for each.

A `Timing` holds the clocks the engine's `GenerationResult` carries: ttft (prefill plus the
first chosen token), prefill, e2e and the timestamp of each decode step's tokens from the
request start.  `hf` is what users would pick instead: transformers' CodeGenForCausalLM with
random weights of the same architecture, greedy, a fixed number of new tokens, through our own
decode loop with the KV cache, timed with the same clocks.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from engine.variants import get_variant

from .plan import Point


@dataclass
class Timing:
    ttft_ms: float
    prefill_ms: float
    e2e_ms: float
    token_times_ms: list[float]
    completion_tokens: int


class PaddleBackend:
    """This project's engine: what cgserve serves."""

    name = "paddle"
    impl = "fast"

    def __init__(self, point: Point):
        from engine import load

        self.point = point
        # No prefix reuse: every repeat sends the same prompt and must compute all of it.
        self.gen = load(point.model_spec, dtype=point.dtype, device=point.load_device,
                        seed=point.seed, impl=self.impl, prefix_cache_bytes=0,
                        tensor_parallel=point.tensor_parallel)
        self.load_s = self.gen.load_s
        self.arch = self.gen.config.arch
        self.usable_ids = min(self.gen.tokenizer.usable_ids(), self.arch.vocab_size)

    def run(self, ids: list[int], new_tokens: int, batch: int) -> Timing:
        from engine import SamplingParams

        params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True, temperature=0.0,
                                seed=self.point.seed, n=batch, truncate=False)
        r = self.gen.generate(ids, params)
        return Timing(r.ttft_ms, r.prefill_ms, r.e2e_ms, list(r.token_times_ms),
                      r.completion_tokens)

    def framework_memory(self) -> dict:
        if not self.point.device.startswith("gpu"):
            return {"allocator_strategy": _paddle_allocator_strategy()}
        import paddle

        cuda = paddle.device.cuda
        return {"alloc_max_allocated_mb": cuda.max_memory_allocated() / 2**20,
                "alloc_max_reserved_mb": cuda.max_memory_reserved() / 2**20,
                "allocator_strategy": _paddle_allocator_strategy(),
                "cuda_version": paddle.version.cuda()}

    def device_uuid(self) -> str | None:
        return None  # Paddle does not expose it on every version: map through CUDA_VISIBLE_DEVICES


def _paddle_allocator_strategy() -> str:
    try:
        import paddle

        return str(paddle.get_flags(["FLAGS_allocator_strategy"])["FLAGS_allocator_strategy"])
    except Exception:
        import os

        return os.environ.get("FLAGS_allocator_strategy", "")


class HfBackend:
    """transformers' CodeGenForCausalLM, random weights, greedy, our own cached decode loop."""

    name = "hf"

    def __init__(self, point: Point):
        start = time.perf_counter()
        import torch
        from transformers import CodeGenConfig, CodeGenForCausalLM

        self.torch = torch
        self.point = point
        self.arch = get_variant(point.variant).arch if point.weights == "random" else _dir_arch(point)
        torch.manual_seed(point.seed)
        config = CodeGenConfig(**{k: v for k, v in self.arch.config_dict().items()
                                  if k not in ("architectures", "model_type")})
        dtype = getattr(torch, point.dtype)
        self.device = "cpu" if point.device == "cpu" else point.device.replace("gpu", "cuda")
        self.model = CodeGenForCausalLM(config).to(dtype=dtype, device=self.device).eval()
        self.usable_ids = 256 if point.weights == "random" else _dir_usable_ids(point)
        self._sync()
        self.load_s = time.perf_counter() - start

    def _sync(self) -> None:
        if self.device != "cpu":
            self.torch.cuda.synchronize()

    def run(self, ids: list[int], new_tokens: int, batch: int) -> Timing:
        torch = self.torch
        times: list[float] = []
        with torch.inference_mode():
            start = time.perf_counter()
            input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
            out = self.model(input_ids=input_ids, use_cache=True)
            self._sync()
            prefill_ms = (time.perf_counter() - start) * 1e3
            past = out.past_key_values
            logits = out.logits[:, -1:, :]
            if batch > 1:  # n rows continuing one prompt, as the engine's n choices
                logits = logits.expand(batch, -1, -1)
                past.batch_repeat_interleave(batch)
            for step in range(new_tokens):
                now = (time.perf_counter() - start) * 1e3
                token = logits[:, -1, :].argmax(dim=-1, keepdim=True)
                times.append(now)
                if step == new_tokens - 1:
                    break
                out = self.model(input_ids=token, past_key_values=past, use_cache=True)
                past = out.past_key_values
                logits = out.logits
                self._sync()
            e2e_ms = (time.perf_counter() - start) * 1e3
        return Timing(times[0], prefill_ms, e2e_ms, times, len(times) * batch)

    def framework_memory(self) -> dict:
        if self.device == "cpu":
            return {"allocator_strategy": "torch"}
        cuda = self.torch.cuda
        return {"alloc_max_allocated_mb": cuda.max_memory_allocated() / 2**20,
                "alloc_max_reserved_mb": cuda.max_memory_reserved() / 2**20,
                "allocator_strategy": "torch", "cuda_version": self.torch.version.cuda}

    def device_uuid(self) -> str | None:
        if self.device == "cpu":
            return None
        try:
            return str(self.torch.cuda.get_device_properties(self.device).uuid)
        except Exception:
            return None


def _dir_arch(point: Point):
    from engine.config import load_config
    from pathlib import Path

    return load_config(Path(point.weights)).arch


def _dir_usable_ids(point: Point) -> int:
    from pathlib import Path

    from engine.config import load_config
    from engine.tokenizer import load_tokenizer

    config = load_config(Path(point.weights))
    return min(load_tokenizer(Path(point.weights), config.eos_token_id).usable_ids(),
               config.arch.vocab_size)


class PaddleReferenceBackend(PaddleBackend):
    """The engine's decode loop over PaddleNLP's own CodeGenForCausalLM (the unoptimised path)."""

    name = "paddle-ref"
    impl = "reference"


def _ct2_backend(point: Point):
    from .ct2_backend import Ct2Backend

    return Ct2Backend(point)


BACKENDS = {"paddle": PaddleBackend, "paddle-ref": PaddleReferenceBackend, "hf": HfBackend,
            "ct2": _ct2_backend}


def prompt_ids(seed: int, repeat: int, length: int, usable_ids: int) -> list[int]:
    """A prompt of exactly `length` random token ids, different for each repeat."""
    rng = np.random.default_rng([seed, repeat, length])
    return rng.integers(0, usable_ids, size=length).tolist()
