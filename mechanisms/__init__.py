"""privtext.mechanisms: the pure math of private decoding and its accounting.

Imports numpy and dp-accounting only (no torch, no grpc, nothing of the service): audits can
read and run this package alone. Stable API:

    from mechanisms import DecodingConfig, select_token, rho_per_token, epsilon_from_rho, calibrate

The mechanisms themselves (em, amin, gaussian) are one module each behind mechanisms.registry:
`MECHANISMS` is the registry's names, `register(mechanism)` adds one (docs/adding-a-mechanism.md).
"""

from .accounting import (
    Ledger,
    LedgerEntry,
    PrivacyEvent,
    calibrate,
    epsilon_from_rho,
    epsilon_of,
    generation_events,
    loose_epsilon_from_rho,
    rho_from_epsilon,
)
from .config import MECHANISMS, DecodingConfig, GateConfig
from .costs import charged_tokens, rho_per_record, rho_per_token, sensitivity
from .counts import count_event, dp_count, dp_histogram
from .partition import Row, assign_groups, build_groups, group_count, rounds_needed
from .pe import HistogramReleases, PeBudgetExceeded, PePlan, noisy_histogram, plan_pe, unit_votes, vote_histogram
from .planner import BudgetExceeded, Plan, plan
from .randomness import JobRandomness
from .registry import Mechanism, register, unregister
from .select import GroupState, candidate_sets, select_token, select_tokens

__all__ = [
    "MECHANISMS", "BudgetExceeded", "DecodingConfig", "GateConfig", "GroupState", "JobRandomness", "Ledger", "LedgerEntry",
    "Mechanism", "Plan", "PrivacyEvent", "Row", "assign_groups", "build_groups", "calibrate", "candidate_sets",
    "charged_tokens", "count_event", "dp_count", "dp_histogram", "epsilon_from_rho", "epsilon_of",
    "generation_events", "group_count", "loose_epsilon_from_rho", "plan", "rho_from_epsilon",
    "rho_per_record", "rho_per_token", "rounds_needed", "select_token", "select_tokens", "sensitivity",
    "register", "unregister",
    "HistogramReleases", "PeBudgetExceeded", "PePlan", "noisy_histogram", "plan_pe", "unit_votes", "vote_histogram",
]
