"""`cgconvert bundle`: everything the offline network needs, in one checked directory.

On a connected machine: the workbench's wheel (built from the checkout) and every wheel it needs
for a target, pinned (requirements.lock, bundle.json); any number of models (`fetch`: resumable,
from a mirror); install.sh, README.txt, a Dockerfile; and SHA256SUMS, written last.

Re-running fills in what is missing: the pinned set is kept (no new resolution), a wheel or model
file already complete and intact is not fetched again, a damaged one is, and a model download
resumes where it stopped.  Every file appears under its name only when complete (temporary names,
then rename); a resolution that fails writes nothing.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from packaging.utils import parse_wheel_filename

from engine.atomic import atomic_copy, atomic_write_bytes, replace_durably
from engine.variants import get_variant

from .bundle_layout import (DOCKERFILE, DOCKERIGNORE, INSTALL, LOCK, MODELS, PARTIAL, README,
                            SUMS, WHEELS, BUNDLE_JSON, BundleState, files_in, read_state,
                            write_lock, write_state, write_sums)
from .bundle_text import render_install, render_readme
from .errors import BundleError, OutputError
from .fetch import DEFAULT_BASE_URL, FetchResult, Progress, fetch_variant
from .inspect import MANIFEST_FILE, inspect_dir
from .wheels import (PADDLE_GPU, PADDLE_GPU_HINT, Echo, Sources, Target, Wheel,
                     build_project_wheel, download, local_path, resolve, sha256_file)

PROJECT = Path(__file__).resolve().parent.parent  # the checkout this module runs from
_PYPI_FILES = "files.pythonhosted.org"
DOWNLOAD_BATCH = 8  # wheels per pip download; each batch is put in place when it is complete


@dataclass
class BundleResult:
    dest: Path
    state: BundleState
    fetched_wheels: int = 0
    models: list[FetchResult] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # model problems: the bundle is not finished
    extra: list[str] = field(default_factory=list)  # files in DEST that are not part of it
    files: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def wheel_bytes(self) -> int:
        return sum((self.dest / WHEELS / w.file).stat().st_size for w in self.state.wheels)


def make_bundle(dest: Path, target: Target, sources: Sources = Sources(),
                wheel_files: tuple[Path, ...] = (), variants: tuple[str, ...] = (),
                base_url: str | None = None, project: Path = PROJECT,
                progress: Progress | None = None, timeout: float = 60.0,
                echo: Echo | None = None) -> BundleResult:
    """Make (or finish) the bundle in `dest`; see the module docstring."""
    names = [get_variant(v).name for v in variants]  # a bad name fails before anything is done
    state = _existing_state(dest, target)
    if state is None or not state.wheels:
        if target.name == "gpu" and not (wheel_files or sources.brings_wheels()):
            raise BundleError(f"--target gpu needs a {PADDLE_GPU} wheel: {PADDLE_GPU_HINT} "
                              "(or --extra-index-url Paddle's index)")
        state, pinned_copies = _pin(dest, target, sources, wheel_files, project, echo)
    else:
        pinned_copies = 0
    _remove(dest / SUMS)  # the bundle is unfinished from here until SHA256SUMS is written again
    result = BundleResult(dest, state)
    result.fetched_wheels = pinned_copies + _complete_wheels(dest, state, target, sources, echo)
    for name in names:
        state.models.setdefault(name, {"variant": name, "base_url": base_url or DEFAULT_BASE_URL})
        if base_url:
            state.models[name]["base_url"] = base_url
    write_state(dest, state)  # remember the models asked for before fetching them
    sums = {f"{WHEELS}/{w.file}": w.sha256 for w in state.wheels}
    for name, info in sorted(state.models.items()):
        fetched = _fetch_model(dest / MODELS / name, info, base_url, progress, timeout)
        result.models.append(fetched)
        sums.update(_model_sums(dest, name, fetched))
        report = inspect_dir(dest / MODELS / name)
        result.problems += [f"{MODELS}/{name}/{p.file or ''}: {p.message}; fix: {p.fix}"
                            for p in report.problems]
    if result.problems:
        return result
    _write_texts(dest, state, project, result)
    for name in (README, INSTALL, LOCK, BUNDLE_JSON, DOCKERFILE, DOCKERIGNORE):
        if (dest / name).is_file():
            sums[name] = sha256_file(dest / name)
    shutil.rmtree(dest / PARTIAL, ignore_errors=True)
    result.extra = [f for f in files_in(dest) if f not in sums]
    write_sums(dest, sums)
    result.files = len(sums) + 1
    return result


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as e:
        raise OutputError(f"{path}: cannot remove it ({e.strerror}); check permissions") from None


def _existing_state(dest: Path, target: Target) -> BundleState | None:
    if not dest.exists():
        return None
    if not dest.is_dir():
        raise BundleError(f"{dest}: not a directory; give a new or empty directory for the bundle")
    state = read_state(dest)
    if state is None:
        if any(dest.iterdir()):
            raise BundleError(f"{dest}: not empty and not a bundle (no {BUNDLE_JSON}); give a new "
                              "or empty directory")
        return None
    if state.wheels and state.target != target:
        t = state.target
        raise BundleError(f"{dest}: holds a bundle for {t.describe()}, not {target.describe()}; "
                          f"give the same --target {t.name} --python {t.python} --platform "
                          f"{t.platform} to fill it in, or a new directory for another target")
    return state


def _workbench_info(project: Path, own: Path) -> dict:
    name, version, _, _ = parse_wheel_filename(own.name)
    info = {"name": str(name), "version": str(version)}
    try:
        commit = subprocess.run(["git", "-C", str(project), "rev-parse", "HEAD"], text=True,
                                capture_output=True, timeout=10)
        if commit.returncode == 0:
            info["commit"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def _pin(dest: Path, target: Target, sources: Sources, wheel_files: tuple[Path, ...],
         project: Path, echo: Echo | None) -> tuple[BundleState, int]:
    """Build the workbench's wheel, resolve the set for `target`, then (only then) write DEST.
    Returns the state and how many wheels (built or given) were put in DEST."""
    for f in wheel_files:
        if not f.is_file() or f.suffix != ".whl":
            raise BundleError(f"--wheel {f}: not a wheel file; give the path of a .whl")
    with tempfile.TemporaryDirectory(prefix="cgconvert-bundle-") as tmp:
        built, given = Path(tmp) / "built", Path(tmp) / "given"
        given.mkdir()
        if echo:
            echo(f"building the workbench's wheel from {project}")
        own = build_project_wheel(project, built)
        originals = {}
        for f in wheel_files:
            shutil.copy2(f, given / f.name)
            originals[f.name] = f.resolve().as_uri()
        given_dirs = {given.resolve()} | {Path(d).resolve() for d in sources.find_links
                                          if Path(d).is_dir()}
        search = Sources(sources.no_index, sources.index_url, sources.extra_index_urls,
                         (*sources.find_links, str(given)))
        name = parse_wheel_filename(own.name)[0]
        if echo:
            echo(f"resolving the wheels for {target.describe()}")
        wheels = resolve(f"{name}[{target.name}] @ {own.resolve().as_uri()}", target, search,
                         built, given_dirs, echo)
        _check_paddle_gpu(wheels, target)
        _mkdir(dest / WHEELS)
        local = [w for w in wheels if w.source in ("built", "given")]
        for w in local:
            atomic_copy(local_path(w.url), dest / WHEELS / w.file, OutputError)
            w.url = originals.get(w.file, "" if w.source == "built" else w.url)
        state = BundleState(target, wheels, {}, _workbench_info(project, own),
                            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        write_lock(dest, wheels)
        write_state(dest, state)
        return state, len(local)


def _check_paddle_gpu(wheels: list[Wheel], target: Target) -> None:
    if target.name != "gpu":
        return
    for w in wheels:
        if w.name == PADDLE_GPU and w.source != "given" and _PYPI_FILES in w.url:
            raise BundleError(f"{PADDLE_GPU} {w.version} would come from PyPI, which has no Paddle "
                              f"3 GPU wheels: {PADDLE_GPU_HINT}")


def _mkdir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{path}: cannot create the directory ({e.strerror}); check the path "
                          "and permissions") from None


def _complete_wheels(dest: Path, state: BundleState, target: Target, sources: Sources,
                     echo: Echo | None) -> int:
    """Put every pinned wheel in DEST/wheels (checked against its sha256); returns how many were
    fetched or copied this run."""
    wheels_dir, staging = dest / WHEELS, dest / PARTIAL
    _mkdir(wheels_dir)
    remote, copied = [], 0
    for w in state.wheels:
        path = wheels_dir / w.file
        if path.is_file():
            if sha256_file(path) == w.sha256:
                continue
            if echo:
                echo(f"{WHEELS}/{w.file}: damaged (its sha256 is not the pinned one); fetching it again")
            path.unlink()
        src = local_path(w.url) if w.url else None
        if src is None and w.url:
            remote.append(w)
            continue
        if src is None or not src.is_file():
            how = "built here" if w.source == "built" else f"from {w.url or 'a --wheel file'}"
            raise BundleError(f"{path}: missing, and it was {how}: make the bundle again in a new "
                              "directory")
        atomic_copy(src, path, OutputError)
        _check_hash(path, w)
        copied += 1
    if remote and echo:
        echo(f"downloading {len(remote)} wheel(s)")
    for start in range(0, len(remote), DOWNLOAD_BATCH):  # what a batch finished is kept
        batch = remote[start:start + DOWNLOAD_BATCH]
        download(batch, target, sources, staging, echo)
        for w in batch:
            got = staging / w.file
            if not got.is_file():
                raise BundleError(f"{got}: pip did not download it; run the same command again")
            _check_hash(got, w)
            replace_durably(got, wheels_dir / w.file)
    return copied + len(remote)


def _check_hash(path: Path, w: Wheel) -> None:
    if sha256_file(path) != w.sha256:
        path.unlink()
        raise BundleError(f"{path}: its sha256 is not the one pinned in {LOCK} (the source changed "
                          "since); it was removed: make the bundle again in a new directory")


def _fetch_model(model_dir: Path, info: dict, base_url: str | None, progress: Progress | None,
                 timeout: float) -> FetchResult:
    """`fetch` the model; a file that no longer matches the manifest's sha256 is fetched again."""
    before = _manifest_hashes(model_dir)
    url = base_url or info.get("base_url") or DEFAULT_BASE_URL
    result = fetch_variant(info["variant"], model_dir, url, progress, timeout)
    damaged = [f for f in result.files if f.skipped and before.get(f.name, f.sha256) != f.sha256]
    if damaged:
        for f in damaged:
            (model_dir / f.name).unlink()
        result = fetch_variant(info["variant"], model_dir, url, progress, timeout)
    return result


def _manifest_hashes(model_dir: Path) -> dict[str, str]:
    try:
        files = json.loads((model_dir / MANIFEST_FILE).read_text(encoding="utf-8"))["files"]
        return {name: entry["sha256"] for name, entry in files.items()}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _model_sums(dest: Path, name: str, fetched: FetchResult) -> dict[str, str]:
    known = {f.name: f.sha256 for f in fetched.files}
    model_dir = dest / MODELS / name
    return {f"{MODELS}/{name}/{p.name}": known.get(p.name) or sha256_file(p)
            for p in sorted(model_dir.iterdir()) if p.is_file()}


def _write_texts(dest: Path, state: BundleState, project: Path, result: BundleResult) -> None:
    model_bytes = {m.destination.name: sum(f.bytes for f in m.files) for m in result.models}
    atomic_write_bytes(dest / README, render_readme(state, result.wheel_bytes(), model_bytes)
                       .encode("utf-8"), OutputError)
    atomic_write_bytes(dest / INSTALL, render_install(state).encode("utf-8"), OutputError, 0o755)
    if (project / DOCKERFILE).is_file():
        atomic_copy(project / DOCKERFILE, dest / DOCKERFILE, OutputError)
        atomic_write_bytes(dest / DOCKERIGNORE, f"{MODELS}/\n{PARTIAL}/\n".encode(), OutputError)
    write_lock(dest, state.wheels)
    write_state(dest, state)
