"""The two files a bundle carries for people: install.sh and README.txt."""
from __future__ import annotations

from .bundle_layout import (BUNDLE_JSON, DOCKERFILE, INSTALL, LOCK, MODELS, SUMS, WHEELS,
                            BundleState)
from .wheels import PADDLE_GPU_HINT

_INSTALL = r'''#!/bin/sh
# Install codegen-workbench from this bundle with no network: check every file against
# SHA256SUMS, create a virtual environment, install the pinned wheels with pip --no-index.
#
#   sh install.sh [--no-models] [VENV]     VENV defaults to $HOME/codegen-workbench-venv
#   PYTHON=/path/to/python@PY@ sh install.sh ...      when python@PY@ is not on PATH
#
# --no-models skips the checksums of models/ (when the models are carried or mounted apart).
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
CHECK_MODELS=1
if [ "${1:-}" = "--no-models" ]; then CHECK_MODELS=0; shift; fi
VENV=${1:-$HOME/codegen-workbench-venv}
PYTHON=${PYTHON:-python@PY@}
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "install.sh: $PYTHON not found; install Python @PY@ or set PYTHON=/path/to/python@PY@" >&2
    exit 1
fi
"$PYTHON" - "$HERE" "$CHECK_MODELS" <<'PY'
import hashlib, pathlib, sys
want, have = "@PY@", "%d.%d" % sys.version_info[:2]
if have != want:
    sys.exit(f"install.sh: {sys.executable} is Python {have}, this bundle's wheels are for "
             f"Python {want}: set PYTHON=/path/to/python{want}")
root, check_models = pathlib.Path(sys.argv[1]), sys.argv[2] == "1"
sums = root / "@SUMS@"
if not sums.is_file():
    sys.exit(f"install.sh: {sums}: missing; the bundle was not finished or copied only in part: "
             "finish it on the connected machine and copy it again")
bad = 0
for line in sums.read_text(encoding="utf-8").splitlines():
    digest, _, name = line.partition("  ")
    if not check_models and name.startswith("@MODELS@/"):
        continue
    path = root / name
    if not path.is_file():
        print(f"install.sh: {path}: missing (copied only in part?); copy it again", file=sys.stderr)
        bad += 1
        continue
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    if h.hexdigest() != digest:
        print(f"install.sh: {path}: checksum mismatch (damaged in copying); copy it again",
              file=sys.stderr)
        bad += 1
if bad:
    sys.exit(f"install.sh: {bad} file(s) failed the check; nothing was installed")
print(f"install.sh: every file matches {sums.name}")
PY
"$PYTHON" -m venv "$VENV"
if ! "$VENV/bin/python" -m pip install --no-index --find-links "$HERE/@WHEELS@" --require-hashes \
        --no-cache-dir --disable-pip-version-check -r "$HERE/@LOCK@"; then
    echo "install.sh: installing into $VENV failed (see above); remove $VENV and run again" >&2
    exit 1
fi
echo "installed into $VENV"
echo "check the bundle:  $VENV/bin/cgconvert verify $HERE"
echo "serve a model:     $VENV/bin/cgserve $HERE/@MODELS@/<dir>   (add --device gpu:0 on a GPU)"
'''


def render_install(state: BundleState) -> str:
    out = _INSTALL
    for key, value in {"PY": state.target.python, "SUMS": SUMS, "MODELS": MODELS,
                       "WHEELS": WHEELS, "LOCK": LOCK}.items():
        out = out.replace(f"@{key}@", value)
    return out


def render_readme(state: BundleState, wheel_bytes: int, model_bytes: dict[str, int]) -> str:
    t = state.target
    wb = state.workbench
    own = next((w for w in state.wheels if w.source == "built" and w.name == wb.get("name")), None)
    commit = f", commit {wb['commit'][:12]}" if wb.get("commit") else ""
    models = "".join(f"  {MODELS}/{name}/{' ' * max(1, 24 - len(name))}{info['variant']}, "
                     f"{model_bytes.get(name, 0) / 1e6:,.1f} MB\n"
                     for name, info in sorted(state.models.items())) or "  (no models)\n"
    first = next(iter(sorted(state.models)), "codegen-350M-mono")
    gpu = " --device gpu:0 --dtype float16" if t.name == "gpu" else ""
    return f"""codegen-workbench bundle
========================
Made {state.created_at} by `cgconvert bundle` ({wb.get('name', 'codegen-workbench')} \
{wb.get('version', '?')}{commit}) for {t.describe()}.
Everything needed to install and run the workbench on a machine with no network.

Inside
  {WHEELS}/                 {len(state.wheels)} wheels, {wheel_bytes / 1e6:,.1f} MB: \
{own.file if own else 'the workbench'} and every dependency,
                            pinned in {LOCK} (name==version and sha256)
{models}  {INSTALL}                checks every file against {SUMS}, creates a venv, installs with
                            pip --no-index --find-links {WHEELS} --require-hashes
  {SUMS}                sha256 of every file (`sha256sum -c {SUMS}` reads it too)
  {BUNDLE_JSON}               what was asked for and pinned, read by `cgconvert verify`
  {DOCKERFILE}                a CUDA 11.8 image with this bundle installed, cgserve on port 8978
                            (not built by the workbench's project: see the file)

On the offline machine
  1. Copy the whole directory (rsync -a or tar), then install:
       sh {INSTALL} ~/codegen-workbench-venv       (PYTHON=/path/to/python{t.python} if needed)
  2. Check the copy, the wheel set and every model:
       ~/codegen-workbench-venv/bin/cgconvert verify .
  3. Serve a model:
       ~/codegen-workbench-venv/bin/cgserve {MODELS}/{first}{gpu}
     and set fauxpilot.server to http://HOST:8978/v1/engines in VSCode.

A file that fails a check: copy it again. On the connected machine, the same
`cgconvert bundle DEST ...` command fills in anything missing or damaged and downloads
nothing twice.

GPU wheels
  {PADDLE_GPU_HINT}.
  A driver runs CUDA up to the version `nvidia-smi` shows (top right); driver 515 runs
  11.7, and cu118 wheels run there through CUDA minor-version compatibility.
  For example, on the connected machine (Paddle's index as an extra index):
    cgconvert bundle DEST --target gpu --variant 2B-multi \\
        --extra-index-url https://www.paddlepaddle.org.cn/packages/stable/cu118/
  or download the wheel yourself and pass it with --wheel FILE or --find-links DIR.
"""
