"""points.csv rows for the report/compare/plot tests: written by `write_points`, no sweep run."""
from __future__ import annotations

from bench.sweep.schema import SCHEMA_VERSION, write_points
from engine.variants import ARCHITECTURES

ARCH = ARCHITECTURES["350M"]


def sweep_row(backend="paddle", prompt=128, new=16, status="ok", variant="350M-mono",
              dtype="float32", ttft=500.0, tpot=45.0, **extra) -> dict:
    size, data = variant.split("-")
    ok = status == "ok"
    row = {"schema_version": SCHEMA_VERSION,
           "point_id": f"{variant}/random/{backend}/{dtype}/cpu/p{prompt}/n{new}/b1",
           "variant": f"codegen-{variant}", "size": size, "data": data, "weights": "random",
           "backend": backend, "dtype": dtype, "device": "cpu", "prompt_tokens": prompt,
           "new_tokens": new, "batch": 1, "repeats": 3, "warmup": 1, "seed": 0, "status": status,
           "message": "" if ok else "out of memory", "param_count": ARCH.param_count,
           "weight_bytes": ARCH.weight_bytes(dtype), "kv_bytes_per_token": ARCH.kv_bytes_per_token(dtype),
           "load_s": 3.0, "peak_rss_mb": 2000.0 if ok else 900.0}
    if ok:
        e2e = ttft + tpot * (new - 1)
        row.update(ttft_ms_mean=ttft, ttft_ms_p50=ttft, ttft_ms_p90=ttft * 1.1, ttft_ms_stdev=ttft / 20,
                   tpot_ms_mean=tpot, tpot_ms_stdev=tpot / 20, itl_ms_p50=tpot, itl_ms_p90=tpot * 1.2,
                   itl_ms_p99=tpot * 1.4, e2e_ms_mean=e2e, tokens_per_s_mean=new / e2e * 1e3,
                   floor_ms_per_token=42.0, pct_of_floor=42.0 / tpot * 100)
    row.update(extra)
    return row


def write_run(path, rows: list[dict]):
    path.mkdir(parents=True, exist_ok=True)
    write_points(path, rows)
    return path


def three_backends(path, scale: float = 1.0):
    """paddle, paddle-ref and hf at two prompt lengths (hf slower), and one failed point."""
    rows = []
    for prompt in (128, 1024):
        for backend, factor in (("paddle", 1.0), ("paddle-ref", 2.5), ("hf", 2.0)):
            rows.append(sweep_row(backend, prompt, ttft=prompt * 4.0 * factor * scale,
                                  tpot=45.0 * factor * scale))
    rows.append(sweep_row("paddle", 2048, status="oom"))
    return write_run(path, rows)
