"""From a finished group to a released record: the PII policy, empty records, the counts.

Post-processing of the mechanism's output: it spends no budget and never triggers a new
decode (a dropped record is simply not released), so it can never spend more than was reserved.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from ..engine.interface import GroupResult

PiiPolicy = Literal["redact", "drop", "report", "off"]


@dataclass(frozen=True)
class OutRecord:
    group_id: int
    text: str  # after the PII policy; "" when not released
    label: str | None
    tokens: int
    finish_reason: str
    findings: dict[str, int]  # entity type -> count (never the originals)
    released: bool  # False: empty, or dropped by the PII policy

    def to_json(self, with_label: bool) -> dict:
        return {
            "text": self.text,
            **({"label": self.label} if with_label else {}),
            "tokens": self.tokens,
            "finish_reason": self.finish_reason,
            **({"pii": self.findings} if self.findings else {}),
        }


@dataclass
class RecordStats:
    """Public tallies of what was released (for reports, job progress and metrics)."""

    groups: int = 0
    released: int = 0
    empty: int = 0
    tokens: int = 0
    pii_touched: int = 0
    pii_dropped: int = 0
    entities: Counter = field(default_factory=Counter)
    finish_reasons: Counter = field(default_factory=Counter)


class RecordFilter:
    """Applies a PII policy to each finished group and keeps the tallies."""

    def __init__(self, policy: PiiPolicy, say=lambda _m: None):
        self.policy = policy
        self.stats = RecordStats()
        self._pii = None
        if policy != "off":
            try:
                from ..pii import get_filter
            except ImportError:
                raise ValueError("pii: the PII filter needs presidio: pip install -e '.[pii]' (or pass --pii off)") from None
            say("loading the PII filter (presidio + spaCy)")
            self._pii = get_filter()

    def __call__(self, result: GroupResult, label: str | None) -> OutRecord:
        s = self.stats
        s.groups += 1
        s.tokens += len(result.token_ids)
        s.finish_reasons[result.finish_reason] += 1
        text, findings = result.text, {}
        if self._pii is not None and text:
            filtered = self._pii.filter(text, self.policy)
            findings = {f.entity_type: f.count for f in filtered.findings}
            s.entities.update(findings)
            s.pii_touched += bool(findings)
            s.pii_dropped += filtered.action == "dropped"
            text = filtered.text or ""
        released = bool(text)
        if not released and not findings:
            s.empty += 1
        s.released += released
        return OutRecord(result.group_id, text, label, len(result.token_ids), result.finish_reason, findings, released)

    def pii_report(self) -> dict:
        s = self.stats
        return {"policy": self.policy, "records_touched": s.pii_touched, "records_dropped": s.pii_dropped, "entities": dict(s.entities)}
