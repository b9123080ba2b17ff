"""One eval grid at several values of one setting, side by side: `--sweep temperature=0.7,1,1.4`.

The issue asks for defaults (temperature, top-k, N, ...) chosen by measurement. A sweep runs the
grid once per value, each into OUT/<setting>-<value> (a plain eval folder: resumable, with its
own report and reproducing command), then puts every cell's headline score at every value in
one table and one plot, with em's ratio to the non-private cell at the goal epsilon per value.
Every value uses the same seed, so the split and the groups are the same and only the swept
setting (and the noise it draws) differs. One seed moves a score by several points
(seeds.py), so the report says which value led, never that it is settled.

Pure functions of the per-value results dicts (results.json), apart from the plot.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

from .report import CLASSIFIERS, GOAL_EPSILON, GOAL_RATIO, METRIC, REFERENCE, accuracy, cell_epsilon, finite_epsilons, legend_below, colour

# EvalSettings fields worth sweeping: they change what a cell holds, not which cells run (GRID)
# or which split (seed: use --seeds).
SWEEPABLE = ("temperature", "top_k", "partitions", "records", "max_tokens")
GOAL_CELL = f"em-eps{GOAL_EPSILON:g}"
FIDELITY = ("frechet", "distinct_1")


def spelled(name: str) -> str:
    """An EvalSettings field as its flag and folder spell it: top_k -> top-k."""
    return name.replace("_", "-")


def flag(name: str) -> str:
    return "--" + spelled(name)


def parse(text: str) -> tuple[str, tuple[float, ...]]:
    """'top-k=16,64' -> ('top_k', (16.0, 64.0)): the setting and its distinct values, sorted."""
    name, sep, rest = text.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or name not in SWEEPABLE:
        raise ValueError(f"sweep: expected SETTING=V1,V2,... with SETTING one of "
                         f"{', '.join(spelled(s) for s in SWEEPABLE)}, got {text!r}")
    try:
        values = tuple(sorted({float(v) for v in rest.split(",") if v.strip()}))
    except ValueError:
        raise ValueError(f"sweep: {spelled(name)} values must be comma-separated numbers, got {rest!r}") from None
    if len(values) < 2 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"sweep: give at least 2 distinct finite values of {spelled(name)}, got {rest!r}")
    return name, values


def value_folder(out: Path, name: str, value: float) -> Path:
    return out / f"{spelled(name)}-{value:g}"


def _per_value(found: list[dict | None]) -> dict:
    """Each classifier's headline score, and the fidelity measures (what accuracy alone hides:
    how close to real text, how varied), of one row at every value; None where it is missing."""
    scores = {key: [accuracy(c[key]) if c else None for c in found] for key, _ in CLASSIFIERS}
    return scores | {key: [c.get(key) if c else None for c in found] for key in FIDELITY}


def table(name: str, by_value: dict[float, dict]) -> dict:
    """The sweep's results dict: per dataset and cell, each classifier's headline score at every
    value (None where that value has no such cell), the real-data and majority rows likewise, and
    em's goal ratio per value."""
    if not by_value:
        raise ValueError("sweep: no results to compare")
    values = sorted(by_value)
    datasets: dict = {}
    names = list(dict.fromkeys(n for v in values for n in by_value[v]["datasets"]))
    for ds in names:
        parts = [by_value[v]["datasets"].get(ds) for v in values]
        if not any(p and p["cells"] for p in parts):
            continue
        cells: dict = {}
        for p in parts:
            for cell, c in (p["cells"] if p else {}).items():
                cells.setdefault(cell, {"mechanism": c["mechanism"], "epsilon": c["epsilon"]})
        for cell, row in cells.items():
            found = [p["cells"].get(cell) if p else None for p in parts]  # None where that value lacks the cell
            row |= _per_value(found)
        goal = {}
        for key, _ in CLASSIFIERS:
            em, none = cells.get(GOAL_CELL, {}).get(key), cells.get("none-inf", {}).get(key)
            goal[key] = [a / b if a is not None and b else None for a, b in zip(em or [None] * len(values), none or [None] * len(values))]
        datasets[ds] = {
            "cells": dict(sorted(cells.items(), key=lambda kv: (cell_epsilon(kv[1]), kv[1]["mechanism"]))),
            "real": _per_value([p["real"] if p else None for p in parts]),
            "majority": [p["majority"][METRIC] if p else None for p in parts],
            "goal": goal,
        }
    if not datasets:
        raise ValueError(f"sweep: no value of {spelled(name)} has a finished cell yet; run without --report-only")
    settings = {k: v for k, v in by_value[values[0]]["settings"].items() if k != name} | {"sweep": name, "values": values}
    return {"settings": settings, "datasets": datasets}


def _best(values: list[float], scores: list[float | None]) -> tuple[float, float] | None:
    scored = [(s, v) for v, s in zip(values, scores) if s is not None]
    if not scored:
        return None
    score, value = max(scored)
    return value, score


def verdicts(results: dict) -> list[str]:
    """Which value gave em its best score at the goal epsilon, em's goal ratio at each value, and at
    how many values em led the other mechanisms at each finite epsilon."""
    name, values = results["settings"]["sweep"], results["settings"]["values"]
    at = lambda v: f"{spelled(name)} {v:g}"  # noqa: E731
    lines = []
    for ds, d in results["datasets"].items():
        for key, label in CLASSIFIERS:
            em = d["cells"].get(GOAL_CELL, {}).get(key)
            if em and (best := _best(values, em)):
                lines.append(f"{ds} {label}: em at epsilon {GOAL_EPSILON:g} scores best at {at(best[0])} ({best[1]:.3f}; "
                             + ", ".join(f"{v:g}: {s:.3f}" for v, s in zip(values, em) if s is not None) + ")")
            ratios = [(v, r) for v, r in zip(values, d["goal"][key]) if r is not None]
            if ratios:
                met = [v for v, r in ratios if r >= GOAL_RATIO]
                lines.append(f"{ds} {label}: em at epsilon {GOAL_EPSILON:g} / no privacy at the same value: "
                             + ", ".join(f"{v:g}: {r:.1%}" for v, r in ratios)
                             + f"; the {GOAL_RATIO:.0%} aim is met at {len(met)} of {len(ratios)} values")
            for eps in finite_epsilons(d["cells"].values()):
                row = {c["mechanism"]: c[key] for c in d["cells"].values() if cell_epsilon(c) == eps}
                if "em" not in row or len(row) < 2:
                    continue
                full = [i for i in range(len(values)) if all(s[i] is not None for s in row.values())]
                wins = sum(row["em"][i] == max(s[i] for s in row.values()) for i in full)
                lines.append(f"{ds} {label}: at epsilon {eps:g} em is the best mechanism at {wins} of {len(full)} values")
    return lines


def _others(s: dict) -> str:
    shown = {"records": "records", "partitions": "N", "temperature": "temperature", "top_k": "top-k",
             "max_tokens": "max tokens", "template": "template", "seed": "seed", "delta": "delta"}
    return ", ".join(f"{label} {'per dataset' if s.get(k) is None else s[k] if isinstance(s[k], str) else f'{s[k]:g}'}"
                     for k, label in shown.items() if k != s.get("sweep"))  # no template key: a run from before --template


def markdown(results: dict, command: str, plots: list[str]) -> str:
    s = results["settings"]
    name, values = s["sweep"], s["values"]
    head = " | ".join(f"{spelled(name)} {v:g}" for v in values)
    out = [
        f"# privtext eval: a sweep of {spelled(name)}",
        "",
        f"Command: `{command}`",
        "",
        f"Each value ran the same grid into its own folder ({', '.join(f'`{value_folder(Path(), name, v)}`' for v in values)}), "
        f"each with its full report. Other settings: {_others(s)}. Scores are "
        "balanced accuracy on the real held-out test part, TF-IDF + LR / MiniLM + LR. One seed: a difference of a few "
        "points between values is within what a new seed moves.",
        "",
    ]
    two = lambda a, b: f"{'-' if a is None else f'{a:.3f}'} / {'-' if b is None else f'{b:.3f}'}"  # noqa: E731
    for ds, d in results["datasets"].items():
        out += [f"## {ds}", "", f"| training set | {head} |", "|---" * (len(values) + 1) + "|"]
        rows = [("real (same rows)", d["real"])]
        rows += [(f"{c['mechanism']} eps {cell_epsilon(c):g}" if c["mechanism"] != "none" else "no privacy", c) for c in d["cells"].values()]
        for label, r in rows:
            out.append(f"| {label} | " + " | ".join(two(a, b) for a, b in zip(r["tfidf"], r["minilm"])) + " |")
        g = d["goal"]
        out.append(f"| **em eps {GOAL_EPSILON:g} / no privacy** | "
                   + " | ".join(" / ".join("-" if x is None else f"{x:.1%}" for x in (a, b)) for a, b in zip(g["tfidf"], g["minilm"])) + " |")
        out += ["", "Frechet distance to the real test part (lower is closer) / distinct-1 of the records:", "",
                f"| training set | {head} |", "|---" * (len(values) + 1) + "|"]
        for label, r in rows:
            out.append(f"| {label} | " + " | ".join(two(a, b) for a, b in zip(r["frechet"], r["distinct_1"])) + " |")
        out.append("")
    out += ["## Verdicts", "", *[f"- {v}" for v in verdicts(results)], ""]
    out += [f"![{p}]({p})" for p in plots]
    return "\n".join(out) + "\n"


def plot_sweep(results: dict, path: Path) -> None:
    """Score against the swept value per cell, one panel per dataset and classifier."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name, values = results["settings"]["sweep"], results["settings"]["values"]
    names = list(results["datasets"])
    fig, axes = plt.subplots(len(CLASSIFIERS), len(names), figsize=(max(4.2 * len(names), 6.0), 3.4 * len(CLASSIFIERS)), squeeze=False)
    styles = ["o-", "s--", "^:", "d-."]
    xs = range(len(values))  # evenly spaced: the values may span orders of magnitude (top-k)
    for j, ds in enumerate(names):
        d = results["datasets"][ds]
        finite = finite_epsilons(d["cells"].values())
        for i, (key, label) in enumerate(CLASSIFIERS):
            ax = axes[i][j]
            for c in d["cells"].values():
                pts = [(x, y) for x, y in zip(xs, c[key]) if y is not None]
                style = "x-" if c["mechanism"] == "none" else styles[finite.index(cell_epsilon(c)) % len(styles)]
                who = "no privacy" if c["mechanism"] == "none" else f"{c['mechanism']} eps {cell_epsilon(c):g}"
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, color=colour(c["mechanism"]), label=who)
            real = [(x, y) for x, y in zip(xs, d["real"][key]) if y is not None]
            ax.plot([p[0] for p in real], [p[1] for p in real], **REFERENCE["real"], label="real data (ceiling)")
            floor = [(x, y) for x, y in zip(xs, d["majority"]) if y is not None]
            ax.plot([p[0] for p in floor], [p[1] for p in floor], **REFERENCE["majority"], label="majority class (floor)")
            ax.set_xticks(list(xs), [f"{v:g}" for v in values])
            ax.set_xlabel(spelled(name))
            ax.set_ylabel("balanced accuracy on real test")
            ax.set_title(f"{ds}: {label}", fontsize=10)
            ax.grid(alpha=0.3)
    wrap = textwrap.fill(_others(results["settings"]), width=int(11 * fig.get_figwidth()))
    fig.suptitle(f"Accuracy against {spelled(name)}\n{wrap}", fontsize=10)
    legend_below(fig, axes[0][0])
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(results: dict, out: Path, command: str) -> Path:
    plot_sweep(results, out / "sweep.png")
    path = out / "report.md"
    path.write_text(markdown(results, command, ["sweep.png"]))
    return path
