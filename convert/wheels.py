"""The Python half of a bundle: the workbench's own wheel, and every wheel it needs for a target.

Everything goes through pip, run as ``python -m pip`` by the interpreter running cgconvert, with
the user's own pip configuration (index, proxy, certificates, cache):

1. :func:`build_project_wheel` builds the workbench's wheel from a clean copy of the checkout;
2. :func:`resolve` asks pip which wheels install ``codegen-workbench[<target>]`` on the target
   interpreter and platform (``pip install --dry-run --report`` with ``--python-version``,
   ``--platform``, ``--only-binary=:all:``), giving each wheel's URL and sha256.  A dependency
   published only as a source archive (jieba, seqeval) is built into a wheel here when the result
   is pure Python, and the resolution runs again;
3. :func:`download` fetches the wheels (``pip download --require-hashes``: pip's cache helps, a
   wheel already complete is not fetched again, a damaged one is).
"""
from __future__ import annotations

import configparser
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from packaging.tags import Tag, compatible_tags, cpython_tags, sys_tags
from packaging.utils import canonicalize_name, parse_wheel_filename

from .errors import BundleError, OutputError

TARGETS = ("cpu", "gpu")
DEFAULT_PLATFORM = "manylinux2014_x86_64"
PADDLE_GPU = "paddlepaddle-gpu"
PADDLE_GPU_HINT = ("Paddle's GPU wheels are not on PyPI: download the one for your CUDA version "
                   "(https://www.paddlepaddle.org.cn/packages/stable/cu118/ for CUDA 11.8, cu126 "
                   "for 12.6; README 'GPU install') and pass --wheel FILE or --find-links DIR")
MAX_BUILDS = 20  # source-only dependencies built here before giving up
_LEGACY_MANYLINUX = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
_NO_MATCH = re.compile(r"No matching distribution found for (\S+)")
Echo = Callable[[str], None]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def expand_platform(platform: str) -> tuple[str, ...]:
    """Every platform tag an installer on `platform` accepts, best first (as pip's own list).

    ``manylinux2014_x86_64`` (glibc 2.17) also takes ``manylinux_2_16`` … ``manylinux_2_5`` wheels,
    the legacy aliases and, last, plain ``linux_x86_64`` ones (which pip on Linux installs too).
    """
    m = re.fullmatch(r"manylinux_(\d+)_(\d+)_(\w+)", platform)
    legacy = re.fullmatch(r"(manylinux1|manylinux2010|manylinux2014)_(\w+)", platform)
    if not m and not legacy:
        return (platform,)
    if m:
        major, minor, arch = int(m.group(1)), int(m.group(2)), m.group(3)
    else:
        (major, minor), arch = _LEGACY_MANYLINUX[legacy.group(1)], legacy.group(2)
    if major != 2:
        return (platform,)
    out = []
    for glibc_minor in range(minor, 4, -1):
        out.append(f"manylinux_2_{glibc_minor}_{arch}")
        out += [f"{alias}_{arch}" for alias, v in _LEGACY_MANYLINUX.items() if v == (2, glibc_minor)]
    return (*out, f"linux_{arch}")


@dataclass(frozen=True)
class Target:
    """Which interpreter and platform the wheels are for, and which extra of the workbench."""

    name: str = "cpu"
    python: str = "3.11"
    platform: str = DEFAULT_PLATFORM

    def __post_init__(self) -> None:
        if self.name not in TARGETS:
            raise BundleError(f"--target {self.name}: unknown target; use one of {', '.join(TARGETS)}")
        if not re.fullmatch(r"3\.\d{1,2}", self.python):
            raise BundleError(f"--python {self.python}: give the target's Python as MAJOR.MINOR, "
                              "e.g. --python 3.11")
        if not re.fullmatch(r"[a-z0-9_]+", self.platform):
            raise BundleError(f"--platform {self.platform}: not a pip platform tag; use e.g. "
                              f"{DEFAULT_PLATFORM} or manylinux_2_28_x86_64")

    @property
    def abi(self) -> str:
        return "cp" + self.python.replace(".", "")

    @property
    def platforms(self) -> tuple[str, ...]:
        return expand_platform(self.platform)

    def describe(self) -> str:
        return f"target {self.name}, Python {self.python} ({self.abi}), {self.platform}"

    def pip_args(self) -> list[str]:
        args = ["--only-binary=:all:", "--implementation", "cp", "--python-version", self.python,
                "--abi", self.abi]
        for platform in self.platforms:
            args += ["--platform", platform]
        return args

    def tags(self) -> set[Tag]:
        version = tuple(int(p) for p in self.python.split("."))
        return (set(cpython_tags(version, [self.abi], self.platforms))
                | set(compatible_tags(version, self.abi, self.platforms)))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Sources:
    """Where pip looks besides (or instead of) the configured index."""

    no_index: bool = False
    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()

    def pip_args(self) -> list[str]:
        args = ["--no-index"] if self.no_index else []
        if self.index_url:
            args += ["--index-url", self.index_url]
        for url in self.extra_index_urls:
            args += ["--extra-index-url", url]
        for link in self.find_links:
            args += ["--find-links", link]
        return args

    def brings_wheels(self) -> bool:
        return bool(self.find_links or self.extra_index_urls or self.index_url)


@dataclass
class Wheel:
    """One pinned wheel: what requirements.lock and bundle.json record."""

    name: str
    version: str
    file: str
    sha256: str
    url: str = ""
    source: str = "index"  # index (downloaded), built (here, from the checkout or a source archive), given

    def lock_line(self) -> str:
        return f"{self.name}=={self.version} --hash=sha256:{self.sha256}"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PipRun:
    code: int
    lines: list[str] = field(default_factory=list)

    def errors(self) -> list[str]:
        return [line.strip() for line in self.lines if line.strip().startswith("ERROR:")]


def run_pip(args: list[str], echo: Echo | None = None, keep: Callable[[str], bool] | None = None,
            python: str = sys.executable) -> PipRun:
    """``python -m pip ARGS``; its output is kept (and the lines `keep` picks are passed to `echo`)."""
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1",
               PYTHONIOENCODING="utf-8")
    try:
        proc = subprocess.Popen([python, "-m", "pip", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=env, errors="replace")
    except OSError as e:
        raise BundleError(f"{python}: cannot run pip ({e.strerror}); install pip for this "
                          "interpreter (python -m ensurepip)") from None
    run = PipRun(0)
    assert proc.stdout is not None
    for line in proc.stdout:
        run.lines.append(line.rstrip("\n"))
        if echo is not None and (keep is None or keep(line)):
            echo(line.rstrip("\n"))
    run.code = proc.wait()
    return run


def _pip_failure(run: PipRun, what: str, where: Path | None = None) -> Exception:
    """The one line for a failed pip run: out of space, an old pip, or pip's own last error."""
    text = "\n".join(run.lines)
    if "No space left on device" in text or "Errno 28" in text:
        place = where or Path(tempfile.gettempdir())
        return OutputError(f"{place}: no space left on the device while pip was {what}; free some "
                           "space and run the same command again (complete files are kept)")
    if "no such option: --report" in text or "no such option: --dry-run" in text:
        return BundleError(f"pip is too old for cgconvert bundle (needs 22.2 or newer): "
                           f"{sys.executable} -m pip install -U pip")
    errors = run.errors() or [line.strip() for line in run.lines if line.strip()][-1:]
    detail = errors[-1].removeprefix("ERROR:").strip() if errors else f"exit code {run.code}"
    return BundleError(f"pip failed while {what}: {detail}; check the network and the index "
                       "options, then run the same command again")


def project_packages(project: Path) -> list[str]:
    cfg = configparser.ConfigParser()
    if not cfg.read(project / "setup.cfg"):
        raise BundleError(f"{project / 'setup.cfg'}: not found; cgconvert bundle builds the "
                          "workbench's wheel from its source checkout: run it from a clone (pip "
                          "install -e .) or pass --project DIR")
    listed = cfg.get("options", "packages", fallback="").replace(",", " ").split()
    if listed == ["find:"]:  # setuptools' find with an include list: its top-level names
        listed = cfg.get("options.packages.find", "include", fallback="").replace(",", " ").split()
        listed = [name for name in listed if "*" not in name and "." not in name]
    missing = [name for name in listed if not (project / name).is_dir()]
    if not listed or missing:
        raise BundleError(f"{project / 'setup.cfg'}: packages {missing or listed!r} are not "
                          "directories of the checkout; pass --project DIR of a workbench clone")
    return listed


def build_project_wheel(project: Path, out_dir: Path) -> Path:
    """Build the wheel of the checkout `project` into `out_dir` (from a clean copy of its sources:
    a stale build/ in the checkout cannot leak into it)."""
    packages = project_packages(project)
    with tempfile.TemporaryDirectory(prefix="cgconvert-wheel-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for name in ("setup.cfg", "setup.py", "pyproject.toml", "README.md", "MANIFEST.in", "LICENSE"):
            if (project / name).is_file():
                shutil.copy2(project / name, src / name)
        for package in packages:
            shutil.copytree(project / package, src / package,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        no_isolation = ["--no-build-isolation"] if _has_build_backend() else []
        run = run_pip(["wheel", "--no-deps", *no_isolation, "--wheel-dir",
                       str(Path(tmp) / "out"), str(src)])
        if run.code != 0:
            raise _pip_failure(run, f"building the workbench's wheel from {project}")
        built = sorted((Path(tmp) / "out").glob("*.whl"))
        if len(built) != 1:
            raise BundleError(f"{project}: building its wheel gave {len(built)} files, expected one")
        out_dir.mkdir(parents=True, exist_ok=True)
        dest = out_dir / built[0].name
        shutil.move(str(built[0]), dest)
        return dest


def _has_build_backend() -> bool:
    """Whether setuptools is importable here (then no isolated build env is downloaded)."""
    import importlib.util

    return importlib.util.find_spec("setuptools") is not None


def _file_of(url: str) -> str:
    return urllib.parse.unquote(urllib.parse.urlparse(url).path).rsplit("/", 1)[-1]


def local_path(url: str) -> Path | None:
    """The path of a file:// URL, else None."""
    if not url.startswith("file:"):
        return None
    return Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))


def _wheels_from_report(report: dict, built_dir: Path, given_dirs: set[Path]) -> list[Wheel]:
    wheels = []
    for item in report.get("install", []):
        meta, info = item["metadata"], item["download_info"]
        url = info["url"]
        file = _file_of(url)
        if not file.endswith(".whl"):
            raise BundleError(f"{meta['name']} {meta['version']}: pip chose {file}, not a wheel; "
                              "pass a wheel for it with --wheel FILE")
        archive = info.get("archive_info", {})
        legacy = archive.get("hash", "")  # "sha256=…" (pips before 22.3 give only this)
        sha = archive.get("hashes", {}).get("sha256") or (
            legacy.removeprefix("sha256=") if legacy.startswith("sha256=") else None)
        path = local_path(url)
        source = "index"
        if path is not None:
            sha = sha or sha256_file(path)
            if path.parent.resolve() == built_dir.resolve():
                source = "built"
            elif path.parent.resolve() in given_dirs:
                source = "given"
        if not sha:
            raise BundleError(f"{url}: the index gives no sha256 for {file}; use an index that does "
                              "(PyPI does) or bring the wheel with --wheel FILE")
        wheels.append(Wheel(str(canonicalize_name(meta["name"])), meta["version"], file, sha, url,
                            source))
    return sorted(wheels, key=lambda w: w.name)


def _dry_run(requirement: str, args: list[str]) -> tuple[PipRun, dict | None]:
    """``pip install --dry-run --report`` of `requirement`: the run and its report (None on failure)."""
    with tempfile.TemporaryDirectory(prefix="cgconvert-resolve-") as tmp:
        report_path = Path(tmp) / "report.json"
        # --target: older pips take the platform options only with it (nothing is installed)
        run = run_pip(["install", "--dry-run", "--ignore-installed", "--quiet", "--report",
                       str(report_path), "--target", str(Path(tmp) / "target"), *args, requirement])
        if run.code != 0:
            return run, None
        return run, json.loads(report_path.read_text(encoding="utf-8"))


def _source_only_picks(requirement: str, sources: Sources) -> list[str]:
    """What an unrestricted resolution (sources allowed, this interpreter) takes as source archives.

    Restricted to wheels, pip would silently go back to an old release that had one (seqeval
    1.2.2 is source-only; 0.0.10 has a wheel and pulls keras): building these first keeps the set
    the one a normal install gets.  Best effort: a failure here leaves it to the restricted run.
    """
    _, report = _dry_run(requirement, sources.pip_args())
    picks = []
    for item in (report or {}).get("install", []):
        if not item.get("is_direct") and not _file_of(item["download_info"]["url"]).endswith(".whl"):
            picks.append(f"{item['metadata']['name']}=={item['metadata']['version']}")
    return picks


def resolve(requirement: str, target: Target, sources: Sources, built_dir: Path,
            given_dirs: set[Path], echo: Echo | None = None) -> list[Wheel]:
    """Every wheel that installs `requirement` on `target`; source-only dependencies are built
    into `built_dir` (which pip also searches) when the result suits the target."""
    for pick in _source_only_picks(requirement, sources):
        _build_missing(pick, target, sources, built_dir, echo)
    args = [*target.pip_args(), *sources.pip_args(), "--find-links", str(built_dir)]
    for _ in range(MAX_BUILDS + 1):
        run, report = _dry_run(requirement, args)
        if report is not None:
            return _wheels_from_report(report, built_dir, given_dirs)
        missing = next((m.group(1) for line in run.lines if (m := _NO_MATCH.search(line))), None)
        if missing is None:
            text = "\n".join(run.lines)
            if "requires a different Python" in text:
                raise BundleError(f"--python {target.python}: the workbench (or a dependency) "
                                  "does not support it; use --python 3.11")
            raise _pip_failure(run, f"resolving the wheels for {target.describe()}")
        _build_missing(missing, target, sources, built_dir, echo)
    raise BundleError(f"more than {MAX_BUILDS} dependencies have no wheel for {target.describe()}; "
                      "bring them with --find-links DIR")


def _build_missing(requirement: str, target: Target, sources: Sources, built_dir: Path,
                   echo: Echo | None) -> None:
    """Build `requirement` (published only as a source archive) into a wheel for the target."""
    name = re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0]
    no_wheel = f"{requirement}: no wheel for {target.describe()}"
    if canonicalize_name(name) == PADDLE_GPU:
        raise BundleError(f"{no_wheel}. {PADDLE_GPU_HINT}")
    if echo:
        echo(f"{requirement}: no wheel for the target; building one here from its source")
    for done in built_dir.glob("*.whl"):
        if parse_wheel_filename(done.name)[0] == canonicalize_name(name):
            raise BundleError(f"{no_wheel}; the wheel built from its source ({done.name}) does not "
                              "satisfy it: bring one with --wheel FILE")
    with tempfile.TemporaryDirectory(prefix="cgconvert-build-") as tmp:
        run = run_pip(["wheel", "--no-deps", "--wheel-dir", tmp, *sources.pip_args(), requirement])
        built = sorted(Path(tmp).glob("*.whl"))
        if run.code != 0 or not built:
            raise BundleError(f"{no_wheel}, and none could be built here; choose another --python "
                              "or --platform, or bring the wheel with --wheel FILE")
        wheel = built[0]
        if not compatible(wheel.name, target.tags()):
            raise BundleError(f"{no_wheel}; the one to be had here ({wheel.name}) is for another "
                              "interpreter or platform: build it on a machine like the target and "
                              "pass --wheel FILE")
        shutil.move(str(wheel), built_dir / wheel.name)


def compatible(filename: str, tags: set[Tag]) -> bool:
    """Whether the wheel `filename` installs where `tags` are supported."""
    try:
        _, _, _, wheel_tags = parse_wheel_filename(filename)
    except ValueError:
        return False
    return not wheel_tags.isdisjoint(tags)


def this_interpreter_tags() -> list[Tag]:
    """The wheel tags the running interpreter installs, most specific first."""
    return list(sys_tags())


def download(wheels: list[Wheel], target: Target, sources: Sources, staging: Path,
             echo: Echo | None = None) -> None:
    """Fetch `wheels` (index URLs) into `staging` with pip, each checked against its sha256."""
    staging.mkdir(parents=True, exist_ok=True)
    reqs = staging / "requirements.download.txt"
    reqs.write_text("".join(f"{w.name} @ {w.url} --hash=sha256:{w.sha256}\n" for w in wheels),
                    encoding="utf-8")
    run = run_pip(["download", "--no-deps", "--require-hashes", "--dest", str(staging),
                   *target.pip_args(), *sources.pip_args(), "-r", str(reqs)], echo,
                  keep=lambda line: line.lstrip().startswith(("Downloading", "Saved", "File was")))
    reqs.unlink()
    if run.code != 0:
        raise _pip_failure(run, f"downloading {len(wheels)} wheel(s)", staging)
