"""SelectCandidates through the real server, with the real MiniLM: a client's pool ranked by one
noisy histogram of the dataset's votes, charged once before any vote, refused (and charging
nothing) for a bad pool or an over-budget request; and one unit, however many records it holds,
moves the histogram by at most one vote."""

from __future__ import annotations

import uuid

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from server_kit import SMS, corpus

from mechanisms.pe import unit_votes, vote_histogram, vote_vectors
from service.api.gen.privtext.v1 import generation_pb2
from service.generation.corpus import Record
from service.generation.embed import embed
from service.generation.pe import voters

POOL = [
    "Congratulations! You have won a free prize. Call now to claim your reward.",
    "URGENT: your mobile number was selected for a cash award. Text WIN to 80080.",
    "Ok, see you at home later. Do you want me to pick up dinner?",
    "I'm running late, be there in ten minutes",
    "The quarterly financial report shows revenue growth of four percent.",
]
LABELS = ["spam", "spam", "ham", "ham", "ham"]


def select(acme, dataset_id: str, candidates=POOL, top: int = 3, **kw) -> generation_pb2.SelectCandidatesResponse:
    if "sigma" not in kw:
        kw.setdefault("epsilon", 1.0)
    req = generation_pb2.SelectCandidatesRequest(dataset_id=dataset_id, candidates=candidates, top=top, **kw)
    return acme.generation.SelectCandidates(req, metadata=acme.md, timeout=300)


def field_violations(err: grpc.RpcError) -> list[str]:
    st = rpc_status.from_call(err)
    out = []
    for d in st.details if st else ():
        b = error_details_pb2.BadRequest()
        if d.Unpack(b):
            out += [v.field for v in b.field_violations]
    return out


def test_select_returns_noisy_counts_and_charges_one_event_before_any_vote(server, acme):
    ds = acme.upload("select", corpus(40), label_field="label", epsilon_cap=10.0)
    got = select(acme, ds.id, candidate_labels=LABELS)
    assert len(got.selected) == 3 and len({c.index for c in got.selected}) == 3
    assert all(c.text == POOL[c.index] and c.label == LABELS[c.index] for c in got.selected)
    counts = [c.noisy_count for c in got.selected]
    assert counts == sorted(counts, reverse=True) and all(c >= 0 for c in counts)
    assert any(c != round(c) for c in counts)  # noisy: the exact (integer) counts never leave
    assert not got.fallback and got.sigma > 0 and got.epsilon == pytest.approx(1.0, rel=1e-6)
    b = acme.budget(ds.id)
    assert [e.label.split()[0] for e in b.entries] == ["released", "select"]
    [event] = b.entries[1].events
    assert event.kind == "gaussian" and event.parameter == got.sigma and event.note.startswith("PE iteration 1 of 1")
    assert b.entries[1].epsilon == pytest.approx(got.epsilon)

    # a fixed sigma: its epsilon is computed and charged; the DP count is not released again
    req = generation_pb2.SelectCandidatesRequest(dataset_id=ds.id, candidates=POOL, top=5, sigma=got.sigma * 2)
    again = acme.generation.SelectCandidates(req, metadata=acme.md, timeout=300)
    assert len(again.selected) == 5 and again.sigma == got.sigma * 2 and again.epsilon < got.epsilon
    b = acme.budget(ds.id)
    assert [e.label.split()[0] for e in b.entries] == ["released", "select", "select"]
    assert b.entries[2].epsilon == pytest.approx(again.epsilon)


@pytest.mark.parametrize(
    "candidates,labels,top,field,message",
    [
        (["a", "b", " "], [], 1, "candidates[2]", "candidates[2] must be a non-empty text"),
        (["a", "b\x00c"], [], 1, "candidates[1]", "candidates[1] must be free of control characters other than newline and tab, got U+0000 at position 1"),
        (["a", "x" * 2001], [], 1, "candidates[1]", "candidates[1] must be at most 2000 characters (max_candidate_chars), got 2001"),
        ([str(i) for i in range(2001)], [], 1, "candidates", "candidates must be between 1 and 2000 strings (max_select_candidates), got 2001"),
        ([], [], 1, "candidates", "candidates must be between 1 and 2000"),
        (["a", "b"], ["spam"], 1, "candidate_labels", "candidate_labels must be empty or one per candidate (2), got 1"),
        (["a", "b"], ["spam", ""], 1, "candidate_labels[1]", "candidate_labels[1] must be a non-empty label of at most 100 characters (max_label_chars)"),
        (["a", "b"], [], 3, "top", "top must be in [1, 2] (the number of candidates), got 3"),
        (["a", "b"], [], 0, "top", "top must be in [1, 2]"),
    ],
)
def test_bad_pools_are_refused_naming_the_candidate_and_the_limit(acme, candidates, labels, top, field, message):
    ds = acme.upload(f"bad-pool-{uuid.uuid4().hex}", corpus(40), label_field="label")
    with pytest.raises(grpc.RpcError) as e:
        select(acme, ds.id, candidates=candidates, candidate_labels=labels, top=top)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details().startswith(message), e.value.details()
    assert field_violations(e.value) == [field]
    assert len(acme.budget(ds.id).entries) == 0


@pytest.mark.parametrize(
    "kw,message",
    [
        ({"epsilon": 0.0}, "epsilon must be in [1e-06, 1000] (min_epsilon, max_epsilon), got 0.0"),
        ({"epsilon": None}, "epsilon must be set (or sigma)"),
        ({"sigma": -1.0, "epsilon": None}, "sigma must be a finite number > 0"),
        ({"threshold": float("nan")}, "threshold must be a finite number >= 0"),
    ],
)
def test_bad_settings_are_refused(acme, kw, message):
    ds = acme.upload(f"bad-select-{uuid.uuid4().hex}", corpus(40))
    req = generation_pb2.SelectCandidatesRequest(dataset_id=ds.id, candidates=POOL, top=2,
                                                 **{k: v for k, v in {"epsilon": 1.0, **kw}.items() if v is not None})
    with pytest.raises(grpc.RpcError) as e:
        acme.generation.SelectCandidates(req, metadata=acme.md, timeout=60)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and e.value.details().startswith(message), e.value.details()
    assert len(acme.budget(ds.id).entries) == 0


def test_over_budget_is_refused_before_anything_is_computed_or_charged(acme):
    ds = acme.upload("select-small-cap", corpus(40), epsilon_cap=1.0)
    with pytest.raises(grpc.RpcError) as e:
        select(acme, ds.id, epsilon=5.0)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "over its cap 1" in e.value.details()
    assert len(acme.budget(ds.id).entries) == 0  # not even the DP unit count


def test_labelled_candidates_need_a_labelled_dataset(acme):
    ds = acme.upload("select-unlabelled", corpus(40))
    with pytest.raises(grpc.RpcError) as e:
        select(acme, ds.id, candidate_labels=LABELS)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "has no label field" in e.value.details()
    assert len(acme.budget(ds.id).entries) == 0


def test_a_unit_with_many_records_moves_the_histogram_by_at_most_one_vote():
    """The adversary: one unit with 40 records (duplicates, both labels, texts close to several
    candidates). With real MiniLM embeddings its vote vector has L2 norm <= 1, and adding it moves
    the histogram by exactly its one vote."""
    honest = {f"u{i}": [Record(i + 1, f"{SMS[i % len(SMS)]} #{i}", "spam" if i % 3 == 0 else "ham", f"u{i}")] for i in range(12)}
    texts = POOL * 8  # every candidate's own text, five times over, duplicated
    adversary = [Record(100 + j, t, LABELS[j % len(POOL)], "adv") for j, t in enumerate(texts)]
    with_adv = {**honest, "adv": adversary}
    cands = embed(POOL)
    for labels in (None, LABELS):
        wanted = sorted(set(labels)) if labels else None
        v = voters(with_adv, wanted, embed, max_records_per_unit=40, max_record_chars=500)
        _, votes = unit_votes(v.embeddings, v.units, cands, v.labels, labels)
        norms = np.linalg.norm(vote_vectors(votes, len(POOL)), axis=1)
        assert norms.max() <= 1.0 and norms[-1] == 1.0  # the adversary votes, once
        w = voters(honest, wanted, embed, max_records_per_unit=40, max_record_chars=500)
        diff = vote_histogram(v.embeddings, v.units, cands, v.labels, labels) - vote_histogram(w.embeddings, w.units, cands, w.labels, labels)
        assert np.linalg.norm(diff) == 1.0 and diff.sum() == 1
