"""`cgconvert fetch`: download a variant's files (on a connected machine) to carry them offline.

Each file is written to ``<name>.part`` and renamed when complete; a later run resumes a ``.part``
with an HTTP Range request.  Sizes are checked against the server's, a sha256 manifest is written
(the download base publishes none), `config.json` is derived from `model_config.json`, and the
directory is then inspected.
"""
from __future__ import annotations

import hashlib
import http.client
import re
import socket
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from engine.atomic import replace_durably
from engine.variants import Variant, get_variant

from .configs import write_config
from .errors import FetchError, OutputError
from .inspect import MANIFEST_FILE
from .output import atomic_write_bytes, json_bytes

DEFAULT_BASE_URL = "https://bj.bcebos.com/paddlenlp/models/community/Salesforce"
# Small files first, so a wrong name or mirror fails before the big download.
FETCH_FILES = ("model_config.json", "added_tokens.json", "merges.txt", "special_tokens_map.json",
               "tokenizer_config.json", "vocab.json", "model_state.pdparams")
CHUNK = 1 << 20
Progress = Callable[[str, int, "int | None"], None]  # (file, bytes done, total or None)
_RANGE_RE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


@dataclass
class FetchedFile:
    name: str
    bytes: int
    sha256: str
    resumed_from: int = 0
    skipped: bool = False


@dataclass
class FetchResult:
    variant: str
    destination: Path
    base_url: str
    files: list[FetchedFile]

    def to_dict(self) -> dict:
        return {"variant": self.variant, "destination": str(self.destination),
                "base_url": self.base_url, "files": [asdict(f) for f in self.files]}


def file_url(base_url: str, variant: Variant, name: str) -> str:
    return f"{base_url.rstrip('/')}/{variant.name}/{name}"


def _hash_prefix(path: Path, limit: int) -> "hashlib._Hash":
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        remaining = limit
        while remaining > 0:
            block = f.read(min(CHUNK, remaining))
            if not block:
                break
            digest.update(block)
            remaining -= len(block)
    return digest


def _sha256(path: Path) -> str:
    return _hash_prefix(path, path.stat().st_size).hexdigest()


def _open(url: str, start: int, timeout: float):
    headers = {"User-Agent": "cgconvert-fetch", "Accept-Encoding": "identity"}
    if start:
        headers["Range"] = f"bytes={start}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _resume_hint(part: Path) -> str:
    return f"what arrived is kept in {part.name}: run the same command again to resume"


def fetch_file(url: str, dest: Path, progress: Progress | None = None,
               timeout: float = 60.0) -> FetchedFile:
    """Download `url` to `dest` through `dest.part`, resuming an existing `.part`."""
    if dest.is_file():  # renamed into place only when complete
        return FetchedFile(dest.name, dest.stat().st_size, _sha256(dest), skipped=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    try:
        resp = _open(url, have, timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the .part is already whole (or longer than the file)
            match = re.match(r"bytes \*/(\d+)", e.headers.get("Content-Range", ""))
            if match and int(match.group(1)) == have:
                replace_durably(part, dest)
                return FetchedFile(dest.name, have, _sha256(dest), resumed_from=have)
            part.unlink()
            raise FetchError(f"{url}: the partial download does not match the server's file; it "
                             "was removed, run the same command again") from None
        raise FetchError(f"{url}: HTTP {e.code} {e.reason}; check the variant name and --base-url"
                         ) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", None) or e
        raise FetchError(f"{url}: cannot download ({reason}); check the network and --base-url, "
                         "then run again (downloads resume)") from None
    with resp:
        total = None
        if have and resp.status == 206:
            match = _RANGE_RE.match(resp.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != have:
                raise FetchError(f"{url}: the server answered the resume request with the wrong "
                                 "range; delete the .part file and run again")
            total = None if match.group(3) == "*" else int(match.group(3))
            digest, mode, resumed = _hash_prefix(part, have), "ab", have
        else:  # 200: the server sent the whole file (it ignores Range), start over
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            digest, mode, resumed, have = hashlib.sha256(), "wb", 0, 0
        done = have
        try:
            with open(part, mode) as f:
                while block := resp.read(CHUNK):
                    f.write(block)
                    digest.update(block)
                    done += len(block)
                    if progress:
                        progress(dest.name, done, total)
        except (OSError, http.client.HTTPException, socket.timeout) as e:
            if isinstance(e, OSError) and e.errno is not None and not isinstance(e, ConnectionError):
                raise OutputError(f"{part}: writing failed ({e.strerror}); check free space and "
                                  f"permissions; {_resume_hint(part)}") from None
            raise FetchError(f"{url}: download interrupted at {done:,} bytes ({e.__class__.__name__}"
                             f"); {_resume_hint(part)}") from None
    size = part.stat().st_size
    if total is not None and size != total:
        raise FetchError(f"{url}: download interrupted at {size:,} of {total:,} bytes; "
                         f"{_resume_hint(part)}")
    if size == 0:
        raise FetchError(f"{url}: the server sent an empty file; check --base-url")
    try:
        replace_durably(part, dest)
    except OSError as e:
        raise OutputError(f"{dest}: cannot put the finished download in place ({e.strerror}); check "
                          f"free space and permissions; {_resume_hint(part)}") from None
    return FetchedFile(dest.name, size, digest.hexdigest(), resumed_from=resumed)


def fetch_variant(variant_name: str, dest: Path, base_url: str = DEFAULT_BASE_URL,
                  progress: Progress | None = None, timeout: float = 60.0,
                  files: tuple[str, ...] = FETCH_FILES) -> FetchResult:
    """Download every file of a variant into `dest`, then write manifest.json and config.json."""
    variant = get_variant(variant_name)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{dest}: cannot create the directory ({e.strerror}); check the path and "
                          "permissions") from None
    fetched = [fetch_file(file_url(base_url, variant, name), dest / name, progress, timeout)
               for name in files]
    manifest = {
        "variant": variant.name, "base_url": base_url,
        "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": {f.name: {"bytes": f.bytes, "sha256": f.sha256} for f in fetched},
        "derived": ["config.json"],
    }
    atomic_write_bytes(dest / MANIFEST_FILE, json_bytes(manifest))
    if (dest / "model_config.json").is_file():
        write_config(dest, force=False)
    return FetchResult(variant.name, dest, base_url, fetched)
