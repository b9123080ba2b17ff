"""`privtext select`: rank a pool of public candidates by one DP histogram of a local corpus's votes.

The local twin of the gRPC method SelectCandidates (service/jobs/select.py holds what both
share): the pool is checked, the plan (one Gaussian histogram, plus the DP unit count unless
--public-count declares it) is charged to the corpus's local ledger before any vote is
computed, and only the top candidates' noisy counts are written.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# Local bounds on a pool (the server's are its settings max_select_candidates, max_candidate_chars).
MAX_CANDIDATES = 100_000
MAX_CANDIDATE_CHARS = 10_000
MAX_LABEL_CHARS = 1_000
LIMITS = ("privtext select's limit", "privtext select's limit", "privtext select's limit")


def add_parser(sub) -> None:
    s = sub.add_parser("select", help="rank public candidates by a DP histogram of a private corpus's votes (one release)")
    s.add_argument("--input", type=Path, required=True, help="the private corpus: .jsonl or .csv")
    s.add_argument("--text-field", default="text")
    s.add_argument("--label-field", default=None, help="the corpus's label field (needed when the candidates have labels)")
    s.add_argument("--unit-field", default=None, help="privacy unit key (e.g. user_id); default: each record is a unit")
    s.add_argument("--candidates", type=Path, required=True,
                   help='the public pool, JSONL: {"text": ...} per line, with "label" on every line or on none')
    s.add_argument("--epsilon", type=float, default=None, help="epsilon of the release (sigma solved from it)")
    s.add_argument("--sigma", type=float, default=None, help="fix the noise sigma instead (refused over --epsilon if both)")
    s.add_argument("--delta", type=float, required=True, help="must be <= 1/units")
    s.add_argument("--threshold", type=float, default=0.0, help="H: noisy counts below it are zeroed (default: 0)")
    s.add_argument("--top", type=int, required=True, help="candidates to write, the largest noisy counts first")
    s.add_argument("--out", type=Path, required=True, help="the selected candidates with their noisy counts, JSONL")
    s.add_argument("--public-count", type=int, default=None, help="declare the unit count public (else a DP count is released and charged)")
    s.add_argument("--count-noise", type=float, default=10.0, help="sigma of the DP unit count (default: 10)")
    s.add_argument("--epsilon-cap", type=float, default=None, help="this corpus's total budget across runs, fixed at its first run (default: 10)")
    s.add_argument("--local-ledger", action=argparse.BooleanOptionalAction, default=True,
                   help="charge the run to the corpus's local ledger and refuse what its cap cannot pay (default)")
    s.add_argument("--max-records-per-unit", type=int, default=4, help="records of one unit embedded for its vote (default: 4)")
    s.add_argument("--max-record-chars", type=int, default=500, help="characters of a record embedded (default: 500)")
    s.set_defaults(func=cmd_select)


def read_pool(path: Path):
    """The pool of a JSONL file; errors name the candidate's index and line."""
    from .jobs.select import Pool

    texts: list[str] = []
    labels: list[str | None] = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            i = len(texts)
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"candidates[{i}] (line {line_no} of {path}) must be a JSON object, got invalid JSON ({e.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise ValueError(f"candidates[{i}] (line {line_no} of {path}) must be an object with a string \"text\"")
            label = row.get("label")
            if label is not None and not isinstance(label, (str, int)) or isinstance(label, bool):
                raise ValueError(f"candidates[{i}] (line {line_no} of {path}): label must be a string or an integer, got {label!r}")
            texts.append(row["text"])
            labels.append(None if label is None else str(label))
    if any(lab is not None for lab in labels) and any(lab is None for lab in labels):
        i = labels.index(None) if labels[0] is not None else next(j for j, lab in enumerate(labels) if lab is not None)
        raise ValueError(f"candidates[{i}]: give a label on every candidate or on none")
    return Pool(tuple(texts), tuple(labels) if texts and labels[0] is not None else None)


def cmd_select(a: argparse.Namespace) -> int:
    """The local front of SelectCandidates: the corpus file's dataset in the local store
    (service/jobs/local_store.py), then the same select_from_dataset the server runs."""
    import secrets

    from .generation.corpus import read_corpus
    from .generation.embed import embed
    from .jobs.generate import file_digest
    from .jobs.local_run import corpus_ledger, say_corpus
    from .jobs.local_store import TENANT, corpus_dataset, local_store
    from .jobs.select import check_pool, select_from_dataset

    def say(m: str) -> None:
        print(m, file=sys.stderr, flush=True)

    if a.epsilon is None and a.sigma is None:
        raise ValueError("--epsilon or --sigma must be given")
    pool = read_pool(a.candidates)
    check_pool(pool, a.top, max_candidates=MAX_CANDIDATES, max_chars=MAX_CANDIDATE_CHARS, max_label_chars=MAX_LABEL_CHARS,
               limit_names=LIMITS)
    if pool.labels is not None and not a.label_field:
        raise ValueError("--label-field: the candidates have labels, so the corpus's label field must be given")
    corpus = read_corpus(a.input, a.text_field, a.label_field, a.unit_field)
    say_corpus(corpus, say)
    say(f"{len(pool.texts):,} candidates")
    digest = file_digest(a.input)
    with local_store(a.local_ledger) as (store, path):
        info = corpus_dataset(store, corpus, digest, epsilon_cap=a.epsilon_cap, delta=a.delta, public_count=a.public_count,
                              keep=a.local_ledger)
        sel = select_from_dataset(store, TENANT, info.id, pool, a.top, a.threshold, a.epsilon, a.sigma,
                                  f"privtext select {time.strftime('%Y-%m-%d %H:%M:%S')}", a.count_noise, secrets.token_bytes(32),
                                  embed, max_records_per_unit=a.max_records_per_unit, max_record_chars=a.max_record_chars)
        ledger = corpus_ledger(store, info.id, digest, path)
    p = sel.plan
    say(f"plan: one histogram of {len(pool.texts):,} candidates, sigma {p.sigma:.4g}, threshold {p.threshold:g}, "
        f"epsilon {p.epsilon:.3f} at delta {a.delta:g}")
    if path is not None:
        say(f"corpus ledger: epsilon {ledger['epsilon_spent']:.3f} of its cap {ledger['epsilon_cap']:g} spent "
            f"in {ledger['entries']} ledger entries ({path})")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    with open(a.out, "w", encoding="utf-8") as out:
        for j, c in zip(sel.indices, sel.noisy_counts):
            row = {"index": j, "text": pool.texts[j], **({"label": pool.labels[j]} if pool.labels else {}), "noisy_count": c}
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    say(f"wrote {len(sel.indices)} candidates to {a.out}")
    print(json.dumps({"selected": len(sel.indices), "candidates": len(pool.texts), "epsilon": p.epsilon, "delta": a.delta,
                      "sigma": p.sigma, "threshold": p.threshold, "units": p.units, "units_source": p.units_source,
                      "fallback": sel.fallback,
                      "corpus_ledger": ledger}))
    return 0
