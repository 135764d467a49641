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


class ProgressLine:
    """One self-overwriting line on stderr per file (only when stderr is a terminal, or forced)."""

    def __init__(self, enabled: bool | None = None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._last = 0.0
        self._name = None
        self._done = 0

    def bytes(self, name: str, done: int, total: int | None) -> None:
        now = time.monotonic()
        if not self.enabled or (name == self._name and now - self._last < 0.2 and done != total):
            return
        if self._name not in (None, name):
            click.echo("", err=True)
        self._name, self._last = name, now
        pct = f" {100 * done / total:5.1f}%" if total else ""
        of = f" / {total / 1e6:,.1f}" if total else ""
        click.echo(f"\r  {name}: {done / 1e6:,.1f}{of} MB{pct}", err=True, nl=False)

    def tensor(self, name: str, nbytes: int) -> None:
        self._done += nbytes
        self.bytes("weights", self._done, None)

    def close(self) -> None:
        if self.enabled and self._name is not None:
            click.echo("", err=True)


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
    progress = ProgressLine()
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
    progress = ProgressLine()
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

    progress = ProgressLine()
    try:
        result = fetch_variant(variant, dest, base_url or DEFAULT_BASE_URL, progress.bytes, timeout)
    finally:
        progress.close()
    for f in result.files:
        how = "already complete" if f.skipped else (
            f"resumed at {f.resumed_from:,} bytes" if f.resumed_from else "downloaded")
        click.echo(f"{f.name}: {f.bytes:,} bytes, {how}, sha256 {f.sha256}", err=True)
    _exit(_print_inspect(dest, as_json, hash_files=False))
