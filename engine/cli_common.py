"""What the three CLIs share: version option, error boundary, exit codes, option bundles."""
from __future__ import annotations

import functools
from pathlib import Path

import click

from . import __version__
from .dtypes import DTYPE_HELP, DTYPE_NAMES
from .errors import EngineError

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2


def version_option(prog: str):
    return click.version_option(__version__, "--version", prog_name=prog,
                                message="%(prog)s %(version)s")


def user_errors(fn):
    """Turn EngineError into one line on stderr and exit code 1 (the CLI boundary)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EngineError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


# ---- option bundles the CLIs share (engine demo, cgserve, cgbench) ----


def _env(env: str | None, name: str) -> dict:
    """`env` is a CLI's variable prefix (CGSERVE_ reads CGSERVE_DTYPE); None: no variable."""
    return {"envvar": env + name, "show_envvar": True} if env else {}


def dtype_option(env: str | None = None, several: bool = False, default: str = "float32"):
    """--dtype: the weights' dtype; `several`: a comma-separated list (cgbench sweeps)."""
    if several:
        return click.option("--dtype", default=default, show_default=True,
                            help=f"Weight dtypes, comma-separated ({', '.join(DTYPE_NAMES)}; "
                                 "int8: weight-only).",
                            **_env(env, "DTYPE"))
    return click.option("--dtype", default=default, show_default=True,
                        type=click.Choice(DTYPE_NAMES), help=DTYPE_HELP, **_env(env, "DTYPE"))


def device_option(env: str | None = None):
    return click.option("--device", default="cpu", show_default=True,
                        help="cpu, gpu or gpu:N; with --tensor-parallel N: gpu (GPUs 0..N-1) "
                             "or a list gpu:0,1.", **_env(env, "DEVICE"))


def tensor_parallel_option(env: str | None = None, several: bool = False):
    """--tensor-parallel: processes (GPUs) to split the model over (engine/tensor_parallel)."""
    if several:
        return click.option("--tensor-parallel", "tensor_parallel", default="1",
                            show_default=True, **_env(env, "TENSOR_PARALLEL"),
                            help="Processes (GPUs from --device on) to split the model over, "
                                 "comma-separated for a sweep, e.g. 1,2 (1, 2 or 4).")
    return click.option("--tensor-parallel", "tensor_parallel", default=1, show_default=True,
                        type=int, **_env(env, "TENSOR_PARALLEL"),
                        help="Split the model over N GPUs (processes): 1, 2 or 4; e.g. 16B in "
                             "float16 on two 24 GB GPUs.  This process is rank 0: it starts "
                             "and stops the others.")


def tokenizer_option(env: str | None = None, when: str = "random:<variant>"):
    """--tokenizer: BPE files to pair with random weights (engine.load's `tokenizer`)."""
    return click.option("--tokenizer", default=None,
                        type=click.Path(file_okay=False, path_type=Path),
                        help=f"With {when}: a BPE tokenizer directory (`cgbench "
                             "train-tokenizer`) instead of one token per byte.",
                        **_env(env, "TOKENIZER"))


def speculate_options(lines_default: int, lines_max: int, env: str | None = None,
                      when: str | None = None):
    """--speculate/--no-speculate and --speculate-lines (cgserve's speculative warm-ups)."""
    def say(text: str) -> str:
        return f"{when}: {text[0].lower()}{text[1:]}" if when else text

    def apply(fn):
        fn = click.option("--speculate-lines", default=lines_default, show_default=True, type=int,
                          help=say(f"How many coming lines' prompt starts to compute, nearest "
                                   f"first (1-{lines_max})."), **_env(env, "SPECULATE_LINES"))(fn)
        return click.option("--speculate/--no-speculate", default=True, show_default=True,
                            help=say("While idle, compute the KV cache that a Fauxpilot client's "
                                     "next lines will start with (its 150-line window moved "
                                     "down), so each line's first request reuses it; needs "
                                     "prefix reuse (off with --prefix-cache-mb 0)."),
                            **_env(env, "SPECULATE"))(fn)

    return apply
