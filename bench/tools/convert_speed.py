"""`cgbench convert-speed`: `cgconvert from-hf` on the 350M architecture in fp32 (random
weights, no download).

Builds a Hugging Face-format checkpoint of the real 350M shapes in a temporary directory
(`pytorch_model.bin` written by torch.save, or `model.safetensors`), then, each in a fresh child
process so peak RSS is its own:

* raw: read the source weight file and write the same number of bytes (fsync), in 16 MiB blocks:
  the floor any converter pays;
* raw-writeback: the same copy, also starting the disk writes early as the converter does
  (`convert.output.EarlyWriteback`), so the final fsync has little left: a like-for-like floor;
* convert: `convert.hf.convert_hf` to safetensors and to pdparams.

The issue's targets: conversion time <= 2x raw read+write, peak RSS <= 2.2x the model's bytes.
Both run on a warm page cache (the checkpoint was just written).  Usage:

    cgbench convert-speed [--repeats 3] [--source bin|safetensors|both] [--out results/convert]

Each measurement is `python -m bench.tools.convert_speed MODE SRC DST FMT` (a child process).
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..errors import BenchError
from ..memory import peak_rss_bytes
from ..output import ROOT, make_dir, write_json

BLOCK = 16 << 20
SOURCES = ("bin", "safetensors")


def build_checkpoint(src: Path, source: str, seed: int = 0) -> int:
    """A random HF-format 350M checkpoint; returns the weight bytes."""
    import numpy as np

    from convert.mapping import is_transposed
    from engine.variants import ARCHITECTURES

    arch = ARCHITECTURES["350M"]
    src.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    state = {}
    for name, shape in arch.tensor_shapes().items():
        hf_shape = shape[::-1] if len(shape) == 2 and is_transposed(name) else shape
        state[name] = rng.standard_normal(hf_shape, dtype=np.float32) * np.float32(0.02)
    nbytes = sum(a.nbytes for a in state.values())
    if source == "bin":
        import torch

        torch.save({k: torch.from_numpy(v) for k, v in state.items()}, str(src / "pytorch_model.bin"))
    else:
        from engine.weights import write_safetensors

        write_safetensors(src / "model.safetensors", state, {"format": "pt"})
    cfg = {**arch.config_dict(), "torch_dtype": "float32"}
    (src / "config.json").write_text(json.dumps(cfg, indent=2))
    from engine.tokenizer import bytes_to_unicode

    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    vocab["<|endoftext|>"] = len(vocab)
    (src / "vocab.json").write_text(json.dumps(vocab))
    (src / "merges.txt").write_text("#version: 0.2\n")
    return nbytes


def _child_env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}


def _child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.tools.convert_speed", *args],
                         capture_output=True, text=True, cwd=ROOT, env=_child_env())
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or [""])[-1]
        raise BenchError(f"convert-speed: the {args[0]} run failed (exit code {out.returncode}): "
                         f"{tail}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def child_main(mode: str, src: str, dst: str, fmt: str) -> None:
    start = time.perf_counter()
    if mode in ("raw", "raw-writeback"):
        weight = next(p for p in Path(src).iterdir() if p.suffix in (".bin", ".safetensors"))
        with open(weight, "rb") as fin, open(dst, "wb") as fout:
            if mode == "raw":
                while block := fin.read(BLOCK):
                    fout.write(block)
            else:
                from convert.output import EarlyWriteback

                with EarlyWriteback(fout) as out:
                    while block := fin.read(BLOCK):
                        out.write(block)
            fout.flush()
            os.fsync(fout.fileno())
    else:
        from convert.hf import convert_hf

        convert_hf(Path(src), Path(dst), dtype="float32", fmt=fmt)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_rss_bytes": peak_rss_bytes()}))


def _baseline_rss() -> int:
    """Peak RSS of a child that only imports what the converter imports."""
    code = ("import convert.hf, convert.output, numpy, bench.memory as m; "
            "print(m.peak_rss_bytes())")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         cwd=ROOT, env=_child_env())
    return int(out.stdout.strip())


def run(source: str, repeats: int, work: Path) -> dict:
    src = work / f"hf-350M-{source}"
    model_bytes = build_checkpoint(src, source)
    weight_file = next(p for p in src.iterdir() if p.suffix in (".bin", ".safetensors"))
    source_bytes = weight_file.stat().st_size
    runs: dict[str, list[dict]] = {"raw": [], "raw-writeback": [], "safetensors": [], "pdparams": []}
    for _ in range(repeats):  # interleaved, so drifting machine load hits all alike
        for mode in runs:
            dst = work / f"out-{mode}"
            runs[mode].append(_child([mode if mode.startswith("raw") else "convert", str(src),
                                      str(dst), mode]))
            if dst.is_dir():
                shutil.rmtree(dst)
            else:
                dst.unlink()
    shutil.rmtree(src)
    raw_s = statistics.median(r["seconds"] for r in runs["raw"])
    raw_wb_s = statistics.median(r["seconds"] for r in runs["raw-writeback"])
    result = {"source": source, "source_file": weight_file.name,
              "source_file_bytes": source_bytes, "model_bytes": model_bytes, "repeats": repeats,
              "raw_read_write_s": raw_s, "raw_runs_s": [r["seconds"] for r in runs["raw"]],
              "raw_writeback_s": raw_wb_s,
              "raw_writeback_runs_s": [r["seconds"] for r in runs["raw-writeback"]]}
    for fmt in ("safetensors", "pdparams"):
        secs = [r["seconds"] for r in runs[fmt]]
        peak = max(r["peak_rss_bytes"] for r in runs[fmt])
        result[fmt] = {"convert_s": statistics.median(secs), "runs_s": secs,
                       "time_vs_raw": statistics.median(secs) / raw_s,
                       "time_vs_raw_writeback": statistics.median(secs) / raw_wb_s,
                       "peak_rss_bytes": peak, "peak_rss_vs_model": peak / model_bytes}
    return result


def default_out() -> Path:
    return Path("results") / time.strftime("convert-speed-%Y%m%d-%H%M%S")


def run_convert_speed(sources: tuple[str, ...], repeats: int, out: Path,
                      workdir: Path | None = None, log=print) -> dict:
    """Every source in `sources` (bin, safetensors); writes OUT/convert_speed.json."""
    if repeats < 1:
        raise BenchError(f"--repeats {repeats}: must be at least 1")
    make_dir(out)
    with tempfile.TemporaryDirectory(prefix="cgconvert-bench-", dir=workdir) as tmp:
        results = [run(s, repeats, Path(tmp)) for s in sources]
    record = {
        "benchmark": "cgconvert from-hf, 350M architecture, float32, random weights",
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count()},
        "page_cache": "warm (checkpoint just written)",
        "import_baseline_rss_bytes": _baseline_rss(),
        "targets": {"time_vs_raw_max": 2.0, "peak_rss_vs_model_max": 2.2},
        "timing_note": "median of the interleaved runs; time_vs_raw is the issue's measure",
        "results": results,
    }
    write_json(out / "convert_speed.json", record)
    for r in results:
        log(f"{r['source_file']}: raw read+write {r['raw_read_write_s']:.2f} s (with early "
            f"writeback {r['raw_writeback_s']:.2f} s); model {r['model_bytes'] / 1e9:.2f} GB")
        for fmt in ("safetensors", "pdparams"):
            m = r[fmt]
            log(f"  -> {fmt}: {m['convert_s']:.2f} s ({m['time_vs_raw']:.2f}x raw, "
                f"{m['time_vs_raw_writeback']:.2f}x raw-writeback), peak RSS "
                f"{m['peak_rss_bytes'] / 1e9:.2f} GB ({m['peak_rss_vs_model']:.2f}x model)")
    return record


if __name__ == "__main__":  # one measurement, in its own process: MODE SRC DST FMT
    child_main(*sys.argv[1:5])
