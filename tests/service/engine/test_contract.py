"""The engine contract, run against every installed backend on the real default model.

The reference for "what the logits should be" is a plain transformers forward pass over the
full prompt + generated suffix, with no cache, no padding and no batching: if a backend's
caching, padding, positions or continuous batching were wrong, the logits it hands the
selector would differ from it.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from mechanisms import DecodingConfig  # noqa: E402
from service.engine import loader  # noqa: E402
from service.engine.interface import GroupRequest  # noqa: E402
from service.generation.selector import MechanismSelector  # noqa: E402

BACKENDS = loader.available()
TEXTS = [
    "Free entry in 2 a wkly comp to win FA Cup final tkts 21st May.",
    "Ok lar... Joking wif u oni...",
    "U dun say so early hor... U c already then say...",
    "WINNER!! As a valued network customer you have been selected to receive a prize reward!",
    "I'm gonna be home soon and i don't want to talk about this stuff anymore tonight.",
    "Even my brother is not like to speak with me.",
]


@pytest.fixture(scope="module", params=BACKENDS)
def engine(request):
    return loader.load_engine(request.param)


@pytest.fixture(scope="module")
def reference(engine):
    """A plain forward over a whole sequence: last-position logits, float32."""
    import torch

    from service.engine.model_files import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(engine.model_path)

    def logits(ids):
        with torch.inference_mode():
            return model(input_ids=torch.tensor([list(ids)])).logits[0, -1].float().numpy()

    return logits


def prompt(engine, i, extra=""):
    return engine.encode_chat(f"Example text message:\n{TEXTS[i % len(TEXTS)]}{extra}\nWrite one more like it.")


def group(engine, gid, n_rows, max_tokens, ignore_eos=True, lengths_vary=False):
    rows = tuple(prompt(engine, gid + i, " and more" * (i if lengths_vary else 0)) for i in range(n_rows))
    return GroupRequest(gid, rows, engine.encode_chat("Write one text message."), max_tokens, ignore_eos=ignore_eos)


class Spy:
    """A Selector that records what it was shown (test only) and delegates to the mechanism."""

    def __init__(self, inner, force=None):
        self.inner, self.force = inner, force or {}
        self.calls: list[tuple[list[int], np.ndarray, np.ndarray, np.ndarray]] = []
        self.chosen: dict[int, list[int]] = {}

    def select(self, group_ids, private_logits, group_sizes, public_logits):
        self.calls.append((list(group_ids), private_logits.copy(), np.asarray(group_sizes).copy(), public_logits.copy()))
        toks = self.inner.select(group_ids, private_logits, group_sizes, public_logits)
        for i, g in enumerate(group_ids):
            step = len(self.chosen.setdefault(g, []))
            if (g, step) in self.force:
                toks[i] = self.force[(g, step)]
            self.chosen[g].append(int(toks[i]))
        return toks

    def halted(self, g):
        return self.inner.halted(g)

    def release(self, g):
        self.inner.release(g)

    def blocks(self, gid):
        """(private rows, public row) logits shown for group gid, step by step."""
        out = []
        for ids, priv, sizes, pub in self.calls:
            if gid in ids:
                i = ids.index(gid)
                start = int(sizes[:i].sum())
                out.append((priv[start : start + sizes[i]], pub[i]))
        return out


def selector(seed=0, **cfg):
    return MechanismSelector(DecodingConfig(**({"mechanism": "em", "partitions": 4, "clip": 2.0, "top_k": 20} | cfg)), np.random.default_rng(seed))


def test_lock_step_identical_rows_see_identical_logits(engine):
    """Rows of a group with the same prompt stay identical at every step only if every row
    receives the group's token every step."""
    same = prompt(engine, 0)
    req = GroupRequest(0, (same, same, same), engine.encode_chat("Write one text message."), 8, ignore_eos=True)
    other = group(engine, 1, 3, 8, lengths_vary=True)
    spy = Spy(selector())
    results = {r.group_id: r for r in engine.run([req, other], spy)}
    assert len(results[0].token_ids) == 8
    for priv, _ in spy.blocks(0):
        assert priv.shape[0] == 3
        assert np.abs(priv - priv[0]).max() < 1e-3


def test_logits_match_a_plain_forward_with_joining_and_leaving_groups(engine, reference):
    """Small batch budget: groups wait, join mid-run and leave at different lengths; rows have
    different prompt lengths. Every block the selector sees equals the uncached reference."""
    groups = [group(engine, g, 3, max_tokens=[3, 9, 5, 7][g], lengths_vary=True) for g in range(4)]
    spy = Spy(selector(seed=1))
    results = {r.group_id: r for r in engine.run(groups, spy, max_batch_rows=8)}  # two groups of 4 rows at a time
    assert sorted(results) == [0, 1, 2, 3]
    assert engine.stats.max_batch_rows_seen <= 8
    for req in groups:
        blocks = spy.blocks(req.group_id)
        chosen = spy.chosen[req.group_id]
        assert len(blocks) == req.max_tokens == len(results[req.group_id].token_ids)
        assert list(results[req.group_id].token_ids) == chosen
        for step in (0, len(blocks) // 2, len(blocks) - 1):
            priv, pub = blocks[step]
            np.testing.assert_allclose(pub, reference((*req.public, *chosen[:step])), atol=2e-3)
            np.testing.assert_allclose(priv[-1], reference((*req.rows[-1], *chosen[:step])), atol=2e-3)


def test_same_seed_same_tokens(engine):
    groups = [group(engine, g, 3, 10) for g in range(3)]
    a = {r.group_id: r.token_ids for r in engine.run(groups, selector(seed=7))}
    b = {r.group_id: r.token_ids for r in engine.run(groups, selector(seed=7))}
    c = {r.group_id: r.token_ids for r in engine.run(groups, selector(seed=8))}
    assert a == b
    assert a != c


def test_prompts_are_prefilled_once(engine):
    """Prompt tokens fed do not depend on how many steps follow (never recomputed) and never
    exceed the prompts' total (a backend may share a common prefix); each step feeds exactly
    one token per row."""
    fed = []
    for extra in (0, 6):
        groups = [group(engine, g, 2 + g, max_tokens=4 + g + extra) for g in range(3)]
        before = (engine.stats.prompt_tokens, engine.stats.decode_tokens)
        list(engine.run(groups, selector()))
        fed.append(engine.stats.prompt_tokens - before[0])
        decode_tokens = sum(g.n_rows * (g.max_tokens - 1) for g in groups)  # the last token is never fed
        assert engine.stats.decode_tokens - before[1] == decode_tokens
    total = sum(len(r) for g in groups for r in (*g.rows, g.public))
    assert fed[0] == fed[1] <= total
    if engine.name == "transformers":  # the shared chat-template prefix is computed once
        assert fed[0] < total


def test_stop_on_end_of_sequence(engine):
    eos = min(engine.eos_token_ids)
    g0, g1 = group(engine, 0, 2, 12, ignore_eos=False), group(engine, 1, 2, 6, ignore_eos=False)
    spy = Spy(selector(), force={(0, 3): eos})
    results = {r.group_id: r for r in engine.run([g0, g1], spy)}
    assert results[0].finish_reason == "eos"
    assert len(results[0].token_ids) == 3  # the eos itself is not part of the record
    assert results[1].finish_reason in ("length", "eos")


def test_gate_cap_halts_the_group(engine):
    from mechanisms import GateConfig

    sel = selector(gate=GateConfig(threshold=0.01, epsilon=5.0, max_private_tokens=2))
    results = list(engine.run([group(engine, 0, 3, 30)], sel))
    assert results[0].finish_reason == "halted"
    assert sel.private_tokens == 2 and sel.public_tokens == len(results[0].token_ids) - 2


def test_live_source_may_have_nothing_to_admit(engine):
    """A source shared by many requests yields None when nothing waits: the run goes on with
    its active groups, admits later arrivals, and ends only when the source is exhausted."""
    groups = [group(engine, g, 2, 4 + g) for g in range(3)]

    def live():
        yield None  # idle before anything arrives
        yield groups[0]
        for _ in range(3):
            yield None  # group 0 decodes alone for a few steps
        yield groups[1]
        yield None
        yield groups[2]

    results = {r.group_id: r for r in engine.run(live(), selector())}
    assert {g: len(r.token_ids) for g, r in results.items()} == {0: 4, 1: 5, 2: 6}


class Cancel(Spy):
    """Halts chosen groups after a number of selected tokens, as a cancelled request does."""

    def __init__(self, inner, after: dict[int, int]):
        super().__init__(inner)
        self.after = after

    def halted(self, g):
        return len(self.chosen.get(g, [])) >= self.after.get(g, 10**9) or self.inner.halted(g)


def test_a_halted_group_ends_before_its_next_step_and_the_others_go_on(engine):
    sel = Cancel(selector(), after={1: 3, 2: 0})
    results = {r.group_id: r for r in engine.run([group(engine, g, 2, 12) for g in range(3)], sel)}
    assert results[0].finish_reason == "length" and len(results[0].token_ids) == 12
    assert results[1].finish_reason == "halted" and len(results[1].token_ids) <= 3
    assert results[2].finish_reason == "halted" and results[2].token_ids == ()
    assert 2 not in sel.chosen  # never selected for: it was halted before its first step


def test_bad_requests(engine):
    with pytest.raises(ValueError, match="max_tokens must be >= 1"):
        list(engine.run([GroupRequest(0, (prompt(engine, 0),), prompt(engine, 1), 0)], selector()))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        list(engine.run([GroupRequest(0, ((10**9,),), prompt(engine, 1), 3)], selector()))
    with pytest.raises(Exception, match="over max_batch_rows"):
        list(engine.run([group(engine, 0, 5, 3)], selector(), max_batch_rows=4))


def test_raw_baseline_counts_tokens_only(engine):
    groups = [group(engine, g, 3, 5) for g in range(2)]
    assert engine.run_raw(groups, seed=0) == 2 * 4 * 5


def test_tensor_parallel_setting_is_checked(monkeypatch):
    """The vLLM tensor-parallel setting comes from the environment and is validated before any
    engine starts."""
    from service.engine.loader import _vllm

    monkeypatch.setenv("PRIVTEXT_TENSOR_PARALLEL_SIZE", "zero")
    with pytest.raises(ValueError, match="PRIVTEXT_TENSOR_PARALLEL_SIZE must be an integer >= 1"):
        _vllm("/nonexistent")
