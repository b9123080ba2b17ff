"""Combining several seeds of an eval grid: pure functions checked case by case."""

from __future__ import annotations

import math

import pytest

from service.eval.report import markdown, verdicts
from service.eval.runner import cell_name
from service.eval.seeds import combine, mean_tree


@pytest.mark.parametrize(("items", "expected"), [
    ([1, 2, 6], 3.0),
    ([0.5, None], None),                              # one seed without a score: no mean
    (["inf", "inf"], "inf"),                           # equal labels are kept
    (["em", "amin"], None),                            # unequal labels are not invented
    ([{"a": 1, "b": 2}, {"a": 3}], {"a": 2.0}),        # only the keys every seed has
    ([{"w": {"mean": 4}}, {"w": {"mean": 6}}], {"w": {"mean": 5.0}}),
])
def test_mean_tree(items, expected):
    assert mean_tree(items) == expected


def _scores(v: float) -> dict:
    return {"balanced_accuracy": v, "accuracy": v}


def _cell(eps, mechanism: str, tfidf: float, minilm: float) -> dict:
    return {"epsilon": eps, "mechanism": mechanism, "n": 100, "tfidf": _scores(tfidf), "minilm": _scores(minilm),
            "frechet": 0.2, "distinct_1": 0.3, "distinct_2": 0.6, "words": {"mean": 10.0}, "pii_touched_fraction": 0.0,
            "rounds": 1, "seconds": 60.0}


def _seed(seed: int, *cells: dict) -> dict:
    named = {cell_name(math.inf if c["epsilon"] == "inf" else c["epsilon"], c["mechanism"]): c for c in cells}
    return {"settings": {"seed": seed, "records": 100, "partitions": 8, "temperature": 1.0, "top_k": 64, "delta": 1e-5,
                         "max_tokens": None},
            "datasets": {"d": {"train_rows": 4000 + seed, "test_rows": 500, "labels": ["a", "b"],
                               "majority": _scores(0.5), "real": _cell("-", "real", 0.8, 0.9), "cells": named}}}


@pytest.fixture
def two_seeds() -> dict:
    return combine({
        1: _seed(1, _cell(3.0, "em", 0.50, 0.70), _cell(3.0, "amin", 0.60, 0.60), _cell("inf", "none", 0.50, 0.70)),
        0: _seed(0, _cell(3.0, "em", 0.70, 0.80), _cell(3.0, "amin", 0.40, 0.70), _cell("inf", "none", 0.70, 0.80),
                 _cell(3.0, "gaussian", 0.9, 0.9)),
    })


def test_cells_are_the_mean_over_seeds_with_the_per_seed_values_in_seed_order(two_seeds):
    d = two_seeds["datasets"]["d"]
    assert two_seeds["settings"]["seeds"] == [0, 1] and "seed" not in two_seeds["settings"]
    em = d["cells"]["em-eps3"]["tfidf"]
    assert em["per_seed"] == [0.70, 0.50]
    assert em["balanced_accuracy"] == pytest.approx(0.60) and em["sd"] == pytest.approx(math.sqrt(0.02))  # sample sd
    assert d["train_rows"] == 4000.5 and d["real"]["minilm"]["sd"] == 0.0


def test_a_cell_some_seeds_lack_is_named_and_never_averaged(two_seeds):
    d = two_seeds["datasets"]["d"]
    assert "gaussian-eps3" not in d["cells"] and d["incomplete"] == {"gaussian-eps3": [0]}
    assert "gaussian-eps3 is left out: only seeds 0 of 0, 1 have it." in markdown(two_seeds, "cmd", [])


def test_verdicts_use_the_means_and_count_the_seeds(two_seeds):
    lines = verdicts(two_seeds)
    # TF-IDF: em 0.60 vs amin 0.50 on the means, but amin wins seed 1 (0.60 > 0.50)
    assert ("PASS d TF-IDF + LR: at epsilon 3 the best mechanism is em (amin 0.500, em 0.600); em best in 1 of 2 seeds") in lines
    goal = next(ln for ln in lines if "MiniLM" in ln and "reaches" in ln)
    assert goal.startswith("PASS d MiniLM + LR: em at epsilon 3 reaches 100.0% of the non-private mean balanced accuracy")
    assert goal.endswith("per seed 100.0%, 100.0%)")


def test_the_table_shows_mean_sd_and_seeds(two_seeds):
    report = markdown(two_seeds, "cmd", [])
    assert "seeds 0, 1 (each its own split" in report
    assert "| em | 3.0 | 100 | 0.600 ± 0.141 [0.700, 0.500] |" in report
    assert "TF-IDF bal. acc mean ± sd [per seed]" in report and "plain accuracy in brackets" not in report


def test_a_dataset_only_some_seeds_ran_is_combined_over_those():
    one = _seed(0, _cell(3.0, "em", 0.6, 0.6))
    other = _seed(1)  # seed 1 has not run d yet
    d = combine({0: one, 1: other})["datasets"]["d"]
    assert d["seeds"] == [0] and d["cells"]["em-eps3"]["tfidf"]["per_seed"] == [0.6]


def test_nothing_to_combine_is_an_error():
    with pytest.raises(ValueError, match="seeds: no results"):
        combine({})


def test_seeds_without_a_finished_cell_are_an_error_not_an_empty_report():
    with pytest.raises(ValueError, match="no seed has a finished cell yet"):
        combine({0: _seed(0), 1: _seed(1)})


def test_dp_trained_rows_are_combined_over_every_seed_that_has_them():
    dp = lambda eps, v: {"epsilon": eps, "n": 300, "tfidf": _scores(v), "minilm": _scores(v), "seconds": 1.0}  # noqa: E731
    by_seed = {0: _seed(0, _cell(3.0, "em", 0.7, 0.8)), 1: _seed(1, _cell(3.0, "em", 0.5, 0.7))}
    by_seed[0]["datasets"]["d"]["dp_trained"] = {"dp-trained-eps3": dp(3.0, 0.6), "dp-trained-eps1": dp(1.0, 0.5)}
    by_seed[1]["datasets"]["d"]["dp_trained"] = {"dp-trained-eps3": dp(3.0, 0.8)}  # seed 1 lacks epsilon 1
    rows = combine(by_seed)["datasets"]["d"]["dp_trained"]
    assert set(rows) == {"dp-trained-eps3"}
    assert rows["dp-trained-eps3"]["tfidf"]["per_seed"] == [0.6, 0.8] and rows["dp-trained-eps3"]["tfidf"]["balanced_accuracy"] == pytest.approx(0.7)
    report = markdown(combine(by_seed), "privtext eval ...", [])
    assert "| DP-trained (diffprivlib) | 3.0 | 300 | 0.700 ± 0.141 [0.600, 0.800]" in report
