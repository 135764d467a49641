"""`cgbench recommend RUN --memory 24GB`: the most capable variant that fits, and why others don't.

Memory a variant needs on one GPU, for a full context (2048 tokens) at the given batch:
  measured  - the run's device-wide peak (minus idle; includes the CUDA context) plus the KV
              cache for the context the measurement did not use;
  estimated - weight bytes + KV cache + prefill workspace + CUDA context (430 MB, the top of the
              300-430 MB range with lazy module loading) for variants the run did not measure
              on a GPU.
A variant fits when that is at most HEADROOM of the GPU's memory (allocator fragmentation).
Latency limits use the run's paddle measurements at the prompt length asked for, scaled by weight
bytes (tpot, bandwidth bound) or parameters (ttft, compute bound) for unmeasured sizes; with
`--gpu NAME` and a run from another device, the bandwidth floor of that GPU at 80% efficiency.

With `--gpus N > 1`, a variant too big for one GPU is tried split over 2 or 4 of them (tensor
parallelism, `cgserve MODEL --tensor-parallel K`): per GPU it needs its shard of the weights
(engine/tensor_parallel/plan.py's local_bytes: the layers' matrices / K, and the embedding and
lm_head / K where K divides the vocabulary, as it does for every variant, else whole), its
heads' part of the KV cache (float32 where the GPU computes in float32: a P40's float16 storage),
the prefill workspace of its heads and MLP columns, and the CUDA context.  Decode latency is
scaled by the bytes one GPU reads per step (its shard), the all-reduces and the logits'
gather not counted.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import pandas as pd

from engine.errors import OptionError
from engine.tensor_parallel.plan import ShardPlan, check_world
from engine.variants import ARCHITECTURES, DATA_NOTES, SIZES, TINY, get_variant

from ..errors import BenchError
from ..hardware import lookup_gpu
from .frames import ok_points, points_frame

CUDA_CONTEXT_MB = 430
HEADROOM = 0.95
FLOOR_EFFICIENCY = 0.8  # published runs reach 76-84% of the bandwidth floor
MiB = 2**20


def parse_memory(text: str) -> float:
    """`24GB`, `24G`, `24GiB`, `24576MB` -> MiB."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([GM])(I?B)?\s*", str(text).upper())
    if not m:
        raise BenchError(f"--memory {text!r}: give a size like 24GB or 16000MB")
    value = float(m.group(1)) * (1024 if m.group(2) == "G" else 1)
    if value <= 0:
        raise BenchError(f"--memory {text!r}: must be more than zero")
    return value


def workspace_bytes(arch, context: int, dtype_bytes: int) -> int:
    """Prefill transients of the largest layer: attention scores and the MLP activations."""
    scores = 2 * arch.n_head * context * context * 4  # fp32 scores and softmax
    mlp = context * arch.inner_dim * dtype_bytes * 2
    return scores + mlp


@dataclass
class Candidate:
    size: str
    dtype: str
    need_mb: float
    how: str  # measured / estimated
    fits: bool = False
    split_fits: bool = False
    tensor_parallel: int = 1  # GPUs the model is split over (cgserve --tensor-parallel)
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    latency_how: str = ""
    reasons: list[str] = None

    @property
    def label(self) -> str:
        return f"{self.size} {self.dtype}"


def estimate_need_mb(size: str, dtype: str, context: int, batch: int, gpus: int = 1) -> float:
    arch = ARCHITECTURES[size] if size != "tiny" else TINY.arch
    per_byte = 4 if dtype == "float32" else 2
    total = (arch.weight_bytes(dtype) + arch.kv_bytes_per_token(dtype) * context * batch) / gpus
    return (total + workspace_bytes(arch, context, per_byte)) / MiB + CUDA_CONTEXT_MB


def tensor_parallel_need_mb(size: str, dtype: str, context: int, batch: int, world: int,
                            kv_dtype: str = "float32") -> float:
    """Memory on each of `world` GPUs for a variant split `world` ways (see the docstring)."""
    arch = ARCHITECTURES[size] if size != "tiny" else TINY.arch
    per_byte = 4 if dtype == "float32" else 2
    weights = ShardPlan(arch, 0, world).local_bytes(per_byte)
    kv = arch.kv_bytes_per_token(kv_dtype) * context * batch / world
    scores = 2 * (arch.n_head // world) * context * context * 4
    mlp = context * (arch.inner_dim // world) * 4 * 2
    return (weights + kv + scores + mlp) / MiB + CUDA_CONTEXT_MB


def _split_gib(size: str, dtype: str, context: int, batch: int, world: int) -> float:
    return tensor_parallel_need_mb(size, dtype, context, batch, world) / 1024


def split_ways(size: str, gpus: int) -> list[int]:
    """Tensor-parallel widths this variant can run at on `gpus` GPUs (more than one)."""
    arch = ARCHITECTURES[size] if size != "tiny" else TINY.arch
    out = []
    for world in (2, 4):
        if world <= gpus:
            try:
                check_world(arch, world)
            except OptionError:
                continue
            out.append(world)
    return out


def _measured_memory(points: pd.DataFrame, size: str, dtype: str, context: int, batch: int):
    """The largest measured GPU peak of the size at this dtype, extended to `context` tokens."""
    sel = points[(points["size"] == size) & (points["dtype"] == dtype)
                 & (points["backend"] == "paddle") & points["gpu_peak_device_mb"].notna()]
    if sel.empty:
        return None
    unused = (context - sel["prompt_tokens"] - sel["new_tokens"]).clip(lower=0)
    return float((sel["gpu_peak_device_mb"] + sel["kv_bytes_per_token"] * unused * batch / MiB).max())


def _latency(points: pd.DataFrame, size, dtype, prompt, gpu_name, run_device_name):
    """(ttft_ms, tpot_ms, how) for a size at a prompt length, measured or scaled."""
    ok = points[(points["backend"] == "paddle") & (points["dtype"] == dtype)]
    target = lookup_gpu(gpu_name) if gpu_name else None
    same_device = not gpu_name or (run_device_name and lookup_gpu(run_device_name) == target)
    arch = ARCHITECTURES[size]
    if len(ok) and same_device:
        at_prompt = ok[ok["prompt_tokens"] == prompt]
        exact = at_prompt[at_prompt["size"] == size]
        if len(exact):
            return float(exact["ttft_ms_mean"].mean()), _mean_tpot(exact), "measured"
        ref = at_prompt[at_prompt["size"].isin(list(ARCHITECTURES))]
        if len(ref):
            r = ref.iloc[[0]]
            base_size = r["size"].iloc[0]
            base = ARCHITECTURES[base_size]
            scale_b = arch.weight_bytes(dtype) / base.weight_bytes(dtype)
            scale_p = arch.param_count / base.param_count
            return (float(r["ttft_ms_mean"].iloc[0]) * scale_p,
                    (_mean_tpot(r) or math.nan) * scale_b, f"scaled from {base_size}")
    if target:
        floor = arch.weight_bytes(dtype) / (target.bandwidth_gbps * 1e9) * 1e3
        return None, floor / FLOOR_EFFICIENCY, f"{target.name} bandwidth floor / {FLOOR_EFFICIENCY}"
    return None, None, "not measured"


def _mean_tpot(points: pd.DataFrame):
    values = points["tpot_ms_mean"].dropna()
    return float(values.mean()) if len(values) else None


def recommend(rows: list[dict] | pd.DataFrame, env: dict, memory_mb: float, gpus: int = 1,
              max_ttft_ms: float | None = None, max_tpot_ms: float | None = None,
              prompt_tokens: int | None = None, context: int = 2048, batch: int = 1,
              dtypes: tuple[str, ...] = ("float32", "float16"), data: str = "mono",
              gpu_name: str | None = None) -> dict:
    if gpus < 1:
        raise BenchError(f"--gpus {gpus}: need at least 1")
    if data not in DATA_NOTES:
        raise BenchError(f"--data {data!r}: use {', '.join(DATA_NOTES)}")
    if gpu_name and not lookup_gpu(gpu_name):
        raise BenchError(f"--gpu {gpu_name!r}: not in the bandwidth table (P40, V100, T4, A10, A100, H100, H200)")
    points = ok_points(points_frame(rows))
    prompt = prompt_tokens or (int(points["prompt_tokens"].max()) if len(points) else 1024)
    gpu_names = points["gpu_name"].dropna()
    gpu_names = gpu_names[gpu_names != ""]
    run_gpu = (gpu_names.iloc[0] if len(gpu_names) else None) or env.get("gpu_name")
    candidates = []
    for size in reversed(SIZES):
        for dtype in dtypes:
            need = _measured_memory(points, size, dtype, context, batch)
            how = "measured" if need is not None else "estimated"
            if need is None:
                need = estimate_need_mb(size, dtype, context, batch)
            c = Candidate(size, dtype, need, how, reasons=[])
            c.fits = need <= memory_mb * HEADROOM
            if not c.fits:
                for world in split_ways(size, gpus):
                    split = tensor_parallel_need_mb(size, dtype, context, batch, world)
                    if split <= memory_mb * HEADROOM:
                        c.fits = c.split_fits = True
                        c.need_mb, c.tensor_parallel = split, world
                        c.how = f"estimated, {world}-way split"
                        break
            if not c.fits:
                ways = split_ways(size, gpus)
                c.reasons.append(f"needs {need / 1024:.1f} GiB ({how}) > {HEADROOM:.0%} of "
                                 f"{memory_mb / 1024:.0f} GiB" + (
                                     f"; split {ways[-1]} ways still "
                                     f"{_split_gib(size, dtype, context, batch, ways[-1]):.1f} "
                                     "GiB per GPU" if ways else ""))
            c.ttft_ms, c.tpot_ms, c.latency_how = _latency(points, size, dtype, prompt, gpu_name, run_gpu)
            if c.tensor_parallel > 1 and c.tpot_ms is not None:  # each GPU reads its shard
                arch = ARCHITECTURES[size]
                c.tpot_ms *= (ShardPlan(arch, 0, c.tensor_parallel).local_bytes(1)
                              / arch.param_count)
                c.latency_how += f", per GPU of {c.tensor_parallel}"
            if max_ttft_ms is not None:
                if c.ttft_ms is None:
                    c.reasons.append("ttft unknown (not measured on this device)")
                elif c.ttft_ms > max_ttft_ms:
                    c.reasons.append(f"ttft {c.ttft_ms:.0f} ms ({c.latency_how}, prompt {prompt}) "
                                     f"> {max_ttft_ms:g} ms")
            if max_tpot_ms is not None:
                if c.tpot_ms is None:
                    c.reasons.append("tpot unknown (not measured on this device)")
                elif c.tpot_ms > max_tpot_ms:
                    c.reasons.append(f"tpot {c.tpot_ms:.1f} ms ({c.latency_how}) > {max_tpot_ms:g} ms")
            candidates.append(c)
    chosen = next((c for c in candidates if not c.reasons), None)
    return {"memory_mb": memory_mb, "gpus": gpus, "prompt_tokens": prompt, "context": context,
            "batch": batch, "data": data, "gpu_name": gpu_name, "chosen": chosen, "candidates": candidates}


def render_recommendation(result: dict) -> str:
    chosen = result["chosen"]
    data = result["data"]
    lines = []
    if chosen:
        name = get_variant(f"{chosen.size}-{data}").name
        lat = []
        if chosen.ttft_ms is not None:
            lat.append(f"ttft {chosen.ttft_ms:.0f} ms at {result['prompt_tokens']} prompt tokens")
        if chosen.tpot_ms is not None:
            lat.append(f"tpot {chosen.tpot_ms:.1f} ms")
        tp = chosen.tensor_parallel
        lines.append(f"recommended: {name} {chosen.dtype} - needs {chosen.need_mb / 1024:.1f} GiB "
                     f"({chosen.how}) of {result['memory_mb'] / 1024:.0f} GiB per GPU"
                     + (f" on each of {tp} GPUs" if tp > 1 else "")
                     + (f"; {', '.join(lat)} ({chosen.latency_how})" if lat else ""))
        if tp > 1:
            vocab = (f"1/{tp} of the embedding's and lm_head's vocabulary"
                     if ShardPlan(ARCHITECTURES[chosen.size], 0, tp).vocab_parallel
                     else "the embedding and lm_head whole")
            lines.append(f"  run: cgserve /models/{name} --tensor-parallel {tp} --dtype "
                         f"{chosen.dtype} --device gpu (GPUs 0..{tp - 1}; each holds 1/{tp} of "
                         f"every layer, its heads' KV cache, and {vocab})")
            if result["gpus"] > tp:
                lines.append(f"  with {result['gpus']} GPUs: {result['gpus'] // tp} such servers")
        elif result["gpus"] > 1:
            lines.append(f"  with {result['gpus']} GPUs: run {result['gpus']} replicas (one cgserve per GPU)")
        lines.append(f"  data '{data}': {DATA_NOTES[data]} (use --data for other languages)")
        target = lookup_gpu(result["gpu_name"]) if result.get("gpu_name") else None
        if target and target.note and chosen.dtype != "float32":
            lines.append(f"  note: {target.name}: {target.note}; the engine stores {chosen.dtype} "
                         "and computes in float32 on GPUs older than compute capability 7.0, "
                         "so expect decoding above the floor estimate")
    else:
        lines.append("no variant fits these limits")
    lines.append("others:")
    for c in result["candidates"]:
        if c is chosen:
            continue
        why = "; ".join(c.reasons) if c.reasons else "fits, but less capable than the recommendation"
        lines.append(f"  {c.label:<14} {why}")
    return "\n".join(lines)


def recommendation_dict(result: dict) -> dict:
    def one(c):
        return None if c is None else {
            "size": c.size, "dtype": c.dtype, "need_mb": round(c.need_mb, 1), "how": c.how,
            "fits": c.fits, "split_fits": c.split_fits, "tensor_parallel": c.tensor_parallel,
            "ttft_ms": c.ttft_ms, "tpot_ms": c.tpot_ms,
            "latency_how": c.latency_how, "reasons": c.reasons}

    chosen = result["chosen"]
    return {**{k: v for k, v in result.items() if k not in ("chosen", "candidates")},
            "recommended": None if chosen is None else get_variant(f"{chosen.size}-{result['data']}").name,
            "chosen": one(chosen), "candidates": [one(c) for c in result["candidates"]]}
