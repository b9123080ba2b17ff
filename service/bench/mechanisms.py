"""`privtext bench mechanisms`: the cost of one batched selection step, per group.

Selection runs every decoding step for every group, so it must cost well under a model
forward. Logits are synthetic (normal, scale 3, float32, as a model's raw logits) because only
shapes matter to the cost; the same arrays serve every mechanism, measured side by side.
"""

from __future__ import annotations

import time

import numpy as np

from mechanisms import MECHANISMS, DecodingConfig, GateConfig, GroupState, select_tokens


def bench_mechanisms(
    vocab: int = 49_152,
    partitions: tuple[int, ...] = (8, 64),
    groups: int = 16,
    steps: int = 20,
    seed: int = 0,
    progress=None,
) -> list[dict]:
    rng = np.random.default_rng(seed)
    results = []
    for n in partitions:
        private = rng.normal(0.0, 3.0, size=(groups * n, vocab)).astype(np.float32)
        public = rng.normal(0.0, 3.0, size=(groups, vocab)).astype(np.float32)
        sizes = [n] * groups
        variants = [(m, DecodingConfig(mechanism=m, partitions=n, clip=1.0, noise_multiplier=5.0)) for m in MECHANISMS]
        variants.append(("em+gate", DecodingConfig(mechanism="em", partitions=n, clip=1.0, gate=GateConfig(max_private_tokens=10**6))))
        for name, cfg in variants:
            states = [GroupState() for _ in range(groups)]
            select_tokens(private, sizes, public, cfg, rng, states)  # warm-up
            times = []
            for _ in range(steps):
                t0 = time.perf_counter()
                select_tokens(private, sizes, public, cfg, rng, states)
                times.append(time.perf_counter() - t0)
            step_ms = 1000.0 * float(np.median(times))
            row = {
                "mechanism": name,
                "partitions": n,
                "groups": groups,
                "vocab": vocab,
                "step_ms_median": round(step_ms, 3),
                "step_ms_p90": round(1000.0 * float(np.quantile(times, 0.9)), 3),
                "ms_per_group_step": round(step_ms / groups, 3),
            }
            results.append(row)
            if progress:
                progress(row)
    return results


def format_table(rows: list[dict]) -> str:
    head = f"{'mechanism':<10} {'N':>4} {'groups':>6} {'vocab':>7} {'step ms (median)':>17} {'p90':>8} {'ms/group':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['mechanism']:<10} {r['partitions']:>4} {r['groups']:>6} {r['vocab']:>7} "
            f"{r['step_ms_median']:>17.2f} {r['step_ms_p90']:>8.2f} {r['ms_per_group_step']:>9.3f}"
        )
    return "\n".join(lines)
