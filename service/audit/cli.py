"""`privtext audit`: the subcommand (registered by service.cli with add_parser)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cmd(a: argparse.Namespace) -> int:
    from .report import format_text, write_json
    from .run import AuditSettings, run_audit

    fields = ("rows", "once", "repeated", "copies", "held_out", "epsilon", "delta", "mechanism", "partitions", "max_tokens",
              "records", "seed", "draws", "token_delta", "pe_iterations", "engine", "model", "workdir")
    given = {k: getattr(a, k) for k in fields if getattr(a, k) is not None}
    settings = AuditSettings.quick(**given) if a.quick else AuditSettings(**given)
    report = run_audit(settings, progress=_say)
    print(format_text(report), end="")
    if a.json:
        write_json(report, a.json)
        _say(f"wrote {a.json}")
    return 0 if report["passed"] else 1


def add_parser(subparsers) -> None:
    """Register `audit` on the top-level subparsers object."""
    from mechanisms.registry import names as mechanism_names

    p = subparsers.add_parser(
        "audit",
        help="privacy audit: canary leakage, membership inference AUC, per-token privacy loss of each mechanism, PE's histograms",
        description="Plant canaries in an SMS corpus, generate through the real job path, and report canary leakage, a "
                    "membership-inference AUC from the synthetic text, and each mechanism's empirical per-token privacy "
                    "loss next to its claim, and the privacy loss of Private Evolution's DP histograms next to theirs. Exit status 1 "
                    "when a check fails.",
    )
    p.add_argument("--json", default=None, metavar="PATH", help="also write the full report as JSON")
    p.add_argument("--quick", action="store_true", help="the CI subset: 40 rows, 12 tokens, 60k draws (defaults: 300, 32, 400k)")
    p.add_argument("--rows", type=int, default=None, help="SMS rows sampled as the private corpus (default: 300)")
    p.add_argument("--once", type=int, default=None, help="canaries inserted once (default: 8)")
    p.add_argument("--repeated", type=int, default=None, help="canaries inserted --copies times (default: 4)")
    p.add_argument("--copies", type=int, default=None, help="copies of each repeated canary, each its own unit (default: 4)")
    p.add_argument("--held-out", type=int, default=None, help="canaries never inserted (default: once + repeated)")
    p.add_argument("--epsilon", type=float, default=None, help="the generation job's epsilon (default: 3)")
    p.add_argument("--delta", type=float, default=None, help="the generation job's delta (default: 1e-5)")
    p.add_argument("--mechanism", choices=mechanism_names(), default=None, help="mechanism of the generation job (default: em)")
    p.add_argument("--partitions", type=int, default=None, help="N, rows per group (default: 8)")
    p.add_argument("--max-tokens", type=int, default=None, help="tokens per synthetic record (default: 32)")
    p.add_argument("--records", type=int, default=None, help="synthetic records (default: the groups of one round)")
    p.add_argument("--seed", type=int, default=None, help="seed of canaries, sample, partition and mechanisms (default: 0)")
    p.add_argument("--draws", type=int, default=None, help="Monte-Carlo draws per neighbouring input in the per-token audit")
    p.add_argument("--token-delta", type=float, default=None, help="per-token delta of the gaussian figures (default: --delta)")
    p.add_argument("--pe-iterations", type=int, default=None, help="T of the Private Evolution plan whose histograms are audited (default: 3)")
    p.add_argument("--engine", default=None, help="auto (default) or a backend name")
    p.add_argument("--model", default=None, help="a local model folder (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--workdir", type=Path, default=None, help="keep the corpus, canaries and synthetic records here")
    p.set_defaults(func=cmd)
