"""`privtext bench roofline`: how far the engine's decoding is from this machine's matmul roofline.

A decode step of a causal LM is, in FLOPs, its linear layers: per layer the q/k/v/o attention
projections and the three MLP projections, then the LM head, each a (rows x in) @ (in x out)
matmul. So the most row-tokens per second a machine can decode is its matmul throughput on those
shapes divided by the FLOPs one row-token costs. Side by side in one run, this command measures:

- matmul: the wall time of one decode step's linear layers at a batch of B rows (the fastest of
  a few steps: the machine's capability, other processes aside), on the loaded
  engine's own modules (the real weights, in forward order, 30 layers + the head: what the cache
  and the memory bus really see), for each engine variant (float32; int8 with --quantize int8,
  the transformers backend's RowInt8Linear; bf16 with --quantize bf16, bfloat16
  weights and inputs). GFLOP/s = 2 x B x (sum of in x out) / seconds.
  Also at the split the engine really runs: its private rows (G x N) and its public rows (G) are
  two batches, two forwards a step.
- FLOPs per row-token from the model's config (checked against the modules' shapes); attention
  (QK^T and AV, 4 x heads x head_dim x context per layer) is listed beside it at the benchmark's
  mean context, but left out of the roofline, which is so an upper bound;
- the engine's decode rate, measured as `privtext bench engine` measures its raw run (the same
  groups of N + 1 rows from the SMS corpus, all G groups in one batch, every row sampling its
  own token for exactly max_tokens steps): rows x tokens/s over the whole run (prefill included:
  `bench engine`'s figure) and over the decode steps alone;
- decode / roofline: the share of the machine's matmul throughput the engine turns into tokens.

Variants and repeats alternate (A B B A ...), and each number is the median of its repeats, so
that noise from other processes hits every variant alike: read the ratios. Installs nothing.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ..engine.transformers_backend import QUANTIZE_CHOICES as VARIANTS
from .engine import STARVED, build_groups, check_variants, corpus_texts, measure


def model_flops(config) -> dict:
    """FLOPs per row-token of one decode step, from a transformers config (Llama-style)."""
    h = int(config.hidden_size)
    heads = int(config.num_attention_heads)
    kv = int(getattr(config, "num_key_value_heads", None) or heads)
    hd = int(getattr(config, "head_dim", None) or h // heads)
    inter, layers, vocab = int(config.intermediate_size), int(config.num_hidden_layers), int(config.vocab_size)
    shapes = [  # (name, in, out, times per step)
        ("q_proj", h, heads * hd, layers), ("k_proj", h, kv * hd, layers), ("v_proj", h, kv * hd, layers),
        ("o_proj", heads * hd, h, layers), ("gate_proj", h, inter, layers), ("up_proj", h, inter, layers),
        ("down_proj", inter, h, layers), ("lm_head", h, vocab, 1),
    ]
    params = sum(i * o * n for _, i, o, n in shapes)
    return {
        "shapes": [{"name": s, "in": i, "out": o, "count": n} for s, i, o, n in shapes],
        "linear_params": params,
        "flops_per_row_token": 2 * params,
        # QK^T and AV at a context of c tokens: 2 x 2 x heads x head_dim x c per layer
        "attention_flops_per_context_token": 4 * heads * hd * layers,
    }


def linear_modules(model) -> list:
    """The model's matmul modules (nn.Linear or the int8 RowInt8Linear), in forward order."""
    return [m for m in model.modules() if not list(m.children()) and hasattr(m, "in_features") and hasattr(m, "out_features")]


def time_step_linears(modules: Sequence, rows: Sequence[int], repeats: int = 5) -> dict:
    """Seconds of one decode step's linear layers (every module once, in order) for batches of
    `rows` rows each (one forward per batch): the fastest of `repeats` steps after a warm-up one."""
    import torch

    widths = {m.in_features for m in modules}
    weight = getattr(modules[0], "weight", None)  # bf16 modules take bf16 inputs; int8 and float32 ones float32
    dtype = weight.dtype if weight is not None and weight.is_floating_point() else torch.float32
    inputs = [{w: torch.randn(b, w, dtype=dtype) for w in widths} for b in rows]

    def step() -> None:
        for x in inputs:
            for m in modules:
                m(x[m.in_features])

    with torch.inference_mode():
        step()  # warm-up: first calls at a shape pay for kernel selection
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    flops = 2 * sum(rows) * sum(m.in_features * m.out_features for m in modules)
    sec = min(times)  # the best step: a roofline is what the machine can do, other processes aside
    return {"rows": list(rows), "seconds": sec, "gflops": flops / sec / 1e9, "times": times}


def _check(partitions: int, groups: int, max_tokens: int, repeats: int, matmul_repeats: int, variants: Sequence[str]) -> None:
    for name, v in (("partitions", partitions), ("groups", groups), ("max_tokens", max_tokens), ("repeats", repeats),
                    ("matmul_repeats", matmul_repeats)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if max_tokens < 2:
        raise ValueError(f"max_tokens must be >= 2 (the decode steps come after the first token), got {max_tokens}")
    check_variants(variants)


def bench_roofline(
    partitions: int = 8,
    groups: int = 16,
    max_tokens: int = 16,
    variants: Sequence[str] = VARIANTS,
    repeats: int = 1,
    matmul_repeats: int = 3,
    seed: int = 0,
    model: str | None = None,
    progress: Callable[[str], None] | None = None,
    engines: dict | None = None,
) -> dict:
    """Matmul roofline and decode rate of the transformers engine, per variant; see the module
    docstring. engines: {variant: loaded engine} to reuse (tests); otherwise each is loaded."""
    import torch

    from ..engine.loader import load_engine
    from .suite import machine_info

    variants = tuple(variants)
    _check(partitions, groups, max_tokens, repeats, matmul_repeats, variants)
    say = progress or (lambda _m: None)
    texts = corpus_texts(partitions, groups)
    t_start = time.perf_counter()
    loaded: dict = {}
    load_seconds: dict[str, float] = {}
    for v in variants:
        t0 = time.perf_counter()
        if engines is not None and v in engines:
            loaded[v] = engines[v]
        else:
            say(f"loading engine transformers, quantize {v}")
            loaded[v] = load_engine("transformers", model=model, progress=progress, quantize=v)
        load_seconds[v] = time.perf_counter() - t0
        if loaded[v].name != "transformers" or getattr(loaded[v], "quantize", "none") != v:
            raise ValueError(f"the engine given for {v!r} is {loaded[v].name} with quantize {getattr(loaded[v], 'quantize', None)!r}")
    first = loaded[variants[0]]
    flops = model_flops(first.model.config)
    rows = groups * (partitions + 1)
    reqs = {v: build_groups(e, partitions, groups, max_tokens, texts) for v, e in loaded.items()}
    prompt_tokens = sum(len(r) for g in reqs[variants[0]] for r in (*g.rows, g.public)) / rows
    mean_context = prompt_tokens + max_tokens / 2
    attention = flops["attention_flops_per_context_token"] * mean_context

    results: dict[str, dict] = {v: {"matmul": [], "matmul_split": [], "decode": []} for v in variants}
    for v, e in loaded.items():
        mods = linear_modules(e.model)
        got = sum(m.in_features * m.out_features for m in mods)
        if got != flops["linear_params"]:
            raise RuntimeError(f"the {v} model's linear modules hold {got:,} weights, its config says {flops['linear_params']:,}")
        say(f"warm-up ({v})")
        measure(e, "raw", [dataclasses.replace(reqs[v][0], max_tokens=2)], None, seed)
    for rep in range(repeats):
        for v in variants if rep % 2 == 0 else variants[::-1]:
            e = loaded[v]
            mods = linear_modules(e.model)
            mm = time_step_linears(mods, [rows], matmul_repeats)
            split = time_step_linears(mods, [groups * partitions, groups], matmul_repeats)
            run = measure(e, "raw", reqs[v], None, seed + rep)
            run["decode_tokens_per_s"] = run["decode_tokens"] / run["decode_seconds"]
            results[v]["matmul"].append(mm)
            results[v]["matmul_split"].append(split)
            results[v]["decode"].append(run)
            say(f"  {v:<5} run {rep + 1}/{repeats}: matmul {mm['gflops']:6.1f} GFLOP/s ({split['gflops']:.1f} split), "
                f"decode {run['tokens_per_s']:6.1f} rows x tokens/s ({run['decode_tokens_per_s']:.1f} decode steps only), "
                f"cpu {run['cpu_utilization']:.0%}")

    def med(xs: list[float]) -> float:
        return float(statistics.median(xs))

    out_variants = {}
    for v in variants:
        r = results[v]
        gflops = med([m["gflops"] for m in r["matmul"]])
        gflops_split = med([m["gflops"] for m in r["matmul_split"]])
        roof = gflops * 1e9 / flops["flops_per_row_token"]
        roof_split = gflops_split * 1e9 / flops["flops_per_row_token"]
        raw = med([d["tokens_per_s"] for d in r["decode"]])
        dec = med([d["decode_tokens_per_s"] for d in r["decode"]])
        out_variants[v] = {
            "quantize": v,
            "gflops": gflops,
            "gflops_split": gflops_split,
            "roofline_row_tokens_per_s": roof,
            "roofline_split_row_tokens_per_s": roof_split,
            "raw_tokens_per_s": raw,
            "decode_tokens_per_s": dec,
            "raw_over_roofline": raw / roof,
            "decode_over_roofline": dec / roof,
            "decode_over_split_roofline": dec / roof_split,
            "cpu_utilization": min(d["cpu_utilization"] for d in r["decode"]),
            "load_seconds": load_seconds[v],
            "runs": r,
        }
    base = variants[0]
    for v in variants[1:]:
        for k in ("gflops", "raw_tokens_per_s", "decode_tokens_per_s"):
            out_variants[v][f"{k}_vs_{base}"] = out_variants[v][k] / out_variants[base][k]
    return {
        "benchmark": "roofline",
        "machine": machine_info(),
        "engine": "transformers",
        "model": Path(first.model_path).name,
        "threads": torch.get_num_threads(),
        "partitions": partitions,
        "groups": groups,
        "max_tokens": max_tokens,
        "batch_rows": rows,
        "split_rows": [groups * partitions, groups],
        "repeats": repeats,
        "matmul_repeats": matmul_repeats,
        "flops": flops,
        "mean_context_tokens": mean_context,
        "attention_flops_per_row_token": attention,
        "variants": out_variants,
        "wall_seconds": time.perf_counter() - t_start,
    }


def format_roofline(d: dict) -> str:
    f, m = d["flops"], d["machine"]
    lines = [
        f"{m['cpu_count']} CPUs ({m['cpu_model']}), torch {m['torch']} ({d['threads']} threads), engine {d['engine']}, model {d['model']}",
        f"batch: N={d['partitions']}, {d['groups']} groups = B {d['batch_rows']} rows ({d['split_rows'][0]} private + {d['split_rows'][1]} public "
        f"in the engine's two forwards), {d['max_tokens']} new tokens; median of {d['repeats']} (matmul: the fastest of {d['matmul_repeats']} steps each)",
        f"FLOPs per row-token (linear layers, from the config): {f['flops_per_row_token'] / 1e6:.1f} M; attention at the mean context of "
        f"{d['mean_context_tokens']:.0f} tokens adds {d['attention_flops_per_row_token'] / 1e6:.1f} M (not in the roofline)",
        "",
    ]
    head = (f"{'quantize':<8} {'GFLOP/s':>8} {'roofline':>9} {'split':>7} {'raw':>7} {'decode':>7} {'raw/roof':>8} {'dec/roof':>8} "
            f"{'dec/split':>9} {'cpu':>5}")
    lines += [head, "-" * len(head)]
    for v, r in d["variants"].items():
        lines.append(
            f"{v:<8} {r['gflops']:>8.1f} {r['roofline_row_tokens_per_s']:>9.1f} {r['roofline_split_row_tokens_per_s']:>7.1f} "
            f"{r['raw_tokens_per_s']:>7.1f} {r['decode_tokens_per_s']:>7.1f} {r['raw_over_roofline']:>8.3f} {r['decode_over_roofline']:>8.3f} "
            f"{r['decode_over_split_roofline']:>9.3f} {r['cpu_utilization']:>5.0%}"
        )
    lines += [
        "GFLOP/s: one decode step's linear layers at B rows, the engine's own modules; roofline = GFLOP/s / FLOPs per row-token",
        "(rows x tokens/s); split: the same at the engine's two batches; raw: `bench engine`'s raw rate (prefill included);",
        "decode: its decode steps alone; x/roof: the share of the roofline the engine reaches",
    ]
    variants = list(d["variants"])
    for v in variants[1:]:
        r = d["variants"][v]
        lines.append(f"{v} / {variants[0]}: matmul {r[f'gflops_vs_{variants[0]}']:.2f}x, raw decode {r[f'raw_tokens_per_s_vs_{variants[0]}']:.2f}x, "
                     f"decode steps {r[f'decode_tokens_per_s_vs_{variants[0]}']:.2f}x")
    for v, r in d["variants"].items():
        if r["cpu_utilization"] < STARVED:
            lines.append(f"warning: a {v} decode run had {r['cpu_utilization']:.0%} of {d['threads']} cores: other processes, noisy")
    return "\n".join(lines)


def cmd(a) -> int:
    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    d = bench_roofline(partitions=a.partitions, groups=a.groups, max_tokens=a.max_tokens, variants=a.quantize, repeats=a.repeats,
                       matmul_repeats=a.matmul_repeats, seed=a.seed, model=a.model, progress=say)
    print(format_roofline(d))
    if a.out:
        Path(a.out).write_text(json.dumps(d, indent=2, allow_nan=False) + "\n")
        say(f"wrote {a.out}")
    return 0


def add_parser(subparsers) -> None:
    """Register `roofline` on the `bench` subparsers object."""
    p = subparsers.add_parser("roofline", help="matmul throughput on the model's shapes, its decode roofline, and the engine's share of it")
    p.add_argument("--partitions", type=int, default=8, help="N, private rows per group (default: 8)")
    p.add_argument("--groups", type=int, default=16, help="groups in one batch, B = groups x (N + 1) rows (default: 16)")
    p.add_argument("--max-tokens", type=int, default=16, help="new tokens per row in the decode run (default: 16)")
    p.add_argument("--quantize", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                   help=f"engine variants, side by side; the first is the base of the ratios (default: {' '.join(VARIANTS)})")
    p.add_argument("--repeats", type=int, default=1, help="alternating runs per variant; medians are reported (default: 1)")
    p.add_argument("--matmul-repeats", type=int, default=3, help="timed steps of the linear layers per run, the fastest counts (default: 3)")
    p.add_argument("--model", default=None, help="a local model folder (default: the embedded default model)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, metavar="PATH", help="also write the results as JSON")
    p.set_defaults(func=cmd)
