"""A generation job: read -> count -> plan -> (charge) -> decode -> write -> report.

`privtext generate` runs it against files; the server (later) runs the same steps against its
store. The plan is made from public quantities only and is fixed before the first token: the
report's epsilon is the planner's, the declared worst case, never a realised figure.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mechanisms import DecodingConfig, GateConfig, JobRandomness, Ledger, Plan, dp_count, dp_histogram, plan
from mechanisms import registry as mechanism_registry

from ..engine.interface import Engine, GroupRequest, GroupResult
from ..generation.corpus import Corpus, read_corpus
from ..generation.layout import group_requests, strata_of
from ..generation.prompts import Template
from ..generation.selector import MechanismSelector
from .capacity import check_capacity
from .local_ledger import LocalLedger
from .records import OutRecord, RecordFilter


SEEDED_NOTE = (
    "reproducible on this machine only: the noise comes from the seed, this machine's local secret and the whole "
    "request (corpus digest included); the same seed on any other request or corpus draws independent noise"
)

MECHANISM_FIELDS = (
    "mechanism", "partitions", "temperature", "top_k", "top_k_plus", "units_per_row", "gate_threshold", "gate_epsilon",
    "gate_max_private", "clip", "noise_multiplier", "row_slots",
)


def decoding_config(
    mechanism: str, partitions: int, temperature: float, top_k: int | None, top_k_plus: bool, units_per_row: int,
    gate_threshold: float | None, gate_epsilon: float, gate_max_private: int,
    clip: float | None = None, noise_multiplier: float | None = None, row_slots: int | None = None,
) -> DecodingConfig:
    """The DecodingConfig of flat settings (CLI flags, request fields); unset clip/noise keep
    DecodingConfig's defaults, to be solved from epsilon by the planner."""
    gate = None
    if gate_threshold is not None:
        gate = GateConfig(threshold=gate_threshold, epsilon=gate_epsilon, max_private_tokens=gate_max_private)
    fixed = {k: v for k, v in (("clip", clip), ("noise_multiplier", noise_multiplier)) if v is not None}
    return DecodingConfig(mechanism=mechanism, partitions=partitions, temperature=temperature, top_k=top_k, top_k_plus=top_k_plus,
                          units_per_row=units_per_row, row_slots=row_slots, gate=gate, **fixed)


class JobRequest(BaseModel):
    """What to generate and how to decode it: shared by `privtext generate` and the API.
    Every value is public; none may be derived from the private records."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    records: int = Field(ge=1, le=1_000_000)
    max_tokens: int = Field(ge=1, le=4096)
    epsilon: float = Field(gt=0, allow_inf_nan=False)
    mechanism: str = "em"  # a name in mechanisms.registry (checked by _mechanism)
    partitions: int = Field(default=8, ge=1, le=4096)
    temperature: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    top_k: int | None = Field(default=64, ge=1)
    top_k_plus: bool = True  # em: widen the public top-k to top-k+ (DecodingConfig.top_k_plus)
    clip: float | None = Field(default=None, gt=0, allow_inf_nan=False)  # fixed instead of solved
    noise_multiplier: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    units_per_row: int = Field(default=1, ge=1, le=64)
    row_slots: int | None = Field(default=None, ge=1, le=4096)  # M, the bound on a group's rows (None: 3N)
    max_row_tokens: int = Field(default=512, ge=8, le=32768)  # every private row is cut to this many prompt tokens
    gate_threshold: float | None = Field(default=None, gt=0, lt=1)
    gate_epsilon: float = Field(default=0.5, gt=0, allow_inf_nan=False)
    gate_max_private: int = Field(default=16, ge=1)
    labels: tuple[str, ...] | None = None  # labels to generate, records split by a DP histogram
    label_counts: dict[str, int] | None = None  # records per label, public
    max_records_per_unit: int = Field(default=4, ge=1)
    max_record_chars: int = Field(default=500, ge=1)
    template: str | None = None  # a TOML path or a packaged template name
    stop: tuple[str, ...] = ()
    seed: int | None = None
    pii: Literal["redact", "drop", "report", "off"] = "redact"
    # The generation method: private decoding (above), or Private Evolution (service/jobs/pe_job.py).
    method: Literal["decode", "pe"] = "decode"
    iterations: int = Field(default=3, ge=1, le=100)  # pe: T, one DP histogram each (all charged up front)
    pe_threshold: float = Field(default=0.0, ge=0, allow_inf_nan=False)  # pe: H, noisy counts below it are zeroed
    pe_population: int = Field(default=16, ge=1, le=100_000)  # pe: candidates per label per iteration

    @field_validator("mechanism")
    @classmethod
    def _mechanism(cls, v: str) -> str:
        mechanism_registry.get(v)  # ValueError: "mechanism must be one of em, amin, gaussian, got ..."
        return v

    @model_validator(mode="after")
    def _label_counts(self) -> JobRequest:
        if self.labels is not None and self.label_counts is not None:
            raise ValueError("give labels or label_counts, not both")
        if self.label_counts is not None:
            bad = {k: v for k, v in self.label_counts.items() if not isinstance(v, int) or v < 0}
            if bad:
                raise ValueError(f"label_counts must be integers >= 0, got {bad}")
            if sum(self.label_counts.values()) != self.records:
                raise ValueError(f"label_counts must sum to records ({self.records}), got {sum(self.label_counts.values())}")
        return self

    def wanted_labels(self) -> list[str] | None:
        """The public labels to generate, sorted; None without labels."""
        if self.label_counts:
            return sorted(self.label_counts)
        return sorted(set(self.labels)) if self.labels else None

    def decoding_config(self) -> DecodingConfig:
        return decoding_config(**{k: getattr(self, k) for k in MECHANISM_FIELDS})

    @property
    def fixed_config(self) -> bool:
        """True when the user fixed clip/noise: the cost is computed and checked, not solved."""
        return getattr(self, mechanism_registry.get(self.mechanism).calibration.parameter) is not None


class GenerateSpec(JobRequest):
    """A `privtext generate` job: a request plus the corpus file, its fields and the outputs."""

    input: Path
    text_field: str = "text"
    label_field: str | None = None
    unit_field: str | None = None
    delta: float = Field(gt=0, lt=1)
    local_ledger: bool = True  # charge the run to this corpus's local ledger (service/jobs/local_ledger.py)
    epsilon_cap: float | None = Field(default=None, gt=0, allow_inf_nan=False)  # the corpus's cap, at its first run
    public_count: int | None = Field(default=None, ge=1)  # declared-public unit count
    count_noise: float = Field(default=10.0, gt=0)
    engine: str = "auto"
    model: str | None = None
    batch_rows: int = Field(default=160, ge=2)
    out: Path
    report: Path | None = None

    @model_validator(mode="after")
    def _labels(self) -> GenerateSpec:
        if (self.labels or self.label_counts) and not self.label_field:
            raise ValueError("labels and label_counts need label_field")
        if self.label_field and not (self.labels or self.label_counts):
            raise ValueError(
                "label_field needs the labels declared (they are public): label_counts (records per label, "
                "e.g. spam=20,ham=180) or labels (records split by a DP histogram)"
            )
        if self.public_count is not None and self.label_field:
            raise ValueError("public_count is for unlabelled corpora; with labels, per-label counts come from a DP histogram")
        return self

def _split_records(total: int, weights: dict[str, int]) -> dict[str, int]:
    """Largest-remainder split of `total` in proportion to (DP, hence public) weights."""
    labels = sorted(weights)
    w = np.array([max(weights[l], 0) for l in labels], dtype=float)
    w = np.ones_like(w) if w.sum() == 0 else w
    exact = total * w / w.sum()
    out = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - out), kind="stable")[: total - out.sum()]:
        out[i] += 1
    return {l: int(n) for l, n in zip(labels, out)}


def local_secret(config_dir: Path | None = None) -> bytes:
    """This machine's secret for seeded runs: derived from the user's data key (created on first
    use in PRIVTEXT_CONFIG_DIR, default ~/.config/privtext, mode 0600), never from the seed alone."""
    from ..store.crypto import load_or_create_key

    where = config_dir or Path(os.environ.get("PRIVTEXT_CONFIG_DIR") or Path.home() / ".config" / "privtext")
    key, _created = load_or_create_key(where)
    return hmac.new(key, b"privtext local seeded runs", hashlib.sha256).digest()


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run_randomness(spec: GenerateSpec) -> JobRandomness:
    """A run's randomness. Unseeded: a fresh nonce under a fresh secret. Seeded: a nonce from
    (local secret, seed, the whole request, the corpus's digest): reproducible on this machine
    for exactly this release, independent for any other request or corpus, and unpredictable
    from the seed alone (seeds such as 0, 1, 2 appear throughout the docs)."""
    if spec.seed is None:
        return JobRandomness.fresh(secrets.token_bytes(32))
    pe_only = set() if spec.method == "pe" else {"method", "iterations", "pe_threshold", "pe_population"}
    release = spec.model_dump_json(exclude={"input", "out", "report", "seed"} | pe_only)  # decode runs replay as before PE
    return JobRandomness.replay(local_secret(), spec.seed, release, file_digest(spec.input))


def label_units(corpus: Corpus, labels: list[str]) -> dict[str, int]:
    """Exact units per requested label (private: only ever the input of a DP histogram)."""
    true = Counter(recs[0].label for recs in corpus.units().values() if recs[0].label in labels)
    return {lab: true.get(lab, 0) for lab in labels}


def strata_from(request: JobRequest, released: dict[str, int]) -> dict[str, tuple[int, int]]:
    """label -> (public unit count, records wanted), from a released (DP) label histogram."""
    labels = sorted(released)
    records = request.label_counts or _split_records(request.records, released)
    return {lab: (max(released[lab], 1), records[lab]) for lab in labels}


def prepare(spec: GenerateSpec, corpus: Corpus, rng: np.random.Generator,
            corpus_ledger: Ledger | None = None) -> tuple[Plan, list[str] | None, dict]:
    """The public counts (declared, or released by DP) and the plan, checked against epsilon
    and, with corpus_ledger, against what the corpus's cap still allows (BudgetExceeded says
    what fits)."""
    notes: dict = {}
    labels = spec.wanted_labels() if spec.label_field else None
    strata = None
    if labels is not None:
        released = dp_histogram(label_units(corpus, labels), spec.count_noise, rng)
        strata = strata_from(spec, released)
        units = sum(n for n, _ in strata.values())
        source, noise = "dp-count", spec.count_noise
        notes["label_histogram"] = released
    elif spec.public_count is not None:
        units, source, noise = spec.public_count, "declared-public", None
        notes["units_declared_public"] = "the caller declared the unit count public; it was used as given"
    else:
        units, source, noise = max(dp_count(len(corpus.units()), spec.count_noise, rng), 1), "dp-count", spec.count_noise
    inputs = dict(
        units=units, records=spec.records, max_tokens=spec.max_tokens, delta=spec.delta,
        epsilon=None if spec.fixed_config else spec.epsilon, config=spec.decoding_config(),
        units_source=source, count_noise=noise, strata=strata,
    )
    p = plan(**inputs, ledger=Ledger(spec.epsilon, spec.delta))
    if corpus_ledger is not None:
        p = plan(**inputs, ledger=corpus_ledger)
    return p, labels, notes


Decode = Callable[[Iterator[GroupRequest], MechanismSelector], Iterator[GroupResult]]


def decode_records(
    request: JobRequest,
    corpus: Corpus,
    p: Plan,
    secret: bytes,
    template: Template,
    engine: Engine,
    run: Decode,
    selector: MechanismSelector,
    records: RecordFilter,
    skip: frozenset[int] = frozenset(),
    on_start: Callable[[int], None] | None = None,
    cache_salt: str | None = None,
) -> Iterator[OutRecord]:
    """The decode loop every job shares: the plan's groups, round by round, each decoded by
    `run` (the engine directly, or the server's shared scheduler) and filtered into a record.

    skip: groups not to decode (a resumed job's already started ones). on_start(group id) runs
    before a group reaches the engine (a server job claims it durably there) and returns whether
    this run claimed it: a group claimed already is skipped. cache_salt: the
    tenant's and dataset's key for the engine's prefix cache."""
    labels_of: dict[int, str | None] = {}

    def requests() -> Iterator[GroupRequest]:
        strata = strata_of(corpus, p, request.wanted_labels())
        for req, label in group_requests(strata, p, secret, template, engine, request.max_records_per_unit, request.stop,
                                         request.max_row_tokens, cache_salt):
            if req.group_id in skip:
                continue
            if on_start is not None and not on_start(req.group_id):
                continue  # claimed already (by an earlier run of this job): never decoded twice
            labels_of[req.group_id] = label
            yield req

    for result in run(requests(), selector):
        yield records(result, labels_of.pop(result.group_id, None))


def run_generate(
    spec: GenerateSpec,
    engine: Engine | None = None,
    progress: Callable[[str], None] | None = None,
    show_bar: bool = False,
    selector_for: Callable[[Plan, JobRandomness], MechanismSelector] | None = None,
) -> dict:
    """Run a generation job end to end; returns the report (also written to spec.report).

    selector_for(plan, randomness) replaces the private mechanism. Only `privtext eval` passes it, for
    its epsilon = infinity ceiling (service/eval/baseline.py); the report then says epsilon inf.
    method "pe": Private Evolution, run by service/jobs/pe_job.py."""
    if spec.method == "pe":
        if selector_for is not None:
            raise ValueError("selector_for replaces a private decoding mechanism; method 'pe' has none")
        from .pe_job import Shared, run_pe

        shared = Shared(run_randomness(spec), file_digest(spec.input), label_units, strata_from, SEEDED_NOTE)
        return run_pe(spec, shared, engine=engine, progress=progress)
    started = time.time()
    say = progress or (lambda _m: None)
    corpus = read_corpus(spec.input, spec.text_field, spec.label_field, spec.unit_field)
    # Exact counts are for the data owner's terminal only: they are not DP, so no report carries them.
    say(f"read {len(corpus.records):,} records in {len(corpus.units()):,} units; {len(corpus.bad):,} bad rows"
        + "".join(f"\n  line {b.line}: {b.reason}" for b in corpus.bad[:10]) + ("\n  ..." if len(corpus.bad) > 10 else ""))
    template = Template.load(spec.template, spec.max_record_chars)  # a bad template fails before any count is drawn
    randomness = run_randomness(spec)
    book, digest = (LocalLedger(), file_digest(spec.input)) if spec.local_ledger else (None, "")
    corpus_ledger = book.ledger(digest, spec.epsilon_cap, spec.delta) if book is not None else None
    p, _labels, notes = prepare(spec, corpus, randomness.stream("counts"), corpus_ledger)
    say(f"plan: {p.rounds} round(s) of {p.groups_per_round:,} group(s), epsilon {p.epsilon:.3f} at delta {spec.delta:g}")
    records = RecordFilter(spec.pii, say)
    if engine is None:
        from ..engine.loader import load_engine

        engine = load_engine(spec.engine, spec.model, progress=say)
    check_capacity(engine, p, template, spec.wanted_labels() if spec.label_field else None, spec.max_row_tokens, spec.batch_rows)
    if book is not None:  # reserved before the first group is decoded; a crash later keeps the charge
        corpus_ledger = book.reserve(digest, spec.epsilon_cap, spec.delta, f"privtext generate {time.strftime('%Y-%m-%d %H:%M:%S')}", p.events)
        say(f"corpus ledger: epsilon {corpus_ledger.spent_epsilon():.3f} of its cap {corpus_ledger.epsilon_cap:g} spent "
            f"over {len(corpus_ledger.entries)} run(s) ({book.path})")
    selector = MechanismSelector(p.config, randomness) if selector_for is None else selector_for(p, randomness)

    def run(groups: Iterator[GroupRequest], sel: MechanismSelector) -> Iterator[GroupResult]:
        return engine.run(groups, sel, max_batch_rows=spec.batch_rows)

    bar = _bar(spec.records, show_bar)
    spec.out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(spec.out, "w", encoding="utf-8") as out:
        for rec in decode_records(spec, corpus, p, randomness.derived_secret("partition"), template, engine, run, selector, records):
            if rec.released:
                out.write(json.dumps(rec.to_json(bool(spec.label_field)), ensure_ascii=False) + "\n")
                out.flush()  # a crash keeps every record already finished
            if bar is not None:
                bar.update(1)
                bar.set_postfix(tok_s=f"{records.stats.tokens / max(time.time() - t0, 1e-9):.1f}", epsilon=f"{p.epsilon:.2f}")
        os.fsync(out.fileno())
    decode_seconds = time.time() - t0
    if bar is not None:
        bar.close()

    st = records.stats
    from ..bench.startup import startup_seconds  # issue 26: process start -> the decode loop pulls the first group

    report = {
        "epsilon": p.epsilon if selector_for is None else math.inf,
        "delta": spec.delta,
        "mechanism": p.config.mechanism,
        "partitions": p.config.partitions,
        "records": st.released,
        "records_planned": spec.records,
        "empty_records_dropped": st.empty,
        "pii": records.pii_report(),
        "tokens": st.tokens,
        "private_tokens": selector.private_tokens,
        "public_tokens": selector.public_tokens,
        "tokens_per_second": st.tokens / decode_seconds if decode_seconds > 0 else 0.0,
        "engine": engine.name,
        "model": Path(engine.model_path).name,
        "units": p.units,
        "units_source": p.units_source,
        "rounds": p.rounds,
        "groups": p.groups_per_round,
        "finish_reasons": dict(st.finish_reasons),
        "out_of_step_groups": engine.stats.out_of_step,
        "seeded": spec.seed is not None,
        "corpus_ledger": ({"corpus_sha256": digest, "epsilon_cap": corpus_ledger.epsilon_cap, "epsilon_spent": corpus_ledger.spent_epsilon(),
                           "runs": len(corpus_ledger.entries), "path": str(book.path)} if book is not None else "off"),
        "seconds": time.time() - started,
        "startup_seconds": startup_seconds(t0),  # None off Linux
        "notes": {
            **notes,
            "epsilon": "planned worst case (max tokens for every record), charged in full before decoding",
            **({"seed": SEEDED_NOTE} if spec.seed is not None else {}),
        },
        "plan": p.to_dict(),
    }
    if spec.report is not None:
        tmp = spec.report.with_suffix(spec.report.suffix + ".tmp")
        tmp.write_text(json.dumps(report, indent=2, default=_jsonable) + "\n")
        os.replace(tmp, spec.report)
    return report


def _jsonable(o):
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _bar(total: int, show: bool):
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="rec", desc="generating", dynamic_ncols=True)
