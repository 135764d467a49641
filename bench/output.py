"""Writing result files: nothing half-written (a temporary file, then rename), and the git
commit the results came from."""
from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

from engine.atomic import atomic_write_bytes

from .errors import BenchError

ROOT = Path(__file__).resolve().parent.parent


def make_dir(path: Path, option: str = "--out") -> Path:
    """Create an output directory (and its parents), or say in one line why it cannot be."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BenchError(f"{option} {path}: cannot create ({exc.strerror}); choose another "
                         f"{option}") from None
    return path


def atomic_write(path: Path, text: str) -> None:
    """Write `text` to `path` so a reader sees the old file or the whole new one
    (engine.atomic, the one home of atomic writes)."""
    atomic_write_bytes(Path(path), text.encode("utf-8"), BenchError)


def _jsonable(value):
    return None if isinstance(value, float) and math.isnan(value) else str(value)


def json_text(data) -> str:
    """Indented JSON; NaN becomes null, other foreign values their str()."""
    return json.dumps(_nan_to_none(data), indent=2, default=_jsonable) + "\n"


def _nan_to_none(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(v) for v in value]
    return value


def write_json(path: Path, data) -> Path:
    atomic_write(path, json_text(data))
    return Path(path)


def git_commit(*paths: str) -> str | None:
    """HEAD of this checkout, `+uncommitted` when `paths` (default: all) have changes."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=ROOT, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", *paths], capture_output=True,
                               text=True, cwd=ROOT, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() + ("+uncommitted" if dirty else "") if out.returncode == 0 else None
