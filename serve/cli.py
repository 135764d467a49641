"""cgserve command line: parse options, then hand over to `serve.server.run`."""
from __future__ import annotations

import logging

import click

from engine.cli_common import user_errors, version_option
from engine.dtypes import DTYPE_HELP, DTYPE_NAMES

from .config import DEFAULT_HOST, DEFAULT_PORT, ServeConfig
from .speculate import LINES_AHEAD, MAX_LINES_AHEAD

ENV = "CGSERVE_"


def _opt(*names, env: str, **kwargs):
    return click.option(*names, envvar=ENV + env, show_envvar=True, show_default=True, **kwargs)


@click.command(help="Serve a CodeGen model to VSCode (Fauxpilot) and OpenAI clients.\n\n"
                    "MODEL is a model directory or random:<variant> (e.g. random:350M-mono).")
@version_option("cgserve")
@click.argument("model", envvar=ENV + "MODEL")
@_opt("--host", env="HOST", default=DEFAULT_HOST, help="Address to bind (0.0.0.0 exposes it).")
@_opt("--port", env="PORT", default=DEFAULT_PORT, type=int, help="Port to listen on.")
@_opt("--dtype", env="DTYPE", default="float32",
      type=click.Choice(DTYPE_NAMES), help=DTYPE_HELP)
@_opt("--device", env="DEVICE", default="cpu", help="cpu, gpu or gpu:N.")
@_opt("--api-key", env="API_KEY", default=None,
      help="Require 'Authorization: Bearer KEY' on /v1 routes.")
@_opt("--max-queue", env="MAX_QUEUE", default=16, type=int,
      help="Requests allowed to wait; more get 503 with Retry-After.")
@_opt("--cors-origin", env="CORS_ORIGIN", default=None,
      help="Allow browser requests from this origin (CORS is off without it).")
@_opt("--request-timeout", env="REQUEST_TIMEOUT", default=120.0, type=float,
      help="Seconds a request may take, queueing included; then it is cut short.")
@_opt("--max-body", env="MAX_BODY", default=1 << 20, type=int,
      help="Largest request body in bytes (413 above it).")
@_opt("--grace", env="GRACE", default=10.0, type=float,
      help="Seconds in-flight requests get to finish on SIGTERM/SIGINT.")
@_opt("--truncate/--no-truncate", env="TRUNCATE", default=True,
      help="Cut over-long prompts from the left (default) or answer 400.")
@_opt("--model-name", env="MODEL_NAME", default=None,
      help="Model id shown to clients (default: the directory name).")
@_opt("--impl", env="IMPL", default="fast", type=click.Choice(["fast", "reference"]),
      help="Engine forward: fast (its own) or reference (PaddleNLP's model).")
@_opt("--prefix-cache-mb", env="PREFIX_CACHE_MB", default=None, type=float,
      help="KV cache kept to reuse the prompts of earlier requests (0: off; default: four "
           "full contexts: the line being typed and two warmed next-line windows).")
@_opt("--tokenizer", env="TOKENIZER", default=None,
      type=click.Path(file_okay=False),
      help="With random:<variant>: a BPE tokenizer directory (`cgbench train-tokenizer`) "
           "instead of one token per byte.")
@_opt("--supersede/--no-supersede", env="SUPERSEDE", default=True,
      help="A newer request from the same client whose prompt extends a queued or running one "
           "cancels that one (it gets an empty completion).")
@_opt("--speculate/--no-speculate", env="SPECULATE", default=True,
      help="While idle, compute the KV cache that a Fauxpilot client's next lines will start "
           "with (its 150-line window moved down), so each line's first request reuses it; "
           "needs prefix reuse (off with --prefix-cache-mb 0).")
@_opt("--speculate-lines", env="SPECULATE_LINES", default=LINES_AHEAD, type=int,
      help=f"How many coming lines' prompt starts to compute, nearest first "
           f"(1-{MAX_LINES_AHEAD}).")
@_opt("--log-prompts", env="LOG_PROMPTS", is_flag=True, default=False,
      help="Put prompt tails in the access log (off: prompts are private code).")
@_opt("--log-level", env="LOG_LEVEL", default="info",
      type=click.Choice(["debug", "info", "warning", "error"]))
@user_errors
def main(model, host, port, dtype, device, api_key, max_queue, cors_origin, request_timeout,
         max_body, grace, truncate, model_name, impl, prefix_cache_mb, tokenizer, supersede,
         speculate, speculate_lines, log_prompts, log_level) -> None:
    config = ServeConfig(model=model, host=host, port=port, dtype=dtype, device=device,
                         api_key=api_key, max_queue=max_queue, cors_origin=cors_origin,
                         request_timeout_s=request_timeout, max_body_bytes=max_body,
                         grace_s=grace, truncate=truncate, model_name=model_name, impl=impl,
                         prefix_cache_mb=prefix_cache_mb, supersede=supersede,
                         speculate=speculate, speculate_lines=speculate_lines,
                         log_prompts=log_prompts)
    logging.basicConfig(level=log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from engine import load

    from .server import run

    try:
        code = run(config, lambda: load(model, tokenizer=tokenizer, **config.load_kwargs()))
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None
    raise SystemExit(code)
