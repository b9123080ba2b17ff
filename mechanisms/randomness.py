"""The randomness of one job: a fresh nonce, and an independent stream per group and purpose.

Composition adds privacy costs only when every release draws fresh coins. Two jobs that reuse a
stream (the same Gumbel or Gaussian draws) can reveal together what neither reveals alone: the
difference of their outputs cancels the shared noise, and their joint privacy loss is unbounded.
So every stream is derived from a key that two releases never share:

    job key    = HMAC-SHA256(secret, "job", nonce)      nonce: 128 fresh bits per job
    stream(p)  = PCG64(SeedSequence(HMAC-SHA256(job key, p)))

and each group draws from stream("group", group id) alone. Which groups share a batch, the
order in which they finish, a resumption that skips started groups, or the number of workers
decoding them cannot make two groups or two jobs share a draw, nor change a group's draws.

The secret is the server's (derived from its data key) or, for `privtext generate`, a local one
kept beside the user's data key: a nonce alone, even a predictable one, reveals nothing. A
seeded run's nonce is derived from the seed *and* everything that defines the release (the
request and the corpus), so the same seed on two different requests still gives independent
streams, while the same request with the same seed replays the same output (nothing new).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field

import numpy as np

from .config import require

NONCE_BYTES = 16  # 128 bits: a random nonce never repeats in any realistic number of jobs


def _mac(key: bytes, *parts: object) -> bytes:
    """HMAC-SHA256 of length-prefixed parts, so that no two part tuples share a message."""
    enc = [p if isinstance(p, bytes) else str(p).encode("utf-8") for p in parts]
    return hmac.new(key, b"".join(len(b).to_bytes(4, "big") + b for b in enc), hashlib.sha256).digest()


def fresh_nonce() -> bytes:
    return secrets.token_bytes(NONCE_BYTES)


def seeded_nonce(secret: bytes, seed: int, *release: object) -> bytes:
    """A replayable nonce: the same (secret, seed, release) gives the same nonce, and a change
    to any part of the release (epsilon, records, corpus digest...) gives an unrelated one."""
    require(isinstance(seed, int) and not isinstance(seed, bool), "seed", "an integer", seed)
    return _mac(secret, "seeded nonce", seed, *release)[:NONCE_BYTES]


@dataclass(frozen=True)
class JobRandomness:
    """Every coin of one job: streams keyed by (secret, nonce, purpose). Never leaves the process."""

    secret: bytes = field(repr=False)
    nonce: bytes
    seeded: bool = False

    def __post_init__(self) -> None:
        require(isinstance(self.secret, bytes) and len(self.secret) >= 16, "secret", "at least 16 bytes", "(hidden)")
        require(isinstance(self.nonce, bytes) and len(self.nonce) == NONCE_BYTES, "nonce", f"{NONCE_BYTES} bytes", len(self.nonce))

    @classmethod
    def fresh(cls, secret: bytes) -> JobRandomness:
        return cls(secret, fresh_nonce())

    @classmethod
    def replay(cls, secret: bytes, seed: int, *release: object) -> JobRandomness:
        return cls(secret, seeded_nonce(secret, seed, *release), seeded=True)

    @property
    def _key(self) -> bytes:
        return _mac(self.secret, "job", self.nonce)

    def stream(self, *purpose: object) -> np.random.Generator:
        """A generator for one purpose; the same purpose always gives the same stream, so a
        caller must use each purpose once (MechanismSelector enforces it for groups)."""
        seed = int.from_bytes(_mac(self._key, "stream", *purpose), "big")
        return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed)))

    def group(self, group_id: int) -> np.random.Generator:
        """The stream of one group: its every selection, gate and noise draw, in step order."""
        return self.stream("group", group_id)

    def derived_secret(self, purpose: str) -> bytes:
        """32 bytes for a keyed hash (e.g. a run's partition secret when it has no stored one)."""
        return _mac(self._key, "secret", purpose)
