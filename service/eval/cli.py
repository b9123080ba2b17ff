"""`privtext eval`: flags -> EvalSettings -> run_eval -> report.md + plots."""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from pathlib import Path


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(math.inf if t.strip().lower() in ("inf", "infinity") else float(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers or inf, got {text!r}") from None


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


_FLAGS = ("datasets", "epsilons", "mechanisms", "records", "max_tokens", "partitions", "temperature", "top_k", "top_k_plus", "pe_iterations",
          "pe_population", "template", "train_rows", "test_rows", "seed", "quantize")


def _sweep(text: str) -> tuple[str, tuple[float, ...]]:
    from .sweep import parse

    try:
        return parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _command(a: argparse.Namespace, out: Path | None = None, **fields) -> str:
    """The command line that reproduces this run (for the report); with out (and fields), the
    plain run of one seed or one swept value of a --seeds or --sweep evaluation, into its folder."""
    from .sweep import flag, spelled

    if out is not None:
        a = argparse.Namespace(**{**vars(a), **fields, "out": out, "seeds": None, "sweep": None})
    words = ["privtext", "eval", "--out", str(a.out)] + (["--fast"] if a.fast else [])
    for k in (*_FLAGS, "seeds"):
        v = getattr(a, k)
        if isinstance(v, bool):
            words += [flag(k) if v else f"--no-{spelled(k)}"]
        elif v is not None:
            words += [flag(k), ",".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v) if isinstance(v, tuple) else f"{v:g}" if isinstance(v, float) else str(v)]
    if a.sweep is not None:
        words += ["--sweep", f"{spelled(a.sweep[0])}=" + ",".join(f"{x:g}" for x in a.sweep[1])]
    return shlex.join(words)


def _settings(a: argparse.Namespace, **override):
    """EvalSettings from the flags (and a swept value), a bad value named by its field."""
    import pydantic

    from .runner import FAST, EvalSettings

    given = {k: getattr(a, k) for k in _FLAGS if getattr(a, k) is not None} | override
    try:
        return EvalSettings(**{**(FAST if a.fast else {}), **given})
    except pydantic.ValidationError as e:
        first = e.errors()[0]
        raise ValueError(f"{'.'.join(map(str, first['loc'])) or 'input'}: {first['msg']}") from None


def cmd(a: argparse.Namespace) -> int:
    from .report import comparisons, verdicts
    from .write import write_report
    from .runner import GRID, claim_folder, run_eval
    from .seeds import combine, seed_folder

    out = Path(a.out)
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    command = _command(a)
    settings = _settings(a)
    if a.sweep is not None:
        return _run_sweep(a, settings, out, command, say)
    if a.seeds is None:
        results = run_eval(settings, out, say=say, bar=sys.stderr.isatty(), generate=not a.report_only)
    else:
        if a.seed is not None:
            raise ValueError("seeds: give --seed or --seeds, not both")
        seeds = sorted(set(a.seeds))
        if len(seeds) < 2:
            raise ValueError(f"seeds: give at least 2 distinct seeds (for one, use --seed), got {list(a.seeds)}")
        # The top folder holds the settings without the seed; seeds, like the grid, may change.
        claim_folder(out, {k: v for k, v in json.loads(settings.model_dump_json()).items() if k != "seed"} | {"seeds": seeds},
                     grid=(*GRID, "seeds"))
        by_seed = {}
        for k in seeds:
            say(f"seed {k} ({seeds.index(k) + 1} of {len(seeds)}): {seed_folder(out, k)}")
            by_seed[k] = run_eval(settings.model_copy(update={"seed": k}), seed_folder(out, k), say=say, bar=sys.stderr.isatty(),
                                  generate=not a.report_only)
            write_report(by_seed[k], seed_folder(out, k), _command(a, seed_folder(out, k), seed=k))
        results = combine(by_seed)
        (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    report = write_report(results, out, command)
    for line in (*verdicts(results), *comparisons(results)):
        print(line)
    say(f"wrote {report} and its plots: " + ", ".join(str(p) for p in sorted(out.glob("*.png"))))
    return 0


def _run_sweep(a: argparse.Namespace, settings, out: Path, command: str, say) -> int:
    """--sweep: the grid once per value, each into OUT/<setting>-<value>, then one table."""
    from . import sweep
    from .write import write_report
    from .runner import GRID, claim_folder, run_eval

    name, values = a.sweep
    if a.seeds is not None:
        raise ValueError("sweep: give --sweep or --seeds, not both (sweep one seed, then rerun the values that matter with --seeds)")
    if getattr(a, name) is not None:
        raise ValueError(f"sweep: {sweep.flag(name)} is the swept setting; give its values in --sweep only")
    each = {v: _settings(a, **{name: v}) for v in values}  # every value checked before any runs
    # The top folder holds the settings without the swept one; its values, like the grid, may change.
    claim_folder(out, {k: v for k, v in json.loads(settings.model_dump_json()).items() if k != name} | {"sweep": name, "values": list(values)},
                 grid=(*GRID, "values"))
    by_value = {}
    for i, v in enumerate(values):
        folder = sweep.value_folder(out, name, v)
        say(f"{sweep.spelled(name)} {v:g} ({i + 1} of {len(values)}): {folder}")
        by_value[v] = run_eval(each[v], folder, say=say, bar=sys.stderr.isatty(), generate=not a.report_only)
        write_report(by_value[v], folder, _command(a, folder, **{name: v}))
    results = sweep.table(name, by_value)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    report = sweep.write_report(results, out, command)
    for line in sweep.verdicts(results):
        print(line)
    say(f"wrote {report} and {out / 'sweep.png'}")
    return 0


def add_parser(sub) -> None:
    """Register `eval` on the top-level subparsers object."""
    from mechanisms.registry import names as mechanism_names

    from ..engine.transformers_backend import QUANTIZE_CHOICES

    p = sub.add_parser("eval", help="utility of DP synthetic data on real labelled corpora: train on synthetic, test on real")
    p.add_argument("--out", required=True, help="folder for records, results.json, report.md and plots (a rerun resumes)")
    p.add_argument("--fast", action="store_true", help="the CI subset: sms-spam, epsilon 3 and inf, em, 16 records of 12 tokens")
    p.add_argument("--datasets", type=_names, default=None, help="comma-separated: sms-spam,trec,rotten-tomatoes (default: all)")
    p.add_argument("--epsilons", type=_floats, default=None, help="comma-separated, inf = no privacy (default: 1,3,10,inf)")
    p.add_argument("--mechanisms", type=_names, default=None,
                   help=f"comma-separated: {','.join(mechanism_names())} and pe, Private Evolution (default: all)")
    p.add_argument("--records", type=int, default=None, help="synthetic records per cell (default: 100)")
    p.add_argument("--max-tokens", type=int, default=None, help="tokens per record (default: per dataset, 24-40)")
    p.add_argument("--partitions", type=int, default=None, help="N, rows per group (default: 8)")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature (default: 1.0)")
    p.add_argument("--top-k", type=int, default=None, help="public candidate set size (default: 64)")
    p.add_argument("--top-k-plus", action=argparse.BooleanOptionalAction, default=None,
                   help="em: widen the public top-k to top-k+ (default) or keep the public top-k (--no-top-k-plus)")
    p.add_argument("--pe-iterations", type=int, default=None, help="pe: T, one DP histogram each (default: 3)")
    p.add_argument("--pe-population", type=int, default=None,
                   help="pe: candidates per label per iteration (default: the fewest the job accepts, records per label or records)")
    p.add_argument("--template", default=None,
                   help="prompt template for every dataset: a packaged name (default, sms-spam, trec, rotten-tomatoes) or a TOML file "
                        "(default: each dataset's own)")
    p.add_argument("--train-rows", type=int, default=None, help="cap on private train rows (default: the whole 80%% split)")
    p.add_argument("--test-rows", type=int, default=None, help="cap on held-out test rows (default: 500)")
    p.add_argument("--quantize", choices=QUANTIZE_CHOICES, default=None,
                   help="the engine's precision: none (float32), bf16 or int8 (transformers; default: none)")
    p.add_argument("--seed", type=int, default=None, help="split, groups and mechanism randomness (default: 0)")
    p.add_argument("--seeds", type=_ints, default=None,
                   help="run the grid once per seed, each into OUT/seed-<k>, and report the mean over seeds with the spread")
    p.add_argument("--sweep", type=_sweep, default=None, metavar="SETTING=V1,V2,...",
                   help="run the grid once per value of one setting (temperature, top-k, partitions, records, max-tokens), "
                        "each into OUT/<setting>-<value>, and report them side by side")
    p.add_argument("--report-only", action="store_true", help="score and report only the cells already finished (same flags as the run)")
    p.set_defaults(func=cmd)
