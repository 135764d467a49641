"""cgbench recommend: fit by memory (measured or estimated) and latency limits, with reasons."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from bench.cli import main
from bench.errors import BenchError
from bench.analysis.recommend import CUDA_CONTEXT_MB, estimate_need_mb, parse_memory, recommend
from bench.sweep.schema import SCHEMA_VERSION, write_points
from engine.variants import ARCHITECTURES

MiB = 2**20


def row(size="350M", dtype="float32", prompt=1024, new=64, ttft=80.0, tpot=6.0, gpu_mb=None):
    arch = ARCHITECTURES[size]
    return {"schema_version": SCHEMA_VERSION, "variant": f"codegen-{size}-mono", "size": size,
            "data": "mono", "weights": "random", "backend": "paddle", "dtype": dtype,
            "device": "gpu:0" if gpu_mb else "cpu", "prompt_tokens": prompt, "new_tokens": new,
            "batch": 1, "status": "ok", "message": "", "param_count": arch.param_count,
            "weight_bytes": arch.weight_bytes(dtype), "kv_bytes_per_token": arch.kv_bytes_per_token(dtype),
            "ttft_ms_mean": ttft, "tpot_ms_mean": tpot, "gpu_peak_device_mb": gpu_mb,
            "gpu_name": "Tesla P40" if gpu_mb else None}


@pytest.mark.parametrize("text, mib", [("24GB", 24576), ("24g", 24576), ("16000MB", 16000),
                                       ("1.5GiB", 1536)])
def test_parse_memory(text, mib):
    assert parse_memory(text) == mib


@pytest.mark.parametrize("text", ["24", "lots", "0GB", "-3GB"])
def test_bad_memory(text):
    with pytest.raises(BenchError, match="--memory"):
        parse_memory(text)


def test_estimate_adds_weights_kv_and_context():
    arch = ARCHITECTURES["6B"]
    need = estimate_need_mb("6B", "float16", 2048, 1)
    floor = (arch.weight_bytes("float16") + arch.kv_bytes_per_token("float16") * 2048) / MiB
    assert floor + CUDA_CONTEXT_MB < need < floor + CUDA_CONTEXT_MB + 1024
    assert estimate_need_mb("6B", "float16", 2048, 1, gpus=2) < need


def test_one_p40_gets_6B_float16_and_reasons_for_the_bigger_ones():
    result = recommend([row(gpu_mb=2500)], {}, parse_memory("24GB"), gpus=1)
    chosen = result["chosen"]
    assert (chosen.size, chosen.dtype, chosen.how) == ("6B", "float16", "estimated")
    assert chosen.tensor_parallel == 1
    why = {c.label: c.reasons for c in result["candidates"]}
    assert "> 95% of 24 GiB" in why["16B float16"][0] and "split" not in why["16B float16"][0]
    assert "> 95% of 24 GiB" in why["6B float32"][0]


@pytest.mark.parametrize("data", ["multi", "mono"])
def test_two_p40s_get_16B_float16_split_two_ways(data):
    from bench.analysis.recommend import render_recommendation, tensor_parallel_need_mb

    result = recommend([row(gpu_mb=2500)], {}, parse_memory("24GB"), gpus=2, data=data)
    chosen = result["chosen"]
    assert (chosen.size, chosen.dtype, chosen.tensor_parallel) == ("16B", "float16", 2)
    arch = ARCHITECTURES["16B"]
    # per GPU: half of the weights (the embedding and lm_head split by vocabulary too; the layer
    # norms and fc_out's bias whole, under 2 MB), half the KV cache (float32 on a P40), the
    # workspace of 12 heads, the CUDA context
    weights = arch.weight_bytes("float16") / 2
    kv = arch.kv_bytes_per_token("float32") * 2048 / 2
    assert weights / MiB + kv / MiB + CUDA_CONTEXT_MB < chosen.need_mb < (
        weights + kv) / MiB + CUDA_CONTEXT_MB + 1024
    assert chosen.need_mb == tensor_parallel_need_mb("16B", "float16", 2048, 1, 2)
    text = render_recommendation(result)
    assert text.startswith(f"recommended: codegen-16B-{data} float16")
    assert f"cgserve /models/codegen-16B-{data} --tensor-parallel 2 --dtype float16" in text
    assert "1/2 of the embedding's and lm_head's vocabulary" in text
    why = {c.label: c.reasons for c in result["candidates"]}
    assert "split 2 ways still" in why["16B float32"][0]


def test_measured_memory_is_used_and_extended_to_the_full_context():
    r = row(gpu_mb=20000, prompt=1024, new=64)
    result = recommend([r], {}, parse_memory("24GB"), dtypes=("float32",))
    c350 = next(c for c in result["candidates"] if c.size == "350M")
    assert c350.how == "measured"
    assert c350.need_mb == pytest.approx(20000 + r["kv_bytes_per_token"] * (2048 - 1088) / MiB)


def test_latency_limits_use_measurements_and_scaling():
    rows = [row("350M", dtype="float16", ttft=80, tpot=6.0, gpu_mb=2000)]
    result = recommend(rows, {}, parse_memory("80GB"), max_tpot_ms=60, dtypes=("float16",))
    chosen = result["chosen"]
    # tpot scales with weight bytes from 350M: 2B (7.8x: 47 ms) fits 60 ms, 6B (20x) does not
    assert chosen.size == "2B" and chosen.latency_how == "scaled from 350M"
    reasons = {c.size: " ".join(c.reasons) for c in result["candidates"]}
    assert "tpot" in reasons["6B"] and "> 60 ms" in reasons["6B"]


def test_unknown_latency_blocks_a_limit_unless_a_gpu_is_named():
    rows = [row("350M", tpot=110.0)]  # a cpu run
    blocked = recommend(rows, {}, parse_memory("24GB"), max_tpot_ms=60, gpu_name=None,
                        dtypes=("float16",))
    assert blocked["chosen"] is None
    assert all("tpot unknown" in " ".join(c.reasons) for c in blocked["candidates"])
    p40 = recommend(rows, {}, parse_memory("24GB"), max_tpot_ms=60, gpu_name="P40",
                    dtypes=("float16",))
    assert p40["chosen"].size == "6B" and "P40" in p40["chosen"].latency_how


def test_cli_recommend_text_json_and_nothing_fits(tmp_path):
    write_points(tmp_path, [row(gpu_mb=2500)])
    runner = CliRunner()
    text = runner.invoke(main, ["recommend", str(tmp_path), "--memory", "24GB", "--gpus", "2"])
    assert text.exit_code == 0, text.output
    assert text.output.startswith("recommended: codegen-16B-mono float16")
    assert "--tensor-parallel 2" in text.output
    assert "16B float32" in text.output
    data = json.loads(runner.invoke(main, ["recommend", str(tmp_path), "--memory", "24GB",
                                           "--json", "--data", "multi"]).output)
    assert data["recommended"] == "codegen-6B-multi"
    none = runner.invoke(main, ["recommend", str(tmp_path), "--memory", "512MB"])
    assert none.exit_code == 1 and "no variant fits" in none.output
    bad = runner.invoke(main, ["recommend", str(tmp_path), "--memory", "24GB", "--gpu", "RTX9"])
    assert bad.exit_code == 1 and "--gpu" in bad.output
