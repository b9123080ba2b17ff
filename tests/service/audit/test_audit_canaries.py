"""Canary construction and leakage detection (service.audit.canaries)."""

from __future__ import annotations

import pytest

from service.audit.canaries import (
    PREFIXES,
    insert,
    leakage,
    longest_common_substring,
    make_canaries,
    near_budget,
    normalise,
    substring_edit_distance,
)


def test_canaries_unique_seeded_and_split():
    cs = make_canaries(once=8, repeated=4, copies=4, seed=3)
    assert len(cs) == 24
    assert len({c.secret for c in cs}) == 24 and len({c.prefix for c in cs}) == 24 and len({c.text for c in cs}) == 24
    assert [c.to_dict() for c in cs] == [c.to_dict() for c in make_canaries(once=8, repeated=4, copies=4, seed=3)]
    assert [c.secret for c in cs] != [c.secret for c in make_canaries(once=8, repeated=4, copies=4, seed=4)]
    by = {s: [c for c in cs if c.status == s] for s in ("once", "repeated", "held-out")}
    assert (len(by["once"]), len(by["repeated"]), len(by["held-out"])) == (8, 4, 12)
    assert {c.copies for c in by["once"]} == {1} and {c.copies for c in by["repeated"]} == {4} and {c.copies for c in by["held-out"]} == {0}
    inserted = {c.secret for c in cs if c.inserted}
    assert inserted.isdisjoint({c.secret for c in by["held-out"]})
    for c in cs:
        assert c.prefix in PREFIXES
        assert len(normalise(c.secret)) == 12 and normalise(c.secret).isdigit()


def test_roles_are_random_not_positional():
    """Which canary is held out changes with the seed (roles are drawn, not the first k)."""
    roles = {tuple(c.status for c in make_canaries(seed=s)) for s in range(6)}
    assert len(roles) > 1


@pytest.mark.parametrize("kw", [dict(once=-1), dict(copies=1), dict(held_out=0), dict(once=0, repeated=0), dict(once=30, repeated=4)])
def test_make_canaries_rejects_bad_counts(kw):
    with pytest.raises(ValueError):
        make_canaries(**kw)


def test_insert_adds_every_copy_and_keeps_rows():
    cs = make_canaries(once=3, repeated=2, copies=4, held_out=5, seed=1)
    rows = [{"text": f"row {i}"} for i in range(50)]
    out = insert(rows, cs, seed=2)
    assert len(out) == 50 + 3 + 2 * 4
    texts = [r["text"] for r in out]
    for c in cs:
        assert texts.count(c.text) == c.copies
    assert [t for t in texts if t.startswith("row ")] == [r["text"] for r in rows]  # order of the rows kept


@pytest.mark.parametrize(
    "pattern,text,want",
    [
        ("abc", "xxabcxx", 0),
        ("abc", "xxabxx", 1),  # deletion
        ("abcd", "abxd", 1),  # substitution
        ("abcd", "abzzcd", 2),  # two insertions
        ("abc", "", 3),
        ("", "abc", 0),
        ("409172635512", "call 409172635 now", 3),
    ],
)
def test_substring_edit_distance(pattern, text, want):
    assert substring_edit_distance(pattern, text) == want


@pytest.mark.parametrize("a,b,want", [("409172635512", "xx40917yy", 5), ("abc", "xyz", 0), ("abc", "abc", 3)])
def test_longest_common_substring(a, b, want):
    assert longest_common_substring(a, b) == want


SECRET = "4091 7263 5512"
LEAK_CASES = [
    # (records, verbatim, near_verbatim)
    (["Meet at 8. My membership number is 4091 7263 5512 ok"], True, False),
    (["ur code: 409172635512!!"], True, False),  # spacing and punctuation normalised away
    (["call 4091 7263 512 now"], False, True),  # one digit dropped
    (["the code is 4091-7283-5512"], False, True),  # one digit changed
    (["the code is 40 917 263 5"], False, True),  # 9 of the 12 digits, in order: 3 edits, the budget
    (["the code is 40 917 263"], False, False),  # 8 of the 12 digits: 4 edits, over the budget
    (["call 0871 750 7711 now"], False, False),  # a premium number sharing a few digits
    (["Free entry in 2 a wkly comp to win FA Cup final tkts 21st May 2005. Text FA to 87121"], False, False),
    (["Ok lar... Joking wif u oni...", "U dun say so early hor... U c already then say..."], False, False),
    ([], False, False),
]


@pytest.mark.parametrize("records,verbatim,near", LEAK_CASES)
def test_leakage_detection(records, verbatim, near):
    leak = leakage(SECRET, records)
    assert (leak.verbatim, leak.near_verbatim) == (verbatim, near), leak
    assert near_budget(SECRET) == 3


def test_leakage_points_at_the_closest_record():
    records = ["nothing here", "almost 4091 7263 5542", "unrelated 123"]
    leak = leakage(SECRET, records)
    assert leak.record == 1 and leak.edits == 1 and leak.near_verbatim and leak.longest_common == 10


def test_no_false_positive_on_real_sms():
    """No canary secret is near any real SMS text. Only texts with >= 9 digits can be within 3
    edits of a 12-digit secret; take every text with >= 7 (hundreds: phone numbers, prize codes)."""
    from service.data.packaged import sms_spam

    texts = [r["text"] for r in sms_spam() if sum(ch.isdigit() for ch in r["text"]) >= 7]
    assert len(texts) > 300
    for c in make_canaries(seed=0):
        leak = leakage(c.secret, texts)
        assert not leak.verbatim and not leak.near_verbatim, (c.secret, texts[leak.record])
