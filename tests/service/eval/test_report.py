"""The eval verdicts: pure functions of a results dict, checked case by case."""

from __future__ import annotations

import math

import pytest

from service.eval.report import verdicts
from service.eval.runner import cell_name


def _cell(eps, mechanism: str, tfidf: float, minilm: float) -> dict:
    return {"epsilon": eps, "mechanism": mechanism,
            "tfidf": {"balanced_accuracy": tfidf, "accuracy": tfidf},
            "minilm": {"balanced_accuracy": minilm, "accuracy": minilm}}


def _results(*cells: dict) -> dict:
    names = {cell_name(math.inf if c["epsilon"] == "inf" else c["epsilon"], c["mechanism"]): c for c in cells}
    return {"datasets": {"d": {"cells": names}}}


@pytest.mark.parametrize(("em", "none", "expected"), [
    (0.512, 0.572, "FAIL d TF-IDF + LR: em at epsilon 3 reaches 89.5% "),  # 0.895: must not print as "90%"
    (0.540, 0.600, "PASS d TF-IDF + LR: em at epsilon 3 reaches 90.0% "),   # exactly the aim passes
    (0.700, 0.600, "PASS d TF-IDF + LR: em at epsilon 3 reaches 116.7% "),
])
def test_the_goal_verdict_compares_em_at_epsilon_3_with_no_privacy(em, none, expected):
    lines = verdicts(_results(_cell(3.0, "em", em, 0.5), _cell("inf", "none", none, 0.5)))
    assert any(line.startswith(expected) for line in lines), lines


@pytest.mark.parametrize(("scores", "verdict", "best"), [
    ({"em": 0.6, "amin": 0.5, "gaussian": 0.4}, "PASS", "em"),
    ({"em": 0.5, "amin": 0.6, "gaussian": 0.4}, "FAIL", "amin"),
    ({"em": 0.6, "amin": 0.6, "gaussian": 0.4}, "PASS", "em"),  # a tie with em counts for em
])
def test_the_best_mechanism_verdict_is_per_epsilon_and_classifier(scores, verdict, best):
    cells = [_cell(1.0, m, v, 0.5) for m, v in scores.items()] + [_cell(3.0, "em", 0.5, 0.5)]
    lines = [ln for ln in verdicts(_results(*cells)) if "TF-IDF" in ln and "at epsilon 1 the best" in ln]
    assert lines == [f"{verdict} d TF-IDF + LR: at epsilon 1 the best mechanism is {best} ("
                     + ", ".join(f"{m} {v:.3f}" for m, v in sorted(scores.items())) + ")"]


def test_no_goal_verdict_without_the_non_private_cell():
    lines = verdicts(_results(_cell(3.0, "em", 0.6, 0.6), _cell(3.0, "amin", 0.5, 0.5)))
    assert not any("reaches" in ln for ln in lines)
    assert len(lines) == 2  # the best-mechanism verdict for each classifier


@pytest.mark.parametrize("epsilons", [[1.0, 3.0], [1.0, 3.0, 10.0], [0.5, 2.0]])
def test_the_epsilon_axis_labels_the_runs_epsilons_and_nothing_between(epsilons):
    """A log axis spanning less than a decade labels its minor ticks ("2 x 10^0") by default."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from service.eval.report import epsilon_axis

    fig, ax = plt.subplots()
    ax.plot(epsilons, [0.5] * len(epsilons))
    epsilon_axis(ax, epsilons)
    fig.canvas.draw()
    shown = [t.get_text() for t in ax.get_xticklabels(which="both") if t.get_text()]
    plt.close(fig)
    assert shown == [f"{e:g}" for e in epsilons]


def _costed(eps, mechanism: str, tfidf: float, minilm: float, forwards: int, seconds: float) -> dict:
    return _cell(eps, mechanism, tfidf, minilm) | {"forwards": forwards, "generate_seconds": seconds}


def _dp(eps: float, tfidf: float, minilm: float) -> dict:
    return {"epsilon": eps, "n": 300, "tfidf": {"balanced_accuracy": tfidf, "accuracy": tfidf},
            "minilm": {"balanced_accuracy": minilm, "accuracy": minilm}, "seconds": 2.0}


def test_pe_is_compared_with_decoding_not_ranked_among_the_mechanisms():
    cells = [_cell(3.0, "em", 0.6, 0.5), _cell(3.0, "amin", 0.5, 0.5), _cell(3.0, "pe", 0.9, 0.9)]
    lines = [ln for ln in verdicts(_results(*cells)) if "best mechanism" in ln]
    assert lines[0] == "PASS d TF-IDF + LR: at epsilon 3 the best mechanism is em (amin 0.500, em 0.600)"


@pytest.mark.parametrize(("pe", "em", "dp", "expected"), [
    (0.70, 0.60, 0.65, ["pe leads d TF-IDF + LR at epsilon 3: pe 0.700 (40 forwards, 9 s), best decoding em 0.600 (300 forwards, 20 s)",
                        "BEATS d TF-IDF + LR at epsilon 3: best synthetic set pe 0.700 vs DP-trained on 300 real rows 0.650"]),
    (0.50, 0.60, 0.65, ["decoding leads d TF-IDF + LR at epsilon 3: pe 0.500 (40 forwards, 9 s), best decoding em 0.600 (300 forwards, 20 s)",
                        "BELOW d TF-IDF + LR at epsilon 3: best synthetic set em 0.600 vs DP-trained on 300 real rows 0.650"]),
    (0.60, 0.60, 0.60, ["decoding leads d TF-IDF + LR at epsilon 3: pe 0.600 (40 forwards, 9 s), best decoding em 0.600 (300 forwards, 20 s)",
                        "BELOW d TF-IDF + LR at epsilon 3: best synthetic set em 0.600 vs DP-trained on 300 real rows 0.600"]),  # ties: no lead
])
def test_comparisons_name_pe_against_decoding_and_the_best_set_against_the_dp_trained_row(pe, em, dp, expected):
    from service.eval.report import comparisons

    results = _results(_costed(3.0, "em", em, 0.5, 300, 20.0), _costed(3.0, "pe", pe, 0.5, 40, 9.0))
    results["datasets"]["d"]["dp_trained"] = {"dp-trained-eps3": _dp(3.0, dp, 0.5)}
    assert [ln for ln in comparisons(results) if "TF-IDF" in ln] == expected


def test_comparisons_need_their_rows():
    from service.eval.report import comparisons

    assert comparisons(_results(_cell(3.0, "em", 0.6, 0.6), _cell(3.0, "amin", 0.5, 0.5))) == []  # no pe, no DP-trained row
    old = _results(_cell(3.0, "em", 0.6, 0.6), _cell(3.0, "pe", 0.5, 0.5))  # cells from before compute was recorded
    assert "pe 0.500 (compute not recorded)" in comparisons(old)[0]
