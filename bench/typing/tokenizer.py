"""Train a CodeGen-shaped byte-level BPE tokenizer offline (`cgbench train-tokenizer`).

CodeGen's own vocabulary cannot be downloaded here, and the random-weight models
use one token per byte, which makes editor prompts ~3-4x longer than CodeGen's.
This trains GPT-2's algorithm (byte-level BPE, GPT-2's pre-tokenising regex) with
the `tokenizers` library on local Python source - the standard library by default,
files in sorted order - and writes it the way CodeGen's tokenizer is laid out:
ids below `vocab_size - 1` from BPE, `<|endoftext|>` = `vocab_size - 1` (50256 at the
default 50257), then CodeGen's added whitespace tokens (runs of 31..2 spaces and
9..2 tabs, ids 50257-50294).  `engine.load("random:<variant>", tokenizer=DIR)`
pairs it with random weights.  It is not CodeGen's vocabulary: only its shape.
"""
from __future__ import annotations

import json
import sys
import sysconfig
from pathlib import Path

from ..errors import BenchError

EOT = "<|endoftext|>"
DEFAULT_VOCAB = 50257  # GPT-2's, as CodeGen: end of text at 50256
SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__"}
# CodeGen (jaxformer/hf/sample.py): add_tokens of " " * 31..2, then "\t" * 9..2
WHITESPACE = [" " * n for n in range(31, 1, -1)] + ["\t" * n for n in range(9, 1, -1)]


def default_corpus() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def default_out(vocab_size: int = DEFAULT_VOCAB) -> Path:
    """A user cache directory, one per Python version and vocabulary size."""
    from engine.runtime import user_cache_dir

    tag = f"py{sys.version_info[0]}{sys.version_info[1]}"
    return user_cache_dir() / f"tokenizer-stdlib-{tag}-{vocab_size}"


def corpus_files(roots: list[Path]) -> list[Path]:
    """`*.py` under each root (or the file itself), sorted; test and package dirs skipped."""
    files: list[Path] = []
    for root in roots:
        if root.is_file():
            files.append(root)
        elif root.is_dir():
            files += sorted(f for f in root.rglob("*.py")
                            if not SKIP_DIRS & set(f.relative_to(root).parts[:-1]))
        else:
            raise BenchError(f"{root}: no such file or directory to train the tokenizer on")
    return files


def _texts(files: list[Path]):
    for path in files:
        try:
            yield path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # a few stdlib files are Latin-1 on purpose


def train_tokenizer(out: Path, roots: list[Path] | None = None,
                    vocab_size: int = DEFAULT_VOCAB, whitespace: bool = True) -> dict:
    """Train on `roots` (default: the standard library) and write CodeGen's files into `out`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 258:
        raise BenchError(f"--vocab-size {vocab_size}: needs at least 258 (256 bytes, one merge, "
                         "end of text)")
    files = corpus_files(roots or [default_corpus()])
    if not files:
        raise BenchError(f"no *.py files under {', '.join(map(str, roots or []))}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_texts(files), trainer=trainer, length=len(files))
    model = json.loads(tok.to_str())["model"]
    vocab: dict[str, int] = model["vocab"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    vocab = dict(sorted(vocab.items(), key=lambda kv: kv[1]))
    vocab[EOT] = len(vocab)
    added = {t: len(vocab) + i for i, t in enumerate(WHITESPACE)} if whitespace else {}
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges),
                                    encoding="utf-8")
    (out / "added_tokens.json").write_text(json.dumps(added), encoding="utf-8")
    (out / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT, "pad_token": EOT}))
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "CodeGenTokenizer", "model_max_length": 2048, "add_prefix_space": False,
         "bos_token": EOT}))
    info = {"vocab_size": len(vocab), "usable_ids": len(vocab) + len(added),
            "eos_token_id": vocab[EOT], "merges": len(merges), "files": len(files),
            "corpus_bytes": sum(f.stat().st_size for f in files),
            "corpus": [str(r) for r in (roots or [default_corpus()])],
            "trainer": "tokenizers BpeTrainer (byte level, GPT-2 regex)"}
    (out / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def bytes_per_token(tokenizer_dir: Path, text: str) -> tuple[int, int]:
    """(bytes, tokens) of `text` as the engine encodes it for random weights."""
    from engine.tokenizer import load_tokenizer

    ids = load_tokenizer(tokenizer_dir).encode(text)
    return len(text.encode("utf-8")), len(ids)
