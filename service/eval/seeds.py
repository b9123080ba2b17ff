"""Several seeds of one eval grid, combined: means, sample spread and per-seed wins.

One seed of 100 records moves a classifier's balanced accuracy by ten points or more (a new
split, new groups, new mechanism noise), which is as large as the gaps between mechanisms. So
`privtext eval --seeds 0,1,2` runs the grid once per seed, each into OUT/seed-<k> (a plain eval
folder, resumable on its own), and reports the mean over seeds with the per-seed values beside
it. A cell enters the combined report only if every seed that ran its dataset has it, so every
mean and every comparison is over the same seeds.

Pure functions of the per-seed results dicts (results.json).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .report import CLASSIFIERS, METRIC, REFERENCE, cell_epsilon, colour, legend_below


def seed_folder(out: Path, seed: int) -> Path:
    return out / f"seed-{seed}"


def mean_tree(items: list):
    """The mean of same-shaped results: numbers averaged, equal values kept, anything else None."""
    first = items[0]
    if isinstance(first, dict):
        return {k: mean_tree([i[k] for i in items]) for k in first if all(isinstance(i, dict) and k in i for i in items)}
    if any(i is None for i in items):
        return None
    if isinstance(first, (int, float)) and not isinstance(first, bool):
        return float(np.mean(items))
    return first if all(i == first for i in items) else None


def _with_spread(parts: list[dict]) -> dict:
    """mean_tree of cells (or of the real-data rows), with each classifier's per-seed headline
    score and its sample standard deviation kept beside the mean."""
    out = mean_tree(parts)
    for key, _ in CLASSIFIERS:
        if out.get(key) is not None:
            values = [p[key][METRIC] for p in parts]
            out[key] |= {"per_seed": values, "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}
    return out


def combine(by_seed: dict[int, dict]) -> dict:
    """One results dict (the shape report.py draws) from {seed: results}, means over seeds."""
    if not by_seed:
        raise ValueError("seeds: no results to combine")
    seeds = sorted(by_seed)
    settings = {k: v for k, v in by_seed[seeds[0]]["settings"].items() if k != "seed"} | {"seeds": seeds}
    names = list(dict.fromkeys(n for s in seeds for n in by_seed[s]["datasets"]))
    datasets = {}
    for name in names:
        ran = [s for s in seeds if by_seed[s]["datasets"].get(name, {}).get("cells")]
        if not ran:
            continue
        parts = [by_seed[s]["datasets"][name] for s in ran]
        every = set.intersection(*(set(p["cells"]) for p in parts))
        cells = {c: _with_spread([p["cells"][c] for p in parts]) for c in parts[0]["cells"] if c in every}
        rows = [p.get("dp_trained", {}) for p in parts]  # the DP-trained rows, combined only over every seed, like the cells
        dp_trained = {r: _with_spread([x[r] for x in rows]) for r in rows[0] if all(r in x for x in rows)}
        datasets[name] = {
            "seeds": ran,
            "train_rows": mean_tree([p["train_rows"] for p in parts]),
            "test_rows": mean_tree([p["test_rows"] for p in parts]),
            "labels": parts[0]["labels"],
            "majority": mean_tree([p["majority"] for p in parts]),
            "real": _with_spread([p["real"] for p in parts]),
            "cells": cells,
            "dp_trained": dp_trained,
            # cells some seeds lack: named, never averaged over fewer seeds than the rest
            "incomplete": {c: [s for s, p in zip(ran, parts) if c in p["cells"]]
                           for c in sorted(set().union(*(p["cells"] for p in parts)) - every)},
        }
    if not datasets:
        raise ValueError(f"seeds: no seed has a finished cell yet (seeds {', '.join(map(str, seeds))}); run without --report-only")
    return {"settings": settings, "datasets": datasets}


def plot_seeds(results: dict, path: Path) -> None:
    """Every seed's score as a dot and the mean as a bar, per cell: where one seed lands
    against the spread of the others is easier to see than to read."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    names = list(results["datasets"])
    most = max(len(d["cells"]) for d in results["datasets"].values())
    width = max(4.2, 0.55 * most)  # room for every cell's two-line tick label
    fig, axes = plt.subplots(len(CLASSIFIERS), len(names), figsize=(width * len(names), 3.6 * len(CLASSIFIERS)), squeeze=False)
    for j, name in enumerate(names):
        d = results["datasets"][name]
        cells = sorted(d["cells"].values(), key=lambda c: (cell_epsilon(c), c["mechanism"]))
        ticks = [c["mechanism"] if math.isinf(cell_epsilon(c)) else f"{c['mechanism']}\neps {cell_epsilon(c):g}" for c in cells]
        ticks = [t.replace("none", "no\nprivacy") for t in ticks]
        for i, (key, label) in enumerate(CLASSIFIERS):
            ax = axes[i][j]
            for x, c in enumerate(cells):
                if c[key] is None:
                    continue
                values = c[key]["per_seed"]
                jitter = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else [0.0]
                ax.scatter(x + np.asarray(jitter), values, s=16, color=colour(c["mechanism"]), alpha=0.7, zorder=3)
                ax.hlines(c[key][METRIC], x - 0.3, x + 0.3, color=colour(c["mechanism"]), lw=2.5, zorder=2)
            if d["real"][key] is not None:
                ax.axhline(d["real"][key][METRIC], **REFERENCE["real"], label="real data (ceiling, mean)")
            ax.axhline(d["majority"][METRIC], **REFERENCE["majority"], label="majority class (floor)")
            ax.set_xticks(range(len(cells)), ticks, fontsize=7)
            ax.set_xlim(-0.6, len(cells) - 0.4)
            ax.set_title(f"{name}: {label} ({len(d['seeds'])} seeds)", fontsize=10)
            ax.set_ylabel("balanced accuracy on real test")
            ax.grid(alpha=0.3, axis="y")
    axes[0][0].scatter([], [], s=16, color="grey", label="one seed")
    axes[0][0].plot([], [], color="grey", lw=2.5, label="mean over seeds")
    fig.suptitle(f"Each seed (dots) and the mean (bars)\n{results['settings']['records']} records per cell and seed", fontsize=10)
    legend_below(fig, axes[0][0])
    fig.savefig(path, dpi=110)
    plt.close(fig)
