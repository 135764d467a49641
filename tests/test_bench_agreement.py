"""cgbench agreement (bench/tools/agreement.py): int8 against float32 on the tiny architecture."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from bench.cli import main
from bench.tools.agreement import (AgreementConfig, Outputs, choose_prompts, compare,
                                   first_divergence, load_model, outputs_of, summarise)
from convert.verify import LOSSY_NMSE

SMALL = ["--prompts", "2", "--prompt-tokens", "32", "--new-tokens", "8"]


@pytest.fixture(scope="module")
def cfg():
    return AgreementConfig("random:tiny", prompts=2, prompt_tokens=48, new_tokens=8)


@pytest.fixture(scope="module")
def reference(cfg):
    return outputs_of(cfg, "float32")


def test_int8_is_close_to_float32_and_another_model_is_far(cfg, reference):
    prompts, ref = reference
    _, int8 = outputs_of(cfg, "int8", prompts)
    _, other = outputs_of(cfg, "float32", prompts, seed=cfg.seed + 1)  # other random weights
    close, far = compare(ref, int8), compare(ref, other)
    for near, distant in zip(close, far):
        assert 0 < near["nmse"] <= LOSSY_NMSE  # quantised, yet within reduced precision's bound
        assert distant["nmse"] > 0.5  # unrelated logits: ~2 (the measure is not vacuous)
        assert distant["nmse"] > 100 * near["nmse"]
    assert summarise(far)["mean_identical_fraction"] < 1.0


def test_a_model_agrees_with_itself_exactly(reference):
    _, ref = reference
    s = summarise(compare(ref, ref))
    assert s["max_nmse"] == 0.0 and s["argmax_agree"] == s["greedy_identical"] == 2
    assert s["mean_first_divergence"] == 8 and s["mean_identical_fraction"] == 1.0


@pytest.mark.parametrize("ref, got, first, fraction", [
    ([1, 2, 3, 4], [1, 2, 3, 4], 4, 1.0),
    ([1, 2, 3, 4], [9, 2, 3, 4], 0, 0.75),
    ([1, 2, 3, 4], [1, 2, 9, 9], 2, 0.5),
])
def test_first_divergence_and_identical_fraction(ref, got, first, fraction):
    row = np.arange(5, dtype=np.float32)
    [record] = compare(Outputs("float32", 0.0, [row], [ref]), Outputs("int8", 0.0, [row], [got]))
    assert first_divergence(ref, got) == record["first_divergence"] == first
    assert record["identical_fraction"] == fraction
    assert record["greedy_identical"] == (first == len(ref))


def test_prompts_are_ids_the_tokenizer_can_produce(cfg):
    prompts = choose_prompts(load_model(cfg, "float32", cfg.seed), cfg)
    assert len(prompts) == 2 and all(len(p) == 48 for p in prompts)
    assert prompts[0] != prompts[1] and max(max(p) for p in prompts) < 256  # byte tokenizer
    assert prompts == choose_prompts(load_model(cfg, "int8", cfg.seed), cfg)  # deterministic


def test_cli_prints_and_writes_records_summary_and_env(tmp_path):
    out = tmp_path / "agree"
    result = CliRunner().invoke(main, ["agreement", "random:tiny", "--dtype", "int8", *SMALL,
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "agreement.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in records] == [0, 1]
    assert all(len(r["tokens_ref"]) == len(r["tokens_got"]) == 8 for r in records)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["run"]["dtype"] == "int8" and summary["run"]["reference"] == "float32"
    assert summary["mean_nmse"] == pytest.approx(np.mean([r["nmse"] for r in records]))
    assert summary["argmax_agree"] == sum(r["argmax_agrees"] for r in records)
    assert json.loads((out / "env.json").read_text())["git_commit"]
    lines = result.stdout.splitlines()
    assert [x.split(":")[0] for x in lines[:2]] == ["prompt 0", "prompt 1"]
    assert lines[2].startswith("random:tiny int8 vs float32: mean NMSE")
    assert f"argmax agreement {summary['argmax_agree']}/2" in lines[2]


@pytest.mark.parametrize("args, code, message", [
    (["--dtype", "float32"], 1, "--dtype float32 is the reference itself"),
    (["--prompts", "0"], 1, "--prompts 0: need at least 1"),
    (["--new-tokens", "0"], 1, "--new-tokens 0: need at least 1"),
    (["--dtype", "int4"], 2, "Invalid value for '--dtype'"),
    (["--prompt-tokens", "2000"], 1, "exceed random:tiny's 2048-token context"),
])
def test_bad_options_are_one_clear_error(args, code, message):
    result = CliRunner().invoke(main, ["agreement", "random:tiny", *args])
    assert result.exit_code == code and message in result.output, result.output
    if code == 1:
        assert len(result.output.strip().splitlines()) == 1


def test_a_converted_checkpoint_directory(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from test_convert_hf import _hf_model, _hf_tokenizer

    from convert.cli import main as cgconvert

    src, dst = tmp_path / "hf", tmp_path / "converted"
    _hf_model().save_pretrained(str(src), safe_serialization=True)
    _hf_tokenizer(src, tmp_path / "scratch")
    converted = CliRunner().invoke(cgconvert, ["from-hf", str(src), str(dst)])
    assert converted.exit_code == 0, converted.output
    out = tmp_path / "agree"
    result = CliRunner().invoke(main, ["agreement", str(dst), "--dtype", "int8", *SMALL,
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["run"]["model"] == str(dst) and summary["prompts"] == 2
    assert 0 < summary["max_nmse"] <= LOSSY_NMSE
    records = [json.loads(line) for line in (out / "agreement.jsonl").read_text().splitlines()]
    assert all(max(r["tokens_ref"] + r["tokens_got"]) < 323 for r in records)  # tokenizer's ids
