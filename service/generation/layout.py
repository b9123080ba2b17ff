"""From a corpus and a plan to the groups the engine decodes, round by round.

Strata are labels (or one unnamed stratum without labels). In each stratum, units go to groups
by the keyed hash of mechanisms.partition with the stratum's public group count; round r takes
the first min(G, records left) groups (by index: a public choice). Each group becomes one
GroupRequest: its rows' prompts and the public row's prompt.
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


def group_requests(
    strata: Sequence[Stratum],
    plan: Plan,
    secret: bytes,
    template: Template,
    engine: Engine,
    max_records_per_unit: int,
    stop: tuple[str, ...] = (),
) -> Iterator[tuple[GroupRequest, str | None]]:
    """Every group of every round, lazily (prompts are tokenized as the engine asks for them)."""
    cfg = plan.config
    public = {s.label: engine.encode_chat(template.public_prompt(s.label)) for s in strata}
    gid = 0
    for round_ in range(plan.rounds):
        for s in strata:
            left = s.records - round_ * s.groups
            if left <= 0:
                continue
            rows_by_group = build_groups(s.units, secret, round_, s.groups, cfg.partitions, cfg.units_per_row, max_records_per_unit)
            for rows in rows_by_group[: min(s.groups, left)]:
                prompts = tuple(engine.encode_chat(template.row_prompt(r.records, s.label)) for r in rows)
                yield GroupRequest(gid, prompts, public[s.label], plan.max_tokens, stop=stop), s.label
                gid += 1
