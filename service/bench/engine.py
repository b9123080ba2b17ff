"""`privtext bench engine`: private synthetic tokens/s against the engine's raw decoding tokens/s.

One run, the same rows for both numbers: groups of N private rows + 1 public row, built from a
real public corpus (the SMS Spam Collection). The raw baseline (`run_raw`, the optional
service.engine.raw.RawDecoding capability: a backend without it cannot be benched) lets every row
sample its own token each step; the private run (`engine.run` with a MechanismSelector) emits one
token per group each step. Both decode exactly max_tokens steps (ignore_eos), all groups in one
batch, so they do the same model work and

    efficiency = private_tokens_per_s * (N + 1) / raw_tokens_per_s

is 1 when private decoding costs nothing beyond the forwards it shares with raw decoding (the
issue's target: >= 0.8 at N = 8, 16 groups). Both runs prefill the same prompts, so efficiency is
also raw seconds / private seconds. Runs alternate raw / private `repeats` times (raw, private,
private, raw, ...: the first full-size run of a process tends to be the slowest) and the median of
each is reported, so that noise from other processes hits both numbers alike; the default is one
of each, since one default run (16 x 9 rows, 32 tokens) takes 60 to 100 s on 2 CPU cores. Each
run records the share of the cores it got, the CPU seconds other processes used meanwhile (the
table warns when a run was starved) and its minor page faults (on CPU the decode steps' cost
swings with how much memory the allocator maps afresh, which differs from run to run).

Phase timings (prefill, decode forwards, selection) and token counts are the differences of the
engine's own stats (`engine.stats`, service.engine.stats.EngineStats) across a run: every backend
keeps them, so nothing here reaches into a backend. "other" is the rest of the run's wall time (the
decoding loop's own work: batching, appending, the raw rows' sampling on transformers).
"""

from __future__ import annotations

import dataclasses
import os
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..engine.transformers_backend import QUANTIZE_CHOICES

PRIVATE_PROMPT = "Here is an example of a text message:\n{text}\nWrite one more text message like it. Reply with the message only."
PUBLIC_PROMPT = "Write one text message. Reply with the message only."
DATASET = "sms-spam"


def busy_cpu_seconds() -> float | None:
    """CPU seconds all processes of the machine have used since boot (Linux /proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
        ticks = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal ...: busy = all but idle and iowait
    values = [int(x) for x in fields[:8]]
    return (sum(values) - values[3] - values[4]) / ticks


def raw_decoder(engine):
    """The engine as a RawDecoding (the raw baseline every benchmark compares against), or a
    ValueError that names what is missing."""
    from ..engine.raw import RawDecoding

    if not isinstance(engine, RawDecoding):
        raise ValueError(f"engine {engine.name!r} has no raw baseline: the benchmarks need a backend that implements "
                         "service.engine.raw.RawDecoding (run_raw)")
    return engine


def corpus_texts(partitions: int, groups: int, dataset: str = DATASET) -> list[str]:
    """The corpus' first groups * partitions texts, in order."""
    from service.data.packaged import load

    texts = [r["text"] for r in load(dataset)][: groups * partitions]
    if len(texts) < groups * partitions:
        raise ValueError(f"groups * partitions must be at most {len(texts)} (texts in {dataset!r}), got {groups * partitions}")
    return texts


def build_groups(engine, partitions: int, groups: int, max_tokens: int, texts: Sequence[str] | None = None) -> list:
    """groups GroupRequests of `partitions` private rows each (one text per row, see
    corpus_texts) and the one public prompt; ignore_eos so every group decodes max_tokens."""
    from ..engine.interface import GroupRequest

    if texts is None:
        texts = corpus_texts(partitions, groups)
    public = engine.encode_chat(PUBLIC_PROMPT)
    out = []
    for g in range(groups):
        rows = tuple(engine.encode_chat(PRIVATE_PROMPT.format(text=t)) for t in texts[g * partitions : (g + 1) * partitions])
        out.append(GroupRequest(g, rows, public, max_tokens, ignore_eos=True))
    return out


def _check_args(partitions: int, groups: int, max_tokens: int, repeats: int) -> None:
    for name, v in (("partitions", partitions), ("groups", groups), ("max_tokens", max_tokens), ("repeats", repeats)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")


STARVED = 0.85  # a run that got less than this share of its threads' CPU time was starved: noise


def private_config(mechanism: str, partitions: int):
    """The DecodingConfig every benchmark decodes with (clip 1, top-k 64, defaults otherwise)."""
    from mechanisms import DecodingConfig

    return DecodingConfig(mechanism=mechanism, partitions=partitions, clip=1.0, top_k=64)


def _decode(engine, kind: str, requests: Sequence, cfg, seed: int) -> tuple[int, list]:
    """One decode of all `requests` in one batch: (tokens, results)."""
    from ..generation.selector import MechanismSelector

    rows = max(2, sum(r.n_rows for r in requests))
    if kind == "raw":
        return raw_decoder(engine).run_raw(requests, seed=seed, max_batch_rows=rows), []
    from mechanisms import JobRandomness

    # public benchmark text, reproducible by seed: the seed alone may decide the noise here
    sel = MechanismSelector(cfg, JobRandomness.replay(b"privtext benchmark, public data", seed))
    results = list(engine.run(requests, sel, max_batch_rows=rows))
    return sum(len(r.token_ids) for r in results), results


def warm_up(engine, requests: Sequence, cfg, seed: int = 0) -> float:
    """Every code path once on a tiny batch (one group, two tokens); returns its seconds."""
    t0 = time.perf_counter()
    tiny = [dataclasses.replace(requests[0], max_tokens=min(2, requests[0].max_tokens))]
    _decode(engine, "raw", tiny, cfg, seed)
    _decode(engine, "private", tiny, cfg, seed)
    return time.perf_counter() - t0


def phases(stats, seconds: float) -> dict:
    """A run's phase table from the difference of the engine's stats across it (an
    EngineStats) and its wall seconds; "other" is the wall time outside forwards and selection."""
    return {
        "prefill_seconds": stats.prefill_seconds,
        "decode_seconds": stats.decode_seconds,
        "selection_seconds": stats.selection_seconds,
        "selection_calls": stats.selections,
        "other_seconds": seconds - stats.forward_seconds - stats.selection_seconds,
        "prompt_tokens": stats.prefill_tokens,
        "decode_tokens": stats.decode_row_tokens,
        "steps": stats.steps,
        "forwards": stats.forwards,
        "prefill_forwards": stats.prefill_forwards,
    }


def measure(engine, kind: str, requests: Sequence, cfg, seed: int) -> dict:
    """One timed run ("raw" or "private" with `cfg`) of all `requests` in one batch: seconds,
    tokens/s, phases (from the engine's stats), CPU share and page faults. Raises when a run
    returned fewer tokens than asked for (ignore_eos: every group decodes exactly its max_tokens)."""
    import torch

    if kind == "raw":
        raw_decoder(engine)
    before = engine.stats
    ru0, cpu0, busy0 = resource.getrusage(resource.RUSAGE_SELF), time.process_time(), busy_cpu_seconds()
    t0 = time.perf_counter()
    tokens, results = _decode(engine, kind, requests, cfg, seed)
    seconds = time.perf_counter() - t0
    spent = engine.stats.since(before)
    cpu, ru1, busy1 = time.process_time() - cpu0, resource.getrusage(resource.RUSAGE_SELF), busy_cpu_seconds()
    expected = sum((r.n_rows if kind == "raw" else 1) * r.max_tokens for r in requests)
    if tokens != expected:
        reasons = sorted({r.finish_reason for r in results})
        raise RuntimeError(f"{kind} run returned {tokens} tokens, expected {expected}" + (f" (finish reasons {reasons})" if reasons else ""))
    run = {
        "seconds": seconds,
        "tokens": tokens,
        "tokens_per_s": tokens / seconds,
        **phases(spent, seconds),
        # this process' CPU time over (wall x threads): well under 1 means the run was
        # starved (other processes on the cores) and its numbers are noise
        "cpu_utilization": cpu / (seconds * torch.get_num_threads()),
        "page_faults": ru1.ru_minflt - ru0.ru_minflt,
        # CPU seconds other processes used on this machine meanwhile (None off Linux)
        "others_cpu_seconds": None if busy0 is None or busy1 is None else max(0.0, busy1 - busy0 - cpu),
    }
    return run


def bench_engine(
    engine_name: str = "auto",
    partitions: int = 8,
    groups: int = 16,
    max_tokens: int = 32,
    mechanism: str = "em",
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    repeats: int = 1,
    order: tuple[str, str] = ("raw", "private"),
    model: str | None = None,
    engine=None,
    quantize: str | None = None,
) -> dict:
    """Raw and private tokens/s of one engine on the same rows; see the module docstring.

    engine: an already loaded Engine to reuse (tests); otherwise `engine_name` is loaded, with
    quantize= passed to it when given (the transformers engine's "none", "bf16" or "int8")."""
    import torch

    from ..engine.loader import load_engine

    _check_args(partitions, groups, max_tokens, repeats)
    if sorted(order) != ["private", "raw"]:
        raise ValueError(f"order must be ('raw', 'private') or ('private', 'raw'), got {order!r}")
    cfg = private_config(mechanism, partitions)
    say = progress or (lambda _msg: None)
    texts = corpus_texts(partitions, groups)

    t0 = time.perf_counter()
    if engine is None:
        say(f"loading engine {engine_name!r}")
        engine = load_engine(engine_name, model=model, progress=progress, **({} if quantize is None else {"quantize": quantize}))
    load_seconds = time.perf_counter() - t0
    raw_decoder(engine)
    reqs = build_groups(engine, partitions, groups, max_tokens, texts)
    rows = groups * (partitions + 1)
    expected_raw = rows * max_tokens

    say("warm-up")
    warmup_seconds = warm_up(engine, reqs, cfg, seed)

    runs: dict[str, list[dict]] = {"raw": [], "private": []}
    for rep in range(repeats):
        for kind in order if rep % 2 == 0 else order[::-1]:  # ABBA: neither kind always goes first
            run = measure(engine, kind, reqs, cfg, seed + rep)
            runs[kind].append(run)
            say(f"  {kind:<7} run {rep + 1}/{repeats}: {run['seconds']:6.2f} s, {run['tokens_per_s']:8.1f} tokens/s, cpu {run['cpu_utilization']:.0%}, others {_s(run['others_cpu_seconds'], '.1f')} cpu s")

    def med(kind: str, key: str):
        vals = [r[key] for r in runs[kind]]
        return None if any(v is None for v in vals) else float(statistics.median(vals))

    raw_tps, priv_tps = med("raw", "tokens_per_s"), med("private", "tokens_per_s")
    result = {
        "benchmark": "engine",
        "engine": engine.name,
        "quantize": getattr(engine, "quantize", None),
        "model": Path(engine.model_path).name,
        "device": str(getattr(engine, "device", "unknown")),
        "threads": torch.get_num_threads(),
        "dataset": DATASET,
        "mechanism": mechanism,
        "partitions": partitions,
        "groups": groups,
        "max_tokens": max_tokens,
        "batch_rows": rows,
        "repeats": repeats,
        "raw_tokens": expected_raw,
        "private_tokens": groups * max_tokens,
        "raw_tokens_per_s": raw_tps,
        "private_tokens_per_s": priv_tps,
        "efficiency": priv_tps * (partitions + 1) / raw_tps,
        "raw_seconds": med("raw", "seconds"),
        "private_seconds": med("private", "seconds"),
        "prompt_tokens": runs["raw"][0]["prompt_tokens"],
        "raw_prefill_seconds": med("raw", "prefill_seconds"),
        "private_prefill_seconds": med("private", "prefill_seconds"),
        "raw_decode_seconds": med("raw", "decode_seconds"),
        "private_decode_seconds": med("private", "decode_seconds"),
        "raw_page_faults": med("raw", "page_faults"),
        "private_page_faults": med("private", "page_faults"),
        "raw_cpu_utilization": med("raw", "cpu_utilization"),
        "private_cpu_utilization": med("private", "cpu_utilization"),
        "raw_other_seconds": med("raw", "other_seconds"),
        "private_other_seconds": med("private", "other_seconds"),
        "selection_seconds": med("private", "selection_seconds"),
        "selection_ms_per_step": 1000.0 * med("private", "selection_seconds") / max_tokens,
        "load_seconds": load_seconds,
        "warmup_seconds": warmup_seconds,
        "runs": runs,
    }
    # A stricter ratio: raw time counted as its model forwards only (prefill + decode steps),
    # i.e. as if the baseline's own per-row sampling were free (transformers; vLLM samples
    # inside its steps, so there it counts).
    result["efficiency_vs_raw_forwards"] = (result["raw_prefill_seconds"] + result["raw_decode_seconds"]) / result["private_seconds"]
    for kind in ("raw", "private"):
        result[f"{kind}_prefill_share"] = result[f"{kind}_prefill_seconds"] / result[f"{kind}_seconds"]
        # the share of the engine's own time (forwards + selection), the loop's other work left out
        engine_s = result[f"{kind}_seconds"] - result[f"{kind}_other_seconds"]
        result[f"{kind}_prefill_share_of_engine"] = result[f"{kind}_prefill_seconds"] / engine_s if engine_s > 0 else None
    return result


def _s(x: float | None, fmt: str = "8.2f") -> str:
    return f"{'-':>8}" if x is None else format(x, fmt)


def format_result(d: dict) -> str:
    """A readable table: raw vs private side by side, then the efficiency."""
    head = f"{'run':<8} {'seconds':>8} {'tokens':>7} {'tokens/s':>9} {'prefill s':>9} {'decode s':>9} {'select s':>9} {'other s':>8} {'faults M':>8}"
    lines = [
        f"engine {d['engine']}{'' if d.get('quantize') in (None, 'none') else ' (' + d['quantize'] + ')'} on {d['device']} "
        f"({d['threads']} threads), model {d['model']}, mechanism {d['mechanism']}",
        f"N={d['partitions']} partitions, {d['groups']} groups ({d['batch_rows']} rows in one batch), "
        f"{d['max_tokens']} new tokens, {d['prompt_tokens']} prompt tokens, {d['dataset']}, median of {d['repeats']}",
        "",
        head,
        "-" * len(head),
    ]
    for kind in ("raw", "private"):
        sel = d["selection_seconds"] if kind == "private" else 0.0
        lines.append(
            f"{kind:<8} {d[f'{kind}_seconds']:>8.2f} {d[f'{kind}_tokens']:>7} {d[f'{kind}_tokens_per_s']:>9.1f} "
            f"{_s(d[f'{kind}_prefill_seconds'], '9.2f')} {_s(d[f'{kind}_decode_seconds'], '9.2f')} {sel:>9.2f} {_s(d[f'{kind}_other_seconds'])} {_s(d[f'{kind}_page_faults'] / 1e6)}"
        )
    lines.append("")
    lines.append(
        f"efficiency = private tokens/s x (N+1) / raw tokens/s = {d['private_tokens_per_s']:.1f} x {d['partitions'] + 1} / "
        f"{d['raw_tokens_per_s']:.1f} = {d['efficiency']:.3f}"
    )
    lines.append(f"selection: {d['selection_ms_per_step']:.1f} ms per step ({d['groups']} groups)")
    if d.get("efficiency_vs_raw_forwards") is not None:
        lines.append(f"efficiency against the raw run's model forwards only (its sampling free): {d['efficiency_vs_raw_forwards']:.3f}")
    if d.get("raw_prefill_share") is not None:
        line = f"prefill share of the run: raw {d['raw_prefill_share']:.1%}, private {d['private_prefill_share']:.1%}"
        if d.get("private_prefill_share_of_engine") is not None:
            line += (f"; of the engine's time (forwards + selection): raw {d['raw_prefill_share_of_engine']:.1%}, "
                     f"private {d['private_prefill_share_of_engine']:.1%}")
        lines.append(line)
        lines.append("phases from the engine's stats; other = the decoding loop outside forwards and selection (transformers raw:")
        lines.append("each row's sampling); faults M = minor page faults (millions): memory the allocator mapped afresh")
    for kind in ("raw", "private"):
        util = d.get(f"{kind}_cpu_utilization")
        if util is not None and util < STARVED:
            others = [r["others_cpu_seconds"] for r in d["runs"][kind]]
            lines.append(f"warning: the {kind} run had {util:.0%} of {d['threads']} cores (other processes used {others} cpu s): noisy, rerun")
    return "\n".join(lines)


def check_variants(variants: Sequence[str]) -> list[str]:
    """The engine precisions a benchmark compares (the transformers engine's quantize values):
    at least one, each known, none twice; the first is the base of the ratios."""
    variants = list(variants)
    if not variants or len(set(variants)) != len(variants) or any(v not in QUANTIZE_CHOICES for v in variants):
        raise ValueError(f"quantize must be distinct values among {', '.join(QUANTIZE_CHOICES)}, got {variants}")
    return variants


def bench_side_by_side(variants: Sequence[str], repeats: int = 1, progress: Callable[[str], None] | None = None,
                       engines: dict | None = None, **kw) -> dict:
    """bench_engine for each quantize variant of the transformers engine in one process: every
    engine loaded first, then runs alternating between variants (A B, then B A, ...) `repeats`
    times; per variant the median of its runs. engines: {variant: engine} to reuse (tests)."""
    from ..engine.loader import load_engine

    say = progress or (lambda _m: None)
    variants = check_variants(variants)
    _check_args(kw.get("partitions", 8), kw.get("groups", 16), kw.get("max_tokens", 32), repeats)
    loaded = {}
    for v in variants:
        if engines is not None and v in engines:
            loaded[v] = engines[v]
        else:
            say(f"loading engine transformers, quantize {v}")
            loaded[v] = load_engine("transformers", model=kw.get("model"), progress=progress, quantize=v)
    per: dict[str, list[dict]] = {v: [] for v in variants}
    for rep in range(repeats):
        for v in variants if rep % 2 == 0 else variants[::-1]:
            say(f"quantize {v}, run {rep + 1}/{repeats}")
            per[v].append(bench_engine(engine=loaded[v], repeats=1, progress=progress, **{**kw, "seed": kw.get("seed", 0) + rep}))

    def med(v: str, key: str):
        return float(statistics.median(d[key] for d in per[v]))

    out = {"benchmark": "engine-side-by-side", "variants": {}, "repeats": repeats}
    for v in variants:
        d = dict(per[v][len(per[v]) // 2])
        for key in ("raw_tokens_per_s", "private_tokens_per_s", "efficiency", "raw_seconds", "private_seconds"):
            d[key] = med(v, key)
        d["decode_tokens_per_s"] = float(statistics.median(
            r["decode_tokens"] / r["decode_seconds"] for x in per[v] for r in x["runs"]["raw"] if r["decode_seconds"]))
        d["all_runs"] = per[v]
        out["variants"][v] = d
    base = variants[0]
    for v in variants[1:]:
        for key in ("raw_tokens_per_s", "private_tokens_per_s", "decode_tokens_per_s"):
            out["variants"][v][f"{key}_vs_{base}"] = out["variants"][v][key] / out["variants"][base][key]
    return out


def format_side_by_side(d: dict) -> str:
    vs = list(d["variants"])
    first = d["variants"][vs[0]]
    head = f"{'quantize':<9} {'raw tok/s':>9} {'decode':>8} {'private tok/s':>13} {'efficiency':>10} {'raw s':>7} {'private s':>9}"
    lines = [
        f"engine transformers on {first['device']} ({first['threads']} threads), model {first['model']}, mechanism {first['mechanism']}",
        f"N={first['partitions']} partitions, {first['groups']} groups ({first['batch_rows']} rows in one batch), {first['max_tokens']} new tokens, "
        f"{first['dataset']}; variants alternate, median of {d['repeats']}",
        "",
        head,
        "-" * len(head),
    ]
    for v, r in d["variants"].items():
        lines.append(f"{v:<9} {r['raw_tokens_per_s']:>9.1f} {r['decode_tokens_per_s']:>8.1f} {r['private_tokens_per_s']:>13.2f} "
                     f"{r['efficiency']:>10.3f} {r['raw_seconds']:>7.2f} {r['private_seconds']:>9.2f}")
    lines.append("raw: rows x tokens/s of the raw run (prefill included); decode: its decode steps alone")
    for v in vs[1:]:
        r = d["variants"][v]
        lines.append(f"{v} / {vs[0]}: raw {r[f'raw_tokens_per_s_vs_{vs[0]}']:.2f}x, decode steps {r[f'decode_tokens_per_s_vs_{vs[0]}']:.2f}x, "
                     f"private {r[f'private_tokens_per_s_vs_{vs[0]}']:.2f}x")
    for v, r in d["variants"].items():
        for kind in ("raw", "private"):
            util = r.get(f"{kind}_cpu_utilization")
            if util is not None and util < STARVED:
                lines.append(f"warning: the {v} {kind} run had {util:.0%} of {r['threads']} cores: noisy")
    return "\n".join(lines)


def cmd_side_by_side(a, variants: Sequence[str], progress: Callable[[str], None]) -> int:
    import json

    if a.engine not in ("auto", "transformers"):
        raise ValueError(f"--quantize with several values benches the transformers engine, not --engine {a.engine}")
    d = bench_side_by_side(variants, repeats=getattr(a, "repeats", 1), progress=progress, partitions=a.partitions, groups=a.groups,
                           max_tokens=a.max_tokens, mechanism=getattr(a, "mechanism", "em"), seed=getattr(a, "seed", 0),
                           model=getattr(a, "model", None))
    print(format_side_by_side(d))
    if getattr(a, "json", None):
        Path(a.json).write_text(json.dumps(d, indent=2) + "\n")
        progress(f"wrote {a.json}")
    return 0


def cmd(a) -> int:
    """`privtext bench engine`: print the table, and write --json when given."""
    import json
    import sys

    def progress(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    variants = getattr(a, "quantize", None)
    if variants and len(variants) > 1:
        return cmd_side_by_side(a, variants, progress)
    d = bench_engine(
        quantize=variants[0] if variants else None,
        engine_name=a.engine,
        partitions=a.partitions,
        groups=a.groups,
        max_tokens=a.max_tokens,
        mechanism=getattr(a, "mechanism", "em"),
        seed=getattr(a, "seed", 0),
        progress=progress,
        repeats=getattr(a, "repeats", 1),
        model=getattr(a, "model", None),
    )
    print(format_result(d))
    if getattr(a, "json", None):
        Path(a.json).write_text(json.dumps(d, indent=2) + "\n")
        print(f"wrote {a.json}", file=sys.stderr)
    return 0


def add_parser(subparsers) -> None:
    """Register `engine` on the `bench` subparsers object."""
    from mechanisms import MECHANISMS

    p = subparsers.add_parser("engine", help="private synthetic tokens/s against the engine's raw decoding tokens/s")
    p.add_argument("--engine", default="auto", help="backend: auto or a backend name (default: auto)")
    p.add_argument("--model", default=None, help="a local model folder (default: the embedded default model)")
    p.add_argument("--partitions", type=int, default=8, help="N, private rows per group (default: 8)")
    p.add_argument("--groups", type=int, default=16, help="groups decoded together in one batch (default: 16)")
    p.add_argument("--max-tokens", type=int, default=32, help="new tokens per row, exactly (default: 32)")
    p.add_argument("--mechanism", choices=MECHANISMS, default="em", help="private token selection (default: em)")
    p.add_argument("--repeats", type=int, default=1, help="alternating raw/private runs; the median of each is reported (default: 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quantize", nargs="+", choices=QUANTIZE_CHOICES, default=None,
                   help="transformers engine: float32 (none) or int8 linear layers; several values run side by side, "
                        "one engine each, in one process (default: the engine's own, PRIVTEXT_QUANTIZE or none)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    p.set_defaults(func=cmd)
