"""Canaries: unique secret records planted in a private corpus, and their leakage.

A canary is an in-distribution SMS-like prefix ("my new bank PIN is") followed by a secret:
twelve random digits, a high-perplexity suffix no model predicts and no record shares by chance
(about 40 bits). Canaries are made with a seeded generator and split at random into
- once: inserted as one record (one privacy unit);
- repeated: inserted as `copies` identical records. Exact duplicates are separate units (their
  intrinsic keys get "#1", "#2", ...: service.generation.corpus), so a repeated canary is a
  group of k units and gets only group privacy: k^2 rho in zCDP, k eps0 per token;
- held out: never inserted; the control set of the membership test and of leak detection.
The split is a seeded random permutation, so inserted and held-out canaries are exchangeable.

Leakage of a canary into the synthetic records, after normalising both texts (lowercase,
letters and digits only, so "4091 7263 5512" and "409172635512" compare equal):
- verbatim: the whole normalised secret is a substring of a normalised record;
- near-verbatim: not verbatim, but some substring of a record is within
  floor(NEAR_FRACTION * len(secret)) edits (Levenshtein: insertions, deletions, substitutions)
  of the secret. For the twelve-digit secrets, 3 edits: at least 9 of the 12 digits in order.
  The budget is set by false positives: against the 475 SMS Spam Collection texts with >= 6
  digits (premium numbers such as 08717507711), 0 of 60 random 12-digit secrets came within 3
  edits and 1 of 60 within 4; with 10-digit secrets, 1 of 60 came within 3 edits. Held-out
  canaries measure the detector's false-positive rate on the synthetic records.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

Status = Literal["once", "repeated", "held-out"]
SECRET_DIGITS = 12
NEAR_FRACTION = 0.25  # edits allowed for near-verbatim, as a fraction of the secret's length

# In-distribution SMS-like openings that a secret number naturally follows. Each canary takes a
# different one, so a canary's prefix identifies it.
PREFIXES = (
    "Hey its me, my new bank PIN is",
    "Ur locker code at the gym is",
    "Mum the alarm code for the house is",
    "Hi babe, the wifi password at my place is",
    "Your parcel tracking number is",
    "Dont tell anyone but my card number is",
    "Call me on my new mobile number",
    "The door code for the flat is now",
    "Sorry forgot to say, my account number is",
    "The booking reference for our hotel is",
    "Ok the safe combination is",
    "Text me back, my work extension is",
    "Here is the code for the bike lock",
    "My passport number for the form is",
    "Lol ok my online banking password is",
    "Da, the gate code for tonight is",
    "Your verification code for the transfer is",
    "Ill be late. The key safe code is",
    "Grandad's PIN for the post office card is",
    "Meet at 8. My membership number is",
    "Quick one, the voucher code is",
    "For the delivery the access code is",
    "My national insurance number is",
    "The garage door remote code is",
    "Hi hun, the code for the storage unit is",
    "Remember the new PIN for the joint account is",
    "The registration code for the course is",
    "Car park barrier code this week is",
    "Ur claim reference number is",
    "The code to get into the office is",
    "Dad's phone unlock code is",
    "The tickets confirmation number is",
)


@dataclass(frozen=True)
class Canary:
    id: str
    prefix: str
    secret: str
    status: Status
    copies: int  # records inserted: 0 held out, 1 once, k repeated

    @property
    def text(self) -> str:
        return f"{self.prefix} {self.secret}"

    @property
    def inserted(self) -> bool:
        return self.copies > 0

    def to_dict(self) -> dict:
        return {**asdict(self), "text": self.text}


def make_canaries(once: int = 8, repeated: int = 4, copies: int = 4, held_out: int | None = None, seed: int = 0) -> list[Canary]:
    """once + repeated + held_out canaries (held_out defaults to once + repeated: as many held
    out as inserted), each with its own prefix and a unique random twelve-digit secret."""
    held_out = once + repeated if held_out is None else held_out
    for name, value, lo in (("once", once, 0), ("repeated", repeated, 0), ("held_out", held_out, 1), ("copies", copies, 2)):
        if not isinstance(value, int) or isinstance(value, bool) or value < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    total = once + repeated + held_out
    if once + repeated < 1:
        raise ValueError("at least one canary must be inserted (once + repeated >= 1)")
    if total > len(PREFIXES):
        raise ValueError(f"at most {len(PREFIXES)} canaries (one prefix each), got {total}")
    rng = np.random.default_rng(seed)
    prefixes = [PREFIXES[i] for i in rng.permutation(len(PREFIXES))[:total]]
    secrets: list[str] = []
    while len(secrets) < total:
        digits = "".join(str(d) for d in rng.integers(0, 10, SECRET_DIGITS))
        s = " ".join(digits[i : i + 4] for i in range(0, SECRET_DIGITS, 4))
        if s not in secrets:
            secrets.append(s)
    statuses: list[tuple[Status, int]] = [("once", 1)] * once + [("repeated", copies)] * repeated + [("held-out", 0)] * held_out
    order = rng.permutation(total)  # which canary gets which role: random, so roles are exchangeable
    out = [Canary(f"c{i:02d}", prefixes[i], secrets[i], *statuses[int(order[i])]) for i in range(total)]
    return out


def insert(rows: Sequence[dict], canaries: Sequence[Canary], seed: int = 0, text_field: str = "text") -> list[dict]:
    """The rows with every inserted canary's copies added at seeded random positions (the
    position does not matter to the pipeline: units are keyed by text, not position)."""
    out = [dict(r) for r in rows]
    rng = np.random.default_rng(seed)
    for c in canaries:
        for _ in range(c.copies):
            out.insert(int(rng.integers(0, len(out) + 1)), {text_field: c.text})
    return out


# ---------------------------------------------------------------------------------------------
# Leakage

_NOT_ALNUM = re.compile(r"[^a-z0-9]+")


def normalise(text: str) -> str:
    """Lowercase, letters and digits only."""
    return _NOT_ALNUM.sub("", text.lower())


def substring_edit_distance(pattern: str, text: str) -> int:
    """The fewest edits turning `pattern` into some substring of `text` (Sellers 1980: edit
    distance with free start and end in text). len(pattern) when text is empty."""
    m = len(pattern)
    prev = list(range(m + 1))  # column for the empty text prefix: i edits for pattern[:i]
    best = prev[m]
    for ch in text:
        cur = [0] * (m + 1)  # a match may start anywhere in text: row 0 costs nothing
        for i in range(1, m + 1):
            cur[i] = min(prev[i - 1] + (pattern[i - 1] != ch), prev[i] + 1, cur[i - 1] + 1)
        best = min(best, cur[m])
        prev = cur
    return best


def longest_common_substring(a: str, b: str) -> int:
    """Length of the longest common substring of a and b."""
    best = 0
    prev = [0] * (len(b) + 1)
    for ca in a:
        cur = [0] * (len(b) + 1)
        for j, cb in enumerate(b, 1):
            if ca == cb:
                cur[j] = prev[j - 1] + 1
                best = max(best, cur[j])
        prev = cur
    return best


@dataclass(frozen=True)
class Leak:
    verbatim: bool
    near_verbatim: bool  # within the edit budget but not verbatim
    edits: int  # fewest edits from the secret to a substring of one record (normalised)
    longest_common: int  # longest common substring with any record (normalised), in characters
    record: int | None  # index of the closest record (None without records)


def near_budget(secret: str) -> int:
    return int(NEAR_FRACTION * len(normalise(secret)))


def leakage(secret: str, records: Sequence[str]) -> Leak:
    """How close any synthetic record comes to containing `secret` (module docstring)."""
    s = normalise(secret)
    need = Counter(s)
    best_edits, best_record, lcs = len(s), None, 0
    for i, r in enumerate(records):
        t = normalise(r)
        # characters of s that t can match at all: edits >= len(s) - shared, common <= shared
        shared = sum(min(n, t.count(ch)) for ch, n in need.items())
        if best_record is None or len(s) - shared < best_edits:
            e = 0 if s in t else substring_edit_distance(s, t)
            if e < best_edits or best_record is None:
                best_edits, best_record = e, i
        if shared > lcs:
            lcs = max(lcs, longest_common_substring(s, t))
    verbatim = best_edits == 0 and best_record is not None
    near = not verbatim and best_record is not None and best_edits <= near_budget(secret)
    return Leak(verbatim, near, best_edits, lcs, best_record)
