"""Build tiny CodeGen model directories and a trained BPE tokenizer for tests.

Nothing here downloads anything: the tokenizer is a small byte-level BPE
trained on a few lines of code, written in the GPT-2 file format CodeGen uses
(vocab.json, merges.txt, added whitespace tokens).
"""
from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np

CORPUS = """\
def add(a, b):
    return a + b

def fibonacci(n):
    if n < 2:
        return n
    return fibonacci(n - 1) + fibonacci(n - 2)

class Point:
    def __init__(self, x, y):
        self.x = x
        self.y = y

for i in range(10):
    print("hello world", i)
# 你好，世界 🙂 naïve café
"""


def train_bpe(corpus: str, n_merges: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A tiny BPE trainer over GPT-2's pre-tokenised words."""
    import regex

    pat = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
    from engine.tokenizer import bytes_to_unicode

    enc = bytes_to_unicode()
    words = collections.Counter(
        tuple(enc[b] for b in w.encode("utf-8")) for w in pat.findall(corpus))
    vocab = {c: i for i, c in enumerate(enc.values())}
    merges: list[tuple[str, str]] = []
    for _ in range(n_merges):
        pairs: collections.Counter = collections.Counter()
        for word, count in words.items():
            for a, b in zip(word, word[1:]):
                pairs[a, b] += count
        if not pairs:
            break
        (a, b), _ = pairs.most_common(1)[0]
        merges.append((a, b))
        vocab[a + b] = len(vocab)
        merged = collections.Counter()
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == (a, b):
                    out.append(a + b)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += count
        words = merged
    return vocab, merges


def write_tokenizer(model_dir: Path, n_merges: int = 60, n_whitespace: int = 6) -> int:
    """Write CodeGen-style tokenizer files; returns the number of usable ids."""
    model_dir.mkdir(parents=True, exist_ok=True)
    vocab, merges = train_bpe(CORPUS, n_merges)
    vocab["<|endoftext|>"] = len(vocab)
    (model_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (model_dir / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    added = {}
    for n in range(n_whitespace):  # runs of spaces, longest first, as CodeGen does
        added[" " * (n_whitespace + 1 - n)] = len(vocab) + n
    (model_dir / "added_tokens.json").write_text(json.dumps(added), encoding="utf-8")
    (model_dir / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}))
    (model_dir / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "CodeGenTokenizer", "model_max_length": 2048}))
    return len(vocab) + len(added)


def tiny_config(vocab_size: int, eos: int, n_positions: int = 128) -> dict:
    from engine.variants import Architecture

    arch = Architecture(n_layer=2, n_embd=64, n_head=4, rotary_dim=8,
                        vocab_size=vocab_size, n_positions=n_positions)
    cfg = arch.config_dict()
    cfg.update(eos_token_id=eos, pad_token_id=eos, bos_token_id=eos)
    return cfg


def random_state(cfg: dict, seed: int = 0) -> dict[str, np.ndarray]:
    from engine.variants import Architecture

    arch = Architecture(**{k: cfg[k] for k in ("n_layer", "n_embd", "n_head", "rotary_dim",
                                               "vocab_size", "n_positions")})
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in arch.tensor_shapes().items():
        if name.endswith(("ln_1.weight", "ln_f.weight")):
            out[name] = (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            out[name] = (0.2 * rng.standard_normal(shape)).astype(np.float32)
    return out


def legacy_config(cfg: dict) -> dict:
    """The nested `model_config.json` shape of old PaddleNLP downloads."""
    inner = {k: v for k, v in cfg.items() if k not in ("architectures", "model_type")}
    inner["init_class"] = "CodeGenModel"
    return {"init_args": [inner], "init_class": "CodeGenForCausalLM"}


def write_model_dir(model_dir: Path, *, legacy: bool = False, fmt: str = "pdparams",
                    seed: int = 0, n_positions: int = 128, n_merges: int = 60) -> dict:
    """A complete tiny model directory; returns its flat config (vocab_size: 263 + n_merges)."""
    from engine.weights import write_pdparams, write_safetensors

    usable = write_tokenizer(model_dir, n_merges)
    vocab = json.loads((model_dir / "vocab.json").read_text(encoding="utf-8"))
    cfg = tiny_config(usable, vocab["<|endoftext|>"], n_positions)
    name = "model_config.json" if legacy else "config.json"
    body = legacy_config(cfg) if legacy else cfg
    (model_dir / name).write_text(json.dumps(body, indent=2))
    state = random_state(cfg, seed)
    if fmt == "pdparams":
        write_pdparams(model_dir / "model_state.pdparams", state)
    else:
        write_safetensors(model_dir / "model.safetensors", state)
    return cfg
