"""Local runs compose: `privtext generate` charges every run on a corpus to that corpus's ledger
and refuses, before decoding, what its cap cannot pay."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from mechanisms import BudgetExceeded, PrivacyEvent  # noqa: E402
from service.jobs.local_run import run_generate  # noqa: E402
from service.jobs.request import GenerateSpec  # noqa: E402
from service.jobs.local_ledger import LocalLedger  # noqa: E402


@pytest.fixture(scope="module")
def engine():
    from service.engine.loader import load_engine

    return load_engine("transformers")


def corpus(path):
    path.write_text("".join(json.dumps({"text": f"A short message number {i} about lunch"}) + "\n" for i in range(60)))
    return path


def run(engine, tmp_path, name, **kw):
    spec = GenerateSpec(input=tmp_path / "corpus.jsonl", records=2, max_tokens=3, delta=1e-3, partitions=4, public_count=60,
                        pii="off", out=tmp_path / f"{name}.jsonl", **{"epsilon": 2.0, **kw})
    return run_generate(spec, engine=engine)


def test_runs_on_one_corpus_compose_and_the_cap_refuses_before_decoding(engine, tmp_path):
    corpus(tmp_path / "corpus.jsonl")
    first = run(engine, tmp_path, "a", epsilon_cap=5.0)
    second = run(engine, tmp_path, "b")
    assert first["corpus_ledger"]["entries"] == 1 and second["corpus_ledger"]["entries"] == 2  # declared count: no count entry
    assert 2.0 < second["corpus_ledger"]["epsilon_spent"] <= 4.0 + 1e-9  # composed (sub-additive in zCDP)
    with pytest.raises(BudgetExceeded, match="over its cap 5"):
        run(engine, tmp_path, "c", epsilon=4.5)
    assert not (tmp_path / "c.jsonl").exists()  # refused before anything was decoded
    with pytest.raises(ValueError, match="^epsilon_cap must be this corpus's cap 5"):
        run(engine, tmp_path, "d", epsilon=0.5, epsilon_cap=50.0)  # the cap cannot be raised later
    off = run(engine, tmp_path, "e", epsilon=3.0, local_ledger=False)
    assert off["corpus_ledger"] == "off"


def test_a_reservation_is_checked_again_under_the_lock(tmp_path):
    """Two runs that both planned against the same spent budget cannot both be charged."""
    book = LocalLedger(tmp_path)
    big = [PrivacyEvent("zcdp", 0.5)]
    book.reserve("d" * 64, 4.0, 1e-3, "first", big)
    with pytest.raises(ValueError, match="would spend epsilon"):
        for i in range(10):
            book.reserve("d" * 64, None, 1e-3, f"run {i}", big)
    assert book.ledger("d" * 64, None, 1e-3).spent_epsilon() <= 4.0


def test_a_local_run_reads_its_corpus_once(engine, tmp_path):
    """The file just parsed is what the dataset holds: the pipeline does not read it back."""
    from service.jobs.corpora import CORPORA

    corpus(tmp_path / "corpus.jsonl")
    before = CORPORA.loads
    run(engine, tmp_path, "a")
    run(engine, tmp_path, "b", local_ledger=False)
    assert CORPORA.loads == before


def test_spending_in_the_earlier_local_ledger_carries_over(engine, tmp_path, monkeypatch):
    """A corpus spent under local-ledger.db (before the local store) keeps its spending and its cap."""
    from service.jobs.generate import file_digest
    from service.jobs.local_store import data_dir

    path = corpus(tmp_path / "corpus.jsonl")
    LocalLedger(data_dir()).reserve(file_digest(path), 5.0, 1e-3, "an earlier run", [PrivacyEvent("zcdp", 0.5)])
    with pytest.raises(ValueError, match="^epsilon_cap must be this corpus's cap 5"):
        run(engine, tmp_path, "a", epsilon_cap=50.0)
    report = run(engine, tmp_path, "b")
    assert report["corpus_ledger"]["epsilon_cap"] == 5.0 and report["corpus_ledger"]["entries"] == 2
    assert report["corpus_ledger"]["epsilon_spent"] > report["epsilon"]  # the earlier 0.5 zCDP composed with this run


def test_a_model_that_cannot_load_charges_nothing(engine, tmp_path):
    """The engine loads before the reservation: a model that fails to load leaves the corpus's
    ledger untouched."""
    corpus(tmp_path / "corpus.jsonl")
    with pytest.raises(Exception, match="nonexistent"):
        run_generate(GenerateSpec(input=tmp_path / "corpus.jsonl", records=2, max_tokens=3, delta=1e-3, partitions=4,
                                  public_count=60, pii="off", epsilon=2.0, model=str(tmp_path / "nonexistent"),
                                  out=tmp_path / "x.jsonl"))
    assert not (tmp_path / "x.jsonl").exists()
    after = run(engine, tmp_path, "a")
    assert after["corpus_ledger"]["entries"] == 1  # only this run's reservation
