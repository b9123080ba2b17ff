"""Tests for service.generation.corpus on real files written to tmp_path (no mocks)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.generation.corpus import MIXED_LABELS, BadRow, CorpusError, read_corpus

SECRET = "SECRET-7f3a patient Jane Roe diagnosed"


def _key(text: str) -> str:
    return "r:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _jsonl(tmp_path: Path, lines: list[bytes | str | dict], name: str = "c.jsonl") -> Path:
    def enc(x: bytes | str | dict) -> bytes:
        if isinstance(x, dict):
            return json.dumps(x, ensure_ascii=False).encode("utf-8")
        return x if isinstance(x, bytes) else x.encode("utf-8")

    path = tmp_path / name
    path.write_bytes(b"\n".join(enc(x) for x in lines) + b"\n")
    return path


GOOD = {"text": "a good row", "label": "pos", "user": "u1"}

# (row as written, expected reason or None for a good row); each case sits on line 2, after
# one good row, and the corpus is read with label_field="label", unit_field="user".
JSONL_CASES = [
    ({"text": "  keep  inner  spaces \n", "label": "pos", "user": "u2"}, None),
    ({"text": "integer label", "label": 3, "user": 7}, None),
    ({"label": "pos", "user": "u2"}, "missing field 'text'"),
    ({"text": None, "label": "pos", "user": "u2"}, "missing field 'text'"),
    ({"text": "no label", "user": "u2"}, "missing field 'label'"),
    ({"text": "no unit", "label": "pos"}, "missing field 'user'"),
    ({"text": "empty unit", "label": "pos", "user": " "}, "empty unit"),
    ('{"text": "caf\xe9 bytes", "label": "pos", "user": "u2"}'.encode("latin-1"), "not UTF-8"),
    ({"text": "", "label": "pos", "user": "u2"}, "empty text"),
    ({"text": " \t\n ", "label": "pos", "user": "u2"}, "empty text"),
    ({"text": "x" * 41, "label": "pos", "user": "u2"}, "text over 40 characters (max_record_chars)"),
    ({"text": 12, "label": "pos", "user": "u2"}, "text is not a string"),
    ('{"text": "unterminated', "malformed JSON: Unterminated string starting at (column 10)"),
    ('["text", "a list"]', "JSON row is not an object (got list)"),
    ('"just a string"', "JSON row is not an object (got str)"),
    ({"text": "float label", "label": 1.5, "user": "u2"}, "label is not a string or integer"),
    ({"text": "bool label", "label": True, "user": "u2"}, "label is not a string or integer"),
    ({"text": "list label", "label": ["a"], "user": "u2"}, "label is not a string or integer"),
    ({"text": "dict unit", "label": "pos", "user": {"id": 1}}, "unit is not a string or integer"),
    ('{"text": "lone \\ud800 surrogate", "label": "pos", "user": "u2"}', "text is not valid Unicode (lone surrogate)"),
]


@pytest.mark.parametrize("row, reason", JSONL_CASES, ids=[str(r) for _, r in JSONL_CASES])
def test_jsonl_row(tmp_path: Path, row, reason: str | None) -> None:
    path = _jsonl(tmp_path, [GOOD, row])
    c = read_corpus(path, label_field="label", unit_field="user", max_record_chars=40, max_bad_fraction=0.5)
    if reason is None:
        assert [r.line for r in c.records] == [1, 2] and c.bad == ()
        assert c.records[1].text == row["text"].strip()
        assert c.records[1].label == str(row["label"]) and c.records[1].unit == str(row["user"])
    else:
        assert c.bad == (BadRow(2, reason),)
        assert [r.line for r in c.records] == [1]


def test_many_bad_kinds_keep_their_line_numbers(tmp_path: Path) -> None:
    rows = [GOOD] * 30
    bad_at = {4: JSONL_CASES[2], 9: JSONL_CASES[7], 15: JSONL_CASES[12], 22: JSONL_CASES[13]}
    lines = [bad_at[i][0] if i in bad_at else dict(rows[0], user=f"u{i}") for i in range(1, 31)]
    c = read_corpus(_jsonl(tmp_path, lines), label_field="label", unit_field="user", max_bad_fraction=0.2)
    assert c.bad == tuple(BadRow(i, case[1]) for i, case in sorted(bad_at.items()))
    assert len(c.records) == 26 and len(c.units()) == 26


def test_blank_lines_are_not_rows_and_bom_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "first"}\r\n\n   \n{"text": "second"}')
    c = read_corpus(path)
    assert [(r.line, r.text) for r in c.records] == [(1, "first"), (4, "second")]
    assert c.bad == ()


def test_too_many_bad_rows_raises_without_leaking_text(tmp_path: Path) -> None:
    lines = [{"text": f"{SECRET} {i}"} for i in range(6)] + [
        {"text": SECRET + "x" * 3000},  # over length: the text must not appear
        {"txt": SECRET},
        b'{"text": "' + SECRET.encode() + b'\xff"}',
        '{"text": "' + SECRET,
    ]
    path = _jsonl(tmp_path, lines, name="private.jsonl")
    with pytest.raises(CorpusError) as err:
        read_corpus(path, max_bad_fraction=0.3)
    msg = str(err.value)
    assert "private.jsonl" in msg and "4 of 10" in msg and "40.0%" in msg and "max_bad_fraction=0.3" in msg
    assert "line 7: text over 2000 characters (max_record_chars)" in msg and "line 8: missing field 'text'" in msg
    assert "SECRET" not in msg and "Jane" not in msg
    assert read_corpus(path, max_bad_fraction=0.4).summary()["bad"] == 4  # at the limit: allowed


def test_no_good_records_and_empty_file(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="no good records"):
        read_corpus(_jsonl(tmp_path, [{"text": ""}]), max_bad_fraction=1.0)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(CorpusError, match="no good records"):
        read_corpus(empty)


def test_max_records(tmp_path: Path) -> None:
    path = _jsonl(tmp_path, [{"text": f"t{i}"} for i in range(5)])
    assert len(read_corpus(path, max_records=5).records) == 5
    with pytest.raises(CorpusError, match="max_records=4"):
        read_corpus(path, max_records=4)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"fmt": "xml"}, "fmt must be"),
        ({"max_bad_fraction": 1.5}, r"max_bad_fraction must be in \[0, 1\], got 1.5"),
        ({"max_record_chars": 0}, "max_record_chars must be an integer >= 1, got 0"),
        ({"label_field": "text"}, "must be distinct"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        read_corpus(_jsonl(tmp_path, [GOOD]), **kwargs)


def test_unknown_suffix_needs_fmt(tmp_path: Path) -> None:
    path = _jsonl(tmp_path, [GOOD], name="c.txt")
    with pytest.raises(ValueError, match="fmt must be"):
        read_corpus(path)
    assert len(read_corpus(path, fmt="jsonl").records) == 1


def test_unit_field_groups_records_in_file_order(tmp_path: Path) -> None:
    lines = [{"text": f"t{i}", "user": u} for i, u in enumerate(["a", "b", "a", 5, "b", "5"])]
    c = read_corpus(_jsonl(tmp_path, lines), unit_field="user")
    assert {u: [r.line for r in rs] for u, rs in c.units().items()} == {"a": [1, 3], "b": [2, 5], "5": [4, 6]}
    assert c.labels() == [] and c.summary()["units"] == 3


def test_intrinsic_keys_and_duplicates(tmp_path: Path) -> None:
    texts = ["same", "other", " same ", "same"]
    c = read_corpus(_jsonl(tmp_path, [{"text": t} for t in texts]))
    k = _key("same")
    assert [r.unit for r in c.records] == [k, _key("other"), k + "#1", k + "#2"]
    assert all(len(rs) == 1 for rs in c.units().values())


@settings(max_examples=40, deadline=None)
@given(
    texts=st.lists(st.sampled_from(["a", "b", "c", "dup"]) | st.text(min_size=1, max_size=8), max_size=12),
    new=st.sampled_from(["a", "dup"]) | st.text(min_size=1, max_size=8),
)
def test_inserting_a_record_at_the_top_moves_no_other_unit(tmp_path_factory, texts: list[str], new: str) -> None:
    """The (unit key, text) pairs of the old corpus are all still there after an insertion;
    among exact copies of the new text the keys shift, but the copies are interchangeable."""
    texts = [t for t in texts if t.strip()]
    if not new.strip():
        new = "n"
    folder = tmp_path_factory.mktemp("ins")
    before = read_corpus(_jsonl(folder, [{"text": t} for t in texts], name="a.jsonl")) if texts else None
    after = read_corpus(_jsonl(folder, [{"text": t} for t in [new, *texts]], name="b.jsonl"))
    old = Counter((r.unit, r.text) for r in before.records) if before else Counter()
    now = Counter((r.unit, r.text) for r in after.records)
    assert not old - now and sum((now - old).values()) == 1
    if before and new.strip() not in {t.strip() for t in texts}:  # a new text: no old key moves
        assert [r.unit for r in after.records[1:]] == [r.unit for r in before.records]


def test_mixed_label_unit_keeps_majority_and_reports_the_rest(tmp_path: Path) -> None:
    lines = [
        {"text": "1", "label": "b", "user": SECRET},
        {"text": "2", "label": "a", "user": SECRET},
        {"text": "3", "label": "b", "user": SECRET},
        {"text": "4", "label": "a", "user": "tie"},
        {"text": "5", "label": "c", "user": "tie"},
        {"text": "6", "label": "c", "user": "solo"},
    ]
    c = read_corpus(_jsonl(tmp_path, lines), label_field="label", unit_field="user", max_bad_fraction=0.5)
    assert [(r.line, r.label) for r in c.records] == [(1, "b"), (3, "b"), (4, "a"), (6, "c")]
    assert c.bad == (BadRow(2, MIXED_LABELS), BadRow(5, MIXED_LABELS))
    assert SECRET not in MIXED_LABELS
    assert c.labels() == ["a", "b", "c"]
    s = c.summary()
    assert s["records_per_label"] == {"a": 1, "b": 2, "c": 1} and s["units_per_label"] == {"a": 1, "b": 1, "c": 1}
    assert s["bad_by_reason"] == {MIXED_LABELS: 2} and (s["records"], s["bad"], s["units"]) == (4, 2, 3)


def test_reprs_do_not_show_private_text(tmp_path: Path) -> None:
    c = read_corpus(_jsonl(tmp_path, [{"text": SECRET, "user": SECRET}]), unit_field="user")
    assert SECRET not in repr(c) and SECRET not in repr(c.records[0])


# ---- CSV ----------------------------------------------------------------------------------


def test_csv_multiline_fields_start_lines_and_bad_rows(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_bytes(
        b"\xef\xbb\xbfid,text,label\r\n"  # line 1 (with a BOM)
        b'1,"first\r\nspans\r\nthree lines",pos\r\n'  # lines 2-4
        b"2,plain,neg\r\n"  # line 5
        b"\r\n"  # line 6: blank, not a row
        b'3,"caf\xe9 latin-1\nover two",pos\r\n'  # lines 7-8: not UTF-8
        b'4,"  ",neg\r\n'  # line 9: empty text
        b"5,too,many,fields\r\n"  # line 10
        b'6,"he said ""hi""\nand left",neg\r\n'  # lines 11-12
        b"7,last,7\r\n"  # line 13
    )
    c = read_corpus(path, label_field="label", max_bad_fraction=0.5)
    assert [(r.line, r.text, r.label) for r in c.records] == [
        (2, "first\r\nspans\r\nthree lines", "pos"),
        (5, "plain", "neg"),
        (11, 'he said "hi"\nand left', "neg"),
        (13, "last", "7"),
    ]
    assert c.bad == (BadRow(7, "not UTF-8"), BadRow(9, "empty text"), BadRow(10, "row has 4 fields, header has 3"))
    assert c.records[0].unit == _key("first\r\nspans\r\nthree lines")


def test_csv_missing_column_is_a_corpus_error(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("body,label\nhello,pos\n", encoding="utf-8")
    with pytest.raises(CorpusError, match="no column 'text'; columns: \\['body', 'label'\\]"):
        read_corpus(path)
    assert read_corpus(path, text_field="body").records[0].text == "hello"


def test_csv_unit_field_and_explicit_fmt(tmp_path: Path) -> None:
    path = tmp_path / "c.data"
    path.write_text("user,text\nu1,a\nu2,b\nu1,c\n,d\n", encoding="utf-8")
    c = read_corpus(path, fmt="csv", unit_field="user", max_bad_fraction=0.25)
    assert {u: [r.text for r in rs] for u, rs in c.units().items()} == {"u1": ["a", "c"], "u2": ["b"]}
    assert c.bad == (BadRow(5, "empty unit"),)
