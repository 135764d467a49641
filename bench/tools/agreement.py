"""`cgbench agreement`: how close a reduced-precision dtype (int8 above all) stays to float32.

The same model is loaded twice, one after the other: float32 first (its outputs kept, then the
model dropped, so a 6B model never has both copies in memory), then `--dtype`.  On each of
`--prompts` prompts of `--prompt-tokens` random token ids the tokenizer could produce (the
sweep's `prompt_ids`) both give
- the logits after the prompt (the full vocabulary row of the last position, from one prefill):
  NMSE against float32 and whether the argmax agrees (`convert.verify.compare_logits`);
- `--new-tokens` greedy tokens (the engine's decode loop, EOS ignored): the first divergence
  (leading tokens identical) and the fraction identical position by position.

Writes, with an output directory, OUT/agreement.jsonl (one record per prompt), OUT/summary.json
and OUT/env.json.
"""
from __future__ import annotations

import gc
import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from convert.verify import LOSSY_NMSE, compare_logits
from engine.dtypes import DTYPE_NAMES

from ..errors import BenchError
from ..output import atomic_write, git_commit, make_dir, write_json
from ..sweep.backends import prompt_ids

REFERENCE = "float32"
CANDIDATES = tuple(d for d in DTYPE_NAMES if d != REFERENCE)


@dataclass
class AgreementConfig:
    model: str
    dtype: str = "int8"
    prompts: int = 4
    prompt_tokens: int = 512
    new_tokens: int = 64
    seed: int = 0  # the prompts' ids and random weights
    device: str = "cpu"
    out: Path | None = None

    def __post_init__(self):
        if self.dtype == REFERENCE:
            raise BenchError(f"--dtype {REFERENCE} is the reference itself; compare one of "
                             f"{', '.join(CANDIDATES)} with it")
        if self.dtype not in CANDIDATES:
            raise BenchError(f"--dtype {self.dtype!r} is unknown; use one of "
                             f"{', '.join(CANDIDATES)}")
        for option, value in (("--prompts", self.prompts), ("--prompt-tokens", self.prompt_tokens),
                              ("--new-tokens", self.new_tokens)):
            if value < 1:
                raise BenchError(f"{option} {value}: need at least 1")


@dataclass
class Outputs:
    """What one model gave on the prompts."""

    dtype: str
    load_s: float
    logits: list[np.ndarray]  # per prompt: the last position's row [vocab]
    tokens: list[list[int]]  # per prompt: the greedy continuation


def load_model(cfg: AgreementConfig, dtype: str, seed: int):
    from engine import load

    return load(cfg.model, dtype=dtype, device=cfg.device, seed=seed, prefix_cache_bytes=0,
                max_batch=1)


def choose_prompts(gen, cfg: AgreementConfig) -> list[list[int]]:
    """`cfg.prompts` prompts of ids below the tokenizer's usable ids (and the embedding's rows)."""
    room = gen.context_length
    if cfg.prompt_tokens + cfg.new_tokens > room:
        raise BenchError(f"--prompt-tokens {cfg.prompt_tokens} + --new-tokens {cfg.new_tokens} "
                         f"exceed {cfg.model}'s {room}-token context; ask for fewer")
    usable = min(gen.tokenizer.usable_ids(), gen.config.arch.vocab_size)
    return [prompt_ids(cfg.seed, k, cfg.prompt_tokens, usable) for k in range(cfg.prompts)]


def run_prompts(gen, prompts: list[list[int]], new_tokens: int, dtype: str) -> Outputs:
    from engine import SamplingParams

    params = SamplingParams(max_new_tokens=new_tokens, temperature=0.0, ignore_eos=True,
                            truncate=False)
    logits, tokens = [], []
    for ids in prompts:
        cache = gen.model.new_cache()
        logits.append(np.asarray(gen.model.prefill(cache, ids).logits, np.float32).copy())
        gen.model.release(cache)
        tokens.append(list(gen.generate(ids, params).choices[0].token_ids))
    return Outputs(dtype, gen.load_s, logits, tokens)


def outputs_of(cfg: AgreementConfig, dtype: str, prompts: list[list[int]] | None = None,
               seed: int | None = None) -> tuple[list[list[int]], Outputs]:
    """Load the model in `dtype`, run the prompts (chosen from its tokenizer when None), and
    drop the model before returning: only one copy of the weights is ever held."""
    gen = load_model(cfg, dtype, cfg.seed if seed is None else seed)
    prompts = prompts if prompts is not None else choose_prompts(gen, cfg)
    outputs = run_prompts(gen, prompts, cfg.new_tokens, dtype)
    del gen
    _release_memory(cfg.device)
    return prompts, outputs


def _release_memory(device: str) -> None:
    from engine.runtime import parse_device

    gc.collect()
    if parse_device(device).kind == "gpu":  # hand the freed blocks back to the driver
        import paddle

        paddle.device.cuda.empty_cache()


def first_divergence(ref: list[int], got: list[int]) -> int:
    """How many leading tokens are identical (the length when all are)."""
    for i, (a, b) in enumerate(zip(ref, got)):
        if a != b:
            return i
    return min(len(ref), len(got))


def compare(ref: Outputs, got: Outputs) -> list[dict]:
    """One record per prompt: logits and greedy tokens of `got` against `ref`."""
    records = []
    for k, (ref_row, got_row, ref_ids, got_ids) in enumerate(
            zip(ref.logits, got.logits, ref.tokens, got.tokens)):
        logits = compare_logits(ref_row[None, :], got_row[None, :], LOSSY_NMSE)
        same = np.asarray(ref_ids) == np.asarray(got_ids)
        records.append({
            "prompt": k, "nmse": logits.nmse, "max_abs_diff": logits.max_abs_diff,
            "nmse_within_bound": logits.ok, "argmax_ref": int(np.argmax(ref_row)),
            "argmax_got": int(np.argmax(got_row)), "argmax_agrees": logits.top1_agreement == 1.0,
            "new_tokens": len(ref_ids), "first_divergence": first_divergence(ref_ids, got_ids),
            "identical_fraction": float(same.mean()), "greedy_identical": bool(same.all()),
            "tokens_ref": ref_ids, "tokens_got": got_ids})
    return records


def summarise(records: list[dict]) -> dict:
    n = len(records)
    return {"prompts": n,
            "mean_nmse": float(np.mean([r["nmse"] for r in records])),
            "max_nmse": float(np.max([r["nmse"] for r in records])),
            "argmax_agree": sum(r["argmax_agrees"] for r in records),
            "greedy_identical": sum(r["greedy_identical"] for r in records),
            "mean_first_divergence": float(np.mean([r["first_divergence"] for r in records])),
            "mean_identical_fraction": float(np.mean([r["identical_fraction"] for r in records])),
            "nmse_bound": LOSSY_NMSE}


def render_record(r: dict) -> str:
    argmax = "agrees" if r["argmax_agrees"] else f"{r['argmax_got']} not {r['argmax_ref']}"
    return (f"prompt {r['prompt']}: NMSE {r['nmse']:.3g}, max |diff| {r['max_abs_diff']:.3g}, "
            f"argmax {argmax}; greedy first divergence {r['first_divergence']}/{r['new_tokens']}, "
            f"{r['identical_fraction']:.0%} of positions identical")


def render_summary(s: dict) -> str:
    n, run = s["prompts"], s["run"]
    return (f"{run['model']} {run['dtype']} vs {REFERENCE}: mean NMSE {s['mean_nmse']:.3g} "
            f"(max {s['max_nmse']:.3g}), argmax agreement {s['argmax_agree']}/{n}, greedy "
            f"identical {s['greedy_identical']}/{n}, mean first divergence "
            f"{s['mean_first_divergence']:.1f} of {run['new_tokens']}")


def write_outputs(out: Path, records: list[dict], summary: dict, env: dict) -> None:
    atomic_write(out / "agreement.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    write_json(out / "summary.json", summary)
    write_json(out / "env.json", env)


def run_agreement(cfg: AgreementConfig, log=print) -> tuple[list[dict], dict]:
    """Reference first (kept as outputs, model dropped), then `cfg.dtype`; compare, write."""
    from engine import __version__

    from ..hardware import describe_environment

    out = make_dir(cfg.out) if cfg.out is not None else None  # a bad --out fails at once
    prompts, ref = outputs_of(cfg, REFERENCE)
    log(f"{cfg.model} {REFERENCE}: loaded in {ref.load_s:.1f} s, {len(prompts)} prompts run")
    _, got = outputs_of(cfg, cfg.dtype, prompts)
    log(f"{cfg.model} {cfg.dtype}: loaded in {got.load_s:.1f} s, {len(prompts)} prompts run")
    records = compare(ref, got)
    run = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           **{k: v for k, v in asdict(cfg).items() if k != "out"}, "reference": REFERENCE,
           "load_s": {REFERENCE: ref.load_s, cfg.dtype: got.load_s},
           "codegen_workbench": __version__}
    summary = {"run": run, **summarise(records)}
    if out is not None:
        env = describe_environment(measure_bandwidth=False)
        env["git_commit"] = git_commit("engine", "bench", "convert")
        write_outputs(out, records, summary, env)
    return records, summary
