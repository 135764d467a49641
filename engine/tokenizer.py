"""Tokenizers: CodeGen's byte-level BPE (through PaddleNLP) and a byte tokenizer.

Decoding goes through each token's raw bytes, so text can be produced one token
at a time without ever splitting a multi-byte UTF-8 character between two
deltas (:class:`IncrementalDecoder`).
"""
from __future__ import annotations

import codecs
import functools
from pathlib import Path
from typing import Protocol, Sequence

from .errors import ModelFilesError
from .variants import EOS_TOKEN_ID

TOKENIZER_FILES = ("vocab.json", "merges.txt")


class Tokenizer(Protocol):
    eos_token_id: int
    name: str

    def encode(self, text: str) -> list[int]: ...

    def token_bytes(self, token_id: int) -> bytes: ...

    def usable_ids(self) -> int:
        """Ids below this number decode to text; ids above it are never generated."""


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (the alphabet of vocab.json)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def decode(tokenizer: Tokenizer, ids: Sequence[int]) -> str:
    """Decode a whole sequence (invalid UTF-8 becomes U+FFFD, as in PaddleNLP)."""
    return b"".join(tokenizer.token_bytes(i) for i in ids).decode("utf-8", errors="replace")


class ByteTokenizer:
    """One token per byte (ids 0-255) plus CodeGen's end-of-text id.

    Used with random weights so the real architecture runs with no download.
    """

    name = "byte"

    def __init__(self, eos_token_id: int = EOS_TOKEN_ID):
        self.eos_token_id = eos_token_id

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def token_bytes(self, token_id: int) -> bytes:
        return bytes((token_id,)) if 0 <= token_id < 256 else b""

    def usable_ids(self) -> int:
        return 256


class CodeGenBPETokenizer:
    """CodeGen's GPT-2 byte-level BPE with its added whitespace tokens, via PaddleNLP."""

    name = "codegen-bpe"

    def __init__(self, model_dir: Path, eos_token_id: int = EOS_TOKEN_ID):
        for fname in TOKENIZER_FILES:
            path = model_dir / fname
            if not path.is_file():
                raise ModelFilesError(f"{path}: tokenizer file missing; copy {fname} from the "
                                      "model's download (or run `cgconvert fetch`)")
            if path.stat().st_size == 0:
                raise ModelFilesError(f"{path}: file is empty (an interrupted copy?); copy it again")
        from .runtime import import_paddlenlp_transformers

        transformers = import_paddlenlp_transformers()
        try:
            self._tok = transformers.CodeGenTokenizer.from_pretrained(str(model_dir))
        except (ValueError, OSError, KeyError) as exc:
            raise ModelFilesError(f"{model_dir}: the tokenizer files cannot be read ({exc}); "
                                  "copy vocab.json, merges.txt and added_tokens.json again") from None
        self.eos_token_id = eos_token_id
        self._added = {v: k for k, v in self._tok.added_tokens_encoder.items()}
        self._byte_decoder = self._tok.byte_decoder
        self._size = len(self._tok)
        self._no_split = frozenset(self._tok.unique_no_split_tokens)

    def encode(self, text: str) -> list[int]:
        """Hugging Face CodeGen's encoding (the ids CodeGen was trained on).

        Not PaddleNLP's `tokenize`: it strips the whitespace next to every non-special
        added token (CodeGen's runs of spaces and tabs), so "x:\n    y" loses its newline
        and the model would see "x:    y", every indented line glued to the one before.
        Here the added tokens split the text and BPE encodes every piece between them
        untouched, which gives the same ids as the `tokenizers` library.
        """
        if not text:
            return []
        tok, ids = self._tok, []
        no_split = self._no_split
        for piece in tok.tokens_trie.split(text):
            if piece in no_split:
                ids.append(tok.convert_tokens_to_ids(piece))
            elif piece:
                ids += tok.convert_tokens_to_ids(tok._tokenize(piece))
        return ids

    @functools.lru_cache(maxsize=None)
    def token_bytes(self, token_id: int) -> bytes:
        if token_id in self._added:
            return self._added[token_id].encode("utf-8")
        if not 0 <= token_id < self._size:
            return b""
        token = self._tok.convert_ids_to_tokens(int(token_id))
        try:
            return bytes(self._byte_decoder[c] for c in token)
        except KeyError:  # a special token written outside the byte alphabet
            return token.encode("utf-8")

    def usable_ids(self) -> int:
        return self._size

    @property
    def paddlenlp(self):
        """The underlying PaddleNLP tokenizer (for comparisons in tests)."""
        return self._tok


class IncrementalDecoder:
    """Turns token ids into text deltas that never split a UTF-8 character."""

    def __init__(self, tokenizer: Tokenizer):
        self._tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self._utf8.decode(self._tokenizer.token_bytes(token_id))

    def flush(self) -> str:
        """Whatever bytes are still pending (an incomplete character becomes U+FFFD)."""
        return self._utf8.decode(b"", final=True)


def load_tokenizer(model_dir: Path, eos_token_id: int = EOS_TOKEN_ID) -> Tokenizer:
    return CodeGenBPETokenizer(model_dir, eos_token_id)
