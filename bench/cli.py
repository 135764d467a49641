"""cgbench command line: a thin shell over bench's functions (data to stdout, progress to stderr)."""
from __future__ import annotations

from pathlib import Path

import click

from engine.cli_common import (device_option, dtype_option, speculate_options,
                               tensor_parallel_option, tokenizer_option,
                               user_errors, version_option)
from engine.dtypes import DTYPE_NAMES
from serve.speculate import LINES_AHEAD, MAX_LINES_AHEAD

from .errors import BenchError


@click.group(help="Measure latency and memory of CodeGen variants on this machine.")
@version_option("cgbench")
def main() -> None:
    pass


def default_run_dir() -> Path:
    from datetime import datetime

    return Path("results") / datetime.now().strftime("run-%Y%m%d-%H%M%S")


@main.command()
@click.option("--variants", help="Comma-separated variants, e.g. 350M-mono,2B-multi "
              "(default: the 350M variants on cpu, 350M-mono and 2B-mono on a GPU).")
@click.option("--sizes", help="Sizes to combine with --data, e.g. 350M,2B.")
@click.option("--data", "data", help="Data sets to combine with --sizes: nl, multi, mono.")
@click.option("--weights", default="random", show_default=True,
              help="`random` or a directory holding codegen-<size>-<data> model directories.")
@dtype_option(several=True)
@device_option()
@click.option("--prompt-tokens", default="128", show_default=True, help="Prompt lengths, comma-separated.")
@click.option("--new-tokens", default="16", show_default=True, help="New tokens per request, comma-separated.")
@click.option("--batch", default="1", show_default=True, help="Rows decoded together, comma-separated.")
@click.option("--repeats", default=3, show_default=True, type=int, help="Measured runs per point.")
@click.option("--warmup", default=1, show_default=True, type=int, help="Warm-up runs per point.")
@click.option("--backend", default="paddle", show_default=True, help="paddle (the engine), paddle-ref (the engine over PaddleNLP's model), hf (transformers), ct2 (CTranslate2, the same weights; --dtype int8 or float32); comma-separated.")
@click.option("--seed", default=0, show_default=True, type=int)
@tensor_parallel_option(several=True)
@click.option("--out", type=click.Path(path_type=Path), help="Run directory (default results/run-<time>).")
@click.option("--resume", is_flag=True, help="Finish the run in --out: skip points already done.")
@click.option("--timeout", "timeout_s", type=float, help="Give up on a point after this many seconds.")
@user_errors
def run(variants, sizes, data, weights, dtype, device, prompt_tokens, new_tokens, batch, repeats,
        warmup, backend, seed, tensor_parallel, out, resume, timeout_s):
    """Sweep variants x shapes; each point in its own process; results in RUN/points.csv."""
    from .sweep.plan import build_plan
    from .sweep.runner import run_sweep

    if resume and out is None:
        raise BenchError("--resume needs --out RUN (the run directory to finish)")
    points = build_plan(variants=variants, sizes=sizes, data=data, weights=weights, dtype=dtype,
                        device=device, prompt_tokens=prompt_tokens, new_tokens=new_tokens,
                        batch=batch, repeats=repeats, warmup=warmup, backend=backend, seed=seed,
                        tensor_parallel=tensor_parallel)
    out = out or default_run_dir()
    rows = run_sweep(points, out, resume=resume, timeout_s=timeout_s)
    failed = [r for r in rows if r["status"] != "ok"]
    click.echo(f"{out}: {len(rows) - len(failed)} ok, {len(failed)} failed "
               f"(`cgbench report {out}`)", err=True)


FORMATS = click.Choice(["text", "markdown", "csv", "json"])


@main.command()
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=FORMATS, default="text", show_default=True)
@click.option("--plots/--no-plots", default=True, show_default=True,
              help="Write latency.png and memory.png into RUN.")
@click.option("--write/--no-write", "write_md", default=True, show_default=True,
              help="Also write RUN/report.md.")
@user_errors
def report(run_dir, fmt, plots, write_md):
    """Print RUN's table; write RUN/report.md and PNG plots.

    RUN is a sweep (points.csv: one row per point) or a typing replay (requests.csv: one row
    per mode, from its requests)."""
    from .analysis.frames import load_run
    from .analysis.plots import write_plots
    from .analysis.report import render_report
    from .output import atomic_write
    from .sweep.schema import POINTS_FILE
    from .typing import report as typing_report

    if not (run_dir / POINTS_FILE).is_file() and (run_dir / typing_report.REQUESTS_FILE).is_file():
        frame = typing_report.read_requests(run_dir)
        click.echo(typing_report.render_report(frame, fmt, run_dir.name).rstrip("\n"))
        if write_md:
            atomic_write(run_dir / "report.md",
                         typing_report.render_report(frame, "markdown", run_dir.name))
        if plots:
            modes = list(dict.fromkeys(frame["mode"]))
            click.echo(f"wrote {typing_report.write_plot(run_dir / 'latency.png', frame, modes)}",
                       err=True)
        return
    points, env = load_run(run_dir)
    click.echo(render_report(points, env, fmt, run_dir.name).rstrip("\n"))
    if write_md:
        atomic_write(run_dir / "report.md", render_report(points, env, "markdown", run_dir.name))
    if plots:
        for path in write_plots(points, env, run_dir):
            click.echo(f"wrote {path}", err=True)


@main.command()
@click.argument("run_dirs", metavar="RUN...", nargs=-1, required=True,
                type=click.Path(path_type=Path))
@user_errors
def plot(run_dirs):
    """Redraw the plots of each RUN from its committed data.

    A sweep (points.csv): latency.png and memory.png; a typing replay (requests.csv):
    latency.png.
    """
    from .analysis.frames import load_run
    from .analysis.plots import write_plots
    from .sweep.schema import POINTS_FILE
    from .typing.report import REQUESTS_FILE, read_requests, write_plot

    for run_dir in run_dirs:
        if (run_dir / POINTS_FILE).is_file():
            points, env = load_run(run_dir)
            paths = write_plots(points, env, run_dir)
        elif (run_dir / REQUESTS_FILE).is_file():
            frame = read_requests(run_dir)
            paths = [write_plot(run_dir / "latency.png", frame, list(dict.fromkeys(frame["mode"])))]
        else:
            raise BenchError(f"{run_dir}: neither {POINTS_FILE} nor {REQUESTS_FILE}; give a "
                             "directory written by `cgbench run` or `cgbench typing`")
        for path in paths:
            click.echo(f"wrote {path}", err=True)


@main.command()
@click.argument("run_a", metavar="A", type=click.Path(path_type=Path))
@click.argument("run_b", metavar="B", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=FORMATS, default="text", show_default=True)
@click.option("--metrics", help="Only metrics starting with these, comma-separated (e.g. ttft,tpot).")
@user_errors
def compare(run_a, run_b, fmt, metrics):
    """B / A for every metric of the points both runs measured."""
    from .analysis.compare import compare_runs, render_comparison
    from .sweep.plan import split_list

    items, only_a, only_b = compare_runs(run_a, run_b)
    if items.empty:
        raise BenchError(f"{run_a} and {run_b} share no successful point (same variant, backend, "
                         "dtype, prompt, new tokens, batch); nothing to compare")
    click.echo(render_comparison(items, fmt, tuple(split_list(metrics)) or None))
    for label, keys in (("only in A", only_a), ("only in B", only_b)):
        if keys:
            click.echo(f"{label}: " + ", ".join("/".join(k) for k in keys), err=True)


@main.command()
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path))
@click.option("--memory", required=True, help="Memory of one GPU, e.g. 24GB.")
@click.option("--gpus", default=1, show_default=True, type=int)
@click.option("--max-ttft-ms", type=float, help="Longest acceptable time to first token.")
@click.option("--max-tpot-ms", type=float, help="Longest acceptable time per output token.")
@click.option("--prompt-tokens", type=int, help="Prompt length the ttft limit applies to "
              "(default: the longest the run measured).")
@click.option("--batch", default=1, show_default=True, type=int)
@click.option("--data", "data", default="mono", show_default=True, help="nl, multi or mono.")
@click.option("--gpu", "gpu_name", help="Target GPU (e.g. P40) when the run is from another device.")
@dtype_option(several=True, default="float32,float16")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@user_errors
def recommend(run_dir, memory, gpus, max_ttft_ms, max_tpot_ms, prompt_tokens, batch, data,
              gpu_name, dtype, as_json):
    """The most capable variant that fits the GPUs and latency limits, and why others don't."""
    import json

    from .analysis.frames import load_run
    from .analysis.recommend import (parse_memory, recommend as pick, recommendation_dict,
                                     render_recommendation)
    from .sweep.plan import split_list

    rows, env = load_run(run_dir)
    dtypes = tuple(split_list(dtype))
    bad = [d for d in dtypes if d not in DTYPE_NAMES]
    if bad or not dtypes:
        raise BenchError(f"--dtype {dtype!r}: use {', '.join(DTYPE_NAMES)} (comma-separated)")
    result = pick(rows, env, parse_memory(memory), gpus, max_ttft_ms, max_tpot_ms, prompt_tokens,
                  batch=batch, dtypes=dtypes, data=data, gpu_name=gpu_name)
    if as_json:
        click.echo(json.dumps(recommendation_dict(result), indent=2))
    else:
        click.echo(render_recommendation(result))
    if result["chosen"] is None:
        raise SystemExit(1)


def parse_spans(text: str | None, option: str) -> list[tuple[int, int]]:
    """`A-B[,C-D...]` (1-based line ranges) -> [(A, B), ...]."""
    try:
        spans = [tuple(int(x) for x in part.split("-")) for part in text.split(",")] if text else []
        if any(len(span) != 2 for span in spans):
            raise ValueError
    except ValueError:
        raise BenchError(f"{option} {text!r}: give FIRST-LAST[,FIRST-LAST...], e.g. 400-409") \
            from None
    return spans


def parse_pause_ms(text: str, option: str = "--pause-ms") -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError:
        raise BenchError(f"{option} {text!r}: give MIN,MAX in ms, e.g. 300,1500") from None
    return lo, hi


@main.command()
@click.argument("url")
@click.option("--concurrency", default=1, show_default=True, type=int)
@click.option("--requests", default=8, show_default=True, type=int,
              help="Fixed-length requests (0: only typists).")
@click.option("--prompt-tokens", default=128, show_default=True, type=int)
@click.option("--max-tokens", default=16, show_default=True, type=int)
@click.option("--stream/--no-stream", default=True, show_default=True)
@click.option("--model", default="", help="`model` field of each request.")
@click.option("--typists", default=0, show_default=True, type=int,
              help="Clients that type at the same time as the fixed requests run (as `cgbench "
                   "typing --url`), each with its own file/lines and bearer token.")
@click.option("--typing-file", "typing_files", multiple=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="File the typists type; repeat it to give typist k the k-th file (in turn).")
@click.option("--typing-lines", help="FIRST-LAST per typist, comma-separated, in turn "
              "(e.g. 400-409,800-809: typist 1 types 400-409, typist 2 800-809).")
@click.option("--cps", default=8.0, show_default=True, type=float, help="Typists' characters per second.")
@click.option("--pause-ms", default="300,1500", show_default=True, help="Typists' pauses: MIN,MAX.")
@click.option("--pause-prob", default=0.15, show_default=True, type=float)
@click.option("--typing-max-tokens", default=12, show_default=True, type=int,
              help="max_tokens of the typists' requests.")
@click.option("--seed", default=0, show_default=True, type=int, help="Typist k's pause plan uses SEED+k.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Write requests.csv, summary.json, env.json here (default with --typists: "
                   "results/load-<time>).")
@click.option("--json", "as_json", is_flag=True)
@user_errors
def load(url, concurrency, requests, prompt_tokens, max_tokens, stream, model, typists,
         typing_files, typing_lines, cps, pause_ms, pause_prob, typing_max_tokens, seed, out,
         as_json):
    """Load-test an OpenAI-compatible server: client-side TTFT, ITL, E2E, throughput; with
    --typists, also typing clients and their p50/p90 each."""
    from .load.fixed import LoadConfig
    from .load.run import answered_any, default_out, render_load, run_load
    from .load.typists import TypistsConfig
    from .output import json_text

    cfg = LoadConfig(url, concurrency, requests, prompt_tokens, max_tokens, stream, model)
    people = TypistsConfig(typists, tuple(typing_files), tuple(parse_spans(typing_lines, "--typing-lines")),
                           cps, parse_pause_ms(pause_ms), pause_prob, typing_max_tokens, seed=seed)
    out = out or (default_out() if typists else None)
    summary = run_load(cfg, on_done=lambda n, total: click.echo(f"\r{n}/{total} requests", err=True, nl=False),
                       typists=people, out=out)
    click.echo("", err=True)
    click.echo(json_text(summary).rstrip() if as_json else render_load(summary))
    if out is not None:
        click.echo(f"wrote {out}/requests.csv, summary.json, env.json", err=True)
    if not answered_any(summary):
        raise SystemExit(1)


@main.command("load-ab")
@click.option("--server", "servers", multiple=True, required=True,
              help="LABEL=URL of a running server; give it twice (e.g. batching=http://"
                   "127.0.0.1:8001 and off=http://127.0.0.1:8002, off started with --max-batch 1).")
@click.option("--scenario", "scenarios", multiple=True, required=True,
              help="NAME:CONCURRENCY:REQUESTS:PROMPT_TOKENS:MAX_TOKENS, repeatable "
                   "(e.g. decode:8:16:128:64).")
@click.option("--rounds", default=2, show_default=True, type=int,
              help="Rounds; each runs every scenario against both servers, order alternating.")
@click.option("--model", default="", help="`model` field of each request.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Write rounds.csv, summary.csv, summary.json, env.json here.")
@user_errors
def load_ab(servers, scenarios, rounds, model, out):
    """The same load scenarios against two servers, alternating round by round, in one run:
    per scenario the median over rounds and the first server's ratio to the second."""
    from .load.ab import Scenario, parse_server, render_ab, run_ab

    table = run_ab([parse_server(s) for s in servers], [Scenario.parse(s) for s in scenarios],
                   rounds, out, model, log=lambda line: click.echo(line, err=True))
    click.echo(render_ab(table))


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--url", help="A running cgserve (base URL, e.g. http://127.0.0.1:8978).")
@click.option("--baseline-url", help="With --url --compare: a cgserve started with --prefix-cache-mb 0.")
@click.option("--model", help="Serve this model in-process instead (e.g. random:350M-mono): "
              "one cgserve per mode on loopback.")
@click.option("--compare", "mode", flag_value="compare", help="Reuse and no reuse, interleaved line by line.")
@click.option("--no-reuse", "mode", flag_value="no-reuse", help="Only without prefix reuse.")
@click.option("--reuse", "mode", flag_value="reuse", default=True, help="Only with reuse (default).")
@click.option("--cps", default=8.0, show_default=True, type=float, help="Characters typed per second.")
@click.option("--pause-ms", default="300,1500", show_default=True,
              help="MIN,MAX of each pause (uniform); a request is sent at every pause.")
@click.option("--pause-prob", default=0.15, show_default=True, type=float,
              help="Chance of a pause after a space or .(,=:[ (every line also pauses after its indentation).")
@click.option("--max-tokens", default=12, show_default=True, type=int)
@click.option("--max-lines", default=150, show_default=True, type=int,
              help="The extension's fauxpilot.maxLines: prompt window in lines.")
@click.option("--lines", help="FIRST-LAST (1-based) lines to type; the lines above are already there. "
              "Several ranges, comma-separated (A-B,C-D), are typed one after the other.")
@tokenizer_option(when="--model random:<variant>")
@speculate_options(LINES_AHEAD, MAX_LINES_AHEAD, when="With --model, on the reuse server")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--out", type=click.Path(path_type=Path), help="Directory (default results/typing-<file>-<time>).")
@user_errors
def typing(file, url, baseline_url, model, mode, cps, pause_ms, pause_prob, max_tokens,
           max_lines, lines, tokenizer, speculate, speculate_lines, seed, out):
    """Replay typing FILE; a Fauxpilot-shaped request at every pause; latency as users feel it."""
    from .typing.run import TypingConfig, run_typing

    modes = {"compare": ("reuse", "no-reuse"), "no-reuse": ("no-reuse",)}.get(mode, ("reuse",))
    lo, hi = parse_pause_ms(pause_ms)
    spans = parse_spans(lines, "--lines")
    cfg = TypingConfig(file=file, modes=modes, url=url, baseline_url=baseline_url, model=model,
                       cps=cps, pause_ms=(lo, hi), pause_prob=pause_prob, max_tokens=max_tokens,
                       max_lines=max_lines, lines=spans[0] if spans else None,
                       more_lines=tuple(spans[1:]), tokenizer=tokenizer, speculate=speculate,
                       speculate_lines=speculate_lines, seed=seed, out=out)
    summary, _ = run_typing(cfg, log=lambda line: click.echo(line, err=True))
    if not any(m["answered"] for m in summary["modes"].values()):
        raise SystemExit(1)


@main.command("train-tokenizer")
@click.argument("out", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--corpus", "corpus", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="A directory (its *.py files, sorted) or file to train on; repeatable "
                   "(default: this Python's standard library, tests left out).")
@click.option("--vocab-size", default=50257, show_default=True, type=int,
              help="BPE ids including <|endoftext|>, which is the last (50256 by default, as "
                   "CodeGen); CodeGen's 38 whitespace tokens follow.")
@click.option("--measure", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Then print bytes per token of this file.")
@user_errors
def train_tokenizer(out, corpus, vocab_size, measure):
    """Train a CodeGen-shaped byte-level BPE offline, for `--tokenizer` with random weights.

    OUT defaults to a user cache directory; it is printed on stdout.
    """
    import json
    import time

    from .typing.tokenizer import bytes_per_token, default_out, train_tokenizer as train

    out = out or default_out(vocab_size)
    t0 = time.perf_counter()
    info = train(out, list(corpus) or None, vocab_size)
    click.echo(f"trained on {info['files']} files ({info['corpus_bytes'] / 1e6:.1f} MB) in "
               f"{time.perf_counter() - t0:.0f} s: {info['usable_ids']} ids, end of text "
               f"{info['eos_token_id']}", err=True)
    if measure:
        n_bytes, n_tokens = bytes_per_token(out, measure.read_text(encoding="utf-8"))
        click.echo(json.dumps({"file": str(measure), "bytes": n_bytes, "tokens": n_tokens,
                               "bytes_per_token": round(n_bytes / n_tokens, 3)}), err=True)
    click.echo(str(out))


@main.command("serve-overhead")
@click.option("--model", default="random:tiny", show_default=True,
              help="Model directory or random:<variant>.")
@click.option("--impl", default="fast", show_default=True, type=click.Choice(["fast", "reference"]),
              help="Engine forward (cgserve's default: fast).")
@click.option("--requests", default=200, show_default=True, type=int, help="Measured requests per mode.")
@click.option("--warmup", default=10, show_default=True, type=int)
@click.option("--max-tokens", default=16, show_default=True, type=int)
@click.option("--prompt", help="Prompt text (default: a 76-character Python snippet).")
@click.option("--fake/--no-fake", default=True, show_default=True,
              help="Also measure the no-model engine (its time is almost all overhead).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Directory (default results/serve-overhead-<time>).")
@user_errors
def serve_overhead(model, impl, requests, warmup, max_tokens, prompt, fake, out):
    """Time cgserve adds to each request on top of the engine's own clocks."""
    from .tools.serve_overhead import PROMPT, OverheadConfig, render, run_overhead

    cfg = OverheadConfig(model, impl, requests, warmup, max_tokens, prompt or PROMPT, fake, out)
    summary, out = run_overhead(cfg, log=lambda line: click.echo(line, err=True))
    click.echo(render(summary))
    click.echo(f"wrote {out}/requests.csv, summary.json, env.json", err=True)


@main.command("agreement")
@click.argument("model")
@click.option("--dtype", default="int8", show_default=True, type=click.Choice(DTYPE_NAMES),
              help="The weight dtype to compare with float32 (float16, bfloat16 or int8).")
@click.option("--prompts", default=4, show_default=True, type=int, help="Prompts to compare on.")
@click.option("--prompt-tokens", default=512, show_default=True, type=int,
              help="Random token ids per prompt.")
@click.option("--new-tokens", default=64, show_default=True, type=int,
              help="Greedy tokens generated per prompt by each dtype.")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed of the prompts (and of random weights).")
@device_option()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Also write OUT/agreement.jsonl, summary.json and env.json.")
@user_errors
def agreement(model, dtype, prompts, prompt_tokens, new_tokens, seed, device, out):
    """How close --dtype stays to float32 on MODEL (random:<variant> or a model directory):
    logits NMSE after each prompt, argmax and greedy-token agreement."""
    from .tools.agreement import AgreementConfig, render_record, render_summary, run_agreement

    cfg = AgreementConfig(model, dtype, prompts, prompt_tokens, new_tokens, seed, device, out)
    records, summary = run_agreement(cfg, log=lambda line: click.echo(line, err=True))
    for record in records:
        click.echo(render_record(record))
    click.echo(render_summary(summary))
    if out is not None:
        click.echo(f"wrote {out}/agreement.jsonl, summary.json, env.json", err=True)


@main.command("convert-speed")
@click.option("--repeats", default=3, show_default=True, type=int)
@click.option("--source", default="both", show_default=True,
              type=click.Choice(["bin", "safetensors", "both"]),
              help="Checkpoint format to convert from.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Writes OUT/convert_speed.json (default results/convert-speed-<time>).")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
              help="Where to build the checkpoint (needs ~3x 1.4 GB free; default: the temp dir).")
@user_errors
def convert_speed(repeats, source, out, workdir):
    """cgconvert from-hf on the 350M architecture against a raw read+write of the same bytes."""
    from .tools.convert_speed import SOURCES, default_out, run_convert_speed

    sources = SOURCES if source == "both" else (source,)
    out = out or default_out()
    run_convert_speed(sources, repeats, out, workdir, log=click.echo)
    click.echo(f"wrote {out / 'convert_speed.json'}", err=True)
