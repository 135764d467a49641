"""`python -m engine`: load a model (default: 350M architecture, random weights) and complete
one prompt, streaming the text and then the engine's own timings."""
from __future__ import annotations

import json
import sys

import click

from .cli_common import user_errors, version_option
from .dtypes import DTYPE_HELP, DTYPE_NAMES


@click.command()
@click.argument("model", default="random:350M-mono")
@click.option("--prompt", default="def fibonacci(n):\n", show_default=True)
@click.option("--max-new-tokens", type=int, default=32, show_default=True)
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0 = greedy")
@click.option("--top-p", type=float, default=1.0, show_default=True)
@click.option("--stop", multiple=True, help="Stop string (repeatable).")
@click.option("--seed", type=int, default=None)
@click.option("--dtype", default="float32", show_default=True, type=click.Choice(DTYPE_NAMES),
              help=DTYPE_HELP)
@click.option("--device", default="cpu", show_default=True, help="cpu or gpu:N")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@version_option("engine")
@user_errors
def main(model, prompt, max_new_tokens, temperature, top_p, stop, seed, dtype, device, as_json):
    """Complete PROMPT with MODEL (a model directory or random:<variant>)."""
    from . import SamplingParams, load

    gen = load(model, dtype=dtype, device=device)
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                            stop=tuple(stop), seed=seed)
    stream = gen.stream(prompt, params)
    if not as_json:
        click.echo(prompt, nl=False)
    for event in stream:
        if not as_json:
            click.echo(event.text, nl=False)
    r = stream.result
    stats = {"model": gen.source, "load_s": round(r.load_s, 3), "prompt_tokens": r.prompt_tokens,
             "completion_tokens": r.completion_tokens, "finish_reason": r.finish_reason,
             "ttft_ms": round(r.ttft_ms, 1),
             "tpot_ms": None if r.tpot_ms is None else round(r.tpot_ms, 1),
             "e2e_ms": round(r.e2e_ms, 1), "truncated_tokens": r.truncated_tokens}
    if as_json:
        click.echo(json.dumps({"text": r.text, **stats}))
    else:
        click.echo("\n" + " ".join(f"{k}={v}" for k, v in stats.items()), err=True)


if __name__ == "__main__":
    sys.exit(main())
