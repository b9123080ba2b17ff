"""`privtext bench all --quick` end to end, once per module: the real default model (the session
engine), real SMS rows, the real PII filter; then the JSON, the PNGs, redrawing, bad flags."""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
from datetime import datetime
from types import SimpleNamespace

import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")
pytest.importorskip("presidio_analyzer")

from mechanisms import MECHANISMS  # noqa: E402
from service.bench import suite  # noqa: E402
from service.bench.engine import STARVED  # noqa: E402
from service.bench.plots import PLOTS  # noqa: E402
from service.cli import main  # noqa: E402
from service.engine import loader  # noqa: E402

QUICK = suite.PRESETS["quick"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _main(argv: list[str]) -> SimpleNamespace:
    """main(argv) in this process: its exit code (argparse's SystemExit included), stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code
    return SimpleNamespace(rc=rc, out=out.getvalue(), err=err.getvalue())


@pytest.fixture(scope="module")
def run(engine, tmp_path_factory):
    """The quick suite through the CLI, on the session's engine instead of a second load."""
    out = tmp_path_factory.mktemp("bench") / "out"  # missing: the command creates it
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loader, "load_engine", lambda *a, **kw: engine)
        r = _main(["bench", "all", "--quick", "--out", str(out), "--engine", "transformers"])
    assert r.rc == 0, r.err
    r.dir = out
    r.d = json.loads((out / "bench.json").read_text())
    return r


def _positive(point: dict, *keys: str) -> None:
    for k in keys:
        v = point[k]
        assert isinstance(v, (int, float)) and math.isfinite(v) and v > 0, (k, v)


POINT_KEYS = (
    "raw_tokens_per_s", "private_tokens_per_s", "efficiency", "raw_seconds", "private_seconds", "raw_prefill_seconds",
    "private_prefill_seconds", "private_decode_seconds", "selection_seconds", "private_seconds_per_step", "private_step_ms",
    "selection_ms_per_step", "cpu_utilization", "prompt_tokens", "rows",
)


def _check_point(p: dict, n: int, g: int, t: int) -> None:
    assert (p["partitions"], p["groups"], p["max_tokens"], p["rows"]) == (n, g, t, g * (n + 1))
    _positive(p, *POINT_KEYS)
    assert p["efficiency"] == pytest.approx(p["private_tokens_per_s"] * (n + 1) / p["raw_tokens_per_s"])
    assert p["private_seconds_per_step"] == pytest.approx(p["private_seconds"] / t)
    for r in p["runs"]["raw"]:
        assert r["tokens"] == g * (n + 1) * t and r["selection_calls"] == 0
    for r in p["runs"]["private"]:
        assert r["tokens"] == g * t and r["selection_calls"] == t
        assert r["prefill_seconds"] + r["decode_seconds"] + r["selection_seconds"] <= r["seconds"]


def test_throughput(run):
    th, q = run.d["throughput"], QUICK
    assert (th["partitions"], th["groups"], th["max_tokens"]) == (q.partitions, q.groups, q.max_tokens)
    assert list(th["mechanisms"]) == list(MECHANISMS)
    for mech, p in th["mechanisms"].items():
        assert p["mechanism"] == mech
        _check_point(p, q.partitions, q.groups, q.max_tokens)
        assert len(p["runs"]["raw"]) == 2 and len(p["runs"]["private"]) == 1  # raw before and after
    # one raw baseline for all mechanisms: the same two runs
    raws = [p["runs"]["raw"] for p in th["mechanisms"].values()]
    assert all(r == raws[0] for r in raws)


def test_scaling(run):
    sc, q, base = run.d["scaling"], QUICK, run.d["throughput"]["mechanisms"]["em"]
    assert set(sc) == {"partitions", "groups", "max_tokens"}
    assert [p["partitions"] for p in sc["partitions"]] == list(q.sweep_partitions)
    assert [p["groups"] for p in sc["groups"]] == list(q.sweep_groups)
    assert [p["max_tokens"] for p in sc["max_tokens"]] == list(q.sweep_max_tokens)
    for p in sc["partitions"]:
        _check_point(p, p["partitions"], q.partitions_groups, q.max_tokens)
    for p in sc["groups"]:
        _check_point(p, q.partitions, p["groups"], q.max_tokens)
    for p in sc["max_tokens"]:
        _check_point(p, q.partitions, q.groups, p["max_tokens"])
    for sweep in sc.values():
        assert all(p["mechanism"] == "em" for p in sweep)
        for p in sweep:  # the base point is measured once and shared
            if (p["partitions"], p["groups"], p["max_tokens"]) == (q.partitions, q.groups, q.max_tokens):
                assert p["runs"] == base["runs"]
            else:
                assert p["runs"]["raw"] != base["runs"]["raw"]


def test_pii_and_selection(run, engine):
    pii, q = run.d["pii"], QUICK
    assert pii["records"] == q.pii_records == len(pii["ms_per_record"])
    assert all(x > 0 for x in pii["ms_per_record"])
    _positive(pii, "ms_per_record_mean", "ms_per_record_median", "ms_per_record_p90", "generation_ms_per_record", "chars_mean", "load_seconds")
    em = run.d["throughput"]["mechanisms"]["em"]
    assert pii["generation_ms_per_record"] == pytest.approx(1000 * em["private_seconds"] / q.groups)
    mean = pii["ms_per_record_mean"]
    assert 0 < pii["share_of_record_time"] < 1 and pii["share_of_record_time"] == pytest.approx(mean / (mean + pii["generation_ms_per_record"]))

    sel = run.d["selection"]
    assert (sel["vocab"], sel["groups"], sel["steps"]) == (engine.vocab_size, q.selection_groups, q.selection_steps)
    got = {(r["mechanism"], r["partitions"]) for r in sel["results"]}
    assert got == {(m, n) for m in (*MECHANISMS, "em+gate") for n in q.sweep_partitions}
    for r in sel["results"]:
        _positive(r, "step_ms_median", "step_ms_p90", "ms_per_group_step")


def test_machine_settings_warnings(run):
    d = run.d
    assert d["benchmark"] == "suite" and d["settings"]["preset"] == "quick"
    assert datetime.fromisoformat(d["date"]).tzinfo is not None
    assert d["machine"]["cpu_count"] >= 1 and d["machine"]["torch_threads"] >= 1 and d["engine"]["model"]
    _positive(d, "wall_seconds")
    # every starved engine run is warned about, and only those
    runs = {json.dumps(r, sort_keys=True): r for sweep in [list(d["throughput"]["mechanisms"].values()), *d["scaling"].values()]
            for p in sweep for kind in ("raw", "private") for r in p["runs"][kind]}
    assert len(runs) == 2 + len(MECHANISMS) + 2 * 3  # each sweep: one new point, one shared with the base
    starved = sum(r["cpu_utilization"] < STARVED for r in runs.values())
    assert len([w for w in d["warnings"] if w.startswith(("throughput", "scaling"))]) == starved
    busy = d["machine"]["busy_cores_at_start"]
    assert busy is None or (busy >= 0 and any(w.startswith("at the start") for w in d["warnings"]) == (busy > 0.25))


def test_output(run):
    assert "efficiency" in run.out and "PII filter" in run.out and "selection" in run.out
    for mech in MECHANISMS:
        assert re.search(rf"^{mech}\s+\d", run.out, re.M), mech
    assert ("warnings" in run.out) == bool(run.d["warnings"])
    progress = re.findall(r"^\[\s*(\d+)/(\d+)\]", run.err, re.M)
    assert progress and [int(i) for i, _ in progress] == list(range(1, int(progress[0][1]) + 1))


def test_pngs(run, tmp_path):
    from matplotlib.image import imread

    for name in PLOTS:
        data = (run.dir / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 1000, name
        img = imread(run.dir / name)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 200, (name, img.shape)
    # redrawn from the saved JSON: the same files, byte for byte
    r = _main(["bench", "plot", str(run.dir / "bench.json"), "--out", str(tmp_path / "again")])
    assert r.rc == 0, r.err
    for name in PLOTS:
        assert (tmp_path / "again" / name).read_bytes() == (run.dir / name).read_bytes(), name


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--partitions", "0", "4"], "--partitions must be integers >= 1"),
        (["--groups"], "--groups"),  # argparse: expected at least one argument
        (["--max-tokens", "x"], "--max-tokens"),
        (["--partitions", "5000"], "--partitions too large"),
        (["--engine", "nope"], "--engine must be one of"),
    ],
)
def test_bad_arguments(args, message, tmp_path, monkeypatch):
    monkeypatch.setattr(loader, "load_engine", lambda *a, **kw: pytest.fail("loaded an engine despite a bad argument"))
    r = _main(["bench", "all", "--out", str(tmp_path / "out"), *args])
    assert r.rc == 2 and message in r.err, r.err
    assert not (tmp_path / "out").exists()


def test_bad_paths(tmp_path, monkeypatch):
    monkeypatch.setattr(loader, "load_engine", lambda *a, **kw: pytest.fail("loaded an engine despite a bad argument"))
    r = _main(["bench", "all", "--quick"])
    assert r.rc == 2 and "--out" in r.err
    file = tmp_path / "f.json"
    file.write_text(json.dumps({"benchmark": "engine"}))
    r = _main(["bench", "all", "--quick", "--out", str(file)])
    assert r.rc == 2 and "--out must be a folder" in r.err
    r = _main(["bench", "plot", str(file)])
    assert r.rc == 2 and "not a `privtext bench all` result" in r.err
    r = _main(["bench", "plot", str(tmp_path / "missing.json")])
    assert r.rc == 2 and "missing.json: no such file" in r.err


def test_preset_checks():
    assert suite.Preset("x", sweep_groups=(4, 1, 4)).sweep_groups == (1, 4)
    with pytest.raises(ValueError, match="groups must be an integer >= 1"):
        suite.Preset("x", groups=0)
    with pytest.raises(ValueError, match="sweep_max_tokens must be integers >= 1"):
        suite.Preset("x", sweep_max_tokens=())
