"""How wide em's candidate set gets on a corpus's real prompts, and what that changes.

em samples over top-k+ (InvisibleInk): every token whose public logit is within 2C of the
public k-th largest, so that no token outside can overtake the k-th after clipping. The planner
solves C from epsilon, so the set widens as epsilon grows, while amin, gaussian and the
no-privacy ceiling keep the public top-k. This runs em at each epsilon on the eval's own split,
prompts and groups, through a probe around the real mechanism that records, per step, the
size of the top-k+ set and whether the emitted token lies outside the public top-k.

Only public values are recorded (the public row's logits decide both; the token is released
anyway), and only aggregates leave. The records themselves are scored by `privtext eval`; this
only explains them.

    python -m service.eval.candidates --dataset trec --epsilons 1,3,10 --out eval-out-candidates
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from mechanisms import DecodingConfig, JobRandomness
from mechanisms.select import candidate_sets

from ..generation.selector import MechanismSelector
from .runner import SETUPS, EvalSettings, write_jsonl, dataset_split, generate_cell


class CandidateProbe(MechanismSelector):
    """The real mechanism, plus per-step counts of its candidate set (public values only)."""

    def __init__(self, cfg: DecodingConfig, randomness: JobRandomness):
        super().__init__(cfg, randomness)
        self.sizes: list[int] = []  # top-k+ (or top-k) size at every step of every group
        self.outside: list[bool] = []  # emitted token not in the public top-k, every step
        self.groups_outside: dict[int, bool] = {}  # group -> emitted one such token at least once

    def select(self, group_ids: Sequence[int], private_logits: np.ndarray, group_sizes: np.ndarray, public_logits: np.ndarray) -> np.ndarray:
        chosen = super().select(group_ids, private_logits, group_sizes, public_logits)
        public = np.asarray(public_logits, dtype=np.float64)
        _, valid = candidate_sets(public, self.cfg)
        top, _ = candidate_sets(public, self.cfg.replace(top_k_plus=False))
        self.sizes += valid.sum(axis=1).tolist()
        for g, token, allowed in zip(group_ids, chosen.tolist(), top):
            out = token not in set(allowed.tolist())
            self.outside.append(out)
            self.groups_outside[g] = self.groups_outside.get(g, False) or out
        return chosen


def summarise(epsilon: float, probe: CandidateProbe, records: int) -> dict:
    sizes = np.asarray(probe.sizes)
    return {
        "epsilon": epsilon,
        "clip": probe.cfg.clip,
        "top_k": probe.cfg.top_k,
        "top_k_plus": probe.cfg.top_k_plus,
        "steps": int(sizes.size),
        "size_median": float(np.median(sizes)),
        "size_p90": float(np.percentile(sizes, 90)),
        "size_max": int(sizes.max()),
        "tokens_outside_top_k": float(np.mean(probe.outside)),
        "records_with_one": float(np.mean(list(probe.groups_outside.values()))),
        "records": records,
    }


def measure(dataset: str, epsilons: Sequence[float], out: Path, records: int = 30, seed: int = 0, top_k: int = 64,
            top_k_plus: bool = True, max_tokens: int | None = None, engine=None,
            say: Callable[[str], None] = lambda _m: None) -> list[dict]:
    """One em run per epsilon (records each, the eval's split and template at seed); a row each."""
    rows = []
    for eps in epsilons:
        s = EvalSettings(datasets=(dataset,), epsilons=(eps,), mechanisms=("em",), records=records, seed=seed, top_k=top_k,
                         top_k_plus=top_k_plus, max_tokens=max_tokens)
        folder = out / dataset
        folder.mkdir(parents=True, exist_ok=True)
        data = dataset_split(dataset, s)
        write_jsonl(data.train, folder / "train.jsonl")
        if engine is None:
            from ..engine.loader import load_engine

            engine = load_engine("transformers", progress=say)
        probes: list[CandidateProbe] = []

        def probe_for(p, randomness):
            probes.append(CandidateProbe(p.config, randomness))
            return probes[-1]

        report = generate_cell(dataset, data, s, eps, "em", folder, engine, say, False, selector_for=probe_for)
        rows.append(summarise(eps, probes[-1], report["records"]))
        say(table(rows[-1:]).splitlines()[-1])
    return rows


def table(rows: list[dict]) -> str:
    head = f"{'epsilon':>7} {'C':>6} {'steps':>6} {'top-k+ median':>13} {'p90':>6} {'max':>6} {'tokens outside top-k':>20} {'records with one':>16}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['epsilon']:>7g} {r['clip']:>6.3f} {r['steps']:>6} {r['size_median']:>13.0f} {r['size_p90']:>6.0f} {r['size_max']:>6} "
                     f"{r['tokens_outside_top_k']:>20.1%} {r['records_with_one']:>16.1%}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m service.eval.candidates", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", choices=sorted(SETUPS), default="trec")
    ap.add_argument("--epsilons", default="1,3,10", help="comma-separated finite epsilons (default: 1,3,10)")
    ap.add_argument("--records", type=int, default=30, help="records per epsilon (default: 30)")
    ap.add_argument("--top-k", type=int, default=64)
    ap.add_argument("--top-k-plus", action=argparse.BooleanOptionalAction, default=True,
                    help="em over top-k+ (default) or the public top-k (--no-top-k-plus: then no token is outside)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="folder for the records and candidates.json")
    a = ap.parse_args(argv)
    try:
        epsilons = [float(e) for e in a.epsilons.split(",")]
    except ValueError:
        ap.error(f"--epsilons must be comma-separated numbers, got {a.epsilons!r}")
    if not all(0 < e < float("inf") for e in epsilons):
        ap.error(f"--epsilons must be finite and > 0, got {a.epsilons!r}")
    out = Path(a.out)
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    rows = measure(a.dataset, epsilons, out, a.records, a.seed, a.top_k, a.top_k_plus, say=say)
    (out / "candidates.json").write_text(json.dumps({"dataset": a.dataset, "seed": a.seed, "rows": rows}, indent=1) + "\n")
    print(f"em's candidate set on {a.dataset} (seed {a.seed}, {a.records} records per epsilon, "
          f"top-k {a.top_k}{'+' if a.top_k_plus else ''}):")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
