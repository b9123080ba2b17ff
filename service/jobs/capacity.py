"""Whether a job fits the engine, decided at plan time from public numbers only.

A unit must never decide a job's outcome: if a long or exotic record could push its row past
the model's context, or a crowded group past the batch, the job's success, its record count or
its messages would depend on that unit, outside the accounting. The layout makes this
impossible by construction (rows cut to max_row_tokens, groups bounded by their row slots); this
check makes sure the construction fits the engine, before anything is charged, and refuses the
request with the numbers otherwise.
"""

from __future__ import annotations

from mechanisms import Plan

from ..engine.interface import Engine
from ..generation.layout import empty_row_tokens
from ..generation.prompts import Template


class CapacityError(ValueError):
    """The request's public worst case does not fit the engine; the message gives the numbers."""


def check_capacity(engine: Engine, plan: Plan, template: Template, labels: list[str] | None, max_row_tokens: int,
                   batch_rows: int) -> None:
    problems: list[str] = []
    for label in labels or [None]:
        empty = empty_row_tokens(engine, template, label)
        if empty > max_row_tokens:
            problems.append(f"max_row_tokens must be at least {empty} (the template's prompt with no records), got {max_row_tokens}")
        public = len(engine.encode_chat(template.public_prompt(label)))
        problems += engine.capacity_problems(plan.config.max_rows, max_row_tokens, public, plan.max_tokens, batch_rows)
    if problems:
        raise CapacityError("the request does not fit the engine: " + "; ".join(dict.fromkeys(problems)))
