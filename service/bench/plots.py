"""The PNGs of `privtext bench all`, drawn from its JSON dict alone, so that `privtext bench plot
bench.json` redraws them byte for byte from a saved run.

Figures are built on matplotlib's Agg canvas directly (no pyplot): no global backend state, no
display needed. Every title names the machine, the engine, the model and the date of the run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mechanisms.registry import get, names as mechanism_names

from .suite import percent

RAW, PRIVATE, ACCENT = "#7f7f7f", "#1f77b4", "#d62728"
VARIANT_COLORS = {"em+gate": "#9467bd"}  # bench's own variants; a mechanism's colour is its registry PlotStyle
PHASES = (("prefill", "#9ecae1"), ("decode", "#3182bd"), ("selection", "#e6550d"), ("other", "#bdbdbd"))


def mechanism_color(label: str, default: str | None = None) -> str | None:
    """The colour of a bench label: a registered mechanism's PlotStyle colour, a variant's own
    (VARIANT_COLORS), else default."""
    if label in VARIANT_COLORS:
        return VARIANT_COLORS[label]
    return get(label).style.colour if label in mechanism_names() else default


def _figure(d: dict, what: str, panels: int) -> tuple[Figure, list]:
    m, e = d["machine"], d["engine"]
    fig = Figure(figsize=(5.2 * panels, 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(1, panels, squeeze=False)[0])
    fig.suptitle(
        f"{what}\n{m['cpu_count']} CPUs ({m['cpu_model']}), {e['name']} on {e['device']} ({e['threads']} threads), "
        f"{e['model']}, {d['date'][:10]}",
        fontsize=10,
    )
    return fig, axes


def throughput(d: dict) -> Figure:
    """Raw vs private tokens/s per mechanism, efficiency, and where each run's time went."""
    th = d["throughput"]
    n, mechs = th["partitions"], th["mechanisms"]
    first = next(iter(mechs.values()))
    fig, (ax, ax_eff, ax_time) = _figure(
        d, f"Raw vs private decoding: N={n}, {th['groups']} groups ({th['groups'] * (n + 1)} rows in one batch), {th['max_tokens']} new tokens", 3
    )
    names = ["raw", *mechs]
    values = [first["raw_tokens_per_s"], *(p["private_tokens_per_s"] for p in mechs.values())]
    bars = ax.bar(names, values, color=[RAW, *(mechanism_color(k, PRIVATE) for k in mechs)])
    ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.axhline(first["raw_tokens_per_s"] / (n + 1), color=ACCENT, ls="--", lw=1, label="raw / (N+1): efficiency 1")
    ax.set_ylabel("tokens/s (raw: rows x tokens; private: synthetic tokens)")
    ax.set_title("throughput", fontsize=10)
    ax.legend(fontsize=8)

    eff = [p["efficiency"] for p in mechs.values()]
    bars = ax_eff.bar(list(mechs), eff, color=[mechanism_color(k, PRIVATE) for k in mechs])
    ax_eff.bar_label(bars, fmt="%.2f", fontsize=8)
    ax_eff.axhline(1.0, color=ACCENT, ls="--", lw=1, label="1: no cost beyond the shared forwards")
    ax_eff.set_ylabel("efficiency = private tokens/s x (N+1) / raw tokens/s")
    ax_eff.set_ylim(0, max(1.2, max(eff) * 1.15))
    ax_eff.set_title("efficiency", fontsize=10)
    ax_eff.legend(fontsize=8, loc="lower right")

    rows = [("raw", first["runs"]["raw"][0])] + [(k, p["runs"]["private"][0]) for k, p in mechs.items()]
    left = [0.0] * len(rows)
    for phase, color in PHASES:
        widths = [r.get(f"{phase}_seconds") or 0.0 for _, r in rows]
        ax_time.barh([k for k, _ in rows], widths, left=left, color=color, label=phase)
        left = [a + b for a, b in zip(left, widths)]
    ax_time.invert_yaxis()
    ax_time.set_xlabel("seconds of one run (first raw run)")
    ax_time.set_title("where the time goes", fontsize=10)
    ax_time.legend(fontsize=8, loc="lower right")
    return fig


def _scaling(d: dict, sweep: str, xlabel: str, what: str, log2: bool) -> Figure:
    pts = d["scaling"][sweep]
    xs = [p[sweep] for p in pts]
    fig, (ax_tps, ax_step, ax_eff) = _figure(d, what, 3)
    ax_tps.plot(xs, [p["private_tokens_per_s"] for p in pts], "o-", color=PRIVATE, label="private (synthetic tokens/s)")
    ax_tps.plot(xs, [p["raw_tokens_per_s"] / (p["partitions"] + 1) for p in pts], "s--", color=RAW, label="raw tokens/s / (N+1)")
    ax_tps.set_ylabel("tokens/s")
    ax_tps.set_title("throughput (lines meet at efficiency 1)", fontsize=10)
    ax_step.plot(xs, [1000.0 * p["private_seconds_per_step"] for p in pts], "o-", color=PRIVATE, label="private run / max tokens (prefill included)")
    ax_step.plot(xs, [1000.0 * p["raw_seconds"] / p["max_tokens"] for p in pts], "s--", color=RAW, label="raw run / max tokens")
    steps = [(x, p["private_step_ms"]) for x, p in zip(xs, pts) if p["private_step_ms"] is not None]
    if steps:
        ax_step.plot([x for x, _ in steps], [y for _, y in steps], "^:", color=PRIVATE, label="private decode step (forwards + selection)")
    ax_step.plot(xs, [p["selection_ms_per_step"] for p in pts], "v-.", color=ACCENT, label="selection")
    ax_step.set_ylabel("ms per decoding step")
    ax_step.set_yscale("log")
    ax_step.set_title("cost per step", fontsize=10)
    ax_eff.plot(xs, [p["efficiency"] for p in pts], "o-", color=PRIVATE)
    ax_eff.axhline(1.0, color=ACCENT, ls="--", lw=1, label="1: no cost beyond the shared forwards")
    ax_eff.set_ylim(0, max(1.2, max(p["efficiency"] for p in pts) * 1.15))
    ax_eff.set_ylabel("efficiency = private tokens/s x (N+1) / raw tokens/s")
    ax_eff.set_title("efficiency", fontsize=10)
    for ax in (ax_tps, ax_step, ax_eff):
        ax.set_xlabel(xlabel)
        if log2:
            ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return fig


def scaling_partitions(d: dict) -> Figure:
    p = d["scaling"]["partitions"][0]
    return _scaling(d, "partitions", "N (private rows per group)", f"Cost vs N (em, {p['groups']} groups, {p['max_tokens']} new tokens)", True)


def scaling_groups(d: dict) -> Figure:
    p = d["scaling"]["groups"][0]
    return _scaling(d, "groups", "concurrent groups (one batch)", f"Cost vs concurrent groups (em, N={p['partitions']}, {p['max_tokens']} new tokens)", True)


def scaling_tokens(d: dict) -> Figure:
    p = d["scaling"]["max_tokens"][0]
    return _scaling(d, "max_tokens", "max new tokens per group", f"Cost vs max tokens (em, N={p['partitions']}, {p['groups']} groups)", True)


def selection(d: dict) -> Figure:
    """ms per selection step vs N per mechanism (synthetic logits), and the same per group."""
    sel = d["selection"]
    fig, (ax, ax_g) = _figure(d, f"Selection cost per step on synthetic logits (vocab {sel['vocab']}, {sel['groups']} groups, median of {sel['steps']})", 2)
    for mech in dict.fromkeys(r["mechanism"] for r in sel["results"]):
        rows = sorted((r for r in sel["results"] if r["mechanism"] == mech), key=lambda r: r["partitions"])
        xs = [r["partitions"] for r in rows]
        ax.plot(xs, [r["step_ms_median"] for r in rows], "o-", color=mechanism_color(mech), label=mech)
        ax_g.plot(xs, [r["ms_per_group_step"] for r in rows], "o-", color=mechanism_color(mech), label=mech)
    ax.set_ylabel(f"ms per step ({sel['groups']} groups)")
    ax_g.set_ylabel("ms per group-step")
    for a in (ax, ax_g):
        a.set_xlabel("N (private rows per group)")
        a.set_xscale("log", base=2)
        ns = sorted({r["partitions"] for r in sel["results"]})
        a.set_xticks(ns, [str(n) for n in ns])
        a.set_ylim(bottom=0)
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    return fig


def pii(d: dict) -> Figure:
    """The PII filter's cost per record, and its share of a record's time."""
    p = d["pii"]
    fig, (ax, ax_share) = _figure(d, f"PII filter ({p['policy']}, presidio + spaCy) on {p['records']} {p['dataset']} texts", 2)
    ax.hist(p["ms_per_record"], bins=30, color=PRIVATE)
    ax.axvline(p["ms_per_record_median"], color=ACCENT, ls="--", lw=1, label=f"median {p['ms_per_record_median']:.2f} ms")
    ax.axvline(p["ms_per_record_mean"], color="black", ls=":", lw=1, label=f"mean {p['ms_per_record_mean']:.2f} ms")
    ax.set_xlabel("ms per record")
    ax.set_ylabel("records")
    ax.legend(fontsize=8)
    gen, filt = p["generation_ms_per_record"], p["ms_per_record_mean"]
    ax_share.barh(["record"], [gen], color=RAW, label=f"decoding (em, amortised over the batch): {gen:.0f} ms")
    ax_share.barh(["record"], [filt], left=[gen], color=ACCENT, label=f"PII filter: {filt:.1f} ms ({percent(p['share_of_record_time'])})")
    ax_share.set_xlabel("ms per synthetic record")
    ax_share.set_title(f"a record's time: the PII filter is {percent(p['share_of_record_time'])} of it", fontsize=10)
    ax_share.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.25))
    return fig


PLOTS: dict[str, Callable[[dict], Figure]] = {
    "throughput.png": throughput,
    "scaling_partitions.png": scaling_partitions,
    "scaling_groups.png": scaling_groups,
    "scaling_tokens.png": scaling_tokens,
    "selection.png": selection,
    "pii.png": pii,
}


def plot_all(d: dict, out: Path) -> list[Path]:
    """Every PNG into `out`; returns their paths."""
    paths = []
    for name, draw in PLOTS.items():
        path = out / name
        draw(d).savefig(path, dpi=110)
        paths.append(path)
    return paths
