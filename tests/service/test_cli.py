"""`privtext plan` and `privtext bench mechanisms` as a user runs them: the installed console
script, in a subprocess."""

import json
import shutil
import subprocess
import sys

import pytest

PRIVTEXT = shutil.which("privtext") or pytest.skip("privtext console script not installed", allow_module_level=True)


def run(*args):
    return subprocess.run([PRIVTEXT, *args], capture_output=True, text=True, timeout=300)


def test_plan_table_and_json_agree_with_the_planner():
    from mechanisms import plan

    args = ["plan", "--units", "5000", "--records", "200", "--max-tokens", "64", "--epsilon", "3", "--delta", "1e-6"]
    table = run(*args)
    assert table.returncode == 0, table.stderr
    assert "groups per round           625" in table.stdout
    assert "epsilon (accountant)       3.0000 at delta 1e-06" in table.stdout
    out = run(*args, "--json")
    d = json.loads(out.stdout)
    expected = plan(units=5000, records=200, max_tokens=64, epsilon=3.0, delta=1e-6)
    assert d["config"]["clip"] == expected.config.clip
    assert d["epsilon"] == expected.epsilon and d["rounds"] == 1 and d["mechanism"] == "em"


@pytest.mark.parametrize(("extra", "shown", "flag"), [([], "64+ (within 2C of the k-th)", True), (["--no-top-k-plus"], "64\n", False)])
def test_plan_shows_the_em_candidate_set(extra, shown, flag):
    args = ["plan", "--units", "5000", "--records", "200", "--max-tokens", "64", "--epsilon", "3", "--delta", "1e-6", *extra]
    table = run(*args)
    assert table.returncode == 0, table.stderr
    assert "top-k (public candidates)  " + shown in table.stdout
    assert json.loads(run(*args, "--json").stdout)["config"]["top_k_plus"] is flag


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--delta", "1e-2"], "delta must be in (0, 1/units]"),
        (["--epsilon", "-1"], "epsilon must be a finite number > 0"),
        (["--partitions", "0"], "partitions must be an integer >= 1"),
    ],
)
def test_plan_bad_input_exits_2_naming_the_field(extra, message):
    base = {"--units": "5000", "--records": "200", "--max-tokens": "64", "--epsilon": "3", "--delta": "1e-6"}
    for k, v in zip(extra[::2], extra[1::2]):
        base[k] = v
    r = run("plan", *[x for kv in base.items() for x in kv])
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr


def test_plan_gaussian_with_dp_count():
    r = run("plan", "--units", "50", "--records", "200", "--max-tokens", "64", "--epsilon", "3", "--delta", "1e-6",
            "--mechanism", "gaussian", "--dp-count-noise", "10", "--json")
    d = json.loads(r.stdout)
    assert d["units_source"] == "dp-count" and d["rounds"] == 34
    assert d["events"][0]["kind"] == "gaussian" and d["events"][0]["parameter"] == 10.0


def test_bench_mechanisms_small(tmp_path):
    out = tmp_path / "bench.json"
    r = run("bench", "mechanisms", "--vocab", "2000", "--partitions", "4", "--groups", "3", "--steps", "2", "--json", str(out))
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())["results"]
    assert {row["mechanism"] for row in rows} == {"em", "amin", "gaussian", "em+gate"}
    assert all(row["ms_per_group_step"] > 0 for row in rows)
    assert "ms/group" in r.stdout


def test_module_entry_point_matches():
    r = subprocess.run([sys.executable, "-m", "service.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "plan" in r.stdout
