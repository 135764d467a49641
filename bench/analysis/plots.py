"""`cgbench plot RUN` (and `cgbench report`): latency.png and memory.png of a sweep run.

One colour per backend, the same in both plots, with a legend that names them; the points
are grouped by request shape, prompt length first, the backends side by side within a group.
About 1200 x 700 pixels: readable on a laptop screen without zooming.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .frames import ok_points

BACKEND_COLOURS = {"paddle": "tab:blue", "paddle-ref": "tab:green", "hf": "tab:orange"}
OTHER_COLOURS = ("tab:purple", "tab:brown", "tab:pink", "tab:olive")
SIZE_IN, DPI = (12, 7), 100  # 1200 x 700 px
GROUP = ["prompt_tokens", "new_tokens", "variant", "dtype", "batch", "tensor_parallel"]  # order of the x axis


def colours(backends: list[str]) -> dict[str, str]:
    others = iter(OTHER_COLOURS * 4)
    return {b: BACKEND_COLOURS.get(b) or next(others) for b in backends}


def device_memory_mb(points: pd.DataFrame, env: dict) -> tuple[float | None, str]:
    """The memory line of the plots: the GPU's memory, or the host's on cpu runs."""
    gpu = points["gpu_total_mb"].dropna()
    if len(gpu):
        return float(gpu.max()), "GPU memory"
    if env.get("memory_mb"):
        return float(env["memory_mb"]), "host memory"
    return None, ""


def _layout(ok: pd.DataFrame):
    """(groups, backends, labels, common): one x position per group, bars per backend."""
    groups = ok[GROUP].drop_duplicates().sort_values(GROUP).reset_index(drop=True)
    backends = list(dict.fromkeys(ok["backend"]))
    varying = [c for c in ("variant", "dtype", "batch", "tensor_parallel") if ok[c].nunique() > 1]
    labels = []
    for g in groups.itertuples(index=False):
        parts = [f"prompt {g.prompt_tokens}", f"new {g.new_tokens}"]
        parts += [str(getattr(g, c)).replace("codegen-", "").replace("float", "fp")
                  if c not in ("batch", "tensor_parallel") else
                  (f"batch {g.batch}" if c == "batch" else f"tp {g.tensor_parallel}")
                  for c in varying]
        labels.append("\n".join(parts))
    common = ", ".join(str(ok[c].iloc[0]).replace("codegen-", "")
                       for c in ("variant", "dtype", "device") if ok[c].nunique() == 1)
    return groups, backends, labels, common


def _bars(ax, ok, groups, backends, values: str, errors: str | None, scale: float = 1.0):
    """One bar per (group, backend); returns each group's x centre and the bar width."""
    width = 0.8 / len(backends)
    palette = colours(backends)
    keyed = ok.set_index(GROUP + ["backend"])
    for i, backend in enumerate(backends):
        xs, ys, es = [], [], []
        for x, g in enumerate(groups.itertuples(index=False)):
            key = tuple(g) + (backend,)
            if key in keyed.index:
                row = keyed.loc[[key]].iloc[-1]
                xs.append(x - 0.4 + width * (i + 0.5))
                ys.append(row[values] / scale)
                es.append((row[errors] / scale) if errors and pd.notna(row[errors]) else 0)
        ax.bar(xs, ys, width * 0.92, yerr=es if errors else None, capsize=3,
               color=palette[backend], label=backend)
    return width


def _separate_prompts(ax, groups: pd.DataFrame) -> None:
    """A vertical line between groups of different prompt lengths."""
    prompts = groups["prompt_tokens"].tolist()
    for x in range(1, len(prompts)):
        if prompts[x] != prompts[x - 1]:
            ax.axvline(x - 0.5, color="grey", linewidth=1)


def _legend(ax) -> None:
    ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=10, frameon=False)


def _save(fig, path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=DPI)
    tmp.replace(path)
    return path


def write_plots(points: pd.DataFrame, env: dict, out_dir: Path) -> list[Path]:
    """latency.png and memory.png of the ok points; nothing when no point is ok."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = ok_points(points)
    if ok.empty:
        return []
    groups, backends, labels, common = _layout(ok)
    x = list(range(len(groups)))
    title = f" ({common})" if common else ""
    paths = []

    fig, (ttft, tpot) = plt.subplots(2, 1, figsize=SIZE_IN, sharex=True)
    _bars(ttft, ok, groups, backends, "ttft_ms_mean", "ttft_ms_stdev")
    ttft.set_ylabel("time to first token (ms)")
    ttft.set_title(f"latency by backend, mean ± stdev{title}")
    _bars(tpot, ok, groups, backends, "tpot_ms_mean", "tpot_ms_stdev")
    tpot.set_ylabel("time per output token (ms)")
    floors = ok.groupby(GROUP, sort=False)["floor_ms_per_token"].max()
    floor_y = [floors.get(tuple(g), float("nan")) for g in groups.itertuples(index=False)]
    if any(pd.notna(v) for v in floor_y):
        tpot.hlines(floor_y, [v - 0.45 for v in x], [v + 0.45 for v in x], colors="black",
                    linestyles="--", label="bandwidth floor", zorder=3)
    for ax in (ttft, tpot):
        ax.grid(axis="y", alpha=0.3)
        _separate_prompts(ax, groups)
        _legend(ax)
    tpot.set_xticks(x, labels, fontsize=10)
    fig.tight_layout()
    paths.append(_save(fig, out_dir / "latency.png"))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=SIZE_IN)
    gpu = ok["gpu_peak_device_mb"].notna().any()
    metric = "gpu_peak_device_mb" if gpu else "peak_rss_mb"
    _bars(ax, ok, groups, backends, metric, None, scale=1024)
    weights = ok.groupby(GROUP, sort=False)["weight_bytes"].max()
    ax.hlines([weights.get(tuple(g)) / 2**30 for g in groups.itertuples(index=False)],
              [v - 0.45 for v in x], [v + 0.45 for v in x], colors="black", linestyles="--",
              label="weights alone", zorder=3)
    limit, what = device_memory_mb(points, env)
    tallest = float(ok[metric].max()) if ok[metric].notna().any() else 0.0
    if limit and limit <= 3 * tallest:  # a line far above the bars would flatten them
        ax.axhline(limit / 1024, color="red", linestyle=":", label=f"{what} ({limit / 1024:.0f} GiB)")
    notes = [common] + ([f"{what} {limit / 1024:.0f} GiB"] if limit and limit > 3 * tallest else [])
    ax.set_ylabel(("GPU peak, device-wide minus idle" if gpu else "host peak RSS") + " (GiB)")
    ax.set_title("peak memory by backend (" + "; ".join(n for n in notes if n) + ")")
    ax.set_xticks(x, labels, fontsize=10)
    _separate_prompts(ax, groups)
    _legend(ax)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    paths.append(_save(fig, out_dir / "memory.png"))
    plt.close(fig)
    return paths
