"""The grid of `privtext eval`: datasets x epsilons x methods, each cell one real generation job.

The methods are the private-decoding mechanisms (em, amin, gaussian: mechanisms.registry) and
Private Evolution ("pe": public candidates chosen by T DP nearest-neighbour histograms), both run
by `run_generate` exactly as `privtext generate` runs them. Every cell records its wall time,
the engine's forward passes and the tokens it fed and generated, so methods compare at a
measured compute, not only at equal epsilon. Beside the cells, each finite epsilon gets the
DP-trained row (dptrain.py): the classifiers trained with DP on the real train part itself.

Each dataset is split once (seeded) into a private train part and a held-out test part. Every
cell generates label-conditioned records from the train part through `run_generate`, the same
path as `privtext generate`, PII filter included; epsilon = infinity runs the same job with the
non-private selector (baseline.py). All cells of a dataset share the seed, hence the released
label histogram, the partition of rows into groups and the prompts: decoding cells differ only in
the mechanism and its calibration, at equal N, records and max tokens (equal compute; pe's
compute is its own, and measured).

Every finished cell is written to OUT/<dataset>/<cell>.json before the next starts, and a rerun
with the same settings skips finished cells, so an interrupted run loses at most one cell.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from mechanisms.registry import names as mechanism_names

from ..data.packaged import load, split
from ..engine.transformers_backend import QUANTIZE_CHOICES, QUANTIZE_ENV
from ..generation.prompts import PACKAGED, Template
from . import scores


@dataclass(frozen=True)
class DatasetSetup:
    """How a corpus is generated: its template, tokens per record, its labels and how records split by label.

    The labels are declared here, like a user's `--labels`: read off the private train part, a
    label held by one row would decide the records requested and the histogram's bins."""

    template: str
    max_tokens: int
    label_split: Literal["balanced", "proportional"]  # public choice: equal counts, or the DP histogram
    labels: tuple[str, ...]


# TREC's ABBR class holds ~1.5% of questions: a balanced split would need several rounds of its
# few groups (and every round is paid by all labels), so TREC follows the DP label histogram.
SETUPS = {
    "sms-spam": DatasetSetup("sms-spam", 32, "balanced", ("ham", "spam")),
    "trec": DatasetSetup("trec", 24, "proportional", ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")),
    "rotten-tomatoes": DatasetSetup("rotten-tomatoes", 40, "balanced", ("fresh", "rotten")),
}

PE = "pe"  # Private Evolution: a generation method beside the mechanisms, run as a cell like them


def methods() -> tuple[str, ...]:
    """What a cell can run: every registered mechanism, then pe."""
    return (*mechanism_names(), PE)


# EvalSettings fields added after eval folders had been written (a folder's settings.json
# without one ran at its default). Not `seed`: a --seeds folder leaves it out on purpose.
ADDED_LATER = ("top_k_plus", "pe_iterations", "pe_population", "quantize")
GRID = ("datasets", "epsilons", "mechanisms")  # the EvalSettings fields that only choose which cells run


class EvalSettings(BaseModel):
    """Every knob of one evaluation run; all public."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    datasets: tuple[str, ...] = tuple(SETUPS)
    epsilons: tuple[float, ...] = (1.0, 3.0, 10.0, math.inf)
    mechanisms: tuple[str, ...] = Field(default_factory=methods)  # default: every registered mechanism, and pe
    records: int = Field(default=100, ge=4, le=100_000)  # SMS: 50 spam records fit one round of its ~58 groups
    max_tokens: int | None = Field(default=None, ge=1, le=512)  # None: the dataset's own (SETUPS)
    partitions: int = Field(default=8, ge=1, le=1024)
    temperature: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    top_k: int = Field(default=64, ge=1)
    top_k_plus: bool = True  # em: top-k+ (True) or the public top-k (False); see DecodingConfig
    pe_iterations: int = Field(default=3, ge=1, le=100)  # pe: T, one DP histogram each
    pe_population: int | None = Field(default=None, ge=1, le=100_000)  # pe: candidates per label; None: the fewest the job accepts
    template: str | None = None  # None: each dataset's own (SETUPS); else a packaged name or a TOML path, for every dataset
    train_rows: int | None = Field(default=None, ge=16)  # None: the whole train part
    test_rows: int = Field(default=500, ge=10)
    delta: float = Field(default=1e-5, gt=0, lt=1)
    seed: int = 0
    quantize: str = "none"  # the engine's precision (service/engine/transformers_backend.py QUANTIZE_CHOICES)

    @field_validator("quantize")
    @classmethod
    def _quantize(cls, v):
        if v not in QUANTIZE_CHOICES:
            raise ValueError(f"quantize must be one of {', '.join(QUANTIZE_CHOICES)}, got {v!r}")
        return v

    @field_validator("datasets")
    @classmethod
    def _datasets(cls, v):
        bad = [d for d in v if d not in SETUPS]
        if bad or not v:
            raise ValueError(f"datasets must be a non-empty subset of {sorted(SETUPS)}, got {list(v)}")
        return v

    @field_validator("mechanisms")
    @classmethod
    def _mechanisms(cls, v):
        if not v or any(m not in methods() for m in v):
            raise ValueError(f"mechanisms must be a non-empty subset of {list(methods())}, got {list(v)}")
        return v

    @field_validator("template")
    @classmethod
    def _template(cls, v):
        if v is not None:
            try:
                Template.load(v)  # fail at the flags, not after the first cells have run
            except OSError as e:
                raise ValueError(f"template {v!r} is neither a packaged template {list(PACKAGED)} nor a readable file ({e.strerror})") from None
        return v

    @field_validator("epsilons")
    @classmethod
    def _epsilons(cls, v):
        if not v or any(not (e > 0) for e in v):
            raise ValueError(f"epsilons must be > 0 (inf for no privacy), got {list(v)}")
        return tuple(sorted(set(v)))

    def cells(self) -> list[tuple[float, str]]:
        """(epsilon, mechanism) of every cell; epsilon = inf once, mechanism 'none'."""
        out: list[tuple[float, str]] = []
        for e in self.epsilons:
            out += [(e, "none")] if math.isinf(e) else [(e, m) for m in self.mechanisms]
        return out


FAST = dict(datasets=("sms-spam",), epsilons=(3.0, math.inf), mechanisms=("em", PE), records=16, max_tokens=12, test_rows=200, train_rows=600)


def template_for(name: str, s: EvalSettings) -> str:
    """The template a dataset's cells are generated with: --template for all, else the dataset's own."""
    return s.template or SETUPS[name].template


def cell_name(epsilon: float, mechanism: str) -> str:
    return "none-inf" if math.isinf(epsilon) else f"{mechanism}-eps{epsilon:g}"


@dataclass
class Split:
    train: list[dict]
    test: list[dict]
    labels: list[str]


def dataset_split(name: str, s: EvalSettings) -> Split:
    """The seeded private train part (optionally capped), the held-out test part (capped) and the
    dataset's declared labels (never the train part's)."""
    train, test = split(load(name), 0.2, s.seed)
    rng = np.random.default_rng(s.seed + 1)
    if s.train_rows is not None and s.train_rows < len(train):
        train = [train[i] for i in sorted(rng.choice(len(train), s.train_rows, replace=False))]
    if s.test_rows < len(test):
        test = [test[i] for i in sorted(rng.choice(len(test), s.test_rows, replace=False))]
    return Split(train, test, list(SETUPS[name].labels))


def balanced_counts(records: int, labels: list[str]) -> dict[str, int]:
    """records split as evenly as possible over labels (the first labels get the remainder)."""
    base, extra = divmod(records, len(labels))
    return {lab: base + (i < extra) for i, lab in enumerate(labels)}


def real_sample(train: list[dict], counts: dict[str, int], seed: int) -> list[dict]:
    """The ceiling's training set: real train rows with the synthetic set's label counts."""
    rng = np.random.default_rng(seed + 2)
    out = []
    for lab, n in sorted(counts.items()):
        pool = [r for r in train if r["label"] == lab]
        out += [pool[i] for i in rng.permutation(len(pool))[:n]]
    return out


def pe_population(name: str, s: EvalSettings) -> int:
    """pe's candidates per label: the setting, else the fewest the job accepts (the records wanted
    of the largest label when they are declared; records when the DP label histogram splits them)."""
    if s.pe_population is not None:
        return s.pe_population
    return max(balanced_counts(s.records, list(SETUPS[name].labels)).values()) if SETUPS[name].label_split == "balanced" else s.records


def write_jsonl(rows: list[dict], path: Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps({"text": r["text"], "label": r["label"]}, ensure_ascii=False) + "\n")


def generate_cell(name: str, data: Split, s: EvalSettings, epsilon: float, mechanism: str, folder: Path, engine, say: Callable[[str], None], bar: bool,
                  selector_for=None) -> dict:
    """One generation job; returns its run_generate report (records in folder/<cell>.jsonl).

    selector_for: for a private cell, a selector wrapping the mechanism (candidates.py's probe)."""
    from ..jobs.local_run import run_generate
    from ..jobs.request import GenerateSpec
    from .baseline import NonPrivateSelector

    setup = SETUPS[name]
    no_privacy = math.isinf(epsilon)
    labelling = {"label_counts": balanced_counts(s.records, data.labels)} if setup.label_split == "balanced" else {"labels": tuple(data.labels)}
    spec = GenerateSpec(
        # local_ledger off: each cell measures one release on the eval's own split of a public corpus
        input=folder / "train.jsonl", label_field="label", local_ledger=False, **labelling,
        records=s.records, max_tokens=s.max_tokens or setup.max_tokens,
        # epsilon = inf: any finite epsilon gives the same layout (groups and rounds do not
        # depend on it); the non-private selector then ignores the calibration.
        epsilon=10.0 if no_privacy else epsilon, delta=s.delta,
        mechanism="em" if no_privacy or mechanism == PE else mechanism, partitions=s.partitions, temperature=s.temperature, top_k=s.top_k,
        top_k_plus=s.top_k_plus, template=template_for(name, s), seed=s.seed, pii="redact", out=folder / f"{cell_name(epsilon, mechanism)}.jsonl",
    )
    if mechanism == PE:  # the same request as Private Evolution: T and P set, no mechanism (em is the field's default)
        spec = GenerateSpec(**{**spec.model_dump(), "method": "pe", "iterations": s.pe_iterations, "pe_population": pe_population(name, s)})
    if no_privacy:
        selector_for = lambda p, randomness: NonPrivateSelector(p.config, randomness)  # noqa: E731
    return run_generate(spec, engine=engine, progress=say, show_bar=bar, selector_for=selector_for)


@dataclass(frozen=True)
class Compute:
    """What one cell cost the engine (public counts): forward passes, the tokens fed to it
    (prompts and decode rows) and the tokens generated (every candidate for pe; the records' for
    decoding, whose every group emits one token per step however many rows it holds)."""

    forwards: int
    tokens_fed: int
    tokens_generated: int

    @classmethod
    def of(cls, before, after, report: dict) -> Compute:
        """From copies of the engine's stats before and after the cell (engine_counters), and its
        run_generate report."""
        return cls(after["forwards"] - before["forwards"], after["tokens_fed"] - before["tokens_fed"],
                   int(report.get("tokens_generated", report["tokens"])))


def engine_counters(engine) -> dict[str, int]:
    """The engine's forward passes and tokens fed so far, copied (a backend may update its stats
    in place). EngineStats names them forwards, prefill_tokens and decode_row_tokens; stats
    without `forwards` count decode steps and prompt_tokens/decode_tokens instead."""
    st = engine.stats
    if hasattr(st, "forwards"):
        return {"forwards": int(st.forwards), "tokens_fed": int(st.prefill_tokens + st.decode_row_tokens)}
    return {"forwards": int(st.steps), "tokens_fed": int(st.prompt_tokens + st.decode_tokens)}


def read_records(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def measure(texts: list[str], labels: list[str], x: np.ndarray, test: list[dict], test_x: np.ndarray) -> dict:
    """The scores of one training set (synthetic or real) against the real test part."""
    test_texts, test_labels = [r["text"] for r in test], [r["label"] for r in test]
    out: dict = {"n": len(texts), "label_counts": dict(sorted((lab, labels.count(lab)) for lab in set(labels)))}
    for name, predict in (("tfidf", lambda: scores.tfidf_predict(texts, labels, test_texts)),
                          ("minilm", lambda: scores.embedding_predict(x, labels, test_x))):
        out[name] = scores.accuracy(predict(), test_labels) if texts else None
    out |= {
        "frechet": scores.frechet_distance(x, test_x) if len(texts) >= 2 else None,
        "distinct_1": scores.distinct_n(texts, 1),
        "distinct_2": scores.distinct_n(texts, 2),
        "words": scores.length_stats(texts),
    }
    return out


def claim_folder(out: Path, wanted: dict, grid: tuple[str, ...] = GRID) -> None:
    """Record `wanted` in out/settings.json, refusing a folder that holds other settings.

    The grid fields may grow or shrink between runs (each cell is generated on its own);
    everything else decides what a cell holds, so it must match. A setting of ADDED_LATER that
    the folder's file lacks did not exist when that run was made, so it ran at the default."""
    out.mkdir(parents=True, exist_ok=True)
    settings_file = out / "settings.json"
    if settings_file.exists():
        held = json.loads(settings_file.read_text())
        defaults = json.loads(EvalSettings().model_dump_json())
        held = {k: defaults[k] for k in ADDED_LATER if k in wanted and k not in held} | held
        differ = sorted(k for k in wanted.keys() | held.keys() if k not in grid and held.get(k) != wanted.get(k))
        if differ:
            raise ValueError(f"out: {out} holds an evaluation with other settings ({', '.join(differ)} differ, see {settings_file}); "
                             "use another --out")
    settings_file.write_text(json.dumps(wanted, indent=1) + "\n")


def run_eval(s: EvalSettings, out: Path, engine=None, say: Callable[[str], None] = lambda _m: None, bar: bool = False,
             generate: bool = True) -> dict:
    """Run (or resume) the grid; returns the results dict also written to out/results.json.

    generate=False scores only the cells already finished (a report of a run cut short)."""
    from .embed import embed

    env = os.environ.get(QUANTIZE_ENV)
    if engine is None and env and env != s.quantize:
        raise ValueError(f"quantize: {QUANTIZE_ENV}={env} is set but the settings say {s.quantize!r}; an eval takes its precision "
                         "from --quantize, which its results record")
    wanted = json.loads(s.model_dump_json())
    claim_folder(out, wanted)

    results: dict = {"settings": wanted, "datasets": {}}
    for name in s.datasets:
        folder = out / name
        folder.mkdir(exist_ok=True)
        data = dataset_split(name, s)
        train_file = folder / "train.jsonl"
        if not train_file.exists():
            write_jsonl(data.train, train_file)
        elif [(r["text"], r["label"]) for r in read_records(train_file)] != [(r["text"], r["label"]) for r in data.train]:
            # Same settings, other rows: the packaged data or its loader changed since the
            # finished cells were made, and their scores are not comparable with new ones.
            raise ValueError(f"out: {train_file} is not the train part {name} splits into now (the packaged data or "
                             "its loader changed since that run); use another --out")
        say(f"{name}: {len(data.train):,} private train rows, {len(data.test):,} held-out test rows, labels {data.labels}")
        test_x = embed([r["text"] for r in data.test])
        test_labels = [r["label"] for r in data.test]
        cells = {}
        for epsilon, mechanism in s.cells():
            cell = cell_name(epsilon, mechanism)
            done = folder / f"{cell}.json"
            if done.exists():
                cells[cell] = json.loads(done.read_text())
                say(f"{name} {cell}: done earlier, kept")
                continue
            if not generate:
                say(f"{name} {cell}: not run, left out of the report")
                continue
            if engine is None:
                from ..engine.loader import load_engine

                engine = load_engine("transformers", progress=say, quantize=s.quantize)
            if getattr(engine, "quantize", "none") != s.quantize:
                raise ValueError(f"quantize: the engine given runs {getattr(engine, 'quantize', 'none')!r}, the settings say {s.quantize!r}")
            say(f"{name} {cell}: generating {s.records} records" + (" (no privacy: the layout is planned at epsilon 10, "
                "the selection is the non-private average)" if math.isinf(epsilon) else ""))
            t0 = time.time()
            before = engine_counters(engine)
            report = generate_cell(name, data, s, epsilon, mechanism, folder, engine, say, bar)
            compute = Compute.of(before, engine_counters(engine), report)
            generate_seconds = time.time() - t0
            synth = read_records(folder / f"{cell}.jsonl")
            texts, labels = [r["text"] for r in synth], [r["label"] for r in synth]
            result = {
                "epsilon": "inf" if math.isinf(epsilon) else epsilon,
                "mechanism": mechanism,
                **measure(texts, labels, embed(texts) if texts else np.zeros((0, test_x.shape[1])), data.test, test_x),
                "tokens": report["tokens"],
                "pii_touched_fraction": report["pii"]["records_touched"] / max(report["records"] + report["pii"]["records_dropped"], 1),
                "planned_epsilon": None if math.isinf(epsilon) else report["epsilon"],
                "rounds": report.get("rounds"),  # decoding only; pe runs pe_iterations histograms
                "template": template_for(name, s),
                "generate_seconds": generate_seconds,  # the generation job alone (run_generate), wall time
                **dataclasses.asdict(compute),
                "seconds": time.time() - t0,  # generation and scoring
            }
            tmp = done.with_suffix(".tmp")
            tmp.write_text(json.dumps(result, indent=1) + "\n")
            tmp.replace(done)  # a cell is done only when its scores are on disk
            cells[cell] = result
            say(f"{name} {cell}: {result['n']} records, balanced accuracy tfidf {_fmt(result['tfidf'], 'balanced_accuracy')}, "
                f"minilm {_fmt(result['minilm'], 'balanced_accuracy')}, "
                f"frechet {result['frechet'] or 0:.3f} ({result['seconds']:.0f} s)")
        # The ceiling: the same classifiers on real train rows, as many per label as the
        # private-free cell produced (else as the request asked).
        ref = cells.get("none-inf") or next(iter(cells.values()), None)
        real = real_sample(data.train, ref["label_counts"] if ref else balanced_counts(s.records, data.labels), s.seed)
        real_texts, real_labels = [r["text"] for r in real], [r["label"] for r in real]
        results["datasets"][name] = {
            "train_rows": len(data.train),
            "test_rows": len(data.test),
            "labels": data.labels,
            "majority": scores.accuracy(scores.majority_predictions([r["label"] for r in data.train], len(test_labels)), test_labels),
            "real": measure(real_texts, real_labels, embed(real_texts), data.test, test_x),
            "cells": cells,
            "dp_trained": dp_trained_rows(name, data, s, folder, test_x, say, generate),
        }
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results


def dp_trained_name(epsilon: float) -> str:
    return f"dp-trained-eps{epsilon:g}"


def dp_trained_rows(name: str, data: Split, s: EvalSettings, folder: Path, test_x: np.ndarray, say: Callable[[str], None],
                    compute: bool = True) -> dict:
    """The DP-trained row at each finite epsilon (dptrain.py): the classifiers trained with DP on
    the whole private train part, kept in folder/dp-trained-eps<e>.json like a cell. compute=False
    (a report of a run cut short) only reads the rows already there."""
    from . import dptrain
    from .embed import embed

    rows: dict = {}
    train_x = None
    texts, labels = [r["text"] for r in data.train], [r["label"] for r in data.train]
    test_texts, test_labels = [r["text"] for r in data.test], [r["label"] for r in data.test]
    for epsilon in (e for e in s.epsilons if not math.isinf(e)):
        key = dp_trained_name(epsilon)
        done = folder / f"{key}.json"
        if done.exists():
            rows[key] = json.loads(done.read_text())
            continue
        if not compute:
            continue
        t0 = time.time()
        if train_x is None:
            train_x = embed(texts)
        seed = s.seed * 1000 + int(round(epsilon * 1000))  # one stream per (seed, epsilon)
        row = {
            "epsilon": epsilon,
            "n": len(texts),
            "tfidf": scores.accuracy(dptrain.dp_predict(dptrain.hashed_features(texts), labels, dptrain.hashed_features(test_texts),
                                                        epsilon, seed), test_labels),
            "minilm": scores.accuracy(dptrain.dp_predict(train_x, labels, test_x, epsilon, seed + 1), test_labels),
            "features": {"tfidf": f"word 1-2-grams hashed into {dptrain.HASH_FEATURES} bins, sublinear tf, L2 norm (no IDF: no fit "
                                  "to private rows)", "minilm": "MiniLM embeddings (unit norm)"},
            "data_norm": dptrain.DATA_NORM,
            "classifier": "diffprivlib LogisticRegression (objective perturbation, pure epsilon-DP, one-vs-rest)",
        }
        row["seconds"] = time.time() - t0
        tmp = done.with_suffix(".tmp")
        tmp.write_text(json.dumps(row, indent=1) + "\n")
        tmp.replace(done)
        rows[key] = row
        say(f"{name} {key}: DP-trained on {len(texts):,} real rows, balanced accuracy tfidf {_fmt(row['tfidf'], 'balanced_accuracy')}, "
            f"minilm {_fmt(row['minilm'], 'balanced_accuracy')}")
    return rows


def _fmt(scores_: dict | None, key: str) -> str:
    return "-" if scores_ is None else f"{scores_[key]:.3f}"
