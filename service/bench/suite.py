"""`privtext bench all`: every benchmark of the project side by side, in one process on one loaded
engine, written as bench.json and PNG plots (`plots.py`).

Numbers taken in one run on one machine compare like with like; their ratios are what to read,
the absolute figures move with the machine and its other load. Sections:

- throughput: raw decoding against private decoding with each mechanism at the base point
  (default N = 8, 4 groups, 16 tokens), efficiency as in `bench engine`
  (private tokens/s x (N + 1) / raw tokens/s). Order raw, em, amin, gaussian, raw; raw's number is
  the median of its two runs, so that drift over the section hits both sides.
- scaling (em): N, concurrent groups (all decoded in one batch) and max tokens, each varied
  around the base point; every point is a raw and a private run back to back on the same rows,
  alternating which goes first (the first run at a new size pays for memory the allocator maps
  afresh, see `bench engine`). A point equal to the base point reuses the throughput runs.
- pii: the PII policy (`RecordFilter`, redact) per record on real SMS texts, and its share of a
  record's time next to the record's amortised decoding time at the base point.
- selection: `bench mechanisms` on synthetic logits of the engine's vocabulary, per mechanism vs N.

Every run records the share of the cores it got; starved runs are listed as warnings.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from mechanisms import MECHANISMS

from .engine import DATASET, STARVED, busy_cpu_seconds, build_groups, corpus_texts, measure, private_config, raw_decoder, warm_up

SWEEPS = {"partitions": "sweep_partitions", "groups": "sweep_groups", "max_tokens": "sweep_max_tokens"}
FLAGS = {"sweep_partitions": "--partitions", "sweep_groups": "--groups", "sweep_max_tokens": "--max-tokens", "engine": "--engine", "out": "--out"}



@dataclasses.dataclass(frozen=True)
class Preset:
    """The sizes of one suite run. The base point (partitions, groups, max_tokens) is where the
    mechanisms are compared; each sweep varies one of its values around it, except that the N
    sweep decodes `partitions_groups` groups (N = 64 x 4 groups would be 260 rows per run)."""

    name: str
    partitions: int = 8
    groups: int = 4
    max_tokens: int = 16
    sweep_partitions: tuple[int, ...] = (1, 4, 16, 64)
    partitions_groups: int = 2
    sweep_groups: tuple[int, ...] = (1, 4, 16)
    sweep_max_tokens: tuple[int, ...] = (8, 16, 32, 64)
    pii_records: int = 200
    selection_groups: int = 16
    selection_steps: int = 10

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "name":
                continue
            values = v if isinstance(v, tuple) else (v,)
            if not values or any(not isinstance(x, int) or isinstance(x, bool) or x < 1 for x in values):
                raise ValueError(f"{f.name} must be {'integers' if isinstance(v, tuple) else 'an integer'} >= 1, got {v!r}")
            if isinstance(v, tuple):
                object.__setattr__(self, f.name, tuple(sorted(set(v))))


PRESETS = {
    # about 6 minutes on 2 idle cores, 10 to 15 on 2 shared ones
    "default": Preset("default"),
    # tiny sizes, every code path, each sweep two points of which one is the base point (11 engine
    # runs): for tests; under a minute on 2 idle cores, about 3 on 2 crowded ones
    "quick": Preset(
        "quick", partitions=2, groups=1, max_tokens=2, sweep_partitions=(1, 2), partitions_groups=1, sweep_groups=(1, 2),
        sweep_max_tokens=(2, 4), pii_records=20, selection_groups=2, selection_steps=3,
    ),
}


def _points(p: Preset) -> list[tuple[str, int, int, int]]:
    """(sweep, N, groups, max_tokens) of every scaling point, in run order."""
    out = [("partitions", n, p.partitions_groups, p.max_tokens) for n in p.sweep_partitions]
    out += [("groups", p.partitions, g, p.max_tokens) for g in p.sweep_groups]
    out += [("max_tokens", p.partitions, p.groups, t) for t in p.sweep_max_tokens]
    return out


def check_corpus(p: Preset) -> None:
    """Fail before loading anything when a point needs more corpus texts than there are."""
    for sweep, n, g, _ in [("partitions", p.partitions, p.groups, p.max_tokens), *_points(p)]:
        try:
            corpus_texts(n, g)
        except ValueError as e:
            field = SWEEPS[sweep] if sweep != "max_tokens" else "partitions"
            raise ValueError(f"{field} too large: N={n} x {g} groups needs {n * g} corpus texts; {e}") from None


def _median(runs: list[dict], key: str) -> float | None:
    vals = [r[key] for r in runs]
    return None if any(v is None for v in vals) else float(statistics.median(vals))


def summarize(mechanism: str, n: int, g: int, t: int, raw: list[dict], private: list[dict]) -> dict:
    """One point: the medians of its raw and private runs, efficiency, per-step costs."""
    raw_tps, priv_tps = _median(raw, "tokens_per_s"), _median(private, "tokens_per_s")
    priv_s, decode, sel = _median(private, "seconds"), _median(private, "decode_seconds"), _median(private, "selection_seconds")
    steps = private[0]["steps"]
    return {
        "mechanism": mechanism,
        "partitions": n,
        "groups": g,
        "max_tokens": t,
        "rows": g * (n + 1),
        "prompt_tokens": raw[0]["prompt_tokens"],
        "raw_tokens_per_s": raw_tps,
        "private_tokens_per_s": priv_tps,
        "efficiency": priv_tps * (n + 1) / raw_tps,
        "raw_seconds": _median(raw, "seconds"),
        "private_seconds": priv_s,
        "raw_prefill_seconds": _median(raw, "prefill_seconds"),
        "private_prefill_seconds": _median(private, "prefill_seconds"),
        "raw_decode_seconds": _median(raw, "decode_seconds"),
        "private_decode_seconds": decode,
        "raw_other_seconds": _median(raw, "other_seconds"),
        "private_other_seconds": _median(private, "other_seconds"),
        "selection_seconds": sel,
        # wall seconds per generated token of a group, prefill included
        "private_seconds_per_step": priv_s / t,
        # one decode step after prefill: the forwards of every row plus one selection (all groups
        # start together here, so the first of the steps is the prefill's)
        "private_step_ms": None if decode is None or steps < 2 else 1000.0 * (decode / (steps - 1) + sel / private[0]["selection_calls"]),
        "selection_ms_per_step": 1000.0 * sel / private[0]["selection_calls"],
        "cpu_utilization": min(r["cpu_utilization"] for r in raw + private),
        "runs": {"raw": raw, "private": private},
    }


class _Progress:
    """One stderr line per measurement, and the warnings for starved runs."""

    def __init__(self, total: int, say: Callable[[str], None], threads: int) -> None:
        self.total, self.done, self.say, self.threads = total, 0, say, threads
        self.warnings: list[str] = []

    def step(self, label: str, text: str) -> None:
        self.done += 1
        self.say(f"[{self.done:>2}/{self.total}] {label:<34} {text}")

    def run(self, label: str, kind: str, fn: Callable[[], dict]) -> dict:
        run = fn()
        util, others = run["cpu_utilization"], run["others_cpu_seconds"]
        self.step(f"{label} {kind}", f"{run['seconds']:7.2f} s {run['tokens_per_s']:8.1f} tokens/s  cpu {util:.0%}")
        if util < STARVED:
            self.warnings.append(
                f"{label} {kind}: {util:.0%} of {self.threads} cores"
                + ("" if others is None else f" (other processes used {others:.1f} cpu s)")
                + ": starved, its numbers are noise"
            )
        return run


def percent(x: float) -> str:
    """A share as a percentage with two significant digits (0.031%, 4.2%, 97%)."""
    return f"{100 * x:.2g}%"


def busy_cores(seconds: float = 2.0) -> float | None:
    """Cores other processes kept busy over `seconds` (this one sleeps meanwhile), or None off
    Linux: a busy machine at the start warns before minutes of noisy runs."""
    b0, c0 = busy_cpu_seconds(), time.process_time()
    time.sleep(seconds)
    b1, c1 = busy_cpu_seconds(), time.process_time()
    return None if b0 is None or b1 is None else max(0.0, (b1 - b0 - (c1 - c0)) / seconds)


def machine_info() -> dict:
    """What the numbers depend on: the CPU, the threads, the libraries, the load at the start."""
    import torch

    model = None
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        pass
    try:
        import transformers

        tf_version = transformers.__version__
    except ImportError:
        tf_version = None
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": model or platform.processor() or "unknown",
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": tf_version,
        "load_average": list(os.getloadavg()),
    }


def bench_pii(records: int, seed: int, generation_ms: float, progress: _Progress) -> dict:
    """ms per record of the PII policy every released record passes (RecordFilter, redact), on
    a seeded sample of real SMS texts; its share of a record's time next to `generation_ms`."""
    from ..data.packaged import load
    from ..engine.interface import GroupResult
    from ..jobs.records import RecordFilter, RecordStats

    texts = [r["text"] for r in load(DATASET)]
    pick = np.random.default_rng(seed).choice(len(texts), size=min(records, len(texts)), replace=False)
    t0 = time.perf_counter()
    policy = RecordFilter("redact")
    load_seconds = time.perf_counter() - t0
    policy(GroupResult(-1, (), texts[0], "length"), None)  # warm-up: spaCy's first call is slow
    policy.stats = RecordStats()
    ms = []
    cpu0, t0 = time.process_time(), time.perf_counter()
    for i, idx in enumerate(pick):
        t1 = time.perf_counter()
        policy(GroupResult(i, (), texts[idx], "length"), None)
        ms.append(1000.0 * (time.perf_counter() - t1))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    mean = float(np.mean(ms))
    d = {
        "policy": "redact",
        "dataset": DATASET,
        "records": len(ms),
        "chars_mean": float(np.mean([len(texts[i]) for i in pick])),
        "load_seconds": load_seconds,
        "ms_per_record_mean": mean,
        "ms_per_record_median": float(np.median(ms)),
        "ms_per_record_p90": float(np.quantile(ms, 0.9)),
        "records_touched": policy.stats.pii_touched,
        "entities": dict(policy.stats.entities),
        # the filter runs on one thread: the share of one core it got
        "cpu_utilization": cpu / wall,
        "generation_ms_per_record": generation_ms,
        "share_of_record_time": mean / (mean + generation_ms),
        "ms_per_record": [round(x, 4) for x in ms],
    }
    progress.step("pii filter", f"{mean:7.2f} ms/record (mean of {len(ms)}), {percent(d['share_of_record_time'])} of a record's time")
    if d["cpu_utilization"] < STARVED:
        progress.warnings.append(f"pii filter: {d['cpu_utilization']:.0%} of one core: starved, its numbers are noise")
    return d


def run_suite(
    preset: Preset = PRESETS["default"],
    engine_name: str = "auto",
    model: str | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    engine=None,
) -> dict:
    """Every section of the module docstring, on one engine (`engine`, or `engine_name` loaded)."""
    import torch

    from ..engine.loader import load_engine
    from .mechanisms import bench_mechanisms

    say = progress or (lambda _m: None)
    check_corpus(preset)
    started, t_start = datetime.now(timezone.utc), time.perf_counter()
    machine = machine_info()
    machine["busy_cores_at_start"] = busy = busy_cores()
    start_warnings = []
    if busy is not None and busy > 0.25:
        start_warnings.append(f"at the start other processes kept {busy:.1f} of {machine['cpu_count']} cores busy: expect starved runs")
        say(f"warning: {start_warnings[-1]}")
    t0 = time.perf_counter()
    if engine is None:
        say(f"loading engine {engine_name!r}")
        engine = load_engine(engine_name, model=model, progress=progress)
    load_seconds = time.perf_counter() - t0
    raw_decoder(engine)  # before minutes of runs: every section compares against the raw baseline

    p, n0, g0, tok0 = preset, preset.partitions, preset.groups, preset.max_tokens
    base = ("em", n0, g0, tok0)
    scaling = [pt for pt in _points(p) if ("em", *pt[1:]) != base]
    unique = list(dict.fromkeys(("em", *pt[1:]) for pt in scaling))
    selection_rows = len(p.sweep_partitions) * (len(MECHANISMS) + 1)  # + em with the gate
    prog = _Progress(2 + len(MECHANISMS) + 2 * len(unique) + 1 + selection_rows, say, torch.get_num_threads())
    prog.warnings += start_warnings

    reqs = build_groups(engine, n0, g0, tok0, corpus_texts(n0, g0))
    say("warm-up")
    warmup_seconds = warm_up(engine, reqs, private_config("em", n0), seed)

    # throughput: raw, each mechanism, raw again, on the same rows
    label = f"throughput N={n0} G={g0} T={tok0}"
    raw = [prog.run(label, "raw", lambda: measure(engine, "raw", reqs, None, seed))]
    private = {m: prog.run(label, m, lambda m=m: measure(engine, "private", reqs, private_config(m, n0), seed)) for m in MECHANISMS}
    raw.append(prog.run(label, "raw", lambda: measure(engine, "raw", reqs, None, seed + 1)))
    points = {(m, n0, g0, tok0): summarize(m, n0, g0, tok0, raw, [run]) for m, run in private.items()}

    # scaling: a raw and an em run per point, alternating which goes first
    for i, key in enumerate(unique):
        _, n, g, t = key
        rq = build_groups(engine, n, g, t, corpus_texts(n, g))
        runs: dict[str, dict] = {}
        cfg = private_config("em", n)
        for kind in ("raw", "private") if i % 2 == 0 else ("private", "raw"):
            name = "raw" if kind == "raw" else "em"
            runs[kind] = prog.run(f"scaling N={n} G={g} T={t}", name, lambda kind=kind: measure(engine, kind, rq, cfg, seed + 2 + i))
        points[key] = summarize("em", n, g, t, [runs["raw"]], [runs["private"]])

    generation_ms = 1000.0 * points[base]["private_seconds"] / g0
    pii = bench_pii(p.pii_records, seed, generation_ms, prog)

    def sel_progress(row: dict) -> None:
        prog.step(f"selection {row['mechanism']} N={row['partitions']} G={row['groups']}", f"{row['step_ms_median']:7.2f} ms/step")

    selection = bench_mechanisms(
        vocab=engine.vocab_size, partitions=p.sweep_partitions, groups=p.selection_groups, steps=p.selection_steps, seed=seed, progress=sel_progress
    )
    machine["load_average_end"] = list(os.getloadavg())
    return {
        "benchmark": "suite",
        "date": started.isoformat(timespec="seconds"),
        "wall_seconds": time.perf_counter() - t_start,
        "machine": machine,
        "engine": {
            "name": engine.name,
            "model": Path(engine.model_path).name,
            "device": str(getattr(engine, "device", "unknown")),
            "threads": torch.get_num_threads(),
            "vocab": engine.vocab_size,
            "load_seconds": load_seconds,
            "warmup_seconds": warmup_seconds,
        },
        "settings": {**dataclasses.asdict(p), "preset": p.name, "seed": seed, "dataset": DATASET, "mechanisms": list(MECHANISMS),
                     **{k: v for k, v in private_config("em", n0).to_dict().items() if k in ("clip", "top_k", "temperature", "noise_multiplier")}},
        "throughput": {"partitions": n0, "groups": g0, "max_tokens": tok0, "mechanisms": {m: points[(m, n0, g0, tok0)] for m in MECHANISMS}},
        "scaling": {sweep: [points[("em", n, g, t)] for s, n, g, t in _points(p) if s == sweep] for sweep in SWEEPS},
        "pii": pii,
        "selection": {"vocab": engine.vocab_size, "groups": p.selection_groups, "steps": p.selection_steps, "results": selection},
        "warnings": prog.warnings,
    }


def _f(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def format_suite(d: dict) -> str:
    """The compact table `bench all` prints."""
    m, e, th = d["machine"], d["engine"], d["throughput"]
    n0 = th["partitions"]
    lines = [
        f"privtext bench all ({d['settings']['preset']}), {d['date']}, {d['wall_seconds']:.0f} s",
        f"{m['cpu_count']} CPUs ({m['cpu_model']}), engine {e['name']} on {e['device']} ({e['threads']} threads), model {e['model']}",
        "",
        f"throughput: N={n0}, {th['groups']} groups ({th['groups'] * (n0 + 1)} rows in one batch), {th['max_tokens']} new tokens; raw = median of 2 runs",
    ]
    head = f"{'run':<9} {'seconds':>8} {'tokens/s':>9} {'efficiency':>10} {'prefill s':>9} {'select ms/step':>14} {'cpu':>5}"
    lines += [head, "-" * len(head)]
    first = next(iter(th["mechanisms"].values()))
    lines.append(f"{'raw':<9} {first['raw_seconds']:>8.2f} {first['raw_tokens_per_s']:>9.1f} {'-':>10} {_f(first['raw_prefill_seconds'], '9.2f'):>9} {'-':>14} "
                 f"{min(r['cpu_utilization'] for r in first['runs']['raw']):>5.0%}")
    for name, pt in th["mechanisms"].items():
        lines.append(f"{name:<9} {pt['private_seconds']:>8.2f} {pt['private_tokens_per_s']:>9.1f} {pt['efficiency']:>10.3f} "
                     f"{_f(pt['private_prefill_seconds'], '9.2f'):>9} {pt['selection_ms_per_step']:>14.2f} {pt['runs']['private'][0]['cpu_utilization']:>5.0%}")
    lines.append("efficiency = private tokens/s x (N+1) / raw tokens/s (1: private decoding costs nothing beyond the shared forwards)")
    head = (f"{'N':>4} {'groups':>6} {'tokens':>6} {'rows':>5} {'raw s':>7} {'private s':>9} {'raw tok/s':>9} {'priv tok/s':>10} "
            f"{'s/step':>7} {'step ms':>8} {'select ms':>9} {'efficiency':>10} {'cpu':>5}")
    for sweep, title in (("partitions", "N"), ("groups", "concurrent groups"), ("max_tokens", "max tokens")):
        lines += ["", f"scaling with {title} (em)", head, "-" * len(head)]
        for pt in d["scaling"][sweep]:
            lines.append(
                f"{pt['partitions']:>4} {pt['groups']:>6} {pt['max_tokens']:>6} {pt['rows']:>5} {pt['raw_seconds']:>7.2f} {pt['private_seconds']:>9.2f} "
                f"{pt['raw_tokens_per_s']:>9.1f} {pt['private_tokens_per_s']:>10.2f} {pt['private_seconds_per_step']:>7.3f} "
                f"{_f(pt['private_step_ms'], '8.1f'):>8} {pt['selection_ms_per_step']:>9.2f} {pt['efficiency']:>10.3f} {pt['cpu_utilization']:>5.0%}"
            )
    lines.append("s/step = private seconds / max tokens (prefill included); step ms = one decode step after prefill (forwards + selection)")
    pii = d["pii"]
    lines += [
        "",
        f"PII filter ({pii['policy']}, presidio + spaCy) on {pii['records']} {pii['dataset']} texts ({pii['chars_mean']:.0f} chars on average): "
        f"{pii['ms_per_record_mean']:.2f} ms/record mean, {pii['ms_per_record_median']:.2f} median, {pii['ms_per_record_p90']:.2f} p90;",
        f"  {percent(pii['share_of_record_time'])} of a record's time next to its decoding ({pii['generation_ms_per_record']:.0f} ms/record, em at the throughput point)",
    ]
    sel = d["selection"]
    ns = sorted({r["partitions"] for r in sel["results"]})
    lines += ["", f"selection on synthetic logits (vocab {sel['vocab']}, {sel['groups']} groups): ms per step, median of {sel['steps']}"]
    head = f"{'mechanism':<10}" + "".join(f"{f'N={n}':>9}" for n in ns)
    lines += [head, "-" * len(head)]
    for mech in dict.fromkeys(r["mechanism"] for r in sel["results"]):
        by_n = {r["partitions"]: r["step_ms_median"] for r in sel["results"] if r["mechanism"] == mech}
        lines.append(f"{mech:<10}" + "".join(f"{by_n[n]:>9.2f}" for n in ns))
    if d["warnings"]:
        lines += ["", f"warnings ({len(d['warnings'])}; starved runs are noise: rerun on a quieter machine):"]
        lines += [f"  {w}" for w in d["warnings"]]
    return "\n".join(lines)


def write(d: dict, out: Path) -> list[Path]:
    """out/bench.json and the PNGs; returns the paths written."""
    from .plots import plot_all

    out.mkdir(parents=True, exist_ok=True)
    path = out / "bench.json"
    path.write_text(json.dumps(d, indent=2, allow_nan=False) + "\n")
    return [path, *plot_all(d, out)]


def _flag_error(e: ValueError) -> ValueError:
    """The message with its leading field name swapped for the command-line flag."""
    msg = str(e)
    for field, flag in FLAGS.items():
        if msg.startswith(field + " "):
            return ValueError(flag + msg[len(field):])
    return e


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cmd_all(a) -> int:
    """`privtext bench all`: run the suite, write --out, print the table."""
    from ..engine.loader import resolve_backend

    try:
        if a.out.exists() and not a.out.is_dir():
            raise ValueError(f"out must be a folder, {str(a.out)!r} is a file")
        preset = PRESETS["quick" if a.quick else "default"]
        given = {"sweep_partitions": a.partitions, "sweep_groups": a.groups, "sweep_max_tokens": a.max_tokens}
        overrides = {field: tuple(v) for field, v in given.items() if v is not None}
        preset = dataclasses.replace(preset, **overrides)
        resolve_backend(a.engine)
        check_corpus(preset)
    except ValueError as e:
        raise _flag_error(e) from None
    d = run_suite(preset, engine_name=a.engine, model=a.model, seed=a.seed, progress=_say)
    for path in write(d, a.out):
        _say(f"wrote {path}")
    print(format_suite(d))
    return 0


def load_json(path: Path) -> dict:
    """A bench.json written by `bench all`, checked for the sections the plots read."""
    if not path.is_file():
        raise ValueError(f"{path}: no such file (give the bench.json that `privtext bench all` wrote)")
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e})") from None
    missing = [k for k in ("machine", "engine", "throughput", "scaling", "pii", "selection") if not isinstance(d, dict) or k not in d]
    if missing or d.get("benchmark") != "suite":
        raise ValueError(f"{path}: not a `privtext bench all` result (missing {missing or ['benchmark: suite']})")
    return d


def cmd_plot(a) -> int:
    """`privtext bench plot`: redraw the PNGs from a saved bench.json."""
    from .plots import plot_all

    d = load_json(a.json)
    out = a.out if a.out is not None else a.json.parent
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out must be a folder, {str(out)!r} is a file")
    out.mkdir(parents=True, exist_ok=True)
    for path in plot_all(d, out):
        _say(f"wrote {path}")
    return 0


def add_parser(subparsers) -> None:
    """Register `all` and `plot` on the `bench` subparsers object."""
    p = subparsers.add_parser("all", help="every benchmark side by side in one run: bench.json + PNG plots")
    p.add_argument("--out", type=Path, required=True, help="folder for bench.json and the PNGs (created when missing)")
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test, about a minute), not for reading")
    p.add_argument("--engine", default="auto", help="backend: auto or a backend name (default: auto)")
    p.add_argument("--model", default=None, help="a local model folder (default: the embedded default model)")
    p.add_argument("--partitions", type=int, nargs="+", default=None, metavar="N", help="the N sweep (default: 1 4 16 64)")
    p.add_argument("--groups", type=int, nargs="+", default=None, metavar="G", help="the concurrent groups sweep (default: 1 4 16)")
    p.add_argument("--max-tokens", type=int, nargs="+", default=None, metavar="T", help="the max tokens sweep (default: 8 16 32 64)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_all)
    q = subparsers.add_parser("plot", help="redraw the PNGs of `bench all` from its bench.json")
    q.add_argument("json", type=Path, help="the bench.json that `privtext bench all` wrote")
    q.add_argument("--out", type=Path, default=None, help="folder for the PNGs (default: the JSON's folder)")
    q.set_defaults(func=cmd_plot)
