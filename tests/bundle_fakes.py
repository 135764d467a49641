"""A stand-in workbench checkout, hand-made wheels and an environment with no index, so bundles
can be made and installed in seconds, offline."""
from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from loopback import closed_port

BASE_PYTHON = getattr(sys, "_base_executable", sys.executable)  # for install.sh's venv

SETUP_CFG = """\
[metadata]
name = fakebench
version = 0.1.0

[options]
packages = fakebench
install_requires =
    fakedep==1.0
{extra_requires}
[options.extras_require]
cpu =
    fakecpu
gpu =
    paddlepaddle-gpu
"""


def make_wheel(directory: Path, name: str, version: str, tag: str = "py3-none-any",
               requires: tuple[str, ...] = ()) -> Path:
    """A minimal, valid wheel of an importable module `name` (with VERSION) and its RECORD."""
    directory.mkdir(parents=True, exist_ok=True)
    module = name.replace("-", "_")
    dist = f"{module}-{version}"
    files = {
        f"{module}/__init__.py": f"VERSION = {version!r}\n",
        f"{dist}.dist-info/METADATA": (f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                                       + "".join(f"Requires-Dist: {r}\n" for r in requires)),
        f"{dist}.dist-info/WHEEL": (f"Wheel-Version: 1.0\nGenerator: tests\n"
                                    f"Root-Is-Purelib: {str(tag.endswith('any')).lower()}\nTag: {tag}\n"),
    }
    record = []
    for path, text in files.items():
        data = text.encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    files[f"{dist}.dist-info/RECORD"] = "\n".join(record + [f"{dist}.dist-info/RECORD,,"]) + "\n"
    path = directory / f"{dist}-{tag}.whl"
    with zipfile.ZipFile(path, "w") as z:
        for name_, text in files.items():
            z.writestr(name_, text)
    return path


def make_project(root: Path, extra_requires: tuple[str, ...] = ()) -> Path:
    """A checkout like the workbench's (setup.cfg, pyproject.toml, a package, a Dockerfile)."""
    (root / "fakebench").mkdir(parents=True)
    requires = "".join(f"    {r}\n" for r in extra_requires)
    (root / "setup.cfg").write_text(SETUP_CFG.format(extra_requires=requires))
    (root / "pyproject.toml").write_text('[build-system]\nrequires = ["setuptools>=68"]\n'
                                         'build-backend = "setuptools.build_meta"\n')
    (root / "fakebench" / "__init__.py").write_text("VALUE = 42\n")
    (root / "Dockerfile").write_text("FROM scratch\n")
    return root


def make_wheelhouse(directory: Path) -> Path:
    """fakedep and fakecpu (pure), fakenative (CPython 3.11 and 3.12 manylinux builds)."""
    make_wheel(directory, "fakedep", "1.0")
    make_wheel(directory, "fakecpu", "2.0", requires=("fakedep>=1",))
    for abi in ("cp311", "cp312"):
        make_wheel(directory, "fakenative", "1.0", f"{abi}-{abi}-manylinux2014_x86_64")
    return directory


def no_network_prefix() -> list[str]:
    if shutil.which("unshare") and subprocess.run(["unshare", "-rn", "true"]).returncode == 0:
        return ["unshare", "-rn"]  # no network at all, not even loopback
    return []


def offline_env(**extra: str) -> dict[str, str]:
    """pip's configuration gone and every index pointing at a closed loopback port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and k != "PYTHONPATH"}
    closed = f"http://127.0.0.1:{closed_port()}/simple"
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL=closed, PIP_EXTRA_INDEX_URL=closed,
               PIP_DEFAULT_TIMEOUT="3", PIP_RETRIES="0", **extra)
    return env
