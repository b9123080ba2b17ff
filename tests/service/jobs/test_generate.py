"""`privtext generate` end to end on a small real corpus and the real default model: records,
report, and the epsilon reported equals the planner's."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

pytest.importorskip("torch")

from mechanisms import DecodingConfig, Ledger, plan  # noqa: E402
from service.data.packaged import export_jsonl  # noqa: E402
from service.jobs import dataset_job  # noqa: E402
from service.jobs.local_run import job_request, run_generate  # noqa: E402
from service.jobs.local_store import TENANT, corpus_dataset, local_store  # noqa: E402
from service.jobs.request import GenerateSpec  # noqa: E402
from service.generation.corpus import read_corpus  # noqa: E402

PRIVTEXT = shutil.which("privtext")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "sms.jsonl"
    export_jsonl("sms-spam", path, limit=120, seed=1)
    return path


@pytest.fixture(scope="module")
def engine():
    from service.engine.loader import load_engine

    return load_engine("transformers")


def test_generate_cli_end_to_end(corpus, tmp_path):
    out, rep = tmp_path / "synth.jsonl", tmp_path / "report.json"
    r = subprocess.run(
        [PRIVTEXT, "generate", "--input", str(corpus), "--label-field", "label", "--label-counts", "spam=2,ham=2",
         "--records", "4", "--max-tokens", "6", "--epsilon", "3", "--delta", "1e-3", "--partitions", "4",
         "--seed", "3", "--out", str(out), "--report", str(rep)],
        capture_output=True, text=True, timeout=600,
    )
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    report = json.loads(rep.read_text())
    assert sorted(x["label"] for x in records) == ["ham", "ham", "spam", "spam"][: len(records)]
    assert all(x["text"] and 1 <= x["tokens"] <= 6 for x in records)
    for key in ("epsilon", "delta", "mechanism", "partitions", "records", "tokens", "private_tokens", "public_tokens",
                "tokens_per_second", "engine", "model", "units", "rounds", "groups", "plan"):
        assert key in report, key
    assert report["epsilon"] == report["plan"]["epsilon"] <= 3.0
    assert report["epsilon"] == pytest.approx(3.0, rel=1e-6)
    assert report["records"] + report["empty_records_dropped"] + report["pii"]["records_dropped"] == 4
    # every record passed the PII filter (redact by default): nothing detectable is left
    from service.pii import get_filter

    assert report["pii"]["policy"] == "redact"
    assert all(not get_filter().filter(x["text"], "report").findings for x in records)
    # no gate: every selected token is paid for, each end-of-sequence included (not in the record)
    assert report["private_tokens"] == report["tokens"] + report["finish_reasons"].get("eos", 0)
    assert report["units_source"] == "dp-count" and set(report["notes"]["label_histogram"]) == {"spam", "ham"}
    # the report is publishable: no exact corpus counts, no record text
    text = rep.read_text()
    assert "records_per_label" not in text
    assert all(row["text"] not in text for row in map(json.loads, corpus.read_text().splitlines()[:50]))
    # the summary line on stdout
    assert json.loads(r.stdout.strip().splitlines()[-1])["records"] == report["records"]


def test_epsilon_reported_is_the_planners(corpus, tmp_path, engine):
    spec = GenerateSpec(input=corpus, records=3, max_tokens=5, epsilon=2.0, delta=1e-3, partitions=4,
                        public_count=120, seed=5, out=tmp_path / "o.jsonl", report=tmp_path / "r.json")
    report = run_generate(spec, engine=engine)
    expected = plan(units=120, records=3, max_tokens=5, epsilon=2.0, delta=1e-3, config=DecodingConfig(partitions=4), ledger=Ledger(2.0, 1e-3))
    assert report["epsilon"] == expected.epsilon
    assert report["plan"]["config"]["clip"] == expected.config.clip
    assert report["units_source"] == "declared-public" and report["groups"] == 30 and report["rounds"] == 1


def test_same_seed_same_records(corpus, tmp_path, engine):
    kw = dict(input=corpus, records=3, max_tokens=5, epsilon=2.0, delta=1e-3, partitions=4, public_count=120, seed=9)
    run_generate(GenerateSpec(**kw, out=tmp_path / "a.jsonl"), engine=engine)
    run_generate(GenerateSpec(**kw, out=tmp_path / "b.jsonl"), engine=engine)
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()


def test_fixed_clip_over_budget_is_refused_before_decoding(corpus, tmp_path, engine):
    from mechanisms import BudgetExceeded

    spec = GenerateSpec(input=corpus, records=3, max_tokens=64, epsilon=1.0, delta=1e-3, clip=5.0, public_count=120,
                        out=tmp_path / "x.jsonl")
    with pytest.raises(BudgetExceeded, match="What fits"):
        run_generate(spec, engine=engine)
    assert not (tmp_path / "x.jsonl").exists()  # nothing decoded, nothing written


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"label_field": "label"}, "labels declared"),
        ({"label_counts": {"spam": 3}}, "need label_field"),
        ({"label_field": "label", "labels": ("a",), "label_counts": {"a": 3}}, "not both"),
        ({"label_field": "label", "label_counts": {"spam": 1, "ham": 1}}, "must sum to records"),
        ({"records": 0}, "greater than or equal to 1"),
        ({"delta": 1.5}, "less than 1"),
    ],
)
def test_spec_validation(corpus, tmp_path, kwargs, message):
    args = dict(input=corpus, records=3, max_tokens=5, epsilon=2.0, delta=1e-3, out=tmp_path / "o.jsonl") | kwargs
    with pytest.raises(ValueError, match=message):
        GenerateSpec(**args)


def test_label_records_split_by_dp_histogram(corpus, tmp_path, engine):
    """Records per label come from the DP label histogram, released (and charged) once per corpus
    on its own ledger entry before the plan's."""
    spec = GenerateSpec(input=corpus, label_field="label", labels=("spam", "ham"), records=20, max_tokens=4,
                        epsilon=2.0, delta=1e-3, out=tmp_path / "o.jsonl")
    with local_store(keep=False) as (store, _):
        info = corpus_dataset(store, read_corpus(corpus, label_field="label"), "d" * 64, epsilon_cap=None, delta=1e-3,
                              public_count=None, keep=False)
        prep = dataset_job.prepare(store, TENANT, info.id, job_request(spec), "test", spec.count_noise, b"s" * 32, engine,
                                   spec.batch_rows)
        first, second = store.ledger_rows(TENANT, info.id)
    p = prep.plan
    assert prep.labels == ["ham", "spam"]
    assert sum(d["records"] for d in p.strata.values()) == 20
    assert p.strata["ham"]["records"] > p.strata["spam"]["records"]  # ham dominates SMS spam
    assert first.events[0].note.startswith("DP label histogram") and tuple(second.events) == tuple(p.events)
    assert p.epsilon <= 2.0
