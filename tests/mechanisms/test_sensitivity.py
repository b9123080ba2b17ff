"""Property tests: one unit's removal moves what each mechanism privatises by at most its
stated sensitivity, for arbitrary logits (mechanisms.costs)."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mechanisms import DecodingConfig, sensitivity
from mechanisms.select import aggregate_amin, aggregate_em, aggregate_gaussian_sum

V = 6
finite = st.floats(-50, 50, allow_nan=False, allow_infinity=False)


def rows(n):
    return arrays(np.float64, (n, V), elements=finite)


@st.composite
def cases(draw):
    n = draw(st.integers(1, 6))
    return (
        draw(rows(n)),
        draw(arrays(np.float64, (1, V), elements=finite)),
        draw(st.integers(1, 8)),  # N
        draw(st.floats(0.01, 10)),  # C
        draw(st.integers(0, n - 1)),  # the row of the removed unit
        draw(rows(1)),  # its replacement (few-shot layout)
    )


def em_avg(z, zp, cfg):
    return aggregate_em(z, zp, np.array([len(z)]), np.zeros(len(z), dtype=int), cfg)[0] * cfg.temperature


def amin_avg(z, cfg):
    return aggregate_amin(z, z.max(axis=1) if len(z) else np.zeros(0), np.array([len(z)]), cfg)[0] * cfg.temperature


@settings(max_examples=300, deadline=None)
@given(cases())
def test_clipped_average_moves_at_most_c_over_n(case):
    z, zp, n, c, i, new = case
    removed = np.delete(z, i, axis=0)
    changed = z.copy()
    changed[i] = new[0]
    for mech, avg in (("em", lambda x, cfg: em_avg(x, zp, cfg)), ("amin", amin_avg)):
        cfg = DecodingConfig(mechanism=mech, partitions=n, clip=c, top_k=None)
        assert np.abs(avg(z, cfg) - avg(removed, cfg)).max() <= sensitivity(cfg) * (1 + 1e-9)
        few = cfg.replace(units_per_row=2)  # a removed unit changes its row: 2C/N
        assert np.abs(avg(z, few) - avg(changed, few)).max() <= sensitivity(few) * (1 + 1e-9)
        assert sensitivity(few) == 2 * sensitivity(cfg)


@settings(max_examples=300, deadline=None)
@given(cases())
def test_summed_probabilities_move_at_most_one_in_l2(case):
    z, _, n, _, i, new = case
    cfg = DecodingConfig(mechanism="gaussian", partitions=n, top_k=None)
    valid = np.ones((len(z), V), dtype=bool)

    def total(x):
        return aggregate_gaussian_sum(x, valid[: len(x)], np.array([len(x)]), cfg)[0]

    assert np.linalg.norm(total(z) - total(np.delete(z, i, axis=0))) <= sensitivity(cfg) + 1e-9
    changed = z.copy()
    changed[i] = new[0]
    few = cfg.replace(units_per_row=3)
    assert np.linalg.norm(total(z) - total(changed)) <= sensitivity(few) + 1e-9
