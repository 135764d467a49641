"""What a bundle directory holds: its file names, ``bundle.json``, ``requirements.lock`` and
``SHA256SUMS`` (shared by `cgconvert bundle`, which writes them, and `cgconvert verify`).

```
DEST/
  README.txt          what is inside and how to use it
  install.sh          checks every file against SHA256SUMS, makes a venv, pip install --no-index
  requirements.lock   name==version --hash=sha256:… of every wheel (what install.sh installs)
  bundle.json         the target, the pinned wheels (with where each came from), the models
  Dockerfile, .dockerignore   a CUDA image with the bundle installed (not built by this project)
  wheels/*.whl        the workbench's own wheel and every dependency for the target
  models/codegen-*/   `cgconvert fetch` directories (manifest.json included)
  SHA256SUMS          sha256 of every other file, written last (`sha256sum -c` reads it too)
```
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from engine.atomic import atomic_write_bytes

from .errors import BundleError, OutputError
from .output import json_bytes
from .wheels import Target, Wheel

BUNDLE_JSON = "bundle.json"
SUMS = "SHA256SUMS"
LOCK = "requirements.lock"
README = "README.txt"
INSTALL = "install.sh"
DOCKERFILE = "Dockerfile"
DOCKERIGNORE = ".dockerignore"
WHEELS = "wheels"
MODELS = "models"
PARTIAL = ".partial"  # pip's downloads in progress (removed when the bundle is finished)
FORMAT = 1


@dataclass
class BundleState:
    """bundle.json: what was asked for and what was pinned (wheels empty until resolved)."""

    target: Target
    wheels: list[Wheel] = field(default_factory=list)
    models: dict[str, dict] = field(default_factory=dict)  # directory name -> variant, base_url
    workbench: dict = field(default_factory=dict)
    created_at: str = ""

    def to_dict(self) -> dict:
        return {"format": FORMAT, "created_at": self.created_at, "workbench": self.workbench,
                "target": self.target.to_dict(), "platform_tags": list(self.target.platforms),
                "models": self.models, "wheels": [w.to_dict() for w in self.wheels]}

    @classmethod
    def from_dict(cls, data: dict) -> "BundleState":
        return cls(Target(**data["target"]), [Wheel(**w) for w in data.get("wheels", [])],
                   dict(data.get("models", {})), dict(data.get("workbench", {})),
                   data.get("created_at", ""))


def read_state(dest: Path) -> BundleState | None:
    """The bundle's bundle.json, or None when there is none."""
    path = dest / BUNDLE_JSON
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {FORMAT}")
        return BundleState.from_dict(data)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BundleError(f"{path}: unreadable ({e}); copy it again, or make the bundle again in "
                          "a new directory") from None


def write_state(dest: Path, state: BundleState) -> None:
    atomic_write_bytes(dest / BUNDLE_JSON, json_bytes(state.to_dict()), OutputError)


def render_lock(wheels: list[Wheel]) -> str:
    head = ("# The pinned wheel set of this bundle (install.sh: pip install --no-index "
            "--find-links wheels --require-hashes -r requirements.lock).\n")
    return head + "".join(w.lock_line() + "\n" for w in sorted(wheels, key=lambda w: w.name))


def write_lock(dest: Path, wheels: list[Wheel]) -> None:
    atomic_write_bytes(dest / LOCK, render_lock(wheels).encode("utf-8"), OutputError)


def read_sums(dest: Path) -> dict[str, str] | None:
    """SHA256SUMS as {relative path: sha256}, or None when it is missing."""
    path = dest / SUMS
    if not path.is_file():
        return None
    sums = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or not name:
            raise BundleError(f"{path}:{n}: not a 'SHA256  FILE' line; copy SHA256SUMS again")
        sums[name] = digest
    return sums


def write_sums(dest: Path, sums: dict[str, str]) -> None:
    text = "".join(f"{digest}  {name}\n" for name, digest in sorted(sums.items()))
    atomic_write_bytes(dest / SUMS, text.encode("utf-8"), OutputError)


def files_in(dest: Path) -> list[str]:
    """Every file under `dest` as a relative POSIX path (SHA256SUMS itself left out)."""
    out = []
    for root, dirs, files in os.walk(dest):
        dirs.sort()
        rel = Path(root).relative_to(dest)
        out += [(rel / f).as_posix() for f in sorted(files)]
    return [f for f in out if f != SUMS]
