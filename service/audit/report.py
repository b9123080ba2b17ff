"""The audit report: plain text for people, JSON for machines (the same dict)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from .canaries import NEAR_FRACTION, SECRET_DIGITS

DEFINITIONS = f"""\
Definitions
  canary           an SMS-like prefix + a secret of {SECRET_DIGITS} random digits; held-out canaries are never inserted
  repeated canary  k identical records = k privacy units: group privacy only (k^2 rho zCDP, k eps0 per token)
  verbatim leak    the secret (lowercased, letters and digits only) is a substring of a synthetic record
  near-verbatim    not verbatim, within floor({NEAR_FRACTION} x length) edits of a substring of one record
  MIA score        log P(secret | similar synthetic records, prefix) - log P(secret | prefix), public model
  MIA AUC          P(inserted canary scores above a held-out one); 0.5 = no signal
  per-token audit  one selection step on crafted neighbouring logits (D = D' + one crafted row); every
                   empirical figure is a lower confidence bound (Clopper-Pearson, Bonferroni, level 1 - alpha)
    em, amin       claim pure eps0 = 2C/(N tau) per token; empirical = max over tokens |log P_D - log P_D'|
    gaussian       no pure epsilon; claim = eps at delta of the Gaussian mechanism, mu = sensitivity/sigma;
                   empirical = eps at the same delta of the smallest Gaussian profile above the estimated
                   delta(eps) curve (so empirical <= claimed <=> estimated mu <= claimed mu)
  pe histograms    T Gaussian histograms of the units' votes on crafted neighbouring vote sets (one unit more,
                   its vote vector of L2 norm 1); claim = eps at delta of mu = sqrt(T)/sigma; empirical as for
                   gaussian, on the summed projection of the releases onto the unit's direction"""


def _f(x, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return f"{x:.{digits}f}"


def format_text(r: dict) -> str:
    s = r["settings"]
    ins = [d for d in r["canary_details"] if d["copies"] > 0]
    lines = [
        "privtext audit",
        f"  corpus      {r['rows']} SMS Spam Collection rows + canary copies = {r['units']} units ({r['units_source']})",
        f"  generation  {r['records']} records of <= {r['max_tokens']} tokens, {r['mechanism']}, N = {r['partitions']}, "
        f"epsilon {_f(r['epsilon'])} at delta {r['delta']:g} (rho {r['rho_total']:.4g}); PII filter {r['pii_filter']}",
        f"  repeated canaries ({r['copies_per_repeated_canary']} units each): epsilon {_f(r['epsilon_repeated_canary'])} at delta {r['delta']:g} by group privacy",
        "",
        "Canaries",
        f"  {r['canaries']} canaries: {r['canaries_once']} inserted once, {r['canaries_repeated']} inserted "
        f"x{r['copies_per_repeated_canary']}, {r['canaries_held_out']} held out",
        f"  verbatim leaks (inserted)       {r['canary_verbatim_leaks']}",
        f"  near-verbatim leaks (inserted)  {r['canary_near_verbatim_leaks']}",
        f"  held-out matches (detector false positives): verbatim {r['held_out_verbatim_matches']}, "
        f"near-verbatim {r['held_out_near_verbatim_matches']}",
        f"  closest approach of an inserted canary: fewest edits {min(d['edits'] for d in ins)} of {SECRET_DIGITS} digits, "
        f"longest common substring {max(d['longest_common'] for d in ins)} characters",
        "",
        "Membership inference (synthetic text only)",
        f"  AUC inserted vs held out  {_f(r['mia_auc'])}  95% CI [{_f(r['mia_auc_ci'][0])}, {_f(r['mia_auc_ci'][1])}] "
        f"({r['mia_auc_ci_method']}; Hanley-McNeil [{_f(r['mia_auc_ci_hanley_mcneil'][0])}, {_f(r['mia_auc_ci_hanley_mcneil'][1])}])",
    ]
    for name, key in (("once", "mia_auc_once"), ("repeated", "mia_auc_repeated")):
        b = r[key]
        if b["auc"] is not None:
            lines.append(f"  AUC {name:<8} vs held out  {_f(b['auc'])}  95% CI [{_f(b['ci'][0])}, {_f(b['ci'][1])}] "
                         f"({b['n_inserted']} vs {b['n_held_out']})")
    lines.append(f"  largest AUC epsilon {_f(r['epsilon'])} allows for a once-inserted canary: {_f(r['mia_auc_dp_bound_once'])}")
    lines += [
        "",
        f"Per-token mechanism audit (config the planner solves for this job; {s['draws']:,} draws per input, alpha {s['alpha']:g})",
        f"  {'mechanism':<9} {'claim':<22} {'claimed eps':>11} {'empirical LCB':>13} {'point':>8} {'tight':>6}",
    ]
    for m, a in r["per_token"].items():
        claim = "pure (bounded range)" if a["claim"] == "pure" else f"Gaussian, delta {a['delta']:g}"
        lines.append(f"  {m:<9} {claim:<22} {a['claimed_epsilon']:>11.4f} {a['empirical_epsilon']:>13.4f} "
                     f"{a['empirical_point']:>8.4f} {a['tightness']:>6.2f}")
        if a["claim"] != "pure":
            x = a["extra"]
            lines.append(f"  {'':<9} mu claimed {x['mu_claimed']:.4f}, estimated mu lower bound {x['mu_lower']:.4f} (point {x['mu_point']:.4f})")
    pe = r.get("pe_histogram")
    if pe is not None:
        lines += [
            "",
            f"Private Evolution histograms (the plan pe makes for this corpus: T = {pe['iterations']}, sigma {pe['sigma']:.4f}, "
            f"threshold {pe['threshold']:g}; {pe['draws']:,} draws per input, alpha {pe['alpha']:g})",
            f"  claimed eps at delta {pe['delta']:g} {pe['claimed_epsilon']:.4f} (mu {pe['mu_claimed']:.4f}; the plan's accountant epsilon "
            f"{pe['plan_epsilon']:.4f}), empirical lower bound {pe['empirical_epsilon']:.4f}, point {pe['empirical_point']:.4f}, "
            f"tightness {pe['tightness']:.2f}",
        ]
        lines += [f"  {c['name']}: L2 change {c['l2_change']:.3f}, mu lower bound {c['mu_lower']:.4f} (point {c['mu_point']:.4f})"
                  for c in pe["cases"]]
    lines += ["", DEFINITIONS, "", "Result"]
    for c in r["checks"]:
        lines.append(f"  {'PASS' if c['passed'] else 'FAIL'} {c['name']}: {c['detail']}")
    n_fail = sum(not c["passed"] for c in r["checks"])
    lines.append(f"  {'ALL PASSED' if n_fail == 0 else f'{n_fail} FAILED'} ({len(r['checks'])} checks, {r['seconds']['total']:.0f} s)")
    return "\n".join(lines) + "\n"


def _jsonable(o):
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_json(r: dict, path: str | Path) -> None:
    Path(path).write_text(json.dumps(r, indent=2, default=_jsonable) + "\n")
