"""PII filter against real presidio and the real (small) spaCy model; table-driven.

Skipped when presidio is not installed (it is an optional dependency of the service).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("presidio_analyzer")
pytest.importorskip("presidio_anonymizer")

from service.pii import DEFAULT_ENTITIES, FilteredRecord, PiiFilter, PiiFinding, get_filter  # noqa: E402

# (text, PII substrings that must not survive redaction, entity types expected present)
CASES = [
    ("Call me at 212-555-0199 tonight", ["212-555-0199"], {"PHONE_NUMBER"}),
    ("my phone number is (415) 555-2671", ["555-2671"], {"PHONE_NUMBER"}),
    ("text +44 7911 123456 when ur home", ["7911 123456"], {"PHONE_NUMBER"}),
    ("mail me: jane.doe@example.com thx", ["jane.doe@example.com"], {"EMAIL_ADDRESS"}),
    ("pay with 4111 1111 1111 1111 pls", ["4111 1111 1111 1111"], {"CREDIT_CARD"}),
    ("card 4111-1111-1111-1111 expires soon", ["4111-1111-1111-1111"], {"CREDIT_CARD"}),
    ("My name is John Smith", ["John Smith"], {"PERSON"}),
    ("see https://www.example.org/offer now", ["https://www.example.org/offer"], {"URL"}),
    ("server is at 192.168.1.20", ["192.168.1.20"], {"IP_ADDRESS"}),
    ("IBAN GB82 WEST 1234 5698 7654 32", ["GB82 WEST 1234 5698 7654 32"], {"IBAN_CODE"}),
    ("my ssn is 536-90-4399", ["536-90-4399"], {"US_SSN"}),
    ("I live in Paris now", ["Paris"], {"LOCATION"}),
    (
        "John Smith, call 212-555-0199 or mail john@example.com",
        ["John Smith", "212-555-0199", "john@example.com"],
        {"PERSON", "PHONE_NUMBER", "EMAIL_ADDRESS"},
    ),
]

CLEAN = [
    "See you at 5pm, bring snacks!",
    "ok lol",
    "I have 3 apples and 20 dollars",
    "meet at 10:30 on 2024-05-01",
    "WINNER!! Claim your prize, reply YES to 80086 now",
    "order 12345678 shipped, version 1.2.3",
    "",
]


@pytest.fixture(scope="module")
def pii() -> PiiFilter:
    return get_filter()


@pytest.mark.parametrize("text,secrets,expected", CASES, ids=[c[0][:30] for c in CASES])
def test_detects_and_redacts(pii, text, secrets, expected):
    rec = pii.filter(text, "redact")
    types = {f.entity_type for f in rec.findings}
    assert expected <= types, (text, types)
    assert rec.action == "redacted"
    for e in expected:
        assert f"<{e}>" in rec.text
    for s in secrets:
        assert s not in rec.text
        for f in rec.findings:  # findings carry types and counts only
            assert s not in repr(f)


@pytest.mark.parametrize("text", CLEAN)
def test_clean_text_kept(pii, text):
    for policy in ("redact", "drop", "report"):
        assert pii.filter(text, policy) == FilteredRecord(text=text, findings=(), action="kept")


def test_policies():
    pii = get_filter()
    text = "Call me at 212-555-0199 or 415-555-2671, John Smith"
    red = pii.filter(text, "redact")
    rep = pii.filter(text, "report")
    drop = pii.filter(text, "drop")
    assert red.text == "Call me at <PHONE_NUMBER> or <PHONE_NUMBER>, <PERSON>"
    assert red.action == "redacted"
    assert rep == FilteredRecord(text=text, findings=red.findings, action="kept")
    assert drop == FilteredRecord(text=None, findings=red.findings, action="dropped")
    assert red.findings == (PiiFinding("PERSON", 1), PiiFinding("PHONE_NUMBER", 2))
    # default policy is redact
    assert pii.filter(text) == red


def test_filter_many_matches_filter(pii):
    texts = [c[0] for c in CASES] + CLEAN
    for policy in ("redact", "drop", "report"):
        assert pii.filter_many(texts, policy) == [pii.filter(t, policy) for t in texts]
    assert pii.filter_many([], "drop") == []


def test_invalid_policy(pii):
    with pytest.raises(ValueError, match=r"pii.*redact, drop, report"):
        pii.filter("hi", "mask")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"pii.*redact, drop, report"):
        pii.filter_many(["hi"], "")  # type: ignore[arg-type]


def test_unknown_entity_names_allowed_values():
    with pytest.raises(ValueError, match=r"pii: unknown entities \['SHOE_SIZE'\].*PHONE_NUMBER"):
        get_filter(entities=["PHONE_NUMBER", "SHOE_SIZE"])


def test_entity_subset():
    only_email = get_filter(entities=["EMAIL_ADDRESS"])
    rec = only_email.filter("John Smith, jane@example.com, 212-555-0199")
    assert rec.findings == (PiiFinding("EMAIL_ADDRESS", 1),)
    assert rec.text == "John Smith, <EMAIL_ADDRESS>, 212-555-0199"


def test_get_filter_caches():
    assert get_filter() is get_filter()
    assert get_filter(entities=DEFAULT_ENTITIES) is get_filter()
    assert get_filter(entities=["URL"]) is get_filter(entities=("URL",))
    assert get_filter(entities=["URL"]) is not get_filter()


_NO_NETWORK_SCRIPT = textwrap.dedent(
    """
    import os, socket, sys, tempfile
    os.environ["TLDEXTRACT_CACHE"] = tempfile.mkdtemp()  # empty cache: a fetch would be needed
    attempts = []
    def refuse(name):
        def f(*a, **k):
            attempts.append((name, repr(a)[:80]))
            raise OSError("network disabled in test: " + name)
        return f
    socket.socket.connect = refuse("connect")
    socket.socket.connect_ex = refuse("connect_ex")
    socket.create_connection = refuse("create_connection")
    socket.getaddrinfo = refuse("getaddrinfo")

    mode = sys.argv[1]
    if mode == "guard-works":
        # tldextract's default extractor fetches the suffix list: the guard must see it.
        import tldextract
        tldextract.TLDExtract(cache_dir=os.environ["TLDEXTRACT_CACHE"])("a@example.com")
    else:
        from service.pii import PiiFilter
        f = PiiFilter()
        r = f.filter("mail jane.doe@example.co.uk or see http://example.com, 212-555-0199")
        assert {x.entity_type for x in r.findings} >= {"EMAIL_ADDRESS", "URL", "PHONE_NUMBER"}, r
        f.filter_many(["John Smith at x@y.org"], "drop")
    print("ATTEMPTS", len(attempts), attempts)
    """
)


def _run_guarded(mode: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", _NO_NETWORK_SCRIPT, mode],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_no_network_at_load_or_filter():
    """A fresh process, sockets refused before import: loading and filtering never dial out."""
    # The guard is real: tldextract's default extractor is caught trying to fetch.
    assert "ATTEMPTS 0" not in _run_guarded("guard-works")
    assert "ATTEMPTS 0 []" in _run_guarded("filter")


def test_no_network_in_process(monkeypatch, pii):
    """Same guard in this process, on a freshly built filter (its own tldextract)."""
    attempts = []

    def refuse(*a, **k):
        attempts.append(a)
        raise OSError("network disabled in test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    fresh = PiiFilter(entities=["EMAIL_ADDRESS", "URL"])
    rec = fresh.filter("write to bob@example.com", "redact")
    assert rec.text == "write to <EMAIL_ADDRESS>"
    assert attempts == []
