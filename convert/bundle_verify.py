"""`cgconvert verify DEST`: is a copied bundle whole, and will it install and load here?

Checks, without changing anything: every file against SHA256SUMS (missing, damaged, and files
that are not part of the bundle, such as leftovers of an interrupted copy); the wheel set for this
interpreter and platform (each wheel's tags, then ``pip install --dry-run --no-index`` of
requirements.lock, which also finds a dependency missing from the set); each model directory
through `inspect`.  Each problem is one line naming the file and the fix.
"""
from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from engine.model import PARTIAL_SUFFIXES

from .bundle_layout import BUNDLE_JSON, LOCK, MODELS, SUMS, WHEELS, files_in, read_sums, read_state
from .errors import BundleError
from .inspect import inspect_dir
from .wheels import compatible, run_pip, sha256_file, this_interpreter_tags

COPY_AGAIN = "copy it again from the bundle on the connected machine"


@dataclass(frozen=True)
class Finding:
    file: str
    message: str
    fix: str

    def line(self) -> str:
        return f"{self.file}: {self.message}; fix: {self.fix}"


@dataclass
class VerifyReport:
    dest: Path
    findings: list[Finding] = field(default_factory=list)
    files: int = 0
    wheels: int = 0
    models: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings

    def add(self, file: str, message: str, fix: str) -> None:
        self.findings.append(Finding(file, message, fix))

    def render(self) -> str:
        lines = [f.line() for f in self.findings]
        what = (f"{self.files} files, {self.wheels} wheels, {len(self.models)} model(s)"
                f"{': ' + ', '.join(self.models) if self.models else ''}")
        lines.append(f"result: OK ({what})" if self.ok else
                     f"result: {len(self.findings)} problem(s) in {self.dest} ({what})")
        return "\n".join(lines)


def verify_bundle(dest: Path, check_install: bool = True) -> VerifyReport:
    report = VerifyReport(dest)
    try:
        state = read_state(dest)
    except BundleError as e:
        report.add(BUNDLE_JSON, str(e).split(": ", 1)[-1], COPY_AGAIN)
        state = None
    if state is None and not report.findings:
        report.add(BUNDLE_JSON, f"missing: {dest} is not a bundle made by cgconvert bundle, or was "
                   "copied only in part", COPY_AGAIN)
    _check_sums(dest, report)
    if state is not None:
        report.wheels = len(state.wheels)
        _check_wheels(dest, state, report, check_install)
    models = dest / MODELS
    for model_dir in sorted(models.iterdir()) if models.is_dir() else []:
        if not model_dir.is_dir():
            continue
        report.models.append(model_dir.name)
        for p in inspect_dir(model_dir).problems:
            report.add(f"{MODELS}/{model_dir.name}/{p.file or ''}".rstrip("/"), p.message, p.fix)
    return report


def _check_sums(dest: Path, report: VerifyReport) -> None:
    try:
        sums = read_sums(dest)
    except BundleError as e:
        report.add(SUMS, str(e).split(": ", 1)[-1], COPY_AGAIN)
        return
    if sums is None:
        report.add(SUMS, "missing: the bundle was not finished, or was copied only in part",
                   "finish it on the connected machine (the same cgconvert bundle command) and "
                   "copy it again")
        return
    report.files = len(sums) + 1
    for name, digest in sums.items():
        path = dest / name
        if not path.is_file():
            report.add(name, "missing (copied only in part?)", COPY_AGAIN)
        elif sha256_file(path) != digest:
            report.add(name, "checksum mismatch: damaged in copying or since",
                       f"{COPY_AGAIN} (there, `cgconvert bundle` with the same options fetches a "
                       "damaged file again)")
    for name in files_in(dest):
        if name in sums:
            continue
        if name.endswith(PARTIAL_SUFFIXES) or "/.partial/" in f"/{name}":
            report.add(name, "left by an interrupted bundle or copy",
                       "remove it, or finish the bundle on the connected machine and copy it again")
        else:
            report.add(name, f"not part of the bundle (not in {SUMS})", "remove it")


def _check_wheels(dest: Path, state, report: VerifyReport, check_install: bool) -> None:
    here = "%d.%d" % sys.version_info[:2]
    ordered = this_interpreter_tags()
    tags = set(ordered)
    best = next((t for t in ordered if t.platform.startswith("manylinux")), ordered[0])
    where = f"Python {here}, {best.platform}"
    made = f"the bundle was made for {state.target.describe()}"
    bad = 0
    for w in state.wheels:
        if (dest / WHEELS / w.file).is_file() and not compatible(w.file, tags):
            bad += 1
            report.add(f"{WHEELS}/{w.file}", f"does not install on this interpreter ({where}); "
                       f"{made}", f"run it with Python {state.target.python} on such a machine, "
                       f"or make the bundle again with --python {here} --platform {best.platform}")
    if bad or not check_install or not (dest / LOCK).is_file():
        return
    with tempfile.TemporaryDirectory(prefix="cgconvert-verify-") as tmp:
        run = run_pip(["install", "--dry-run", "--ignore-installed", "--no-index", "--no-cache-dir",
                       "--quiet", "--report", str(Path(tmp) / "report.json"), "--find-links",
                       str(dest / WHEELS), "--require-hashes", "-r", str(dest / LOCK)])
    if run.code == 0:
        return
    if any("No module named pip" in line for line in run.lines):
        report.add(LOCK, "cannot check the wheel set: this interpreter has no pip",
                   f"{sys.executable} -m ensurepip, then verify again")
        return
    errors = run.errors() or [f"pip exit code {run.code}"]
    report.add(LOCK, f"pip cannot install the wheel set here ({where}): "
               f"{errors[-1].removeprefix('ERROR:').strip()}",
               f"{made}: make it again for this interpreter and platform, or copy {WHEELS}/ again")
