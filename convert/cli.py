"""cgconvert command line: a thin shell over convert.inspect / configs / hf / cast / fetch.

Data goes to stdout, progress and diagnostics to stderr.  Exit codes: 0 all good, 1 problems found
(or a user error, one line), 2 usage error.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from engine.cli_common import EXIT_OK, EXIT_PROBLEMS, user_errors, version_option
from engine.dtypes import DTYPE_NAMES

DTYPES = ("auto",) + DTYPE_NAMES
FORMATS = ("safetensors", "pdparams")


class Progress:
    """tqdm bars on stderr, only when stderr is a terminal (or `enabled` forces them on or off).

    `bytes(name, done, total)` drives one bar per file (downloads); `tensor(name, nbytes)` one bar
    for all the weights a conversion writes.
    """

    def __init__(self, enabled: bool | None = None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._bar = None
        self._name: str | None = None
        self._done = 0

    def bytes(self, name: str, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        if name != self._name:
            from tqdm import tqdm

            self.close()
            self._name = name
            self._bar = tqdm(desc=f"  {name}", total=total, initial=done, unit="B",
                             unit_scale=True, unit_divisor=1000, file=sys.stderr,
                             dynamic_ncols=True, mininterval=0.2, disable=False)
        self._bar.total = total
        self._bar.update(done - self._bar.n)

    def tensor(self, name: str, nbytes: int) -> None:
        self._done += nbytes
        self.bytes("weights", self._done, None)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar, self._name = None, None


def _exit(code: int) -> None:
    if code != EXIT_OK:
        sys.exit(code)


@click.group(help="Inspect, fix up, convert and fetch CodeGen model files.")
@version_option("cgconvert")
def main() -> None:
    pass


def _print_inspect(root: Path, as_json: bool, hash_files: bool) -> int:
    from .inspect import inspect_dir, render_text

    report = inspect_dir(root, hash_files=hash_files)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else render_text(report))
    return EXIT_OK if report.ok else EXIT_PROBLEMS


_DIR = click.Path(exists=True, file_okay=False, path_type=Path)
_NEW = click.Path(path_type=Path)


@main.command()
@click.argument("directory", type=_DIR)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report (for machines).")
@click.option("--hash", "hash_files", is_flag=True, help="Add a sha256 per file (reads every byte).")
@user_errors
def inspect(directory: Path, as_json: bool, hash_files: bool) -> None:
    """Check that DIRECTORY is a complete, loadable CodeGen model directory.

    Exit 0 when all is good, 1 when problems were found (each named with its fix).
    """
    _exit(_print_inspect(directory, as_json, hash_files))


@main.command()
@click.argument("directory", type=_DIR)
@click.option("--force", is_flag=True, help="Replace a config.json that differs.")
@user_errors
def config(directory: Path, force: bool) -> None:
    """Write DIRECTORY/config.json from the legacy model_config.json (as PaddleNLP flattens it)."""
    from .configs import write_config

    result = write_config(directory, force=force)
    click.echo(f"{result.path}: {result.action}")


def _verify_option(default: bool):
    return click.option("--verify/--no-verify", default=default, show_default=True,
                        help="Compare logits of the source and the result on the same token ids.")


def _report_conversion(result, started: float) -> None:
    plan = result.plan
    click.echo(f"wrote {result.destination}: {result.weight_file.name}, {len(plan.tensors)} tensors, "
               f"{plan.param_count:,} parameters, {plan.source_dtype} -> {plan.dtype}, "
               f"{plan.nbytes / 1e6:,.1f} MB in {time.perf_counter() - started:.1f} s")
    if plan.dropped:
        click.echo(f"dropped {len(plan.dropped)} attention-mask buffer(s) (rebuilt at load time)")
    if plan.overflow:
        click.echo(f"warning: {sum(plan.overflow.values())} value(s) overflowed float16 to inf "
                   f"(first in {next(iter(plan.overflow))}); prefer bfloat16", err=True)


def _check_agreement(agreement, dst: Path) -> None:
    from .errors import VerifyError

    click.echo(agreement.line())
    if not agreement.ok:
        raise VerifyError(f"{dst}: the converted model disagrees with the source (NMSE "
                          f"{agreement.nmse:.3g} > {agreement.threshold:g}); do not use it")


@main.command("from-hf")
@click.argument("src", type=_DIR)
@click.argument("dst", type=_NEW)
@click.option("--dtype", type=click.Choice(DTYPES), default="auto", show_default=True,
              help="Weight dtype of the result; auto keeps the checkpoint's.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="safetensors",
              show_default=True, help="Weight file format of the result.")
@_verify_option(False)
@click.option("--verify-tokens", type=click.IntRange(1, 4096), default=32, show_default=True)
@user_errors
def from_hf(src: Path, dst: Path, dtype: str, fmt: str, verify: bool, verify_tokens: int) -> None:
    """Convert a Hugging Face CodeGen checkpoint SRC into a new PaddleNLP directory DST."""
    from .hf import convert_hf

    started = time.perf_counter()
    progress = Progress()
    try:
        result = convert_hf(src, dst, dtype=dtype, fmt=fmt, progress=progress.tensor)
    finally:
        progress.close()
    _report_conversion(result, started)
    if verify:
        from .verify import verify_hf_conversion

        _check_agreement(verify_hf_conversion(src, dst, result.plan, verify_tokens), dst)


@main.command()
@click.argument("src", metavar="DIR", type=_DIR)
@click.argument("dst", type=_NEW)
@click.option("--dtype", type=click.Choice(DTYPE_NAMES), required=True,
              help="int8: weight-only, one float32 scale per output channel (a quarter of float32).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
              help="Weight file format of the result (default: the source's).")
@_verify_option(True)
@click.option("--verify-tokens", type=click.IntRange(1, 4096), default=32, show_default=True)
@user_errors
def cast(src: Path, dst: Path, dtype: str, fmt: str | None, verify: bool, verify_tokens: int) -> None:
    """Copy the model in DIR to a new DST with its weights cast to --dtype (float16 halves the size)."""
    from .cast import cast_dir

    started = time.perf_counter()
    progress = Progress()
    try:
        result = cast_dir(src, dst, dtype, fmt, progress=progress.tensor)
    finally:
        progress.close()
    _report_conversion(result, started)
    if verify:
        from .verify import verify_cast

        _check_agreement(verify_cast(src, dst, result.plan, verify_tokens), dst)


@main.command()
@click.argument("variant")
@click.argument("dest", type=_NEW)
@click.option("--base-url", default=None, envvar="CGCONVERT_BASE_URL",
              help="Download base or mirror (default: PaddleNLP's official base).")
@click.option("--timeout", type=click.FloatRange(1, 3600), default=60.0, show_default=True,
              help="Seconds without data before a download counts as interrupted.")
@click.option("--json", "as_json", is_flag=True, help="Print the inspect report as JSON.")
@user_errors
def fetch(variant: str, dest: Path, base_url: str | None, timeout: float, as_json: bool) -> None:
    """Download VARIANT's files into DEST (resumable), write a sha256 manifest, then inspect DEST."""
    from .fetch import DEFAULT_BASE_URL, fetch_variant

    progress = Progress()
    try:
        result = fetch_variant(variant, dest, base_url or DEFAULT_BASE_URL, progress.bytes, timeout)
    finally:
        progress.close()
    for f in result.files:
        how = "already complete" if f.skipped else (
            f"resumed at {f.resumed_from:,} bytes" if f.resumed_from else "downloaded")
        click.echo(f"{f.name}: {f.bytes:,} bytes, {how}, sha256 {f.sha256}", err=True)
    _exit(_print_inspect(dest, as_json, hash_files=False))


def _echo_err(line: str) -> None:
    click.echo(line, err=True)


@main.command()
@click.argument("dest", type=_NEW)
@click.option("--target", type=click.Choice(("cpu", "gpu")), default="cpu", show_default=True,
              help="cpu: paddlepaddle from PyPI; gpu: paddlepaddle-gpu, a wheel you bring.")
@click.option("--python", "python_version", default="3.11", show_default=True,
              help="The offline machine's Python (MAJOR.MINOR).")
@click.option("--platform", default="manylinux2014_x86_64", show_default=True,
              help="The offline machine's pip platform tag: manylinux2014_x86_64 (glibc 2.17+), "
                   "manylinux_2_28_x86_64 (glibc 2.28+), ...")
@click.option("--variant", "variants", multiple=True,
              help="A model to add (repeatable), e.g. 16B-multi; fetched as `fetch` does.")
@click.option("--base-url", default=None, envvar="CGCONVERT_BASE_URL",
              help="Model download base or mirror (default: PaddleNLP's official base).")
@click.option("--find-links", multiple=True, metavar="DIR",
              help="Also take wheels from DIR (repeatable), e.g. Paddle GPU wheels you downloaded.")
@click.option("--wheel", "wheel_files", multiple=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Add this wheel file (repeatable).")
@click.option("--extra-index-url", multiple=True, metavar="URL",
              help="Another package index (repeatable), e.g. Paddle's GPU index for your CUDA.")
@click.option("--index-url", default=None, metavar="URL", help="Package index instead of pip's.")
@click.option("--no-index", is_flag=True, help="Take wheels only from --find-links and --wheel.")
@click.option("--project", type=_DIR, default=None,
              help="Workbench checkout to build its wheel from (default: the one running).")
@click.option("--timeout", type=click.FloatRange(1, 3600), default=60.0, show_default=True,
              help="Seconds without data before a model download counts as interrupted.")
@user_errors
def bundle(dest: Path, target: str, python_version: str, platform: str, variants: tuple[str, ...],
           base_url: str | None, find_links: tuple[str, ...], wheel_files: tuple[Path, ...],
           extra_index_url: tuple[str, ...], index_url: str | None, no_index: bool,
           project: Path | None, timeout: float) -> None:
    """Put the workbench's wheels for a target, models and an installer into DEST (for the
    offline side), checked by SHA256SUMS. Run again to fill in what is missing."""
    from .bundle import PROJECT, make_bundle
    from .wheels import Sources, Target

    sources = Sources(no_index, index_url, extra_index_url,
                      tuple(str(Path(d).resolve()) if Path(d).is_dir() else d for d in find_links))
    progress = Progress()
    try:
        result = make_bundle(dest, Target(target, python_version, platform), sources, wheel_files,
                             variants, base_url, project or PROJECT, progress.bytes, timeout,
                             _echo_err)
    finally:
        progress.close()
    for line in result.problems:
        click.echo(line, err=True)
    if not result.ok:
        raise click.ClickException(f"{dest}: not finished ({len(result.problems)} model "
                                   "problem(s) above); fix them and run the same command again")
    for name in result.extra:
        click.echo(f"{dest / name}: not part of the bundle (verify will flag it); remove it", err=True)
    s = result.state
    models = ", ".join(sorted(s.models)) or "no models"
    click.echo(f"{dest}: {s.target.describe()}: {len(s.wheels)} wheels "
               f"({result.wheel_bytes() / 1e6:,.1f} MB, {result.fetched_wheels} fetched now), "
               f"{models}; {result.files} files in SHA256SUMS")
    click.echo(f"next: copy {dest} to the offline machine, run `sh install.sh` there, then "
               "`cgconvert verify .` (see README.txt)")


@main.command()
@click.argument("dest", type=_DIR)
@click.option("--no-install-check", is_flag=True,
              help="Skip pip's dry-run install of the wheel set (checksums and models only).")
@user_errors
def verify(dest: Path, no_install_check: bool) -> None:
    """Check a bundle DEST on the offline side: every checksum, missing or extra files, the wheel
    set for this interpreter, each model. Exit 0 when all is good, 1 when problems were found."""
    from .bundle_verify import verify_bundle

    report = verify_bundle(dest, check_install=not no_install_check)
    click.echo(report.render())
    _exit(EXIT_OK if report.ok else EXIT_PROBLEMS)
