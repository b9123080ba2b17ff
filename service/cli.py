"""The `privtext` command. Nothing below imports it; each subcommand imports what it needs lazily
so that `privtext plan` starts without loading an engine."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mechanisms import MECHANISMS


def _add_mechanism_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mechanism", choices=MECHANISMS, default="em", help="private token selection (default: em)")
    p.add_argument("--partitions", type=int, default=8, help="N, rows per group the average divides by (default: 8)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature tau (default: 1.0)")
    p.add_argument("--top-k", type=int, default=64, help="public candidate set size; 0 = whole vocabulary (default: 64)")
    p.add_argument("--units-per-row", type=int, default=1, help="1 = one unit per row; k > 1 = few-shot layout, doubled sensitivity")
    p.add_argument("--gate-threshold", type=float, default=None, help="enable the public-token gate with this TV-distance threshold")
    p.add_argument("--gate-epsilon", type=float, default=0.5, help="pure epsilon per above-threshold answer (default: 0.5)")
    p.add_argument("--gate-max-private", type=int, default=16, help="cap on private tokens per record with the gate (default: 16)")


def _config_from_args(a: argparse.Namespace):
    from mechanisms import DecodingConfig, GateConfig

    gate = None
    if a.gate_threshold is not None:
        gate = GateConfig(threshold=a.gate_threshold, epsilon=a.gate_epsilon, max_private_tokens=a.gate_max_private)
    return DecodingConfig(
        mechanism=a.mechanism,
        partitions=a.partitions,
        temperature=a.temperature,
        top_k=a.top_k or None,
        units_per_row=a.units_per_row,
        gate=gate,
    )


def cmd_plan(a: argparse.Namespace) -> int:
    from mechanisms import plan

    from .plan_report import plan_table

    p = plan(
        units=a.units,
        records=a.records,
        max_tokens=a.max_tokens,
        epsilon=a.epsilon,
        delta=a.delta,
        config=_config_from_args(a),
        units_source="dp-count" if a.dp_count_noise is not None else "declared-public",
        count_noise=a.dp_count_noise,
    )
    if a.json:
        print(json.dumps(p.to_dict(), indent=2))
    else:
        print(plan_table(p))
    return 0


def cmd_bench_mechanisms(a: argparse.Namespace) -> int:
    from .bench.mechanisms import bench_mechanisms, format_table

    def progress(row: dict) -> None:
        print(f"  {row['mechanism']:<9} N={row['partitions']:<3} {row['ms_per_group_step']:.3f} ms/group-step", file=sys.stderr, flush=True)

    rows = bench_mechanisms(vocab=a.vocab, partitions=tuple(a.partitions), groups=a.groups, steps=a.steps, seed=a.seed, progress=progress)
    print(format_table(rows))
    if a.json:
        Path(a.json).write_text(json.dumps({"benchmark": "mechanisms", "results": rows}, indent=2) + "\n")
        print(f"wrote {a.json}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="privtext", description="Differentially private synthetic text at inference time.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("plan", help="print the privacy plan of a generation job (rounds, groups, solved clip/noise, cost)")
    p.add_argument("--units", type=int, required=True, help="public count of privacy units (declared public, or a DP count)")
    p.add_argument("--records", type=int, required=True, help="synthetic records wanted")
    p.add_argument("--max-tokens", type=int, required=True, help="public maximum tokens per record (charged in full)")
    p.add_argument("--epsilon", type=float, required=True, help="target epsilon for the whole job")
    p.add_argument("--delta", type=float, required=True, help="target delta; must be <= 1/units")
    p.add_argument("--dp-count-noise", type=float, default=None, metavar="SIGMA", help="the unit count is released by a Gaussian DP count with this sigma, charged to this job")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    _add_mechanism_args(p)
    p.set_defaults(func=cmd_plan)

    b = sub.add_parser("bench", help="benchmarks")
    bsub = b.add_subparsers(dest="bench", required=True)
    bm = bsub.add_parser("mechanisms", help="time the batched selection step per mechanism")
    bm.add_argument("--vocab", type=int, default=49_152)
    bm.add_argument("--partitions", type=int, nargs="+", default=[8, 64])
    bm.add_argument("--groups", type=int, default=16)
    bm.add_argument("--steps", type=int, default=20)
    bm.add_argument("--seed", type=int, default=0)
    bm.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    bm.set_defaults(func=cmd_bench_mechanisms)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as e:  # bad input: the message names the field and the limit
        print(f"privtext: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
