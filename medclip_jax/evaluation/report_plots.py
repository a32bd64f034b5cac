"""PNG plots of a benchmark report: bars per task family, Recall@K curves, a method x task
heat map. Figures are built with `matplotlib.figure.Figure` and its Agg canvas (no pyplot,
so no global backend state and no display needed). Missing results are never drawn as 0:
bars are left out and marked "n/a", heat-map cells are masked grey and marked "—".
"""

import os
import re

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from medclip_jax.evaluation.report import FAMILIES, FAMILY, MISSING, Benchmark

_PNG_METADATA = {"Software": None}   # no version string: identical inputs, identical bytes


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_") or "x"


def _save(fig: Figure, path: str) -> str:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=100, metadata=_PNG_METADATA)
    return path


def _colors(count: int) -> list:
    from matplotlib import colormaps
    cmap = colormaps["tab10" if count <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(count)]


def family_bars(bench: Benchmark, family: str, path: str) -> str:
    """Grouped bars: one group per task, one bar per method (its primary score)."""
    tasks, names = bench.tasks[family], bench.names
    width = 0.8 / max(len(names), 1)
    fig = Figure(figsize=(min(40.0, 3.0 + len(tasks) * (0.35 * len(names) + 0.6)), 4.8),
                 layout="constrained")
    ax = fig.add_subplot()
    for j, (name, color) in enumerate(zip(names, _colors(len(names)))):
        x = np.arange(len(tasks)) + (j - (len(names) - 1) / 2) * width
        scores = [bench.score(name, family, t) for t in tasks]
        have = [i for i, s in enumerate(scores) if s is not None]
        ax.bar(x[have], [scores[i] for i in have], width, label=name, color=color)
        for i, s in enumerate(scores):
            if s is None:
                ax.text(x[i], 0.01, "n/a", rotation=90, ha="center", va="bottom", fontsize=7,
                        color="grey")
    ax.set_xticks(np.arange(len(tasks)), tasks, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(FAMILY[family].primary_label)
    ax.set_title(FAMILY[family].title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path)


def recall_curves(bench: Benchmark, dataset: str, path: str) -> str:
    """Recall@K against K (log scale), one line per method, one panel per direction."""
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    colors = _colors(len(bench.names))
    for ax, direction in zip(axes, ("i2t", "t2i")):
        task = f"{dataset}:{direction}"
        for name, color in zip(bench.names, colors):
            points = sorted((int(m[2:]), v) for (f, t, m), v in bench.cells[name].items()
                            if f == "retrieval" and t == task and re.fullmatch(r"R@\d+", m))
            if points:
                ks, recalls = zip(*points)
                ax.plot(ks, recalls, marker="o", label=name, color=color)
        ax.set_xscale("log")
        ax.set_xlabel("K")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{dataset} {'image→text' if direction == 'i2t' else 'text→image'}")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("Recall@K")
    handles, labels = axes[0].get_legend_handles_labels()
    if not handles:
        handles, labels = axes[1].get_legend_handles_labels()
    if handles:
        axes[1].legend(handles, labels, fontsize=8, loc="lower right")
    return _save(fig, path)


def heat_map(bench: Benchmark, path: str) -> str:
    """Task x method primary scores (tasks as rows, so long task names stay readable);
    missing cells masked (grey, hatched) and marked "—"."""
    tasks = [(f.key, t) for f in FAMILIES for t in bench.tasks[f.key]]
    names = bench.names
    values = np.full((len(tasks), len(names)), np.nan)
    for i, (family, task) in enumerate(tasks):
        for j, name in enumerate(names):
            score = bench.score(name, family, task)
            if score is not None:
                values[i, j] = score
    fig = Figure(figsize=(4.0 + 0.9 * len(names), 1.6 + 0.32 * len(tasks)),
                 layout="constrained")
    ax = fig.add_subplot()
    from matplotlib import colormaps
    cmap = colormaps["viridis"].with_extremes(bad="#d0d0d0")
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0.0, vmax=1.0,
                      aspect="auto")
    for i in range(len(tasks)):
        for j in range(len(names)):
            if np.isnan(values[i, j]):
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="//",
                                       edgecolor="#909090", linewidth=0))
                ax.text(j, i, MISSING, ha="center", va="center", fontsize=10, color="black")
            else:
                ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if values[i, j] < 0.6 else "black")
    ax.set_xticks(np.arange(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(np.arange(len(tasks)), [f"{FAMILY[f].title}: {t}" for f, t in tasks],
                  fontsize=7)
    ax.set_title("Primary score per task (grey, —: missing)", fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.05)
    return _save(fig, path)


def write_plots(bench: Benchmark, output_dir: str) -> dict[str, list[tuple[str, str]]]:
    """Writes every plot under `output_dir`; returns section -> [(title, file name)]."""
    os.makedirs(output_dir, exist_ok=True)
    plots: dict[str, list[tuple[str, str]]] = {"bars": [], "recall": [], "heatmap": []}
    for f in FAMILIES:
        if bench.tasks[f.key]:
            name = f"bars_{f.key}.png"
            family_bars(bench, f.key, os.path.join(output_dir, name))
            plots["bars"].append((f"{f.title} ({f.primary_label})", name))
    datasets = sorted({t.rsplit(":", 1)[0] for t in bench.tasks["retrieval"]
                       if t.rsplit(":", 1)[-1] in ("i2t", "t2i")})
    for dataset in datasets:
        name = f"recall_{slug(dataset)}.png"
        recall_curves(bench, dataset, os.path.join(output_dir, name))
        plots["recall"].append((f"Recall@K, {dataset}", name))
    if any(bench.tasks.values()):
        heat_map(bench, os.path.join(output_dir, "heatmap.png"))
        plots["heatmap"].append(("Method × task heat map", "heatmap.png"))
    return plots
