"""From a corpus and a plan to the groups the engine decodes, round by round.

Strata are labels (or one unnamed stratum without labels). In each stratum, units go to groups
by the keyed hash of mechanisms.partition with the stratum's public group count; round r takes
the first min(G, records left) groups (by index: a public choice). Each group becomes one
GroupRequest: its rows' prompts and the public row's prompt.

Every row is cut to a public token cap after tokenization (row_tokens), and every group
carries its public worst case (row slots, token cap), so no unit's text, however long or
exotic (500 emoji are ~1,500 tokens), can push a row past the model's context or a group past
a batch: whether a job fits is decided at plan time from public numbers only.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from mechanisms import Plan, build_groups

from ..engine.interface import Engine, GroupRequest
from .corpus import Corpus
from .prompts import Template


@dataclass(frozen=True)
class Stratum:
    label: str | None
    units: Mapping[str, Sequence[str]]  # unit key -> its records' texts
    groups: int  # public group count
    records: int  # records wanted


def strata_of(corpus: Corpus, plan: Plan, labels: Sequence[str] | None) -> list[Stratum]:
    """Units per label (a unit's label is its records' label; corpus.py keeps one per unit)."""
    units: dict[str | None, dict[str, list[str]]] = {}
    for key, recs in corpus.units().items():
        label = recs[0].label if labels is not None else None
        if labels is not None and label not in labels:
            continue  # records of labels not asked for are not used
        units.setdefault(label, {})[key] = [r.text for r in recs]
    if labels is None:
        return [Stratum(None, units.get(None, {}), plan.groups_per_round, plan.records)]
    return [Stratum(lab, units.get(lab, {}), plan.strata[lab]["groups"], plan.strata[lab]["records"]) for lab in labels]


class RowCapError(ValueError):
    """The template alone (no records) is over the row token cap: public, found at plan time."""


def empty_row_tokens(engine: Engine, template: Template, label: str | None) -> int:
    """Tokens of a row prompt with no records: the least max_row_tokens can be (public)."""
    return len(engine.encode_chat(template.row_prompt([], label)))


def row_tokens(engine: Engine, template: Template, records: Sequence[str], label: str | None, cap: int) -> tuple[int, ...]:
    """A row's prompt as token ids, at most `cap` of them.

    Records go in their (keyed) order while the tokenized prompt fits; the first that does not
    fit is cut to its longest fitting prefix (by characters) and the rest are left out. The cut
    depends only on this unit's own records and public numbers. Never raises for a unit's text:
    if nothing of it fits, the row holds the template alone (which plan time checked fits)."""
    ids = engine.encode_chat(template.row_prompt(records, label))
    if len(ids) <= cap:
        return ids

    def fits(rs: Sequence[str]) -> tuple[int, ...] | None:
        t = engine.encode_chat(template.row_prompt(rs, label))
        return t if len(t) <= cap else None

    kept: list[str] = []
    for r in records:
        if fits([*kept, r]) is not None:
            kept.append(r)
            continue
        lo, hi = 0, min(len(r), template.max_record_chars)
        while lo < hi:  # longest prefix that fits (token counts grow with the prefix, nearly always)
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fits([*kept, r[:mid]]) is not None else (lo, mid - 1)
        if lo and fits([*kept, r[:lo]]) is not None:
            kept.append(r[:lo])
        break
    out = fits(kept) or fits([])
    if out is None:
        raise RowCapError(f"max_row_tokens must be at least {empty_row_tokens(engine, template, label)} "
                          f"(the template's prompt with no records), got {cap}")
    return out


def group_requests(
    strata: Sequence[Stratum],
    plan: Plan,
    secret: bytes,
    template: Template,
    engine: Engine,
    max_records_per_unit: int,
    stop: tuple[str, ...] = (),
    max_row_tokens: int = 512,
    cache_salt: str | None = None,
) -> Iterator[tuple[GroupRequest, str | None]]:
    """Every group of every round, lazily (prompts are tokenized as the engine asks for them).
    Each carries the public worst case it is admitted by: plan.config.max_rows row slots of
    max_row_tokens tokens."""
    cfg = plan.config
    slots = cfg.max_rows if cfg.units_per_row == 1 else None
    public = {s.label: engine.encode_chat(template.public_prompt(s.label)) for s in strata}
    gid = 0
    for round_ in range(plan.rounds):
        for s in strata:
            left = s.records - round_ * s.groups
            if left <= 0:
                continue
            rows_by_group = build_groups(s.units, secret, round_, s.groups, cfg.partitions, cfg.units_per_row,
                                         max_records_per_unit, row_slots=slots, first=min(s.groups, left))
            for rows in rows_by_group:
                prompts = tuple(row_tokens(engine, template, r.records, s.label, max_row_tokens) for r in rows)
                yield GroupRequest(gid, prompts, public[s.label], plan.max_tokens, stop=stop, max_rows=cfg.max_rows,
                                   max_row_tokens=max_row_tokens, cache_salt=cache_salt), s.label
                gid += 1
