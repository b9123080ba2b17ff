"""mechanisms.randomness: every job and every group draws from its own stream."""

import numpy as np
import pytest

from mechanisms.randomness import NONCE_BYTES, JobRandomness, fresh_nonce, seeded_nonce

SECRET = b"s" * 32


def draws(rng: np.random.Generator, n: int = 4096) -> np.ndarray:
    return rng.gumbel(size=n)


def test_fresh_nonces_are_128_bits_and_never_repeat():
    nonces = {fresh_nonce() for _ in range(1000)}
    assert len(nonces) == 1000 and all(len(n) == NONCE_BYTES == 16 for n in nonces)


def test_the_same_key_and_group_give_the_same_stream_and_any_change_another():
    r = JobRandomness(SECRET, b"n" * 16)
    assert np.array_equal(draws(r.group(3)), draws(JobRandomness(SECRET, b"n" * 16).group(3)))
    others = [r.group(4), JobRandomness(SECRET, b"m" * 16).group(3), JobRandomness(b"t" * 32, b"n" * 16).group(3), r.stream("counts")]
    for o in others:
        assert not np.array_equal(draws(r.group(3))[:8], draws(o)[:8])


def test_two_jobs_streams_are_uncorrelated():
    """Empirical: the Gumbel draws of one group in two fresh jobs are independent (|corr| small)."""
    a, b = JobRandomness.fresh(SECRET), JobRandomness.fresh(SECRET)
    corr = np.corrcoef(draws(a.group(0), 20000), draws(b.group(0), 20000))[0, 1]
    assert abs(corr) < 0.03  # sd of the estimate ~0.007


def test_a_seed_replays_only_the_same_release():
    same = seeded_nonce(SECRET, 7, "request A", "corpus 1")
    assert same == seeded_nonce(SECRET, 7, "request A", "corpus 1")
    assert same != seeded_nonce(SECRET, 7, "request B", "corpus 1")  # epsilon 1 vs 1.3: independent noise
    assert same != seeded_nonce(SECRET, 7, "request A", "corpus 2")
    assert same != seeded_nonce(b"x" * 32, 7, "request A", "corpus 1")  # the seed alone decides nothing
    assert JobRandomness.replay(SECRET, 7, "request A", "corpus 1").seeded


@pytest.mark.parametrize("secret,nonce,field", [(b"short", b"n" * 16, "secret"), (SECRET, b"n" * 8, "nonce")])
def test_bad_keys_are_refused(secret, nonce, field):
    with pytest.raises(ValueError, match=f"^{field} must be"):
        JobRandomness(secret, nonce)


def test_the_secret_never_shows_in_a_repr():
    assert "sss" not in repr(JobRandomness(SECRET, b"n" * 16))
