"""`privtext eval`: flags -> EvalSettings -> run_eval -> report.md + plots."""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(math.inf if t.strip().lower() in ("inf", "infinity") else float(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers or inf, got {text!r}") from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


_FLAGS = ("datasets", "epsilons", "mechanisms", "records", "max_tokens", "partitions", "temperature", "top_k", "train_rows", "test_rows", "seed")


def _command(a: argparse.Namespace) -> str:
    """The command line that reproduces this run (for the report)."""
    words = ["privtext", "eval", "--out", str(a.out)] + (["--fast"] if a.fast else [])
    for k in _FLAGS:
        v = getattr(a, k)
        if v is not None:
            words += ["--" + k.replace("_", "-"), ",".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v) if isinstance(v, tuple) else str(v)]
    return shlex.join(words)


def cmd(a: argparse.Namespace) -> int:
    import pydantic

    from .report import verdicts, write_report
    from .runner import FAST, EvalSettings, run_eval

    out = Path(a.out)
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    command = _command(a)
    given = {k: getattr(a, k) for k in _FLAGS if getattr(a, k) is not None}
    try:
        settings = EvalSettings(**{**(FAST if a.fast else {}), **given})
    except pydantic.ValidationError as e:
        first = e.errors()[0]
        raise ValueError(f"{'.'.join(map(str, first['loc'])) or 'input'}: {first['msg']}") from None
    results = run_eval(settings, out, say=say, bar=sys.stderr.isatty(), generate=not a.report_only)
    report = write_report(results, out, command)
    for line in verdicts(results):
        print(line)
    say(f"wrote {report}, {out / 'accuracy.png'}, {out / 'frechet.png'}")
    return 0


def add_parser(sub) -> None:
    """Register `eval` on the top-level subparsers object."""
    p = sub.add_parser("eval", help="utility of DP synthetic data on real labelled corpora: train on synthetic, test on real")
    p.add_argument("--out", required=True, help="folder for records, results.json, report.md and plots (a rerun resumes)")
    p.add_argument("--fast", action="store_true", help="the CI subset: sms-spam, epsilon 3 and inf, em, 16 records of 12 tokens")
    p.add_argument("--datasets", type=_names, default=None, help="comma-separated: sms-spam,trec,rotten-tomatoes (default: all)")
    p.add_argument("--epsilons", type=_floats, default=None, help="comma-separated, inf = no privacy (default: 1,3,10,inf)")
    p.add_argument("--mechanisms", type=_names, default=None, help="comma-separated: em,amin,gaussian (default: all)")
    p.add_argument("--records", type=int, default=None, help="synthetic records per cell (default: 100)")
    p.add_argument("--max-tokens", type=int, default=None, help="tokens per record (default: per dataset, 24-40)")
    p.add_argument("--partitions", type=int, default=None, help="N, rows per group (default: 8)")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature (default: 1.0)")
    p.add_argument("--top-k", type=int, default=None, help="public candidate set size (default: 64)")
    p.add_argument("--train-rows", type=int, default=None, help="cap on private train rows (default: the whole 80%% split)")
    p.add_argument("--test-rows", type=int, default=None, help="cap on held-out test rows (default: 500)")
    p.add_argument("--seed", type=int, default=None, help="split, groups and mechanism randomness (default: 0)")
    p.add_argument("--report-only", action="store_true", help="score and report only the cells already finished (same flags as the run)")
    p.set_defaults(func=cmd)
