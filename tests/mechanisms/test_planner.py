"""The planner: rounds and groups from public counts, worst-case charges, budget refusals."""

import pytest

from mechanisms import BudgetExceeded, DecodingConfig, Ledger, LedgerEntry, epsilon_of, plan
from mechanisms.counts import count_event


def test_plan_from_the_issue():
    p = plan(units=5000, records=200, max_tokens=64, epsilon=3.0, delta=1e-6)
    assert (p.groups_per_round, p.rounds, p.charged_tokens_per_record) == (625, 1, 64)
    assert p.epsilon == pytest.approx(3.0, rel=1e-6) and p.epsilon <= 3.0
    assert p.rho_total == pytest.approx(64 * p.rho_per_token)
    assert p.units_source == "declared-public"


def test_rounds_compose_sequentially_groups_in_parallel():
    one = plan(units=80, records=10, max_tokens=16, delta=1e-3, config=DecodingConfig(clip=0.5))
    three = plan(units=80, records=30, max_tokens=16, delta=1e-3, config=DecodingConfig(clip=0.5))
    assert (one.groups_per_round, one.rounds, three.rounds) == (10, 1, 3)
    assert three.rho_total == pytest.approx(3 * one.rho_total)  # rounds add up
    fewer = plan(units=80, records=4, max_tokens=16, delta=1e-3, config=DecodingConfig(clip=0.5))
    assert fewer.rho_total == pytest.approx(one.rho_total)  # more groups in a round cost nothing more


def test_dp_count_is_charged_with_the_job():
    p = plan(units=1000, records=50, max_tokens=32, epsilon=2.0, delta=1e-6, units_source="dp-count", count_noise=5.0)
    assert p.events[0] == count_event(5.0)
    assert epsilon_of(p.events, 1e-6) <= 2.0 and p.epsilon == pytest.approx(2.0, rel=1e-6)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"delta": 1e-2}, "delta"),  # delta must be <= 1/units
        ({"units": 0}, "units"),
        ({"records": 0}, "records"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"epsilon": -1.0}, "epsilon"),
    ],
)
def test_plan_bad_inputs(kwargs, field):
    args = {"units": 5000, "records": 200, "max_tokens": 64, "epsilon": 3.0, "delta": 1e-6} | kwargs
    with pytest.raises(ValueError, match=f"^{field} must be"):
        plan(**args)


def test_refuses_what_exceeds_the_ledger_and_says_what_fits():
    ledger = Ledger(4.0, 1e-6)
    first = plan(units=5000, records=200, max_tokens=64, epsilon=2.0, delta=1e-6, ledger=ledger)
    ledger = ledger.charge(LedgerEntry("job 1", first.events))
    cfg = plan(units=5000, records=200, max_tokens=64, epsilon=0.5, delta=1e-6).config  # one round: epsilon 0.5
    with pytest.raises(BudgetExceeded) as e:
        plan(units=5000, records=200_000, max_tokens=64, config=cfg, delta=1e-6, ledger=ledger)
    fits = e.value.fits
    msg = str(e.value)
    assert "over its cap 4" in msg and "over by" in msg and "max records" in msg
    # what it says fits does fit, and one more round does not
    ok = plan(units=5000, records=fits["max_records"], max_tokens=64, config=cfg, delta=1e-6, ledger=ledger)
    assert ok.ledger_epsilon_after <= 4.0
    with pytest.raises(BudgetExceeded):
        plan(units=5000, records=fits["max_records"] + 625, max_tokens=64, config=cfg, delta=1e-6, ledger=ledger)
    assert fits["max_records"] >= 625 and fits["max_tokens"] < 64
    assert 2.0 < fits["max_epsilon"] < 4.0  # more than cap minus spent: epsilon composes sub-additively
    # a fresh job calibrated to max_epsilon fits exactly
    again = plan(units=5000, records=200, max_tokens=64, epsilon=fits["max_epsilon"] * (1 - 1e-9), delta=1e-6, ledger=ledger)
    assert again.ledger_epsilon_after <= 4.0


def test_spent_budget_says_nothing_fits():
    ledger = Ledger(1.0, 1e-6)
    full = plan(units=5000, records=10, max_tokens=8, epsilon=1.0, delta=1e-6, ledger=ledger)
    ledger = ledger.charge(LedgerEntry("all", full.events))
    with pytest.raises(BudgetExceeded, match="nothing"):
        plan(units=5000, records=10, max_tokens=8, epsilon=0.1, delta=1e-6, ledger=ledger)


def test_label_strata_compose_in_parallel():
    """spam: 80 units -> 10 groups, 25 records -> 3 rounds; ham: 800 units -> 100 groups, 175
    records -> 2 rounds. Disjoint units: the charge is the larger, 3 rounds."""
    cfg = DecodingConfig(clip=0.5)
    p = plan(units=880, records=200, max_tokens=16, delta=1e-6, config=cfg, strata={"spam": (80, 25), "ham": (800, 175)})
    assert p.strata == {"ham": {"units": 800, "records": 175, "groups": 100, "rounds": 2}, "spam": {"units": 80, "records": 25, "groups": 10, "rounds": 3}}
    assert p.rounds == 3 and p.groups_per_round == 110
    alone = plan(units=80, records=25, max_tokens=16, delta=1e-6, config=cfg)
    assert p.rho_total == pytest.approx(alone.rho_total)
    with pytest.raises(ValueError, match="^records must be the sum"):
        plan(units=880, records=199, max_tokens=16, delta=1e-6, config=cfg, strata={"spam": (80, 25), "ham": (800, 175)})
    h = plan(units=880, records=200, max_tokens=16, delta=1e-6, epsilon=2.0, strata={"spam": (80, 25), "ham": (800, 175)},
             units_source="dp-count", count_noise=8.0)
    assert h.events[0].note.startswith("DP label histogram") and h.epsilon <= 2.0
