"""A generation job: read -> count -> plan -> (charge) -> decode -> write -> report.

`privtext generate` runs it against files; the server (later) runs the same steps against its
store. The plan is made from public quantities only and is fixed before the first token: the
report's epsilon is the planner's, the declared worst case, never a realised figure.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mechanisms import DecodingConfig, GateConfig, Ledger, Plan, dp_count, dp_histogram, plan

from ..engine.interface import Engine
from ..generation.corpus import Corpus, read_corpus
from ..generation.layout import group_requests, strata_of
from ..generation.prompts import Template
from ..generation.selector import MechanismSelector


MECHANISM_FIELDS = (
    "mechanism", "partitions", "temperature", "top_k", "units_per_row", "gate_threshold", "gate_epsilon",
    "gate_max_private", "clip", "noise_multiplier",
)


def decoding_config(
    mechanism: str, partitions: int, temperature: float, top_k: int | None, units_per_row: int,
    gate_threshold: float | None, gate_epsilon: float, gate_max_private: int,
    clip: float | None = None, noise_multiplier: float | None = None,
) -> DecodingConfig:
    """The DecodingConfig of flat settings (CLI flags, request fields); unset clip/noise keep
    DecodingConfig's defaults, to be solved from epsilon by the planner."""
    gate = None
    if gate_threshold is not None:
        gate = GateConfig(threshold=gate_threshold, epsilon=gate_epsilon, max_private_tokens=gate_max_private)
    fixed = {k: v for k, v in (("clip", clip), ("noise_multiplier", noise_multiplier)) if v is not None}
    return DecodingConfig(mechanism=mechanism, partitions=partitions, temperature=temperature, top_k=top_k,
                          units_per_row=units_per_row, gate=gate, **fixed)


class GenerateSpec(BaseModel):
    """Everything a generation job is asked to do (validated at the boundary)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: Path
    text_field: str = "text"
    label_field: str | None = None
    unit_field: str | None = None
    records: int = Field(ge=1, le=1_000_000)
    max_tokens: int = Field(ge=1, le=4096)
    epsilon: float = Field(gt=0, allow_inf_nan=False)
    delta: float = Field(gt=0, lt=1)
    mechanism: Literal["em", "amin", "gaussian"] = "em"
    partitions: int = Field(default=8, ge=1, le=4096)
    temperature: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    top_k: int | None = Field(default=64, ge=1)
    clip: float | None = Field(default=None, gt=0, allow_inf_nan=False)  # fixed instead of solved
    noise_multiplier: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    units_per_row: int = Field(default=1, ge=1, le=64)
    gate_threshold: float | None = Field(default=None, gt=0, lt=1)
    gate_epsilon: float = Field(default=0.5, gt=0)
    gate_max_private: int = Field(default=16, ge=1)
    public_count: int | None = Field(default=None, ge=1)  # declared-public unit count
    labels: tuple[str, ...] | None = None  # labels to generate, records split by a DP histogram
    label_counts: dict[str, int] | None = None  # records per label, public
    count_noise: float = Field(default=10.0, gt=0)
    max_records_per_unit: int = Field(default=4, ge=1)
    max_record_chars: int = Field(default=500, ge=1)
    template: str | None = None  # a TOML path or a packaged template name
    stop: tuple[str, ...] = ()
    seed: int | None = None
    engine: str = "auto"
    model: str | None = None
    batch_rows: int = Field(default=160, ge=2)
    pii: Literal["redact", "drop", "report", "off"] = "redact"
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
        if self.label_counts is not None:
            bad = {k: v for k, v in self.label_counts.items() if not isinstance(v, int) or v < 0}
            if bad:
                raise ValueError(f"label_counts must be integers >= 0, got {bad}")
            if sum(self.label_counts.values()) != self.records:
                raise ValueError(f"label_counts must sum to records ({self.records}), got {sum(self.label_counts.values())}")
        if self.public_count is not None and self.label_field:
            raise ValueError("public_count is for unlabelled corpora; with labels, per-label counts come from a DP histogram")
        return self

    def decoding_config(self) -> DecodingConfig:
        return decoding_config(**{k: getattr(self, k) for k in MECHANISM_FIELDS})

    @property
    def fixed_config(self) -> bool:
        """True when the user fixed clip/noise: the cost is computed and checked, not solved."""
        return (self.clip is not None and self.mechanism != "gaussian") or (self.noise_multiplier is not None and self.mechanism == "gaussian")


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


def _randomness(seed: int | None) -> tuple[bytes, np.random.Generator]:
    """The partition secret and the mechanism's generator. A seed makes both reproducible; the
    guarantee then assumes the seed is kept as secret as the data."""
    if seed is None:
        return secrets.token_bytes(32), np.random.default_rng(secrets.randbits(128))
    return hashlib.sha256(f"privtext-partition-{seed}".encode()).digest(), np.random.default_rng(seed)


def prepare(spec: GenerateSpec, corpus: Corpus, rng: np.random.Generator) -> tuple[Plan, list[str] | None, dict]:
    """The public counts (declared, or released by DP) and the plan, checked against epsilon."""
    cfg = spec.decoding_config()
    notes: dict = {}
    labels = None
    strata = None
    if spec.label_field:
        labels = sorted(spec.label_counts) if spec.label_counts else sorted(set(spec.labels or ()))
        true = Counter()
        for recs in corpus.units().values():
            if recs[0].label in labels:
                true[recs[0].label] += 1
        released = dp_histogram({l: true.get(l, 0) for l in labels}, spec.count_noise, rng)
        records = spec.label_counts or _split_records(spec.records, released)
        strata = {l: (max(released[l], 1), records[l]) for l in labels}
        units = sum(n for n, _ in strata.values())
        source, noise = "dp-count", spec.count_noise
        notes["label_histogram"] = released
    elif spec.public_count is not None:
        units, source, noise = spec.public_count, "declared-public", None
        notes["units_declared_public"] = "the caller declared the unit count public; it was used as given"
    else:
        units, source, noise = max(dp_count(len(corpus.units()), spec.count_noise, rng), 1), "dp-count", spec.count_noise
    ledger = Ledger(spec.epsilon, spec.delta)
    p = plan(
        units=units, records=spec.records, max_tokens=spec.max_tokens, delta=spec.delta,
        epsilon=None if spec.fixed_config else spec.epsilon, config=cfg,
        units_source=source, count_noise=noise, ledger=ledger, strata=strata,
    )
    return p, labels, notes


def run_generate(spec: GenerateSpec, engine: Engine | None = None, progress: Callable[[str], None] | None = None, show_bar: bool = False) -> dict:
    """Run a generation job end to end; returns the report (also written to spec.report)."""
    started = time.time()
    say = progress or (lambda _m: None)
    corpus = read_corpus(spec.input, spec.text_field, spec.label_field, spec.unit_field)
    # Exact counts are for the data owner's terminal only: they are not DP, so no report carries them.
    say(f"read {len(corpus.records):,} records in {len(corpus.units()):,} units; {len(corpus.bad):,} bad rows"
        + "".join(f"\n  line {b.line}: {b.reason}" for b in corpus.bad[:10]) + ("\n  ..." if len(corpus.bad) > 10 else ""))
    template = Template.load(spec.template, spec.max_record_chars)
    secret, rng = _randomness(spec.seed)
    p, labels, notes = prepare(spec, corpus, rng)
    say(f"plan: {p.rounds} round(s) of {p.groups_per_round:,} group(s), epsilon {p.epsilon:.3f} at delta {spec.delta:g}")

    pii = None
    if spec.pii != "off":
        try:
            from ..pii import get_filter
        except ImportError:
            raise ValueError("pii: the PII filter needs presidio: pip install -e '.[pii]' (or pass --pii off)") from None
        say("loading the PII filter (presidio + spaCy)")
        pii = get_filter()
    if engine is None:
        from ..engine.loader import load_engine

        engine = load_engine(spec.engine, spec.model, progress=say)
    selector = MechanismSelector(p.config, rng)
    labels_of: dict[int, str | None] = {}

    def requests():
        for req, label in group_requests(strata_of(corpus, p, labels), p, secret, template, engine, spec.max_records_per_unit, spec.stop):
            labels_of[req.group_id] = label
            yield req

    reasons: Counter = Counter()
    pii_found: Counter = Counter()
    tokens = written = empty = pii_touched = pii_dropped = 0
    bar = _bar(spec.records, show_bar)
    spec.out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(spec.out, "w", encoding="utf-8") as out:
        for result in engine.run(requests(), selector, max_batch_rows=spec.batch_rows):
            reasons[result.finish_reason] += 1
            tokens += len(result.token_ids)
            label = labels_of.pop(result.group_id, None)
            text, findings = result.text, {}
            if pii is not None and text:  # post-processing of DP output: no budget, no guarantee by itself
                filtered = pii.filter(text, spec.pii)
                findings = {f.entity_type: f.count for f in filtered.findings}
                pii_found.update(findings)
                pii_touched += bool(findings)
                pii_dropped += filtered.action == "dropped"
                text = filtered.text or ""
            if not text:
                empty += not findings
            else:
                row = {"text": text, **({"label": label} if spec.label_field else {}), "tokens": len(result.token_ids),
                       "finish_reason": result.finish_reason, **({"pii": findings} if findings else {})}
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
                out.flush()  # a crash keeps every record already finished
                written += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(tok_s=f"{tokens / max(time.time() - t0, 1e-9):.1f}", epsilon=f"{p.epsilon:.2f}")
        os.fsync(out.fileno())
    decode_seconds = time.time() - t0
    if bar is not None:
        bar.close()

    report = {
        "epsilon": p.epsilon,
        "delta": spec.delta,
        "mechanism": p.config.mechanism,
        "partitions": p.config.partitions,
        "records": written,
        "records_planned": spec.records,
        "empty_records_dropped": empty,
        "pii": {"policy": spec.pii, "records_touched": pii_touched, "records_dropped": pii_dropped, "entities": dict(pii_found)},
        "tokens": tokens,
        "private_tokens": selector.private_tokens,
        "public_tokens": selector.public_tokens,
        "tokens_per_second": tokens / decode_seconds if decode_seconds > 0 else 0.0,
        "engine": engine.name,
        "model": Path(engine.model_path).name,
        "units": p.units,
        "units_source": p.units_source,
        "rounds": p.rounds,
        "groups": p.groups_per_round,
        "finish_reasons": dict(reasons),
        "out_of_step_groups": engine.stats.out_of_step,
        "seeded": spec.seed is not None,
        "seconds": time.time() - started,
        "notes": {
            **notes,
            "epsilon": "planned worst case (max tokens for every record), charged in full before decoding",
            **({"seed": "reproducible randomness: the guarantee assumes the seed stays as secret as the data"} if spec.seed is not None else {}),
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
