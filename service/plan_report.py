"""Human-readable rendering of a privacy plan (the CLI's table; reports reuse it)."""

from __future__ import annotations

from mechanisms import Plan, epsilon_from_rho, loose_epsilon_from_rho
from mechanisms.costs import sensitivity
from mechanisms.registry import get


def plan_table(p: Plan) -> str:
    cfg = p.config
    mechanism = get(cfg.mechanism)  # its calibrated parameter, candidate note and sensitivity's norm
    rows: list[tuple[str, str]] = [
        ("mechanism", cfg.mechanism),
        ("partitions (N)", str(cfg.partitions)),
        ("layout", f"one unit per row, at most {cfg.max_rows} rows per group (row slots)" if cfg.units_per_row == 1
         else f"few-shot, {cfg.units_per_row} units per row (sensitivity doubled)"),
        ("units", f"{p.units:,} ({p.units_source}{'; flagged in every report' if p.units_source == 'declared-public' else ''})"),
        ("groups per round", f"{p.groups_per_round:,}"),
        ("rounds", f"{p.rounds:,} (sequential; groups within a round in parallel)"),
        ("records", f"{p.records:,}"),
        ("max tokens per record", f"{p.max_tokens:,} (charged: {p.charged_tokens_per_record:,} private tokens, the worst case)"),
        ("temperature", f"{cfg.temperature:g}"),
    ]
    cal = mechanism.calibration
    rows.append((cal.label, f"{getattr(cfg, cal.parameter):.4g}"))
    rows += [
        ("top-k (public candidates)", "whole vocabulary" if cfg.top_k is None else f"{cfg.top_k}{mechanism.candidates_note(cfg)}"),
        ("sensitivity", f"{sensitivity(cfg):.4g} ({mechanism.sensitivity_norm})"),
    ]
    if cfg.gate is not None:
        g = cfg.gate
        rows.append(("public-token gate", f"threshold {g.threshold:g}, epsilon {g.epsilon:g} per private token, cap {g.max_private_tokens}"))
    rows += [
        ("rho per private token", f"{p.rho_per_token:.6g}"),
        ("rho per record", f"{p.rho_per_record:.6g}"),
        ("rho total", f"{p.rho_total:.6g}"),
        ("epsilon (accountant)", f"{p.epsilon:.4f} at delta {p.delta:g} (dp-accounting RDP)"),
        ("epsilon (tight zCDP)", f"{epsilon_from_rho(p.rho_total, p.delta):.4f} (Canonne-Kamath-Steinke 2020)"),
        ("epsilon (classic bound)", f"{loose_epsilon_from_rho(p.rho_total, p.delta):.4f} (rho + 2 sqrt(rho ln 1/delta), for comparison)"),
    ]
    if p.ledger_epsilon_after is not None:
        rows.append(("dataset epsilon after", f"{p.ledger_epsilon_after:.4f}"))
    width = max(len(k) for k, _ in rows)
    lines = ["privacy plan", "-" * 12] + [f"{k.ljust(width)}  {v}" for k, v in rows]
    lines.append("events charged before release:")
    lines += [f"  - {e.note or e.kind}: {e.kind}({e.parameter:.6g}) x {e.count}" for e in p.events]
    return "\n".join(lines)
