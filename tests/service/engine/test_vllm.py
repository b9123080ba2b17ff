"""vLLM-specific checks: a group whose rows fall out of step is detected and never aggregated,
and both backends produce the same tokens for the same seed and prompts."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("vllm")

from mechanisms import DecodingConfig, JobRandomness  # noqa: E402
from service.engine import loader  # noqa: E402
from service.engine.interface import GroupRequest  # noqa: E402
from service.generation.selector import MechanismSelector  # noqa: E402


@pytest.fixture(scope="module")
def vllm_engine():
    return loader.load_engine("vllm")


class CountingSelector(MechanismSelector):
    def __init__(self, *a):
        super().__init__(*a)
        self.seen: list[int] = []

    def select(self, group_ids, private_logits, group_sizes, public_logits):
        self.seen.extend(group_ids)
        return super().select(group_ids, private_logits, group_sizes, public_logits)


def cfg():
    return DecodingConfig(mechanism="em", partitions=3, clip=2.0, top_k=20)


def test_row_admitted_a_step_late_is_out_of_step_and_never_aggregated(vllm_engine):
    """Drive vLLM by hand the way a wrong admission would: two rows of group 7 start, the
    third joins one step later. The processor must refuse to aggregate group 7."""
    eng = vllm_engine
    sel = CountingSelector(cfg(), JobRandomness.replay(b"privtext test secret", 0))
    prompt = eng.encode_chat("Write one text message.")
    req = GroupRequest(7, (prompt, prompt), prompt, 6, ignore_eos=True)
    eng._selector = sel
    eng._coordinators[eng._key] = eng._coordinate
    from service.engine.vllm_backend import _Group

    g = _Group(req, ["late-0", "late-1", "late-2"])
    eng._groups = {7: g}
    try:
        eng.llm.add_request("late-0", eng._prompt(prompt), eng._params(req, 0, True))
        eng.llm.add_request("late-2", eng._prompt(prompt), eng._params(req, -1, True))
        eng.llm.step()
        eng.llm.add_request("late-1", eng._prompt(prompt), eng._params(req, 1, True))
        while eng.llm.has_unfinished_requests():
            eng.llm.step()
    finally:
        eng._coordinators.pop(eng._key, None)
        eng._selector = None
    assert g.out_of_step
    assert 7 not in sel.seen  # the selector never saw the group's logits


def test_both_backends_same_tokens_for_the_same_seed(vllm_engine):
    if "transformers" not in loader.available():
        pytest.skip("transformers backend not installed")
    hf = loader.load_engine("transformers")
    texts = ["Ok lar... Joking wif u oni...", "Free entry in 2 a wkly comp to win FA Cup final tkts", "I'm gonna be home soon"]
    groups = [
        GroupRequest(g, tuple(hf.encode_chat(f"Example:\n{t}\nWrite one more like it.") for t in texts[g:] + texts[:g]),
                     hf.encode_chat("Write one text message."), 8, ignore_eos=True)
        for g in range(2)
    ]
    # one group per run: the selector's draws then cannot depend on the order a backend lists groups in
    for g in groups:
        (a,) = hf.run([g], MechanismSelector(cfg(), JobRandomness.replay(b"privtext test secret", 3 + g.group_id)))
        (b,) = vllm_engine.run([g], MechanismSelector(cfg(), JobRandomness.replay(b"privtext test secret", 3 + g.group_id)))
        assert a.token_ids == b.token_ids and len(a.token_ids) == 8


def test_the_prefix_cache_is_salted_per_tenant_and_dataset(vllm_engine):
    """One tenant's request gets no prefix-cache hit from another's identical prompt; the same
    tenant's (same salt) does. Without salts, prefill timing would tell a tenant whether another
    tenant's private prompt is cached."""
    eng = vllm_engine
    rows = tuple(eng.encode_chat(f"A private record of tenant A number {i}, long enough to fill blocks. " * 40) for i in range(2))
    public = eng.encode_chat("Write one text message.")

    def cached(salt):
        before = eng.stats.cached_prompt_tokens
        req = GroupRequest(0, rows, public, 2, ignore_eos=True, cache_salt=salt)
        list(eng.run([req], MechanismSelector(cfg(), JobRandomness.replay(b"privtext test secret", 1))))
        return eng.stats.cached_prompt_tokens - before

    cached("tenant-a")  # tenant A's prompts enter the cache
    assert cached("tenant-b") == 0  # tenant B, identical prompts: no hit at all
    assert cached("tenant-a") > 0  # tenant A again: its own cache is used
