"""`privtext bench peer`: privtext against InvisibleInk (`invink`, NeurIPS 2025), whole process.

Both sides are started as fresh processes on the same machine, corpus, model and settings, and
timed from the outside, start to exit: interpreter, imports, model load, decoding, writing.
The rate each reaches is synthetic tokens / whole-process seconds (tokens actually released:
both stop a record at end-of-sequence).

- corpus: `privtext data export sms-spam --limit 64` (64 SMS texts, one unit each);
- privtext: `privtext generate` with the transformers engine (once per --quantize variant, through
  PRIVTEXT_QUANTIZE; each run on a fresh local store, as a new user's first run), N partitions, em (its default),
  top-k 64, the unit count declared public (64, as the peer treats its corpus size) and
  --pii off by default (the peer has no PII filter; --pii redact times privtext's default);
- the peer: `invink.generate` with batch_size N + 1 (N private references and one public
  prompt per token, as privtext's groups), num = records, max_toks, epsilon, delta, top-k 64,
  float32 on CPU (its default is bfloat16; it also runs in bfloat16 when privtext's variants
  include bf16, so that each ratio compares like with like), run by service/bench/peer_runner.py under the peer's
  own Python.

This command installs nothing. The peer runs only when its Python has `invink`
(`bash scripts/peer-venv` makes .venv-peer; --peer-python or PRIVTEXT_PEER_PYTHON point
elsewhere); otherwise privtext's side still runs and the table says the peer is not installed.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ..engine.transformers_backend import QUANTIZE_CHOICES, QUANTIZE_ENV
from .engine import check_variants

PEER_ENV = "PRIVTEXT_PEER_PYTHON"
DEFAULT_PEER = Path(".venv-peer") / "bin" / "python"
RUNNER = Path(__file__).with_name("peer_runner.py")


def peer_python(given: str | None = None) -> Path:
    """The peer's interpreter: --peer-python, else $PRIVTEXT_PEER_PYTHON, else .venv-peer/bin/python."""
    return Path(given or os.environ.get(PEER_ENV) or DEFAULT_PEER)


def peer_status(python: Path) -> tuple[bool, str]:
    """(installed, what was found): whether `python` exists and imports invink."""
    if not python.exists():
        return False, f"{python} does not exist (bash scripts/peer-venv creates it)"
    try:
        r = subprocess.run([str(python), "-c", "import importlib.metadata as m, invink; print(m.version('invink'))"],
                           capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"{python} could not run: {e}"
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        return False, f"{python} cannot import invink: {last}"
    return True, f"invink {r.stdout.strip()}"


def _run(cmd: list[str], env: dict | None = None, timeout: float = 1800) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    return time.perf_counter() - t0, r


def _failed(what: str, r: subprocess.CompletedProcess) -> RuntimeError:
    tail = "\n".join((r.stderr or r.stdout).strip().splitlines()[-15:])
    return RuntimeError(f"{what} exited {r.returncode}:\n{tail}")


def side_names(quantize: Sequence[str], installed: bool) -> list[tuple[str, str, str]]:
    """(side, kind, precision) in run order: privtext once per quantize variant, then the peer in
    float32, and in bfloat16 too when privtext runs bf16 (like against like)."""
    sides = [("privtext" if v == "none" else f"privtext {v}", "privtext", v) for v in quantize]
    if installed:
        sides.append(("peer", "peer", "float32"))
        if "bf16" in quantize:
            sides.append(("peer bf16", "peer", "bfloat16"))
    return sides


def _against(side: str) -> str:
    """The peer side a privtext side's ratio is taken against."""
    return "peer bf16" if side.endswith(" bf16") else "peer"


def run_privtext(work: Path, corpus: Path, s: dict, quantize: str = "none") -> dict:
    out, report = work / f"privtext-{quantize}.jsonl", work / f"privtext-{quantize}-report.json"
    cmd = [sys.executable, "-m", "service.cli", "generate", "--input", str(corpus), "--records", str(s["records"]),
           "--max-tokens", str(s["max_tokens"]), "--epsilon", str(s["epsilon"]), "--delta", str(s["delta"]),
           "--partitions", str(s["partitions"]), "--top-k", str(s["top_k"]), "--public-count", str(s["corpus_records"]),
           "--engine", "transformers", "--pii", s["pii"], "--template", "sms-spam", "--out", str(out),
           "--report", str(report)]
    # a fresh local store per run, as a new user's first run: repeats never meet the corpus's cap
    store = tempfile.mkdtemp(prefix="store-", dir=work)
    wall, r = _run(cmd, env={**os.environ, QUANTIZE_ENV: quantize, "PRIVTEXT_DATA_DIR": store})
    if r.returncode != 0:
        raise _failed("privtext generate", r)
    rep = json.loads(report.read_text())
    return {"command": f"{QUANTIZE_ENV}={quantize} privtext " + " ".join(cmd[4:]), "wall_seconds": wall, "records": rep["records"],
            "tokens": rep["tokens"], "tokens_per_second": rep["tokens"] / wall, "startup_seconds": rep.get("startup_seconds"),
            "in_process_seconds": rep.get("seconds"), "epsilon": rep["epsilon"]}


def run_peer(python: Path, work: Path, corpus: Path, model: str, s: dict, dtype: str = "float32") -> dict:
    out = work / f"peer-{dtype}.json"
    cmd = [str(python), str(RUNNER), "--input", str(corpus), "--model", model, "--out", str(out), "--records", str(s["records"]),
           "--partitions", str(s["partitions"]), "--max-tokens", str(s["max_tokens"]), "--epsilon", str(s["epsilon"]),
           "--delta", str(s["delta"]), "--top-k", str(s["top_k"]), "--dtype", dtype]
    wall, r = _run(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    if r.returncode != 0:
        raise _failed("the peer (invink)", r)
    res = json.loads(out.read_text())
    return {"command": " ".join(cmd[1:2]) + f" ... --dtype {dtype}", "wall_seconds": wall, "records": res["records"], "tokens": res["tokens"],
            "tokens_per_second": res["tokens"] / wall, "generate_seconds": res["generate_seconds"],
            "epsilon": res["epsilon_spent_max"]}


def bench_peer(
    records: int = 8,
    partitions: int = 8,
    max_tokens: int = 32,
    epsilon: float = 3.0,
    delta: float = 1e-5,
    top_k: int = 64,
    corpus_records: int = 64,
    pii: str = "off",
    peer: str | None = None,
    model: str | None = None,
    repeats: int = 1,
    work: Path | None = None,
    progress: Callable[[str], None] | None = None,
    quantize: Sequence[str] = ("none",),
) -> dict:
    """Every side `repeats` times, alternating the order; see the module docstring. quantize:
    privtext's engine variants (PRIVTEXT_QUANTIZE), one side each."""
    from ..data.packaged import export_jsonl
    from ..engine.model_files import resolve_model

    for name, v in (("records", records), ("partitions", partitions), ("max_tokens", max_tokens), ("repeats", repeats),
                    ("corpus_records", corpus_records), ("top_k", top_k)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if records * partitions > corpus_records:
        raise ValueError(f"records x partitions ({records * partitions}) must be at most corpus_records ({corpus_records}): "
                         "the peer gives every record its own N texts")
    quantize = check_variants(quantize)
    say = progress or (lambda _m: None)
    settings = {"records": records, "partitions": partitions, "max_tokens": max_tokens, "epsilon": epsilon, "delta": delta,
                "top_k": top_k, "corpus_records": corpus_records, "pii": pii, "dataset": "sms-spam"}
    python = peer_python(peer)
    installed, found = peer_status(python)
    say(f"peer: {found}")
    model_dir = str(resolve_model(model, progress=say))
    tmp = None
    if work is None:
        tmp = tempfile.TemporaryDirectory(prefix="privtext-peer-")
        work = Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    sides = side_names(quantize, installed)
    try:
        corpus = work / "sms.jsonl"
        export_jsonl("sms-spam", corpus, limit=corpus_records, seed=0)
        runs: dict[str, list[dict]] = {name: [] for name, _, _ in sides}
        runs.setdefault("peer", [])
        for rep in range(repeats):
            for name, kind, precision in sides if rep % 2 == 0 else sides[::-1]:
                say(f"{name} run {rep + 1}/{repeats}")
                r = (run_privtext(work, corpus, settings, precision) if kind == "privtext"
                     else run_peer(python, work, corpus, model_dir, settings, precision))
                say(f"  {name}: {r['wall_seconds']:.1f} s, {r['tokens']} tokens, {r['tokens_per_second']:.2f} tokens/s")
                runs[name].append(r)
    finally:
        if tmp is not None:
            tmp.cleanup()

    first = sides[0][0]
    d = {
        "benchmark": "peer",
        "settings": settings,
        "model": Path(model_dir).name,
        "repeats": repeats,
        "quantize": quantize,
        "peer_python": str(python),
        "peer_installed": installed,
        "peer_found": found,
        "runs": runs,
        **summarize(runs),
    }
    d["privtext_tokens_per_second"] = d["medians"][first]["tokens_per_second"]
    d["privtext_wall_seconds"] = d["medians"][first]["wall_seconds"]
    d["peer_tokens_per_second"] = d["medians"].get("peer", {}).get("tokens_per_second")
    d["peer_wall_seconds"] = d["medians"].get("peer", {}).get("wall_seconds")
    d["ratio"] = d["ratios"][first]["ratio"] if first in d["ratios"] else None
    return d


MEDIANS = ("wall_seconds", "records", "tokens", "tokens_per_second", "startup_seconds", "generate_seconds")


def summarize(runs: dict[str, list[dict]]) -> dict:
    """Per side the median of each measure over its runs (the mean of the middle two for an
    even count), and each privtext side's ratio of median tokens/s to its peer side's."""
    medians = {}
    for side, rs in runs.items():
        if rs:
            medians[side] = {k: statistics.median(r[k] for r in rs) for k in MEDIANS if all(r.get(k) is not None for r in rs)}
    ratios = {}
    for side, m in medians.items():
        against = _against(side)
        if side.startswith("privtext") and against in medians:
            ratios[side] = {"against": against, "ratio": m["tokens_per_second"] / medians[against]["tokens_per_second"]}
    return {"medians": medians, "ratios": ratios}


def format_peer(d: dict) -> str:
    s = d["settings"]
    lines = [
        f"{s['dataset']}, {s['corpus_records']} records, model {d['model']}: N={s['partitions']}, {s['records']} records x "
        f"{s['max_tokens']} max tokens, epsilon {s['epsilon']:g}, delta {s['delta']:g}, top-k {s['top_k']}, privtext --pii {s['pii']}; "
        f"median of {d['repeats']}",
        "",
    ]
    head = f"{'side':<14} {'wall s':>8} {'records':>7} {'tokens':>6} {'tokens/s':>9}  notes"
    lines += [head, "-" * len(head)]
    for side in d["runs"]:
        m = d["medians"].get(side)
        if m is None:
            lines.append(f"{side:<14} {'-':>8} {'-':>7} {'-':>6} {'-':>9}  not installed: {d['peer_found']}")
            continue
        note = (f"start-up {m['startup_seconds']:.1f} s" if "startup_seconds" in m
                else f"{d['peer_found']}, its generate() {m['generate_seconds']:.1f} s" if "generate_seconds" in m else "")
        lines.append(f"{side:<14} {m['wall_seconds']:>8.1f} {m['records']:>7g} {m['tokens']:>6g} {m['tokens_per_second']:>9.2f}  {note}")
    lines.append("tokens/s = synthetic tokens released / whole-process wall seconds (start to exit, model load included)")
    for side, r in d["ratios"].items():
        lines.append(f"{side} / {r['against']} = {d['medians'][side]['tokens_per_second']:.2f} / "
                     f"{d['medians'][r['against']]['tokens_per_second']:.2f} = {r['ratio']:.2f}x")
    if not d["ratios"]:
        lines.append(f"the peer is not installed ({d['peer_found']}): no ratio; bash scripts/peer-venv installs it in its own venv")
    return "\n".join(lines)


def cmd(a) -> int:
    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    d = bench_peer(records=a.records, partitions=a.partitions, max_tokens=a.max_tokens, epsilon=a.epsilon, delta=a.delta,
                   top_k=a.top_k, corpus_records=a.corpus_records, pii=a.pii, peer=a.peer_python, model=a.model, repeats=a.repeats,
                   work=Path(a.work) if a.work else None, progress=say, quantize=a.quantize)
    print(format_peer(d))
    if a.out:
        Path(a.out).write_text(json.dumps(d, indent=2) + "\n")
        say(f"wrote {a.out}")
    return 0


def add_parser(subparsers) -> None:
    """Register `peer` on the `bench` subparsers object."""
    p = subparsers.add_parser("peer", help="privtext generate against InvisibleInk (invink), whole-process tokens/s, when installed")
    p.add_argument("--records", type=int, default=8, help="synthetic records (default: 8)")
    p.add_argument("--partitions", type=int, default=8, help="N, private texts per record (default: 8)")
    p.add_argument("--max-tokens", type=int, default=32, help="max new tokens per record (default: 32)")
    p.add_argument("--epsilon", type=float, default=3.0, help="(default: 3)")
    p.add_argument("--delta", type=float, default=1e-5, help="(default: 1e-5, invink's default)")
    p.add_argument("--top-k", type=int, default=64, help="both sides' top-k (default: 64, privtext's default)")
    p.add_argument("--corpus-records", type=int, default=64, help="sms-spam records exported (default: 64)")
    p.add_argument("--pii", choices=["off", "redact"], default="off", help="privtext's PII filter (default: off, as the peer has none)")
    p.add_argument("--peer-python", default=None, help=f"the peer's Python (default: ${PEER_ENV}, else {DEFAULT_PEER})")
    p.add_argument("--model", default=None, help="a local model folder (default: the embedded default model)")
    p.add_argument("--quantize", nargs="+", choices=QUANTIZE_CHOICES, default=["none"],
                   help="privtext's engine variants (PRIVTEXT_QUANTIZE), one side each; with bf16 the peer also runs in bfloat16 "
                        "(default: none)")
    p.add_argument("--repeats", type=int, default=1, help="runs per side, alternating which goes first (default: 1)")
    p.add_argument("--work", default=None, help="keep the corpus and both sides' outputs in this folder (default: a temporary one)")
    p.add_argument("--out", default=None, metavar="PATH", help="also write the results as JSON")
    p.set_defaults(func=cmd)
