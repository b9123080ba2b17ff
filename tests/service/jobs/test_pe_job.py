"""`privtext generate --method pe` (Private Evolution) end to end on a small real corpus, the
real default model and the real MiniLM: records, a report whose epsilon is the plan's, the
public fallback when noise wipes out every count, and settings refused before any work."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections import Counter

import numpy as np
import pytest

pytest.importorskip("torch")

from mechanisms import BudgetExceeded, plan_pe  # noqa: E402
from mechanisms.pe import PeBudgetExceeded  # noqa: E402
from service.data.packaged import export_jsonl  # noqa: E402
from service.generation.corpus import read_corpus  # noqa: E402
from service.jobs import dataset_job  # noqa: E402
from service.jobs.generate import split_records  # noqa: E402
from service.jobs.local_run import job_request, run_generate  # noqa: E402
from service.jobs.local_store import TENANT, corpus_dataset, local_store  # noqa: E402
from service.jobs.request import GenerateSpec  # noqa: E402

PRIVTEXT = shutil.which("privtext")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "sms.jsonl"
    export_jsonl("sms-spam", path, limit=60)  # what `privtext data export sms-spam --limit 60` writes
    return path


@pytest.fixture(scope="module")
def engine():
    from service.engine.loader import load_engine

    return load_engine("transformers")


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch):
    """Each test's own local ledger (PRIVTEXT_DATA_DIR), never the user's."""
    monkeypatch.setenv("PRIVTEXT_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def test_generate_pe_cli_end_to_end(corpus, tmp_path, data_dir):
    out, rep = tmp_path / "synth.jsonl", tmp_path / "report.json"
    r = subprocess.run(
        [PRIVTEXT, "generate", "--method", "pe", "--engine", "transformers", "--input", str(corpus), "--label-field", "label",
         "--label-counts", "spam=2,ham=2", "--records", "4", "--iterations", "2", "--pe-population", "8", "--max-tokens", "12",
         "--epsilon", "4", "--delta", "1e-2", "--template", "sms-spam", "--out", str(out), "--report", str(rep)],
        capture_output=True, text=True, timeout=900, env={**os.environ, "PRIVTEXT_DATA_DIR": str(data_dir)},
    )
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    report = json.loads(rep.read_text())
    assert report["records"] + report["empty_records_dropped"] + report["pii"]["records_dropped"] == 4
    assert len(records) == report["records"] >= 3
    assert all(x["text"] and 1 <= x["tokens"] <= 12 for x in records)
    assert Counter(x["label"] for x in records) <= Counter(spam=2, ham=2)  # the declared counts (some may be dropped)
    assert report["method"] == "pe" and report["iterations"] == 2 == report["histograms"] and report["threshold"] == 0.0
    assert report["candidates_per_iteration"] == 16 and report["candidates_generated"] == 32
    # the epsilon reported is the plan's: 2 Gaussian histograms, charged in full; the DP label
    # histogram was released once for this corpus, on its own ledger entry before it
    expected = plan_pe(units=report["units"], records=4, iterations=2, threshold=0.0, delta=1e-2, epsilon=4.0, units_source="dp-count")
    assert report["epsilon"] == report["plan"]["epsilon"] == expected.epsilon == pytest.approx(4.0, rel=1e-6)
    assert report["sigma"] == expected.sigma
    assert [e["note"] for e in report["plan"]["events"]] == [e.note for e in expected.events]
    assert report["corpus_ledger"]["entries"] == 2 and report["corpus_ledger"]["epsilon_spent"] > report["epsilon"]
    # labels declared public: records per label as declared, the units from the DP label histogram
    assert report["records_per_label"] == {"ham": 2, "spam": 2} and set(report["notes"]["label_histogram"]) == {"spam", "ham"}
    # the report is publishable: no record of the corpus in it
    text = rep.read_text()
    assert all(row["text"] not in text for row in map(json.loads, corpus.read_text().splitlines()))
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["method"] == "pe" and summary["records"] == report["records"] and summary["epsilon"] == report["epsilon"]
    # `privtext plan --method pe` gives the same sigma and epsilon for the same public inputs
    p = subprocess.run(
        [PRIVTEXT, "plan", "--method", "pe", "--units", str(report["units"]), "--records", "4", "--max-tokens", "12",
         "--iterations", "2", "--threshold", "0", "--epsilon", "4", "--delta", "1e-2", "--json"],
        capture_output=True, text=True, timeout=120,
    )
    assert p.returncode == 0, p.stderr
    planned = json.loads(p.stdout)
    assert planned["sigma"] == report["sigma"] and planned["epsilon"] == report["epsilon"] and planned["iterations"] == 2


def test_epsilon_is_the_plans_and_noise_that_wipes_every_count_falls_back(corpus, tmp_path, engine):
    """Threshold H far above any count: every released count is 0, at every step. The job still
    writes its records (the previous population's order, a public choice) and says so."""
    spec = GenerateSpec(input=corpus, method="pe", records=3, max_tokens=6, epsilon=2.0, delta=1e-2, public_count=60,
                        iterations=2, pe_population=4, pe_threshold=1e6, pii="off", local_ledger=False,
                        out=tmp_path / "o.jsonl", report=tmp_path / "r.json")
    report = run_generate(spec, engine=engine)
    expected = plan_pe(units=60, records=3, iterations=2, threshold=1e6, delta=1e-2, epsilon=2.0)
    assert report["epsilon"] == expected.epsilon and report["sigma"] == expected.sigma
    assert report["units_source"] == "declared-public" and report["histograms"] == 2
    assert report["fallbacks"] == [{"iteration": 1, "label": None, "step": "survivors"},
                                   {"iteration": 2, "label": None, "step": "final ranking"}]
    assert "fallback" in report["notes"]
    lines = (tmp_path / "o.jsonl").read_text().splitlines()
    assert len(lines) == report["records"] == 3 - report["empty_records_dropped"]
    assert all("label" not in json.loads(x) for x in lines)


def test_same_seed_same_records(corpus, tmp_path, engine):
    kw = dict(input=corpus, method="pe", records=2, max_tokens=4, epsilon=2.0, delta=1e-2, public_count=60, iterations=1,
              pe_population=2, pii="off", local_ledger=False, seed=7)
    a = run_generate(GenerateSpec(**kw, out=tmp_path / "a.jsonl"), engine=engine)
    b = run_generate(GenerateSpec(**kw, out=tmp_path / "b.jsonl"), engine=engine)
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()
    assert a["seeded"] and a["epsilon"] == b["epsilon"]


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        ({"noise_multiplier": 0.3}, PeBudgetExceeded, "over the budget of 2"),  # sigma fixed too low for epsilon 2
        ({"label_field": "label", "label_counts": {"spam": 6, "ham": 0}, "records": 6, "public_count": None},
         ValueError, "pe_population must be at least the records wanted of each label"),
        ({"records": 5}, ValueError, "pe_population must be at least records"),
        ({"clip": 1.0}, ValueError, "clip: private-decoding settings"),
        ({"gate_threshold": 0.3, "mechanism": "gaussian"}, ValueError, "gate_threshold, mechanism: private-decoding"),
        ({"delta": 0.05}, ValueError, "delta must be in"),  # over 1/units (60 units)
        ({"local_ledger": True, "epsilon_cap": 1.0}, BudgetExceeded, "over its cap 1"),  # the corpus's cap, as a server dataset's
    ],
)
def test_bad_or_over_budget_settings_are_refused_before_any_work(corpus, tmp_path, engine, kwargs, error, message):
    before = engine.stats.groups_finished
    args = dict(input=corpus, method="pe", records=4, max_tokens=6, epsilon=2.0, delta=1e-2, public_count=60, iterations=2,
                pe_population=4, pii="off", local_ledger=False, out=tmp_path / "x.jsonl") | kwargs
    with pytest.raises(error, match=message):
        run_generate(GenerateSpec(**args), engine=engine)
    assert not (tmp_path / "x.jsonl").exists()  # nothing written
    assert engine.stats.groups_finished == before  # nothing decoded


def test_records_per_label_are_public_never_counted_from_the_data(corpus, tmp_path, engine):
    """Mistake: class counts from the raw data. Declared counts are used as given, whatever the
    corpus holds; undeclared ones are split by the DP label histogram (charged)."""
    data = read_corpus(corpus, label_field="label")

    def prepared(spec):
        with local_store(keep=False) as (store, _):
            info = corpus_dataset(store, data, "d" * 64, epsilon_cap=None, delta=spec.delta, public_count=None, keep=False)
            prep = dataset_job.prepare(store, TENANT, info.id, job_request(spec), "test", spec.count_noise, b"s" * 32, engine,
                                       spec.batch_rows)
            rows = store.ledger_rows(TENANT, info.id)
            released = store.released_count(TENANT, info.id, dataset_job.count_kind(info, spec.wanted_labels()))
        return prep, rows, released.value

    declared = GenerateSpec(input=corpus, method="pe", label_field="label", label_counts={"spam": 3, "ham": 1}, records=4,
                            max_tokens=4, epsilon=2.0, delta=1e-3, out=tmp_path / "o.jsonl")
    prep, _rows, _released = prepared(declared)
    assert prep.per_label == {"ham": 1, "spam": 3}  # the corpus has 7 spam of 60: not what decides
    split = GenerateSpec(input=corpus, method="pe", label_field="label", labels=("spam", "ham"), records=8, pe_population=8,
                         max_tokens=4, epsilon=2.0, delta=1e-3, out=tmp_path / "o.jsonl")
    prep, rows, released = prepared(split)
    p = prep.plan
    assert prep.per_label == split_records(8, released)
    assert "label histogram" in rows[0].events[0].note and p.units == sum(max(v, 1) for v in released.values())
