"""Units, rows, groups, rounds: where every sensitivity in mechanisms.costs comes from.

unit  : the privacy unit (a record, or all records sharing a unit key); adjacency adds or
        removes one unit with all its records.
row   : one prompt. Default layout: exactly one unit per row (its records, up to a public cap,
        in keyed order), so removing a unit removes one row.
group : the rows that decode one synthetic record together (plus one public row); at most
        a public number M of private rows (DecodingConfig.max_rows).
round : one pass over the units; every unit is in exactly one group per round.

Units go to groups by HMAC-SHA256(dataset secret, round, unit key) mod G. The assignment of
a unit depends on nothing but its own key, so adding or removing a unit never moves another
(sort-and-slice would shift every later group). G comes from a public count only. Inside a
group each unit hashes to one of M row slots; a slot that two or more units hash to keeps none,
so no group exceeds M rows and one unit changes at most one row (its own, or the one it
collides with): capacity is decided by M, never by how many units happened to land together.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .config import require


def _digest(secret: bytes, *parts: object) -> bytes:
    """HMAC-SHA256 of the parts, each length-prefixed so that no two tuples share a message."""
    msg = b"".join(len(b).to_bytes(4, "big") + b for b in (str(p).encode("utf-8") for p in parts))
    return hmac.new(secret, msg, hashlib.sha256).digest()


def _check_secret(secret: bytes) -> None:
    require(isinstance(secret, bytes) and len(secret) >= 16, "secret", "at least 16 bytes", type(secret).__name__)


def group_count(units_public: int, partitions: int, units_per_row: int = 1) -> int:
    """G = max(1, floor(n_public / (N k))), from a public count only (declared or DP-released).

    With the true count, every unit's group would depend on whether one other unit is present.
    """
    require(isinstance(units_public, int) and units_public >= 0, "units", "a public integer count >= 0", units_public)
    require(isinstance(partitions, int) and partitions >= 1, "partitions", "an integer >= 1", partitions)
    require(isinstance(units_per_row, int) and units_per_row >= 1, "units_per_row", "an integer >= 1", units_per_row)
    return max(1, units_public // (partitions * units_per_row))


def rounds_needed(records: int, groups: int) -> int:
    """Each round yields one record per group: ceil(records / groups) rounds."""
    require(isinstance(records, int) and records >= 1, "records", "an integer >= 1", records)
    return math.ceil(records / groups)


def unit_group(unit_key: str, secret: bytes, round_: int, groups: int) -> int:
    """The group of one unit in one round: HMAC-SHA256(secret, round, unit key) mod G."""
    return int.from_bytes(_digest(secret, "group", round_, unit_key), "big") % groups


def assign_groups(unit_keys: Iterable[str], secret: bytes, round_: int, groups: int) -> dict[str, int]:
    _check_secret(secret)
    require(isinstance(groups, int) and groups >= 1, "groups", "an integer >= 1", groups)
    return {u: unit_group(u, secret, round_, groups) for u in unit_keys}


def keyed_order(items: Sequence[str], secret: bytes, *context: object) -> list[str]:
    """items sorted by a keyed hash: an order no one without the secret can predict or steer,
    that does not depend on the order the items arrived in."""
    return sorted(items, key=lambda s: (_digest(secret, "order", *context, s), s))


@dataclass(frozen=True)
class Row:
    """One prompt's private content: its units and their records (already capped and ordered)."""

    units: tuple[str, ...]
    records: tuple[str, ...]


def build_groups(
    unit_records: Mapping[str, Sequence[str]],
    secret: bytes,
    round_: int,
    groups: int,
    partitions: int,
    units_per_row: int = 1,
    max_records_per_unit: int = 4,
    row_slots: int | None = None,
    first: int | None = None,
) -> list[list[Row]]:
    """Rows of every group for one round.

    Default layout (units_per_row = 1): each unit hashes to one of its group's row_slots (M)
    slots, and a unit alone in its slot is one row; a slot with two or more units keeps none.
    Rows per group are at most M (aggregation divides by the public N whatever their number).
    Adjacency: adding unit u either fills an empty slot (one row added) or collides (the one
    unit already alone there loses its row: one row removed; a slot already shared stays
    empty: nothing changes), so one unit still moves the group by one row, never two. A unit
    keeps at most max_records_per_unit records, chosen in keyed order, so another unit's
    presence never changes them. row_slots None: no bound (tests of the old layout only).

    first: build the rows of groups 0..first-1 only (a round that needs fewer records than it
    has groups); every unit is still hashed, so the groups built are exactly the same.

    Few-shot layout (units_per_row = k > 1): the group's N slots each take the first k of its
    units (keyed order) that hash to that slot; a unit can evict another from a slot, so a unit
    removed can *change* a row: mechanisms.costs charges the doubled sensitivity for it.
    """
    _check_secret(secret)
    require(isinstance(groups, int) and groups >= 1, "groups", "an integer >= 1", groups)
    require(isinstance(partitions, int) and partitions >= 1, "partitions", "an integer >= 1", partitions)
    require(isinstance(units_per_row, int) and units_per_row >= 1, "units_per_row", "an integer >= 1", units_per_row)
    require(
        isinstance(max_records_per_unit, int) and max_records_per_unit >= 1,
        "max_records_per_unit", "an integer >= 1", max_records_per_unit,
    )
    require(row_slots is None or (isinstance(row_slots, int) and row_slots >= 1), "row_slots", "None or an integer >= 1", row_slots)

    def records_of(unit: str) -> tuple[str, ...]:
        return tuple(keyed_order(list(unit_records[unit]), secret, "records", round_, unit)[:max_records_per_unit])

    require(first is None or (isinstance(first, int) and 0 <= first <= groups), "first", f"None or in [0, {groups}]", first)
    wanted = groups if first is None else first
    members: list[list[str]] = [[] for _ in range(wanted)]
    for unit in unit_records.keys():
        g = unit_group(unit, secret, round_, groups)
        if g < wanted:
            members[g].append(unit)

    out: list[list[Row]] = []
    for g, units in enumerate(members):
        units = keyed_order(units, secret, "rows", round_, g)
        if units_per_row == 1:
            if row_slots is not None:
                by_slot: dict[int, list[str]] = {}
                for u in units:
                    by_slot.setdefault(int.from_bytes(_digest(secret, "row slot", round_, u), "big") % row_slots, []).append(u)
                units = [us[0] for _, us in sorted(by_slot.items()) if len(us) == 1]
            out.append([Row((u,), records_of(u)) for u in units])
            continue
        slots: list[list[str]] = [[] for _ in range(partitions)]
        for u in units:
            s = int.from_bytes(_digest(secret, "slot", round_, u), "big") % partitions
            if len(slots[s]) < units_per_row:
                slots[s].append(u)
        out.append([Row(tuple(us), tuple(r for u in us for r in records_of(u))) for us in slots if us])
    return out
