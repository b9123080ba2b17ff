"""Measures on released records that tests share."""

from __future__ import annotations

from collections.abc import Sequence


def shared_leading_words(a: Sequence[str], b: Sequence[str]) -> float:
    """Mean number of leading words record i of one run shares with record i of the other: two
    releases that share noise share long prefixes (14.9 words per record in the reported attack),
    two independent ones almost none."""

    def common(x: str, y: str) -> int:
        n = 0
        for u, v in zip(x.split(), y.split()):
            if u != v:
                break
            n += 1
        return n

    return sum(common(x, y) for x, y in zip(a, b)) / max(min(len(a), len(b)), 1)
