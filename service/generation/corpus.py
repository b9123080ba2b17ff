"""Reading a private corpus (JSONL or CSV) into records keyed by privacy unit.

The corpus is private, so two rules shape this module:
- Nothing is dropped silently: every rejected row becomes a BadRow with its line number and a
  reason, and reasons, errors and reprs never contain a row's text, label or unit key (error
  messages and reprs end up in logs).
- Unit keys are intrinsic to the data. With no unit field a record's key is a hash of its
  text, never its position: a position moves when a record is inserted above it, which would
  re-group every later unit (privacy-notes: "never sort-and-slice"). Keys derived from text
  are as private as the text: an unkeyed hash of a short text can be guessed by dictionary.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import BinaryIO

from mechanisms.config import require

FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv"}
MIXED_LABELS = "unit has records of several labels; kept the majority label"
_NOT_UTF8 = re.compile("[\udc80-\udcff]")  # what errors="surrogateescape" makes of bad bytes
_SHOWN_BAD = 5  # bad rows quoted in a CorpusError


class CorpusError(ValueError):
    """The corpus as a whole is unusable; the message names the file, the limit and the counts."""


@dataclass(frozen=True)
class Record:
    line: int  # 1-based line where the record starts
    text: str = field(repr=False)
    label: str | None
    unit: str = field(repr=False)


@dataclass(frozen=True)
class BadRow:
    line: int
    reason: str  # never the row's content


@dataclass(frozen=True)
class Corpus:
    records: tuple[Record, ...]
    bad: tuple[BadRow, ...]
    text_field: str
    label_field: str | None
    unit_field: str | None

    def __repr__(self) -> str:  # the default repr would print every private text
        return f"Corpus(records={len(self.records)}, bad={len(self.bad)}, units={len(self.units())})"

    def units(self) -> dict[str, list[Record]]:
        """Unit key -> its records, in file order (built once per Corpus; do not mutate)."""
        return self._units

    @cached_property
    def _units(self) -> dict[str, list[Record]]:
        out: dict[str, list[Record]] = {}
        for r in self.records:
            out.setdefault(r.unit, []).append(r)
        return out

    def labels(self) -> list[str]:
        return sorted({r.label for r in self.records if r.label is not None})

    def summary(self) -> dict:
        """Exact counts for the data owner's own report. They are private: anything released
        beyond the owner (e.g. label counts steering generation) must go through a DP count."""
        units = self.units()
        return {
            "records": len(self.records),
            "bad": len(self.bad),
            "units": len(units),
            "records_per_label": dict(sorted(Counter(r.label for r in self.records if r.label is not None).items())),
            "units_per_label": dict(sorted(Counter(rs[0].label for rs in units.values() if rs[0].label).items())),
            "bad_by_reason": dict(Counter(b.reason for b in self.bad).most_common()),
        }


class _Bad(Exception):
    """A row-level rejection; its message is the BadRow reason."""


Fields = tuple[str, str | None, str | None]  # text, label, unit
Check = Callable[[Callable[[str], object]], Fields]  # validates a row given its field getter
Rows = Iterator[tuple[int, "Fields | _Bad"]]


def _scalar(value: object, name: str) -> str:
    """A label or unit value: a non-empty string or an integer, as a stripped string."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _Bad(f"{name} is not a string or integer")
    s = str(value).strip()
    if not s:
        raise _Bad(f"empty {name}")
    _check_unicode(s, name)
    return s


def _check_unicode(s: str, name: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise _Bad(f"{name} is not valid Unicode (lone surrogate)") from None


def _fields(
    get: Callable[[str], object], text_field: str, label_field: str | None, unit_field: str | None, max_chars: int
) -> Fields:
    """Validate one row's fields; `get(name)` returns the raw value or raises KeyError."""

    def need(name: str) -> object:
        try:
            value = get(name)
        except KeyError:
            raise _Bad(f"missing field {name!r}") from None
        if value is None:
            raise _Bad(f"missing field {name!r}")
        return value

    text = need(text_field)
    if not isinstance(text, str):
        raise _Bad("text is not a string")
    _check_unicode(text, "text")
    text = text.strip()
    if not text:
        raise _Bad("empty text")
    if len(text) > max_chars:
        raise _Bad(f"text over {max_chars} characters (max_record_chars)")
    label = _scalar(need(label_field), "label") if label_field else None
    unit = _scalar(need(unit_field), "unit") if unit_field else None
    return text, label, unit


def _jsonl_rows(f: BinaryIO, check: Check) -> Rows:
    """(line, fields or _Bad) per non-blank line; bytes are decoded per line so that one bad
    byte costs one row."""
    for line_no, raw in enumerate(f, start=1):
        raw = raw.removesuffix(b"\n").removesuffix(b"\r")
        if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            s = raw.decode("utf-8")
        except UnicodeDecodeError:
            yield line_no, _Bad("not UTF-8")
            continue
        if not s.strip():
            continue  # a blank line holds no row
        try:
            obj = json.loads(s)
        except json.JSONDecodeError as e:  # e.msg and colno carry no row content
            yield line_no, _Bad(f"malformed JSON: {e.msg} (column {e.colno})")
            continue
        if not isinstance(obj, dict):
            yield line_no, _Bad(f"JSON row is not an object (got {type(obj).__name__})")
            continue
        try:
            yield line_no, check(obj.__getitem__)
        except _Bad as e:
            yield line_no, e


def _csv_rows(raw: BinaryIO, path: str, check: Check, text_field: str, label_field: str | None, unit_field: str | None) -> Rows:
    """(line, fields or _Bad) per CSV record, `line` being where the record starts.

    Undecodable bytes become lone surrogates (surrogateescape), so the CSV structure survives
    and exactly the records holding them are marked "not UTF-8".
    """
    with io.TextIOWrapper(raw, encoding="utf-8", errors="surrogateescape", newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
        except csv.Error as e:
            raise CorpusError(f"{path}: malformed CSV header: {e}") from None
        if header is None:
            return
        if header and header[0].startswith("\ufeff"):
            header[0] = header[0][1:]
        if _NOT_UTF8.search("".join(header)):
            raise CorpusError(f"{path}: the CSV header is not UTF-8")
        index = {name.strip(): i for i, name in enumerate(header)}
        for name in (text_field, label_field, unit_field):
            if name is not None and name not in index:
                raise CorpusError(f"{path}: CSV header has no column {name!r}; columns: {sorted(index)}")
        consumed = reader.line_num
        while True:
            start = consumed + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:  # e.g. a field over csv.field_size_limit(); no row content
                raise CorpusError(f"{path}: malformed CSV in the record starting at line {start}: {e}") from None
            consumed = reader.line_num
            if not row:
                continue  # a blank line holds no row
            if any(_NOT_UTF8.search(v) for v in row):
                yield start, _Bad("not UTF-8")
            elif len(row) != len(header):
                yield start, _Bad(f"row has {len(row)} fields, header has {len(header)}")
            else:
                try:
                    yield start, check(lambda name: row[index[name]])
                except _Bad as e:
                    yield start, e


def _intrinsic_keys(texts: list[str]) -> list[str]:
    """"r:" + sha256(text)[:32 hex]; later exact duplicates get "#1", "#2", ... in file order.

    Inserting a record anywhere changes no other record's key, except among exact copies of
    its own text, where the copies are interchangeable: the set of (key, text) pairs only grows.
    """
    seen: Counter[str] = Counter()
    keys = []
    for t in texts:
        k = "r:" + hashlib.sha256(t.encode("utf-8")).hexdigest()[:32]
        n = seen[k]
        seen[k] += 1
        keys.append(k if n == 0 else f"{k}#{n}")
    return keys


def _one_label_per_unit(records: list[Record]) -> tuple[list[Record], list[BadRow]]:
    """Keep each unit in one label (the DP label histogram counts each unit once): its most
    frequent label, ties to the first in sorted order; the other records become BadRows."""
    counts: dict[str, Counter[str]] = {}
    for r in records:
        counts.setdefault(r.unit, Counter())[r.label] += 1  # type: ignore[index]
    keep = {u: min(c, key=lambda lab: (-c[lab], lab)) for u, c in counts.items()}
    kept = [r for r in records if r.label == keep[r.unit]]
    dropped = [BadRow(r.line, MIXED_LABELS) for r in records if r.label != keep[r.unit]]
    return kept, dropped


def read_corpus(
    path: str | Path,
    text_field: str = "text",
    label_field: str | None = None,
    unit_field: str | None = None,
    fmt: str | None = None,
    max_record_chars: int = 2000,
    max_bad_fraction: float = 0.05,
    max_records: int = 1_000_000,
) -> Corpus:
    """Read and validate a corpus; raise CorpusError when too much of it is bad or it is empty.

    JSONL: one JSON object per line (".json" is read as JSON Lines too). CSV: a header row
    naming the columns. Blank lines are not rows. Labels and units may be strings or integers.
    Records dropped to keep each unit in one label are bad rows too, and count toward
    max_bad_fraction: many of them mean the unit or label field is probably the wrong one.
    """
    path = Path(path)
    fmt = fmt if fmt is not None else FORMATS.get(path.suffix.lower())
    require(fmt in ("jsonl", "csv"), "fmt", "'jsonl' or 'csv' (or a .jsonl/.json/.csv suffix)", fmt or path.suffix)
    with open(path, "rb") as f:
        return parse_corpus(f, fmt, str(path), text_field, label_field, unit_field, max_record_chars, max_bad_fraction, max_records)


def parse_corpus(
    stream: BinaryIO,
    fmt: str,
    name: str,
    text_field: str = "text",
    label_field: str | None = None,
    unit_field: str | None = None,
    max_record_chars: int = 2000,
    max_bad_fraction: float = 0.05,
    max_records: int = 1_000_000,
) -> Corpus:
    """read_corpus on an open binary stream (an uploaded file held in memory); `name` stands for
    the file in messages."""
    path = name
    require(fmt in ("jsonl", "csv"), "fmt", "'jsonl' or 'csv'", fmt)
    require(isinstance(text_field, str) and text_field != "", "text_field", "a non-empty string", text_field)
    names = [n for n in (text_field, label_field, unit_field) if n is not None]
    require(len(set(names)) == len(names), "text_field, label_field, unit_field", "distinct", names)
    for name, value in (("max_record_chars", max_record_chars), ("max_records", max_records)):
        require(isinstance(value, int) and not isinstance(value, bool) and value >= 1, name, "an integer >= 1", value)
    frac_ok = isinstance(max_bad_fraction, (int, float)) and 0 <= max_bad_fraction <= 1
    require(frac_ok, "max_bad_fraction", "in [0, 1]", max_bad_fraction)

    def check(get: Callable[[str], object]) -> Fields:
        return _fields(get, text_field, label_field, unit_field, max_record_chars)

    rows = _jsonl_rows(stream, check) if fmt == "jsonl" else _csv_rows(stream, path, check, text_field, label_field, unit_field)
    good: list[tuple[int, str, str | None, str | None]] = []
    bad: list[BadRow] = []
    for line, result in rows:
        if isinstance(result, _Bad):
            bad.append(BadRow(line, str(result)))
            continue
        good.append((line, *result))
        if len(good) > max_records:
            raise CorpusError(f"{path}: more than max_records={max_records} good records (stopped at line {line})")

    units = [u for _, _, _, u in good] if unit_field else _intrinsic_keys([t for _, t, _, _ in good])
    records = [Record(line, t, lab, u) for (line, t, lab, _), u in zip(good, units)]
    if label_field:
        records, dropped = _one_label_per_unit(records)
        bad = sorted(bad + dropped, key=lambda b: b.line)

    total = len(records) + len(bad)
    shown = "; ".join(f"line {b.line}: {b.reason}" for b in bad[:_SHOWN_BAD])
    if total and len(bad) / total > max_bad_fraction:
        raise CorpusError(
            f"{path}: {len(bad)} of {total} rows are bad ({len(bad) / total:.1%}), over "
            f"max_bad_fraction={max_bad_fraction}; first bad rows: {shown}"
        )
    if not records:
        raise CorpusError(f"{path}: no good records ({len(bad)} bad rows{'; ' + shown if shown else ''})")
    return Corpus(tuple(records), tuple(bad), text_field, label_field, unit_field)


def corpus_from_rows(rows: list[dict], text_field: str, label_field: str | None, unit_field: str | None) -> Corpus:
    """A Corpus of rows already validated by parse_corpus and stored as {text, label, unit}
    (unit: the key parse_corpus gave the record, intrinsic or from the unit field)."""
    records = tuple(Record(i + 1, r["text"], r.get("label"), str(r["unit"])) for i, r in enumerate(rows))
    return Corpus(records, (), text_field, label_field, unit_field)
