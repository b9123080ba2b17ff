"""Properties of the keyed partition (hypothesis): adding a unit moves no other unit, a unit's
records share a row, assignments are reproducible, G comes from the public count."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mechanisms import assign_groups, build_groups, group_count, rounds_needed

SECRET = b"0123456789abcdef-dataset-secret"
keys = st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=60, unique=True)


@settings(max_examples=200, deadline=None)
@given(keys, st.text(min_size=1, max_size=12), st.integers(1, 20), st.integers(0, 5))
def test_adding_a_unit_moves_no_other_unit(units, extra, groups, round_):
    before = assign_groups(units, SECRET, round_, groups)
    after = assign_groups([*units, extra], SECRET, round_, groups)
    assert all(after[u] == before[u] for u in units if u != extra)


@settings(max_examples=100, deadline=None)
@given(keys, st.integers(1, 10), st.integers(0, 3), st.randoms(use_true_random=False))
def test_same_key_and_round_same_assignment_whatever_the_order(units, groups, round_, rnd):
    shuffled = list(units)
    rnd.shuffle(shuffled)
    assert assign_groups(units, SECRET, round_, groups) == assign_groups(shuffled, SECRET, round_, groups)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=8), st.lists(st.text(max_size=10), min_size=1, max_size=6), min_size=1, max_size=40),
       st.integers(1, 6), st.integers(1, 4), st.integers(1, 3))
def test_a_units_records_share_one_row(unit_records, groups, partitions, cap):
    out = build_groups(unit_records, SECRET, 0, groups, partitions, units_per_row=1, max_records_per_unit=cap)
    seen = {}
    for rows in out:
        for row in rows:
            assert len(row.units) == 1
            (u,) = row.units
            assert u not in seen  # one row per unit per round
            seen[u] = row
            assert len(row.records) == min(cap, len(unit_records[u]))
            assert all(r in unit_records[u] for r in row.records)
    assert set(seen) == set(unit_records)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=8), st.lists(st.text(max_size=10), min_size=1, max_size=3), min_size=2, max_size=40),
       st.integers(1, 4))
def test_default_layout_removing_a_unit_removes_exactly_its_row(unit_records, groups):
    """The basis of sensitivity C/N: no other row of any group changes."""
    victim = sorted(unit_records)[0]
    full = build_groups(unit_records, SECRET, 1, groups, 4)
    less = build_groups({u: r for u, r in unit_records.items() if u != victim}, SECRET, 1, groups, 4)
    for a, b in zip(full, less):
        assert [r for r in a if r.units != (victim,)] == b


def test_few_shot_layout_fills_n_slots_of_k_units():
    unit_records = {f"u{i}": [f"r{i}"] for i in range(100)}
    out = build_groups(unit_records, SECRET, 0, groups=2, partitions=4, units_per_row=3)
    for rows in out:
        assert len(rows) <= 4
        assert all(1 <= len(r.units) <= 3 for r in rows)
        assert all(len(r.records) == len(r.units) for r in rows)


def test_rounds_reshuffle_groups():
    units = [f"u{i}" for i in range(200)]
    a, b = assign_groups(units, SECRET, 0, 10), assign_groups(units, SECRET, 1, 10)
    assert sum(a[u] != b[u] for u in units) > 100


def test_secret_matters_and_is_required():
    units = [f"u{i}" for i in range(200)]
    other = assign_groups(units, b"another-secret-of-16-bytes", 0, 10)
    assert other != assign_groups(units, SECRET, 0, 10)
    with pytest.raises(ValueError, match="^secret must be at least 16 bytes"):
        assign_groups(units, b"short", 0, 10)


@pytest.mark.parametrize("units,n,k,expected", [(5000, 8, 1, 625), (7, 8, 1, 1), (0, 8, 1, 1), (100, 4, 3, 8), (17, 4, 1, 4)])
def test_group_count_from_public_count(units, n, k, expected):
    assert group_count(units, n, k) == expected


def test_rounds_needed():
    assert rounds_needed(200, 625) == 1
    assert rounds_needed(200, 6) == 34
    with pytest.raises(ValueError, match="^records must be"):
        rounds_needed(0, 5)


# Row slots: a public bound on a group's rows that keeps the sensitivity at one row.

SLOT_SECRET = b"k" * 32


def _rows(units: dict, groups: int, slots: int) -> list[set[str]]:
    return [{r.units[0] for r in g} for g in build_groups(units, SLOT_SECRET, 0, groups, 8, 1, 4, row_slots=slots)]


def test_no_group_has_more_rows_than_its_slots_however_many_units_land_there():
    for n in (20, 60, 2000):  # one group holding every unit: a crowded group stays within its slots
        units = {f"u{i}": [f"text {i}"] for i in range(n)}
        for slots in (1, 8, 24):
            assert len(_rows(units, 1, slots)[0]) <= slots
    assert len(_rows({f"u{i}": ["t"] for i in range(20)}, 1, 24)[0]) >= 5  # a light group keeps most units


@pytest.mark.parametrize("extra", [f"new{i}" for i in range(40)])
def test_adding_a_unit_adds_or_removes_exactly_one_row_in_one_group_at_most(extra):
    """Adjacency with row slots: D' = D + u differs from D by one row (u's own, or the one u
    collides with), never two, so the sensitivity of the default layout stays one row."""
    units = {f"u{i}": [f"text {i}"] for i in range(120)}
    before = _rows(units, 5, 24)
    after = _rows({**units, extra: ["x"]}, 5, 24)
    changed = [(b, a) for b, a in zip(before, after) if b != a]
    assert len(changed) <= 1
    for b, a in changed:
        assert len(b ^ a) == 1  # one row added (extra) or one removed (its slot-mate), never both
        assert (a - b == {extra}) or (b - a and not a - b)


def test_row_slots_default_to_three_partitions_and_the_few_shot_layout_has_n():
    from mechanisms import DecodingConfig

    assert DecodingConfig(partitions=8).max_rows == 24
    assert DecodingConfig(partitions=8, row_slots=10).max_rows == 10
    assert DecodingConfig(partitions=8, units_per_row=2).max_rows == 8
    with pytest.raises(ValueError, match="^row_slots must be unset with units_per_row > 1"):
        DecodingConfig(partitions=8, units_per_row=2, row_slots=4)
