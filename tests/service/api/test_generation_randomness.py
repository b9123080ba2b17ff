"""Randomness through the server's entry points: a client can neither choose nor repeat the
noise of a release (gRPC Generate and SubmitJob refuse `seed`; every request draws a fresh
nonce), and two requests share no more of their records than chance gives."""

from __future__ import annotations

import grpc
import pytest
from server_kit import corpus, request
from text_kit import shared_leading_words


@pytest.mark.parametrize("method", ["Generate", "SubmitJob"])
def test_a_client_seed_is_refused_naming_the_field_and_nothing_is_charged(acme, method):
    ds = acme.upload(f"seeded-{method}", corpus(40))
    call = getattr(acme.generation, method)
    with pytest.raises(grpc.RpcError) as e:
        result = call(request(ds.id, seed=7), metadata=acme.md, timeout=120)
        list(result) if method == "Generate" else result
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details().startswith("seed: the server does not accept a seed")
    b = acme.budget(ds.id)
    assert b.spent == 0 and len(b.entries) == 0  # refused before the DP count was drawn


def test_two_requests_on_one_dataset_share_no_noise(acme):
    """The same request twice (the reported attack sent `seed` twice; now nothing the client sends
    can make two releases share a draw): their records share no more leading words than chance."""
    ds = acme.upload("fresh-noise", corpus(48), epsilon_cap=20.0)
    a = acme.generate(ds.id, records=6, max_tokens=12, epsilon=1.0)
    b = acme.generate(ds.id, records=6, max_tokens=12, epsilon=1.0)
    assert len(a) >= 4 and len(b) >= 4
    assert [r.text for r in a] != [r.text for r in b]
    assert shared_leading_words([r.text for r in a], [r.text for r in b]) <= 2.0


def test_each_batch_job_keeps_its_own_nonce_and_resumes_under_it(server, acme):
    """SubmitJob stores a fresh 128-bit nonce with the job; a resumed job draws every remaining
    group from that group's own stream under the same nonce (so it never reuses another job's)."""
    from service.api.gen.privtext.v1 import generation_pb2
    from service.jobs.dataset_job import reprepare

    state = server.server.state
    ds = acme.upload("nonces", corpus(40), epsilon_cap=20.0)
    jobs = [acme.generation.SubmitJob(request(ds.id, records=2, max_tokens=3, epsilon=1.0), metadata=acme.md) for _ in range(2)]
    for j in jobs:
        list(acme.generation.StreamJobResults(generation_pb2.StreamJobResultsRequest(id=j.id), metadata=acme.md, timeout=300))
    stored = [state.store.get_job(j.id) for j in jobs]
    assert all(s.nonce is not None and len(s.nonce) == 16 for s in stored)
    assert stored[0].nonce != stored[1].nonce
    again = reprepare(state.store, stored[0], state.server_secret)
    assert again.randomness.nonce == stored[0].nonce and not again.randomness.seeded
