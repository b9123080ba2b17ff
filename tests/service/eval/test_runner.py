"""`privtext eval` end to end on a tiny grid with the real model, presidio and MiniLM."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from service.cli import main
from service.data.packaged import load
from service.eval.runner import FAST, SETUPS, EvalSettings, balanced_counts, cell_name, dataset_split, run_eval, template_for

pytest.importorskip("sklearn")

TINY = dict(datasets=("sms-spam",), epsilons=(3.0, math.inf), mechanisms=("em", "gaussian", "pe"), records=4, max_tokens=6,
            train_rows=200, test_rows=60, pe_iterations=2)
# TINY on the command line, less its mechanisms (each CLI test names its own)
TINY_FLAGS = ["--datasets", "sms-spam", "--epsilons", "3,inf", "--records", "4", "--max-tokens", "6", "--train-rows", "200",
              "--test-rows", "60", "--pe-iterations", "2"]


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("datasets", ("sms-spam", "imdb"), "datasets must be a non-empty subset"),
        ("mechanisms", ("em", "laplace"), "mechanisms must be a non-empty subset of \\['em', 'amin', 'gaussian', 'pe'\\]"),
        ("pe_iterations", 0, "greater than or equal to 1"),
        ("pe_population", 0, "greater than or equal to 1"),
        ("epsilons", (0.0, 3.0), "epsilons must be > 0"),
        ("records", 2, "greater than or equal to 4"),
        ("test_rows", 5, "greater than or equal to 10"),
        ("template", "no-such-template.toml", "neither a packaged template"),
        ("quantize", "int4", "quantize must be one of none, bf16, int8"),
    ],
)
def test_settings_name_the_bad_field(field, value, message):
    with pytest.raises(ValueError, match=message) as e:
        EvalSettings(**{field: value})
    assert field in str(e.value)


def test_pe_runs_beside_every_mechanism_by_default_with_the_fewest_candidates_the_job_accepts():
    from service.eval.runner import pe_population

    assert EvalSettings().mechanisms == ("em", "amin", "gaussian", "pe")
    s = EvalSettings(records=9)
    assert [pe_population(d, s) for d in ("sms-spam", "trec")] == [5, 9]  # balanced: the larger label's 5; proportional: records
    assert pe_population("trec", EvalSettings(records=9, pe_population=12)) == 12


def test_cells_run_infinity_once():
    s = EvalSettings(epsilons=(10, 1, math.inf, 3), mechanisms=("em", "amin"))
    assert s.cells() == [(1, "em"), (1, "amin"), (3, "em"), (3, "amin"), (10, "em"), (10, "amin"), (math.inf, "none")]
    assert [cell_name(*c) for c in s.cells()][-2:] == ["amin-eps10", "none-inf"]


def test_each_dataset_keeps_its_own_template_unless_one_is_given(tmp_path):
    assert [template_for(d, EvalSettings()) for d in ("sms-spam", "trec")] == ["sms-spam", "trec"]
    assert [template_for(d, EvalSettings(template="default")) for d in ("sms-spam", "trec")] == ["default", "default"]
    bad = tmp_path / "bad.toml"
    bad.write_text('kind = "texts"\n')  # a file, but not a template: named at the flags, before any cell runs
    with pytest.raises(ValueError, match="must define kind_label"):
        EvalSettings(template=str(bad))


@pytest.mark.parametrize("name", sorted(SETUPS))
def test_labels_are_declared_not_read_off_the_train_part(name):
    # The declaration matches the packaged corpus, and a train part too small to hold every label
    # still asks for all of them: no private row decides which labels exist.
    assert sorted({r["label"] for r in load(name)}) == sorted(SETUPS[name].labels)
    small = dataset_split(name, EvalSettings(train_rows=16, seed=3))
    assert small.labels == list(SETUPS[name].labels)
    if name == "trec":  # ABBR is 1.5% of TREC: 16 rows at this seed hold fewer than the six labels
        assert len({r["label"] for r in small.train}) < len(small.labels)


def test_split_is_seeded_disjoint_and_capped():
    s = EvalSettings(train_rows=100, test_rows=40)
    a, b = dataset_split("sms-spam", s), dataset_split("sms-spam", s)
    assert [r["text"] for r in a.train] == [r["text"] for r in b.train] and len(a.train) == 100 and len(a.test) == 40
    assert not {r["text"] for r in a.train} & {r["text"] for r in a.test}
    assert balanced_counts(7, ["ham", "spam"]) == {"ham": 4, "spam": 3}


@pytest.fixture(scope="module")
def tiny_run(engine, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    return out, run_eval(EvalSettings(**TINY), out, engine=engine)


def test_every_cell_is_scored(tiny_run):
    out, results = tiny_run
    d = results["datasets"]["sms-spam"]
    assert set(d["cells"]) == {"em-eps3", "gaussian-eps3", "pe-eps3", "none-inf"}
    for name, c in d["cells"].items():
        assert c["n"] >= 1, name
        # every cell's compute, measured on the engine (pe's candidates are its own groups)
        assert c["forwards"] >= 1 and c["tokens_fed"] >= c["forwards"] and c["tokens_generated"] >= c["tokens"] >= 1, (name, c)
        assert 0 < c["generate_seconds"] <= c["seconds"], name
        for clf in ("tfidf", "minilm"):
            assert 0.0 <= c[clf]["balanced_accuracy"] <= 1.0 and 0.0 <= c[clf]["accuracy"] <= 1.0
        assert 0.0 <= c["pii_touched_fraction"] <= 1.0
        assert (out / "sms-spam" / f"{name}.jsonl").exists()
    assert d["cells"]["em-eps3"]["planned_epsilon"] == pytest.approx(3.0, rel=1e-6)
    pe = d["cells"]["pe-eps3"]
    assert pe["planned_epsilon"] == pytest.approx(3.0, rel=1e-6) and pe["rounds"] is None
    assert pe["tokens_generated"] > pe["tokens"]  # 2 iterations of 2 candidates per label, the last one's 4 released
    assert set(pe["label_counts"]) <= {"ham", "spam"} and pe["n"] <= 4  # the declared labels, at most the records asked for
    # the DP-trained row: at the finite epsilon only, on every train row, scored like a cell
    assert set(d["dp_trained"]) == {"dp-trained-eps3"}
    dp = d["dp_trained"]["dp-trained-eps3"]
    assert dp["n"] == 200 and dp["epsilon"] == 3.0 and (out / "sms-spam" / "dp-trained-eps3.json").exists()
    for clf in ("tfidf", "minilm"):
        assert 0.0 <= dp[clf]["balanced_accuracy"] <= 1.0
    assert d["cells"]["none-inf"]["planned_epsilon"] is None and d["cells"]["none-inf"]["epsilon"] == "inf"
    assert d["majority"]["balanced_accuracy"] == pytest.approx(0.5)
    assert d["real"]["n"] == d["cells"]["none-inf"]["n"]
    assert json.loads((out / "results.json").read_text()) == results


def test_rerun_resumes_and_refuses_other_settings(tiny_run, engine):
    out, results = tiny_run
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "sms-spam").glob("*.jsonl")}
    again = run_eval(EvalSettings(**TINY), out, engine=engine)  # every cell done: nothing regenerated
    assert again["datasets"]["sms-spam"]["cells"] == results["datasets"]["sms-spam"]["cells"]
    assert {p.name: p.stat().st_mtime_ns for p in (out / "sms-spam").glob("*.jsonl")} == stamps
    with pytest.raises(ValueError, match="other settings \\(records differ"):
        run_eval(EvalSettings(**{**TINY, "records": 6}), out, engine=engine)
    # a smaller grid on the same settings reuses the finished cells and generates nothing
    fewer = run_eval(EvalSettings(**{**TINY, "mechanisms": ("em",)}), out, engine=engine)
    assert set(fewer["datasets"]["sms-spam"]["cells"]) == {"em-eps3", "none-inf"}
    assert {p.name: p.stat().st_mtime_ns for p in (out / "sms-spam").glob("*.jsonl")} == stamps


def test_report_and_plots(tiny_run, capsys):
    out, _ = tiny_run
    assert main(["eval", "--out", str(out), "--report-only", *TINY_FLAGS, "--mechanisms", "em,gaussian,pe"]) == 0
    printed = capsys.readouterr().out
    assert "em at epsilon 3 reaches" in printed and ("PASS" in printed or "FAIL" in printed)
    assert " sms-spam MiniLM + LR at epsilon 3: pe " in printed and "DP-trained on 200 real rows" in printed
    report = (out / "report.md").read_text()
    assert "| em | 3.0 |" in report and "| no privacy | inf |" in report and "## Verdicts" in report
    assert "| pe | 3.0 |" in report and "| DP-trained (diffprivlib) | 3.0 | 200 |" in report
    assert "## Private Evolution, private decoding and the DP-trained classifier" in report
    assert "model precision float32;" in report
    for png in ("accuracy.png", "frechet.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_report_of_a_run_cut_short(tiny_run, tmp_path, engine):
    """generate=False reports the finished cells and generates nothing."""
    out, results = tiny_run
    (tmp_path / "sms-spam").mkdir()
    (tmp_path / "sms-spam" / "em-eps3.json").write_text((out / "sms-spam" / "em-eps3.json").read_text())
    partial = run_eval(EvalSettings(**TINY), tmp_path, engine=engine, generate=False)
    assert set(partial["datasets"]["sms-spam"]["cells"]) == {"em-eps3"}
    assert [p.name for p in (tmp_path / "sms-spam").glob("*.jsonl")] == ["train.jsonl"]  # nothing generated


@pytest.mark.slow
def test_fast_mode_is_the_documented_subset_and_runs_end_to_end(tmp_path, capsys):
    assert main(["eval", "--fast", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["settings"] == json.loads(EvalSettings(**FAST).model_dump_json())
    cells = results["datasets"]["sms-spam"]["cells"]
    assert set(cells) == {"em-eps3", "pe-eps3", "none-inf"} and all(c["n"] >= 1 for c in cells.values())  # a PE cell too
    assert "em at epsilon 3 reaches" in capsys.readouterr().out
    assert "privtext eval --out" in (tmp_path / "report.md").read_text() and "--fast" in (tmp_path / "report.md").read_text()


def test_cli_names_the_bad_flag(tmp_path, capsys):
    assert main(["eval", "--out", str(tmp_path), "--mechanisms", "em,nope"]) == 2
    assert "mechanisms" in capsys.readouterr().err


def test_the_environment_cannot_change_the_precision_behind_the_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("PRIVTEXT_QUANTIZE", "int8")
    with pytest.raises(ValueError, match="PRIVTEXT_QUANTIZE=int8 is set but the settings say 'none'"):
        run_eval(EvalSettings(**TINY), tmp_path)
    assert not (tmp_path / "settings.json").exists()


def test_the_engine_must_run_the_precision_the_settings_name(tmp_path, engine):
    """--quantize is recorded with the settings (the report names the precision), and an engine
    handed in at another precision is refused before any cell is generated."""
    with pytest.raises(ValueError, match="quantize: the engine given runs 'none', the settings say 'bf16'"):
        run_eval(EvalSettings(**TINY, quantize="bf16"), tmp_path, engine=engine)
    assert json.loads((tmp_path / "settings.json").read_text())["quantize"] == "bf16"
    assert not list((tmp_path / "sms-spam").glob("*-eps*.json"))


def test_a_resumed_folder_whose_train_part_differs_is_refused(tiny_run, tmp_path, engine):
    """Cells made from another split (the packaged data or its loader changed) are never mixed in."""
    out, _ = tiny_run
    (tmp_path / "sms-spam").mkdir()
    rows = (out / "sms-spam" / "train.jsonl").read_text().splitlines()
    (tmp_path / "sms-spam" / "train.jsonl").write_text("\n".join(rows[1:]) + "\n")  # one row fewer
    with pytest.raises(ValueError, match="train.jsonl is not the train part sms-spam splits into now"):
        run_eval(EvalSettings(**TINY), tmp_path, engine=engine, generate=False)
    (tmp_path / "sms-spam" / "train.jsonl").write_text("\n".join(rows) + "\n")  # the same rows: accepted
    assert run_eval(EvalSettings(**TINY), tmp_path, engine=engine, generate=False)["datasets"]["sms-spam"]["cells"] == {}


def test_seeds_run_each_seed_into_its_own_folder_and_report_the_mean(tiny_run, tmp_path, engine, capsys):
    """--seeds: seed 0 is the tiny run (resumed, nothing regenerated), seed 1 is generated."""
    out, _ = tiny_run
    shutil.copytree(out, tmp_path / "seed-0")
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "seed-0" / "sms-spam").glob("*.jsonl")}
    flags = [*TINY_FLAGS, "--mechanisms", "em"]
    assert main(["eval", "--out", str(tmp_path), "--seeds", "1,0", *flags]) == 0
    printed = capsys.readouterr().out
    assert "em at epsilon 3 reaches" in printed and "of the non-private mean balanced accuracy" in printed and "per seed" in printed
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "seed-0" / "sms-spam").glob("*.jsonl")} == stamps
    assert (tmp_path / "seed-1" / "sms-spam" / "em-eps3.jsonl").exists()
    assert f"--out {tmp_path / 'seed-1'}" in (tmp_path / "seed-1" / "report.md").read_text()
    assert "--seed 1" in (tmp_path / "seed-1" / "report.md").read_text()
    combined = json.loads((tmp_path / "results.json").read_text())
    em = combined["datasets"]["sms-spam"]["cells"]["em-eps3"]["tfidf"]
    assert combined["settings"]["seeds"] == [0, 1] and len(em["per_seed"]) == 2
    assert em["balanced_accuracy"] == pytest.approx(sum(em["per_seed"]) / 2)
    assert "seeds 0, 1 (each its own split" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "seeds.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the folder now holds a seeds evaluation: a single-seed run into it is refused
    with pytest.raises(ValueError, match="other settings \\(seed, seeds differ"):
        run_eval(EvalSettings(**TINY), tmp_path, engine=engine, generate=False)


def test_sweep_runs_each_value_into_its_own_folder_and_reports_them_side_by_side(tiny_run, tmp_path, capsys):
    """--sweep: top-k 64 is the tiny run (resumed, nothing regenerated), top-k 16 is generated."""
    out, _ = tiny_run
    shutil.copytree(out, tmp_path / "top-k-64")
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "top-k-64" / "sms-spam").glob("*.jsonl")}
    flags = [*TINY_FLAGS, "--mechanisms", "em,gaussian"]
    assert main(["eval", "--out", str(tmp_path), "--sweep", "top-k=64,16", *flags]) == 0
    printed = capsys.readouterr().out
    assert "sms-spam TF-IDF + LR: em at epsilon 3 scores best at top-k " in printed
    assert "sms-spam MiniLM + LR: at epsilon 3 em is the best mechanism at " in printed and "of 2 values" in printed
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "top-k-64" / "sms-spam").glob("*.jsonl")} == stamps
    assert (tmp_path / "top-k-16" / "sms-spam" / "gaussian-eps3.jsonl").exists()
    own = (tmp_path / "top-k-16" / "report.md").read_text()
    assert f"--out {tmp_path / 'top-k-16'}" in own and "--top-k 16" in own and "--sweep" not in own and "top-k 16," in own
    swept = json.loads((tmp_path / "results.json").read_text())
    assert swept["settings"]["sweep"] == "top_k" and swept["settings"]["values"] == [16.0, 64.0]
    assert swept["datasets"]["sms-spam"]["cells"]["em-eps3"]["tfidf"][1] == tiny_run[1]["datasets"]["sms-spam"]["cells"]["em-eps3"]["tfidf"]["balanced_accuracy"]
    assert "| training set | top-k 16 | top-k 64 |" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the folder now holds a sweep of top-k: a sweep of another setting into it is refused
    assert main(["eval", "--out", str(tmp_path), "--sweep", "temperature=0.5,1", "--report-only", *flags]) == 2
    assert "other settings (sweep, temperature, top_k differ" in capsys.readouterr().err


def test_template_flag_reaches_generation_and_the_report(tiny_run, tmp_path, capsys):
    """--template default: the cell is generated with it (its scores say so), the report and the
    reproducing command name it, and a folder made with the datasets' own templates is refused."""
    out, _ = tiny_run
    flags = [*TINY_FLAGS, "--epsilons", "3", "--mechanisms", "em", "--template", "default"]
    assert main(["eval", "--out", str(tmp_path), *flags]) == 0
    assert json.loads((tmp_path / "sms-spam" / "em-eps3.json").read_text())["template"] == "default"
    report = (tmp_path / "report.md").read_text()
    assert "template default, model precision float32;" in report and "--template default" in report
    assert main(["eval", "--out", str(out), *flags, "--report-only"]) == 2
    assert "other settings (template differ" in capsys.readouterr().err
    assert json.loads((out / "sms-spam" / "em-eps3.json").read_text())["template"] == "sms-spam"


@pytest.mark.parametrize(("flags", "message"), [
    (["--seed", "0", "--seeds", "0,1"], "give --seed or --seeds, not both"),
    (["--seeds", "3,3"], "at least 2 distinct seeds"),
    (["--seeds", "0,x"], "expected comma-separated integers"),
    (["--sweep", "top-k=16,64", "--seeds", "0,1"], "give --sweep or --seeds, not both"),
    (["--sweep", "top-k=16,64", "--top-k", "32"], "--top-k is the swept setting; give its values in --sweep only"),
    (["--sweep", "top-k=0,16"], "top_k: Input should be greater than or equal to 1"),   # every value checked before any runs
    (["--sweep", "temperature=1.5,2.5e"], "temperature values must be comma-separated numbers"),
    (["--sweep", "clip=1,2"], "SETTING one of temperature, top-k"),
])
def test_seeds_and_sweep_flags_are_checked(tmp_path, capsys, flags, message):
    try:
        code = main(["eval", "--out", str(tmp_path), "--report-only", *flags])
    except SystemExit as e:  # argparse's own type errors
        code = e.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "settings.json").exists()


def test_no_top_k_plus_reaches_generation_the_report_and_the_command(tiny_run, tmp_path, capsys):
    """--no-top-k-plus: a folder made with top-k+ is refused; a new one runs with it and says so.
    A folder whose settings.json predates the setting ran at its default (top-k+) and is kept."""
    out, _ = tiny_run
    flags = [*TINY_FLAGS, "--epsilons", "3", "--mechanisms", "em"]
    settings = json.loads((out / "settings.json").read_text())
    old = tmp_path / "old"
    shutil.copytree(out, old)
    (old / "settings.json").write_text(json.dumps({k: v for k, v in settings.items() if k != "top_k_plus"}))
    assert main(["eval", "--out", str(old), *flags, "--report-only"]) == 0  # the default: no setting differs
    assert main(["eval", "--out", str(old), *flags, "--no-top-k-plus", "--report-only"]) == 2
    assert "other settings (top_k_plus differ" in capsys.readouterr().err
    new = tmp_path / "new"
    assert main(["eval", "--out", str(new), *flags, "--no-top-k-plus"]) == 0
    assert json.loads((new / "settings.json").read_text())["top_k_plus"] is False
    assert json.loads((new / "sms-spam" / "em-eps3.json").read_text())["n"] == 4
    report = (new / "report.md").read_text()
    assert "(em: the public top-k, not top-k+)" in report and "--no-top-k-plus" in report
