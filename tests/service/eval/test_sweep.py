"""A sweep of one eval setting, side by side: pure functions checked case by case."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from service.eval.runner import cell_name
from service.eval.sweep import markdown, parse, table, value_folder, verdicts


@pytest.mark.parametrize(("text", "expected"), [
    ("temperature=1.4,0.7,1", ("temperature", (0.7, 1.0, 1.4))),   # sorted
    ("top-k=64,16,64,256", ("top_k", (16.0, 64.0, 256.0))),        # flag spelling, duplicates dropped
    ("partitions=8,32", ("partitions", (8.0, 32.0))),
])
def test_parse(text, expected):
    assert parse(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("temperature", "expected SETTING=V1,V2,..."),
    ("seed=0,1", "SETTING one of temperature, top-k, partitions, records, max-tokens"),  # seeds have --seeds
    ("epsilons=1,3", "SETTING one of"),                                                 # the grid has its own flags
    ("top-k=16,x", "top-k values must be comma-separated numbers"),
    ("top-k=16,16", "at least 2 distinct finite values of top-k"),
    ("temperature=1,inf", "finite"),
])
def test_parse_names_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=message):
        parse(text)


def test_value_folder_is_the_flag_and_the_value():
    assert value_folder(Path("o"), "top_k", 16.0) == Path("o/top-k-16")
    assert value_folder(Path("o"), "temperature", 0.7) == Path("o/temperature-0.7")


def _cell(eps, mechanism: str, tfidf: float, minilm: float) -> dict:
    return {"epsilon": eps, "mechanism": mechanism, "tfidf": {"balanced_accuracy": tfidf}, "minilm": {"balanced_accuracy": minilm},
            "frechet": round(1 - tfidf, 3), "distinct_1": round(minilm / 2, 3)}


def _run(top_k: int, *cells: dict, real=(0.8, 0.9)) -> dict:
    named = {cell_name(math.inf if c["epsilon"] == "inf" else c["epsilon"], c["mechanism"]): c for c in cells}
    return {"settings": {"seed": 0, "records": 100, "partitions": 8, "temperature": 1.0, "top_k": top_k, "delta": 1e-5,
                         "max_tokens": None},
            "datasets": {"d": {"majority": {"balanced_accuracy": 0.5}, "real": _cell("-", "real", *real), "cells": named}}}


@pytest.fixture
def swept() -> dict:
    return table("top_k", {
        64.0: _run(64, _cell(3.0, "em", 0.60, 0.76), _cell(3.0, "amin", 0.50, 0.80), _cell("inf", "none", 0.60, 0.80)),
        16.0: _run(16, _cell(3.0, "em", 0.70, 0.70), _cell(3.0, "amin", 0.65, 0.60), _cell("inf", "none", 0.80, 0.70)),
        256.0: _run(256, _cell(3.0, "em", 0.50, 0.60)),  # cut short: no amin, no ceiling
    })


def test_every_cell_holds_its_score_at_every_value_in_value_order(swept):
    d = swept["datasets"]["d"]
    assert swept["settings"]["sweep"] == "top_k" and swept["settings"]["values"] == [16.0, 64.0, 256.0]
    assert "top_k" not in swept["settings"]  # the swept setting is the column, not a setting
    assert d["cells"]["em-eps3"]["tfidf"] == [0.70, 0.60, 0.50]
    assert d["cells"]["amin-eps3"]["minilm"] == [0.60, 0.80, None]   # a missing cell is None, never a neighbour's
    assert d["cells"]["em-eps3"]["frechet"] == [0.30, 0.40, 0.50] and d["cells"]["amin-eps3"]["distinct_1"] == [0.30, 0.40, None]
    assert d["goal"]["tfidf"][:2] == pytest.approx([0.875, 1.0]) and d["goal"]["tfidf"][2] is None
    assert d["goal"]["minilm"][:2] == pytest.approx([1.0, 0.95])
    assert list(d["cells"]) == ["amin-eps3", "em-eps3", "none-inf"]


def test_verdicts_name_the_best_value_the_goal_ratio_and_the_wins(swept):
    lines = verdicts(swept)
    assert "d TF-IDF + LR: em at epsilon 3 scores best at top-k 16 (0.700; 16: 0.700, 64: 0.600, 256: 0.500)" in lines
    assert ("d MiniLM + LR: em at epsilon 3 / no privacy at the same value: 16: 100.0%, 64: 95.0%; "
            "the 90% aim is met at 2 of 2 values") in lines
    assert "d TF-IDF + LR: em at epsilon 3 / no privacy at the same value: 16: 87.5%, 64: 100.0%; the 90% aim is met at 1 of 2 values" in lines
    # 256 has no amin cell, so only 16 and 64 are compared: em leads TF-IDF at both, MiniLM at 16 only
    assert "d TF-IDF + LR: at epsilon 3 em is the best mechanism at 2 of 2 values" in lines
    assert "d MiniLM + LR: at epsilon 3 em is the best mechanism at 1 of 2 values" in lines


def test_markdown_has_one_column_per_value_and_the_ratio_row(swept):
    text = markdown(swept, "privtext eval --out o --sweep top-k=16,64,256", ["sweep.png"])
    assert "| training set | top-k 16 | top-k 64 | top-k 256 |" in text
    assert "| em eps 3 | 0.700 / 0.700 | 0.600 / 0.760 | 0.500 / 0.600 |" in text
    assert "| amin eps 3 | 0.650 / 0.600 | 0.500 / 0.800 | - / - |" in text
    assert "| **em eps 3 / no privacy** | 87.5% / 100.0% | 100.0% / 95.0% | - / - |" in text
    fidelity = text.split("Frechet distance")[1]
    assert "| em eps 3 | 0.300 / 0.350 | 0.400 / 0.380 | 0.500 / 0.300 |" in fidelity
    assert "| real (same rows) | 0.200 / 0.450 | 0.200 / 0.450 | 0.200 / 0.450 |" in fidelity
    assert "`top-k-16`" in text and "temperature 1" in text and "top-k 64" not in text.split("## d")[0]


def test_nothing_finished_is_a_clear_error():
    with pytest.raises(ValueError, match="no value of top-k has a finished cell yet"):
        table("top_k", {16.0: _run(16), 64.0: _run(64)})
