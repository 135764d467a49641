"""A trained CodeGen-shaped BPE tokenizer paired with random weights (`--tokenizer`)."""
from __future__ import annotations

import csv
import json
import shutil

import pytest
from click.testing import CliRunner

import builders
from bench.cli import main
from bench.typing.tokenizer import WHITESPACE, train_tokenizer
from engine import ConfigError, ModelFilesError, OptionError, SamplingParams, load
from engine.model import random_tokenizer
from engine.tokenizer import decode, load_tokenizer

VOCAB = 300
TEXT = "def f(x):\n        return x  # naïve café 你好 🙂\n\t\tpass\n\n    y = f(2)  \n  "


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    for i in range(3):  # a directory of files: sorted, tests skipped
        (root / f"m{i}.py").write_text(builders.CORPUS.replace("add", f"add{i}"), encoding="utf-8")
    (root / "test").mkdir()
    (root / "test" / "skipped.py").write_text("zzzzzzzzzzzzzzzzzzzzzzzz = 1\n" * 50)
    return root


@pytest.fixture(scope="module")
def tok_dir(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    info = train_tokenizer(out, [corpus], vocab_size=VOCAB)
    assert info["files"] == 3 and info["eos_token_id"] == VOCAB - 1
    assert info["usable_ids"] == VOCAB + len(WHITESPACE) == VOCAB + 38  # as CodeGen: 30 + 8
    return out


def test_engine_loader_reads_it_and_round_trips(tok_dir):
    tok = load_tokenizer(tok_dir)  # as random weights use it
    assert tok.usable_ids() == VOCAB + 38
    vocab = json.loads((tok_dir / "vocab.json").read_text(encoding="utf-8"))
    assert vocab["<|endoftext|>"] == VOCAB - 1 == max(vocab.values())
    ids = tok.encode(TEXT)
    assert decode(tok, ids) == TEXT  # non-ASCII, and the newline before added whitespace kept
    assert any(i >= VOCAB for i in ids)  # CodeGen's whitespace tokens are used
    assert len(ids) < len(TEXT.encode("utf-8"))  # merges were learned
    assert "zzzz" not in "".join(vocab)  # files under test/ were left out
    assert decode(tok, tok.encode("x:\n    y")) == "x:\n    y"  # PaddleNLP's encode: "x:    y"


def test_engine_encodes_as_the_tokenizers_library_does(tok_dir):
    """Same ids as a fast (Rust) tokenizer built from the files, as CodeGen's HF tokenizer is."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    vocab = json.loads((tok_dir / "vocab.json").read_text(encoding="utf-8"))
    merges = [tuple(m.split(" ")) for m in
              (tok_dir / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]]
    fast = Tokenizer(models.BPE(vocab, merges))
    fast.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    fast.add_special_tokens(["<|endoftext|>"])
    fast.add_tokens([AddedToken(t, normalized=False) for t in WHITESPACE])
    text = TEXT + "<|endoftext|>" + builders.CORPUS
    assert load_tokenizer(tok_dir).encode(text) == fast.encode(text).ids


def test_training_is_repeatable(corpus, tok_dir, tmp_path):
    train_tokenizer(tmp_path, [corpus], vocab_size=VOCAB)
    for name in ("vocab.json", "merges.txt", "added_tokens.json"):
        assert (tmp_path / name).read_bytes() == (tok_dir / name).read_bytes()


def test_random_weights_use_the_tokenizer(tok_dir):
    gen = load("random:tiny", tokenizer=tok_dir)
    assert gen.tokenizer.name == "codegen-bpe"
    assert gen.config.eos_token_id == gen.tokenizer.eos_token_id == VOCAB - 1
    result = gen.generate("def add(a, b):\n", SamplingParams(max_new_tokens=6, seed=1))
    assert result.prompt_tokens == len(gen.tokenizer.encode("def add(a, b):\n")) < 15
    assert all(i < VOCAB + 38 for i in result.choices[0].token_ids)


def test_bad_tokenizer_directories_are_one_line_errors(tok_dir, tmp_path, model_dirs):
    with pytest.raises(ModelFilesError, match="nope: no such directory.*train-tokenizer"):
        load("random:tiny", tokenizer=tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFilesError, match="empty: no vocab.json or merges.txt"):
        load("random:tiny", tokenizer=tmp_path / "empty")
    no_eos = tmp_path / "no_eos"
    shutil.copytree(tok_dir, no_eos)
    vocab = json.loads((no_eos / "vocab.json").read_text(encoding="utf-8"))
    del vocab["<|endoftext|>"]
    (no_eos / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (no_eos / "added_tokens.json").write_text("{}")
    with pytest.raises(ModelFilesError, match="no_eos: vocab.json has no <|endoftext|>"):
        load("random:tiny", tokenizer=no_eos)
    with pytest.raises(ConfigError, match=f"{tok_dir}: the tokenizer has 338 token ids but "
                       r"random:tiny has 200 embedding rows.*--vocab-size N`, N at most 162"):
        random_tokenizer(tok_dir, "random:tiny", 200)
    with pytest.raises(OptionError, match="only with random:"):
        load(model_dirs["modern"], tokenizer=tok_dir)


def test_train_tokenizer_command(corpus, tmp_path):
    out = tmp_path / "tok"
    result = CliRunner().invoke(main, ["train-tokenizer", str(out), "--corpus", str(corpus),
                                       "--vocab-size", "280", "--measure", str(corpus / "m0.py")])
    assert result.exit_code == 0, result.output
    assert str(out) in result.output and '"bytes_per_token"' in result.output
    assert json.loads((out / "training.json").read_text())["usable_ids"] == 280 + 38
    bad = CliRunner().invoke(main, ["train-tokenizer", str(out), "--corpus", str(corpus),
                                    "--vocab-size", "100"])
    assert bad.exit_code == 1 and "--vocab-size 100" in bad.output


def test_typing_replay_passes_the_tokenizer_to_its_models(tok_dir, tmp_path):
    source = tmp_path / "source.py"
    source.write_text("".join(f"def function_{i}(value):\n    return value * {i}\n"
                              for i in range(90)))
    out = tmp_path / "run"
    result = CliRunner().invoke(main, [
        "typing", str(source), "--model", "random:tiny", "--tokenizer", str(tok_dir),
        "--compare", "--lines", "10-11,170-171", "--max-tokens", "4", "--out", str(out),
        "--cps", "2000", "--pause-ms", "5,10", "--pause-prob", "0.3"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(out / "requests.csv")))
    assert {int(r["line"]) for r in rows} == {10, 11, 170, 171}
    ok = [r for r in rows if r["status"] == "200" and int(r["prompt_tokens"])]
    assert ok and all(int(r["prompt_tokens"]) < int(r["prompt_chars"]) * 0.9 for r in ok)  # BPE
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["ranges"]) == {"10-11", "170-171"}
    assert summary["modes"]["reuse"]["reused_tokens"] > 0
    env = json.loads((out / "env.json").read_text())
    assert env["line_ranges"] == [[10, 11], [170, 171]]
    assert env["tokenizer"]["dir"] == str(tok_dir) and env["tokenizer"]["training"]["files"] == 3
    wrong = CliRunner().invoke(main, ["typing", str(source), "--url", "http://x:1",
                                      "--tokenizer", str(tok_dir)])
    assert wrong.exit_code == 1 and "--tokenizer goes with --model" in wrong.output
