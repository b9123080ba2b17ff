"""The whole audit: plant canaries, generate through the real job path, measure leakage and
membership inference, audit each mechanism's per-token claim, and decide what passed.

Generation is `service.jobs.local_run.run_generate` on a corpus file, exactly as
`privtext generate` runs it, with two audit choices stated in the report:
- the unit count is declared public (the auditor built the corpus; no DP count is drawn);
- the PII filter is off: it is post-processing and no privacy guarantee, and it would redact
  the digit secrets, hiding the very leaks the audit looks for.
By default `records` is the number of groups of one round, so every unit (each canary copy
included) is in exactly one decoded group.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mechanisms import DecodingConfig, PrivacyEvent, epsilon_of, group_count, plan
from mechanisms.pe import plan_pe
from mechanisms.registry import names as mechanism_names

from . import canaries as cn
from . import mia
from .histogram import audit_pe
from .tokens import ALPHA, audit_token


@dataclass(frozen=True)
class AuditSettings:
    rows: int = 300  # SMS Spam Collection records sampled as the private corpus
    once: int = 8  # canaries inserted once
    repeated: int = 4  # canaries inserted `copies` times
    copies: int = 4
    held_out: int | None = None  # default: once + repeated
    epsilon: float = 3.0
    delta: float = 1e-5
    mechanism: str = "em"
    partitions: int = 8
    temperature: float = 1.0
    top_k: int | None = 64
    max_tokens: int = 32
    records: int | None = None  # default: the groups of one round (every unit decoded once)
    seed: int = 0
    draws: int = 400_000  # per neighbouring input, per mechanism, in the per-token audit
    alpha: float = ALPHA
    token_delta: float | None = None  # per-token delta of the gaussian figures (default: delta)
    pe_iterations: int = 3  # pe's audit: T histograms of the plan pe would make for this corpus at epsilon and delta
    mia_context: int = 4  # synthetic records in the membership score's context
    bootstrap: int = 2000
    engine: str = "auto"
    model: str | None = None
    batch_rows: int = 160
    workdir: Path | None = None  # keep the corpus and synthetic records here (default: a temp folder)

    @classmethod
    def quick(cls, **changes) -> AuditSettings:
        """The CI subset: a small corpus, few tokens, fewer Monte-Carlo draws."""
        return cls(**{"rows": 40, "max_tokens": 12, "draws": 60_000, "bootstrap": 1000, **changes})

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["workdir"] = str(self.workdir) if self.workdir is not None else None
        return d


def sample_rows(n: int, seed: int) -> list[dict]:
    """n seeded SMS Spam Collection records (text only: the audit generates unlabelled)."""
    from ..data.packaged import sms_spam

    rows = sms_spam()
    if not 1 <= n <= len(rows):
        raise ValueError(f"rows must be in [1, {len(rows)}], got {n}")
    return [{"text": rows[i]["text"]} for i in np.random.default_rng(seed).permutation(len(rows))[:n]]


def _auc_block(pos: list[float], neg: list[float], s: AuditSettings, seed: int) -> dict:
    if not pos or not neg:
        return {"auc": None, "ci": None, "n_inserted": len(pos), "n_held_out": len(neg)}
    a = mia.auc(pos, neg)
    return {"auc": a, "ci": list(mia.auc_ci_bootstrap(pos, neg, 0.95, s.bootstrap, seed)),
            "ci_hanley_mcneil": list(mia.auc_ci_hanley_mcneil(a, len(pos), len(neg))), "n_inserted": len(pos), "n_held_out": len(neg)}


def run_audit(s: AuditSettings, engine=None, progress: Callable[[str], None] | None = None) -> dict:
    """Run the audit; returns the report dict (report.format_text renders it)."""
    from ..jobs.local_run import run_generate
    from ..jobs.request import GenerateSpec

    say = progress or (lambda _m: None)
    t_start = time.time()
    seconds: dict[str, float] = {}
    canaries = cn.make_canaries(s.once, s.repeated, s.copies, s.held_out, s.seed)
    corpus = cn.insert(sample_rows(s.rows, s.seed), canaries, s.seed)
    units = len(corpus)  # every text distinct but the canary copies, which are units of their own
    groups = group_count(units, s.partitions)
    records = s.records or groups
    say(f"audit: {len(canaries)} canaries ({s.once} once, {s.repeated} x{s.copies}, "
        f"{sum(not c.inserted for c in canaries)} held out) in {s.rows} SMS rows = {units} units; "
        f"{records} records of <= {s.max_tokens} tokens, {s.mechanism} at epsilon {s.epsilon:g}")

    tmp = None
    if s.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="privtext-audit-")
        work = Path(tmp.name)
    else:
        work = Path(s.workdir)
        work.mkdir(parents=True, exist_ok=True)
    try:
        corpus_path = work / "corpus.jsonl"
        with open(corpus_path, "w", encoding="utf-8") as f:
            for r in corpus:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        (work / "canaries.json").write_text(json.dumps([c.to_dict() for c in canaries], indent=2) + "\n")
        spec = GenerateSpec(
            input=corpus_path, records=records, max_tokens=s.max_tokens, epsilon=s.epsilon, delta=s.delta,
            mechanism=s.mechanism, partitions=s.partitions, temperature=s.temperature, top_k=s.top_k,
            public_count=units, template="sms-spam", seed=s.seed, pii="off", engine=s.engine, model=s.model,
            batch_rows=s.batch_rows, out=work / "synthetic.jsonl", report=work / "generate-report.json",
            local_ledger=False,  # one release of a public corpus with inserted canaries, measured once
        )
        t0 = time.time()
        if engine is None:
            from ..engine.loader import load_engine

            engine = load_engine(s.engine, s.model, progress=say)
        gen = run_generate(spec, engine=engine, progress=say)
        seconds["generate"] = time.time() - t0
        texts = [json.loads(line)["text"] for line in spec.out.read_text(encoding="utf-8").splitlines() if line.strip()]
        say(f"generated {len(texts)} records ({gen['tokens']} tokens, {seconds['generate']:.0f} s)")
    finally:
        if tmp is not None:
            tmp.cleanup()

    # Leakage and membership inference
    t0 = time.time()
    scorer = mia.LMScorer.from_engine(engine)
    details = []
    for c in canaries:
        leak = cn.leakage(c.secret, texts)
        score = mia.mia_score(c.prefix, c.secret, texts, scorer, s.mia_context)
        details.append({**c.to_dict(), "verbatim": leak.verbatim, "near_verbatim": leak.near_verbatim, "edits": leak.edits,
                        "longest_common": leak.longest_common, "mia_score": score})
    seconds["leakage_and_mia"] = time.time() - t0
    say(f"scored {len(canaries)} canaries ({seconds['leakage_and_mia']:.0f} s)")
    ins = [d for d in details if d["copies"] > 0]
    held = [d for d in details if d["copies"] == 0]
    neg = [d["mia_score"] for d in held]
    overall = _auc_block([d["mia_score"] for d in ins], neg, s, s.seed)
    once = _auc_block([d["mia_score"] for d in ins if d["status"] == "once"], neg, s, s.seed + 1)
    rep = _auc_block([d["mia_score"] for d in ins if d["status"] == "repeated"], neg, s, s.seed + 2)

    # Group privacy of a repeated canary: k units, k^2 rho in zCDP (Bun & Steinke 2016, Prop. 1.9)
    rho_total = float(gen["plan"]["rho_total"])
    eps_once = float(gen["epsilon"])
    eps_group = epsilon_of([PrivacyEvent("zcdp", s.copies**2 * rho_total)], s.delta) if s.repeated else None
    dp_bound_once = mia.dp_auc_bound(eps_once, s.delta)

    # Per-token audit of every mechanism, at the config the planner solves for this job
    t0 = time.time()
    token_delta = s.token_delta if s.token_delta is not None else s.delta
    per_token = {}
    for i, m in enumerate(mechanism_names()):  # every registered mechanism, each on its own seed
        cfg = plan(units=units, records=records, max_tokens=s.max_tokens, delta=s.delta, epsilon=s.epsilon,
                   config=DecodingConfig(mechanism=m, partitions=s.partitions, temperature=s.temperature, top_k=s.top_k)).config
        a = audit_token(cfg, s.draws, s.seed + 1000 * (i + 1), s.alpha, token_delta)
        per_token[m] = a.to_dict()
        say(f"per-token {m}: empirical eps lower bound {a.empirical_epsilon:.4f} (point {a.empirical_point:.4f}) vs claimed {a.claimed_epsilon:.4f}")
    seconds["per_token"] = time.time() - t0

    # Private Evolution: its plan for this corpus at the same (epsilon, delta), T histograms audited together
    t0 = time.time()
    pe_plan = plan_pe(units=units, records=records, iterations=s.pe_iterations, threshold=0.0, delta=s.delta, epsilon=s.epsilon)
    pe = audit_pe(pe_plan, s.draws, s.seed + 7000, s.alpha).to_dict()
    say(f"pe histograms: empirical eps lower bound {pe['empirical_epsilon']:.4f} (point {pe['empirical_point']:.4f}) "
        f"vs claimed {pe['claimed_epsilon']:.4f}")
    seconds["pe_histogram"] = time.time() - t0

    checks = []

    def check(name: str, passed: bool, detail: str) -> None:
        checks.append({"name": name, "passed": bool(passed), "detail": detail})

    n_verb = sum(d["verbatim"] for d in ins)
    n_near = sum(d["near_verbatim"] for d in ins)
    check("no verbatim canary leak", n_verb == 0, f"{n_verb} of {len(ins)} inserted canaries appear verbatim in the synthetic records")
    check("no near-verbatim canary leak", n_near == 0,
          f"{n_near} of {len(ins)} inserted canaries within {cn.near_budget(canaries[0].secret)} edits of a substring of a synthetic record")
    lo, hi = overall["ci"]
    check("no significant membership signal", lo <= 0.5,
          f"MIA AUC {overall['auc']:.3f}, 95% CI [{lo:.3f}, {hi:.3f}] reaches 0.5 (fails when the whole CI lies above 0.5)")
    if once["auc"] is not None:
        check("once-inserted MIA AUC within the DP bound", once["ci"][0] <= dp_bound_once,
              f"AUC {once['auc']:.3f}, CI lower bound {once['ci'][0]:.3f} <= {dp_bound_once:.3f}, the largest AUC (epsilon {eps_once:.3g}, delta {s.delta:g})")
    for m, a in per_token.items():
        what = "pure per-token eps" if a["claim"] == "pure" else f"per-token eps at delta {a['delta']:g}"
        check(f"{m} per-token privacy loss within its claim", a["passed"],
              f"{m} empirical {what} lower bound {a['empirical_epsilon']:.4f} <= claimed {a['claimed_epsilon']:.4f} "
              f"(point {a['empirical_point']:.4f}, tightness {a['tightness']:.2f})")

    check("pe histogram privacy loss within its claim", pe["passed"],
          f"pe empirical eps at delta {pe['delta']:g} of its {pe['iterations']} histograms lower bound {pe['empirical_epsilon']:.4f} "
          f"<= claimed {pe['claimed_epsilon']:.4f} (point {pe['empirical_point']:.4f}, tightness {pe['tightness']:.2f}; "
          f"the plan's accountant epsilon {pe['plan_epsilon']:.4f})")

    report = {
        "canaries": len(canaries),
        "canaries_once": s.once,
        "canaries_repeated": s.repeated,
        "copies_per_repeated_canary": s.copies,
        "canaries_held_out": len(held),
        "canary_verbatim_leaks": n_verb,
        "canary_near_verbatim_leaks": n_near,
        "held_out_verbatim_matches": sum(d["verbatim"] for d in held),
        "held_out_near_verbatim_matches": sum(d["near_verbatim"] for d in held),
        "near_verbatim_definition": f"not verbatim, and at most floor({cn.NEAR_FRACTION} x secret length) edits from a substring of one "
                                    "record, both lowercased to letters and digits",
        "mia_auc": overall["auc"],
        "mia_auc_ci": overall["ci"],
        "mia_auc_ci_method": f"stratified percentile bootstrap, 95%, {s.bootstrap} resamples",
        "mia_auc_ci_hanley_mcneil": overall["ci_hanley_mcneil"],
        "mia_auc_once": once,
        "mia_auc_repeated": rep,
        "mia_auc_dp_bound_once": dp_bound_once,
        "mia_score_definition": f"log P(secret | {s.mia_context} synthetic records most similar to the prefix, prefix) - log P(secret | prefix), public model",
        "epsilon": eps_once,
        "delta": s.delta,
        "epsilon_repeated_canary": eps_group,
        "rho_total": rho_total,
        "mechanism": s.mechanism,
        "partitions": s.partitions,
        "max_tokens": s.max_tokens,
        "records": len(texts),
        "records_planned": records,
        "rows": s.rows,
        "units": units,
        "units_source": "declared-public: the auditor built the corpus",
        "pii_filter": "off (post-processing; it would redact the digit secrets)",
        "per_token": per_token,
        "per_token_delta": token_delta,
        "pe_histogram": pe,
        "checks": checks,
        "passed": all(c["passed"] for c in checks),
        "canary_details": details,
        "generation": {k: gen[k] for k in ("epsilon", "delta", "mechanism", "partitions", "records", "tokens", "rounds", "groups",
                                           "tokens_per_second", "engine", "model", "finish_reasons")},
        "settings": s.to_dict(),
        "seconds": {**seconds, "total": time.time() - t_start},
    }
    return report
