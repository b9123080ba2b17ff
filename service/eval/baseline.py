"""The epsilon = infinity ceiling of `privtext eval`: the same pipeline with no privacy.

Same corpus, partitions, groups, prompts, candidate set and tokens as a private run; only the
selection differs: the group's rows' raw logits are averaged (no clipping) and sampled at the
temperature (no noise). It protects nothing and exists only to measure what privacy costs, so it
lives here and is never reachable from the server or `privtext generate`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mechanisms.ops import public_top_k

from ..generation.selector import MechanismSelector


class NonPrivateSelector(MechanismSelector):
    """softmax(mean_i z_i / tau) over the public top-k (amin's and gaussian's candidate set)."""

    def select(self, group_ids: Sequence[int], private_logits: np.ndarray, group_sizes: np.ndarray, public_logits: np.ndarray) -> np.ndarray:
        public_logits = np.asarray(public_logits, dtype=np.float64)
        ids, _ = public_top_k(public_logits, self.cfg.top_k)
        out = np.empty(len(group_ids), dtype=np.int64)
        start = 0
        for g, (gid, n) in enumerate(zip(group_ids, np.asarray(group_sizes).tolist())):
            rows = np.asarray(private_logits[start : start + n], dtype=np.float64)
            start += n
            mean = rows.mean(axis=0) if n else public_logits[g]  # a group with no rows: the public row
            scores = mean[ids[g]] / self.cfg.temperature
            out[g] = ids[g][np.argmax(scores + self.stream(gid).gumbel(size=scores.shape))]
            self.private_tokens += 1
        return out

    def halted(self, group_id: int) -> bool:
        return False

    def release(self, group_id: int) -> None:
        pass
