"""Capacity is decided by public numbers: one unit's records, however long or exotic, never
change whether a job succeeds, how many records it releases or what it says; a plan that
cannot fit the engine is refused, with its numbers, before anything is charged."""

from __future__ import annotations

import json
import re

import pytest

pytest.importorskip("torch")

from service.engine import loader  # noqa: E402
from service.jobs.capacity import CapacityError  # noqa: E402
from service.jobs.local_run import run_generate  # noqa: E402
from service.jobs.request import GenerateSpec  # noqa: E402
from server_kit import SMS  # noqa: E402

THAI = "ภาษาไทยเป็นภาษาที่มีวรรณยุกต์และตัวอักษรของตัวเอง " * 12
EMOJI = "🎁🚀🧪🦄🌈🔥💡🎉" * 70
ADVERSARIAL = [THAI[:500], EMOJI[:500], ("\u0300" * 499) + "a", "\U0001F600" * 500]  # ~3,700+ tokens as one row


@pytest.fixture(scope="module", params=loader.available())
def engine(request):
    return loader.load_engine(request.param)


def corpus(path, extra_unit: bool):
    rows = [{"text": f"{SMS[i % len(SMS)]} #{i}", "user": f"u{i}"} for i in range(60)]
    if extra_unit:  # one unit whose four records are built to overflow every per-row limit
        rows += [{"text": t, "user": "the-adversary"} for t in ADVERSARIAL]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def run(engine, tmp_path, extra_unit: bool, **kw):
    name = "with" if extra_unit else "without"
    spec = GenerateSpec(input=corpus(tmp_path / f"{name}.jsonl", extra_unit), unit_field="user", records=6, max_tokens=5,
                        epsilon=3.0, delta=1e-3, partitions=4, public_count=60, pii="off", out=tmp_path / f"{name}.out.jsonl",
                        engine=engine.name, **kw)
    return run_generate(spec, engine=engine)


def outcome(report: dict) -> dict:
    """What a consumer sees of a job's outcome beyond the records' text."""
    return {
        "decoded": report["records"] + report["empty_records_dropped"],
        "planned": report["records_planned"],
        "out_of_step": report["out_of_step_groups"],
        "groups": report["groups"],
        "rounds": report["rounds"],
        "epsilon": report["epsilon"],
    }


def test_a_unit_built_to_overflow_every_limit_changes_no_outcome(engine, tmp_path):
    """Neighbouring corpora (one unit of Thai, emoji, combining marks: thousands of tokens): the
    same job outcome on both. Before row caps this overflowed vLLM's 4,096-token context, and
    the group fell out of step (its record silently dropped) or the engine failed."""
    a = run(engine, tmp_path, extra_unit=False)
    b = run(engine, tmp_path, extra_unit=True)
    assert outcome(a) == outcome(b)
    assert outcome(b)["decoded"] == 6 and outcome(b)["out_of_step"] == 0


def test_every_row_is_cut_to_the_public_token_cap(engine):
    from service.generation.layout import row_tokens
    from service.generation.prompts import Template

    t = Template.load(None, 500)
    for cap in (120, 300):
        ids = row_tokens(engine, t, ADVERSARIAL, None, cap)
        assert len(ids) <= cap
        assert len(ids) > cap - 60  # cut to the cap, not emptied: the unit keeps what fits


@pytest.mark.parametrize("kw,numbers", [
    ({"max_row_tokens": 16}, "max_row_tokens must be at least"),
    ({"max_row_tokens": 4500, "max_tokens": 4000}, "is over the model's context"),
    ({"row_slots": 400}, "rows are over the batch limit of 160 rows (batch_rows)"),
])
def test_a_plan_that_cannot_fit_the_engine_is_refused_with_its_numbers(engine, tmp_path, kw, numbers):
    spec_kw = {"max_tokens": 5, **kw}
    with pytest.raises(CapacityError, match=re.escape(numbers)):
        spec = GenerateSpec(input=corpus(tmp_path / "c.jsonl", False), unit_field="user", records=2, epsilon=3.0, delta=1e-3,
                            partitions=4, public_count=60, pii="off", out=tmp_path / "o.jsonl", **spec_kw)
        run_generate(spec, engine=engine)
    assert not (tmp_path / "o.jsonl").exists()  # refused before anything was decoded or written
