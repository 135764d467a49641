"""Tokenizer files of a model directory: which PaddleNLP needs, how many ids they define, and
how to turn Hugging Face's versions into PaddleNLP's.

Hugging Face writes `tokenizer_config.json` with an `added_tokens_decoder` and special tokens as
objects; PaddleNLP 3.0.0b4 misreads that (an extra id, whitespace tokens not applied), so the
converted directory gets the plain PaddleNLP form.
"""
from __future__ import annotations

from pathlib import Path

from engine.config import read_json

from .errors import SourceError
from .output import json_bytes

REQUIRED = ("vocab.json", "merges.txt")
TOKENIZER_FILES = ("added_tokens.json", "merges.txt", "special_tokens_map.json",
                   "tokenizer_config.json", "vocab.json")
SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")
END_OF_TEXT = "<|endoftext|>"


def _token_text(value) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def usable_ids(model_dir: Path) -> int | None:
    """Ids the tokenizer can produce (vocab plus added tokens), or None when vocab.json is missing."""
    vocab_path = model_dir / "vocab.json"
    if not vocab_path.is_file():
        return None
    vocab = read_json(vocab_path)
    ids = set(vocab.values()) if isinstance(vocab, dict) else set()
    added_path = model_dir / "added_tokens.json"
    if added_path.is_file():
        added = read_json(added_path)
        if isinstance(added, dict):
            ids |= set(added.values())
    ints = [i for i in ids if isinstance(i, int)]
    return max(ints) + 1 if ints else 0


def paddlenlp_tokenizer_files(src: Path, model_max_length: int) -> dict[str, bytes]:
    """The five tokenizer files for a PaddleNLP directory, from a Hugging Face (or Paddle) one."""
    for name in REQUIRED:
        if not (src / name).is_file():
            raise SourceError(f"{src / name}: tokenizer file missing; copy {', '.join(REQUIRED)} "
                              "(and added_tokens.json) from the same checkpoint")
    out = {name: (src / name).read_bytes() for name in REQUIRED}
    hf_config = read_json(src / "tokenizer_config.json") if (src / "tokenizer_config.json").is_file() else {}
    hf_special = read_json(src / "special_tokens_map.json") if (src / "special_tokens_map.json").is_file() else {}
    special = {}
    for key in SPECIAL_KEYS:
        text = _token_text(hf_special.get(key)) or _token_text(hf_config.get(key))
        if text:
            special[key] = text
    for key in ("bos_token", "eos_token", "unk_token"):
        special.setdefault(key, END_OF_TEXT)
    if (src / "added_tokens.json").is_file():
        added = read_json(src / "added_tokens.json")
    else:  # recover them from the decoder table, leaving out what the vocabulary already has
        vocab = read_json(src / "vocab.json")
        decoder = hf_config.get("added_tokens_decoder") or {}
        added = {v["content"]: int(k) for k, v in decoder.items()
                 if isinstance(v, dict) and v.get("content") not in vocab}
    max_len = hf_config.get("model_max_length")
    if not isinstance(max_len, int) or max_len > 10**9:
        max_len = model_max_length
    out["added_tokens.json"] = json_bytes(added)
    out["special_tokens_map.json"] = json_bytes(special)
    out["tokenizer_config.json"] = json_bytes(
        {"tokenizer_class": "CodeGenTokenizer", "model_max_length": max_len, **special})
    return out

