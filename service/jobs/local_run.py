"""`privtext generate`: a corpus file through the server's job pipeline, on a local store.

read the file -> its dataset in the local store (service/jobs/local_store.py) -> count (once per
corpus), plan, reserve (dataset_job.prepare, as for a server request) -> decode or evolve on the
engine this process owns (dataset_job.decode) -> the PII filter -> the output file and a report.
The report's epsilon is the plan's, the declared worst case charged before the first token,
never a realised figure; the corpus ledger's total is beside it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from mechanisms import JobRandomness, Plan

from ..engine.interface import Engine
from ..generation.corpus import Corpus, read_corpus
from ..generation.pe import PeOutcome
from ..generation.prompts import Template
from ..generation.selector import MechanismSelector  # the type selector_for returns
from ..store.interface import Store
from . import dataset_job
from .generate import SEEDED_NOTE, file_digest, jsonable, progress_bar, run_randomness
from .local_store import TENANT, corpus_dataset, local_store
from .pe_job import EMBEDDING, FALLBACK_NOTE, check_request
from .records import RecordFilter
from .request import JobRequest, GenerateSpec

SelectorFor = Callable[[Plan, JobRandomness], MechanismSelector]


def job_request(spec: GenerateSpec) -> JobRequest:
    """The request part of a run's spec (what a server request would carry)."""
    return JobRequest(**{k: getattr(spec, k) for k in JobRequest.model_fields})


def say_corpus(corpus: Corpus, say: Callable[[str], None]) -> None:
    # Exact counts are for the data owner's terminal only: they are not DP, so no report carries them.
    say(f"read {len(corpus.records):,} records in {len(corpus.units()):,} units; {len(corpus.bad):,} bad rows"
        + "".join(f"\n  line {b.line}: {b.reason}" for b in corpus.bad[:10]) + ("\n  ..." if len(corpus.bad) > 10 else ""))


def corpus_ledger(store: Store, dataset_id: str, digest: str, path: Path | None) -> dict | str:
    if path is None:
        return "off"
    b = store.budget(TENANT, dataset_id)
    return {"corpus_sha256": digest, "epsilon_cap": b["cap"], "epsilon_spent": b["spent"], "entries": b["entries"], "path": str(path)}


def run_generate(spec: GenerateSpec, engine: Engine | None = None, progress: Callable[[str], None] | None = None,
                 show_bar: bool = False, selector_for: SelectorFor | None = None) -> dict:
    """Run a generation job end to end; returns the report (also written to spec.report).

    selector_for(plan, randomness) replaces the private mechanism. Only `privtext eval` passes it, for
    its epsilon = infinity ceiling (service/eval/baseline.py); the report then says epsilon inf."""
    started = time.time()
    say = progress or (lambda _m: None)
    pe = spec.method == "pe"
    if pe:
        if selector_for is not None:
            raise ValueError("selector_for replaces a private decoding mechanism; method 'pe' has none")
        check_request(spec)
    corpus = read_corpus(spec.input, spec.text_field, spec.label_field, spec.unit_field)
    say_corpus(corpus, say)
    Template.load(spec.template, spec.max_record_chars)  # a bad template fails before any count is drawn
    digest = file_digest(spec.input)
    randomness = run_randomness(spec, digest)
    request = job_request(spec)
    # The PII filter and the engine load before the reservation, so one that cannot load charges
    # nothing. (Loading them in threads beside each other and the store's work was measured: no
    # gain on 2 cores, since both loads are mostly Python imports holding the GIL.)
    records = RecordFilter(spec.pii, say)
    if engine is None:
        from ..engine.loader import load_engine

        engine = load_engine(spec.engine, spec.model, progress=say)
    with local_store(spec.local_ledger) as (store, path):
        info = corpus_dataset(store, corpus, digest, epsilon_cap=spec.epsilon_cap, delta=spec.delta, public_count=spec.public_count,
                              keep=spec.local_ledger)
        prep, ledger, histogram = _prepare(spec, store, info.id, digest, path, request, engine, randomness, say)
    p = prep.plan

    selector = None
    if not pe:
        selector = selector_for(p, prep.randomness) if selector_for is not None else dataset_job.mechanism_selector(prep)
    outcomes: list[PeOutcome] = []
    bar = progress_bar(spec.records, show_bar)
    spec.out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(spec.out, "w", encoding="utf-8") as out:
        for rec in dataset_job.decode(prep, engine, dataset_job.DirectAdmission(engine, spec.batch_rows), records,
                                      selector=selector, on_outcome=outcomes.append, say=say):
            if rec.released:
                out.write(json.dumps(rec.to_json(bool(spec.label_field)), ensure_ascii=False) + "\n")
                out.flush()  # a crash keeps every record already finished
            if bar is not None:
                bar.update(1)
                bar.set_postfix(tok_s=f"{records.stats.tokens / max(time.time() - t0, 1e-9):.1f}", epsilon=f"{p.epsilon:.2f}")
        os.fsync(out.fileno())
    seconds = time.time() - t0
    if bar is not None:
        bar.close()

    from ..bench.startup import startup_seconds  # issue 26: process start -> the decode loop pulls the first group

    st = records.stats
    common = {
        "records": st.released,
        "records_planned": spec.records,
        "empty_records_dropped": st.empty,
        "pii": records.pii_report(),
        "tokens": st.tokens,
        "engine": engine.name,
        "model": Path(engine.model_path).name,
        "units": p.units,
        "units_source": p.units_source,
        "finish_reasons": dict(st.finish_reasons),
        "seeded": spec.seed is not None,
        "corpus_ledger": ledger,
        "seconds": time.time() - started,
    }
    notes = {**({"label_histogram": histogram} if histogram is not None else {}), **({"units_declared_public": "the caller declared the unit count public; it was used as given"}
                            if p.units_source == "declared-public" else {}),
             **({"seed": SEEDED_NOTE} if spec.seed is not None else {})}
    if pe:
        (outcome,) = outcomes
        report = {
            "method": "pe", "epsilon": p.epsilon, "delta": spec.delta, "sigma": p.sigma, "iterations": p.iterations,
            "threshold": p.threshold, "histograms": outcome.histograms, "population": spec.pe_population,
            "candidates_per_iteration": outcome.candidates_per_iteration, "candidates_generated": outcome.generated,
            "fallbacks": outcome.fallbacks,
            "records_per_label": {str(k): v for k, v in prep.per_label.items()} if spec.label_field else None,
            "tokens_generated": outcome.tokens_generated,
            "tokens_per_second": outcome.tokens_generated / seconds if seconds > 0 else 0.0,
            "embedding": EMBEDDING, **common,
            "notes": {**notes, "epsilon": f"planned: {p.iterations} Gaussian histogram(s) of sigma {p.sigma:.4g} (L2 sensitivity 1), "
                                          "charged in full before iteration 1",
                      **({"fallback": FALLBACK_NOTE} if outcome.fallbacks else {})},
            "plan": p.to_dict(),
        }
    else:
        report = {
            "epsilon": p.epsilon if selector_for is None else math.inf, "delta": spec.delta, "mechanism": p.config.mechanism,
            "partitions": p.config.partitions, **common,
            "private_tokens": selector.private_tokens, "public_tokens": selector.public_tokens,
            "tokens_per_second": st.tokens / seconds if seconds > 0 else 0.0,
            "rounds": p.rounds, "groups": p.groups_per_round, "out_of_step_groups": engine.stats.out_of_step,
            "startup_seconds": startup_seconds(t0),  # None off Linux
            "notes": {**notes, "epsilon": "planned worst case (max tokens for every record), charged in full before decoding"},
            "plan": p.to_dict(),
        }
    if spec.report is not None:
        tmp = spec.report.with_suffix(spec.report.suffix + ".tmp")
        tmp.write_text(json.dumps(report, indent=2, default=jsonable) + "\n")
        os.replace(tmp, spec.report)
    return report


def _prepare(spec: GenerateSpec, store: Store, dataset_id: str, digest: str, path: Path | None, request: JobRequest,
             engine: Engine, randomness, say: Callable[[str], None]) -> tuple[dataset_job.Prepared, dict | str, dict | None]:
    """Count (once per corpus), plan and reserve on the local store: the server's prepare."""
    pe = spec.method == "pe"
    label = f"privtext generate{' --method pe' if pe else ''} {time.strftime('%Y-%m-%d %H:%M:%S')}"
    prep = dataset_job.prepare(store, TENANT, dataset_id, request, label, spec.count_noise, secrets.token_bytes(32), engine,
                               spec.batch_rows, randomness=randomness)
    if spec.seed is not None:  # a replay: the same groups as well as the same noise (the store's secret is per corpus)
        prep = dataclasses.replace(prep, secret=randomness.derived_secret("partition"))
    p = prep.plan
    if pe:
        say(f"plan: PE, {p.iterations} iteration(s) of {spec.pe_population} candidate(s) per label, sigma {p.sigma:.4g}, "
            f"threshold {p.threshold:g}, epsilon {p.epsilon:.3f} at delta {spec.delta:g}")
    else:
        say(f"plan: {p.rounds} round(s) of {p.groups_per_round:,} group(s), epsilon {p.epsilon:.3f} at delta {spec.delta:g}")
    ledger = corpus_ledger(store, dataset_id, digest, path)
    if path is not None:
        say(f"corpus ledger: epsilon {ledger['epsilon_spent']:.3f} of its cap {ledger['epsilon_cap']:g} spent "
            f"in {ledger['entries']} ledger entries ({path})")
    return prep, ledger, _released_histogram(store, dataset_id, request)


def _released_histogram(store: Store, dataset_id: str, request: JobRequest) -> dict | None:
    labels = request.wanted_labels()
    if labels is None:
        return None
    got = store.released_count(TENANT, dataset_id, dataset_job.count_kind(store.get_dataset(TENANT, dataset_id), labels))
    return None if got is None else got.value
