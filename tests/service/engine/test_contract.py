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

from mechanisms import DecodingConfig, JobRandomness  # noqa: E402
from service.engine import loader  # noqa: E402
from service.engine.interface import Engine, GroupRequest  # noqa: E402
from service.engine.raw import RawDecoding  # noqa: E402
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
    return MechanismSelector(DecodingConfig(**({"mechanism": "em", "partitions": 4, "clip": 2.0, "top_k": 20} | cfg)), JobRandomness.replay(b"privtext test secret", seed))


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
        before = engine.stats
        list(engine.run(groups, selector()))
        spent = engine.stats.since(before)
        fed.append(spent.prefill_tokens)
        decode_tokens = sum(g.n_rows * (g.max_tokens - 1) for g in groups)  # the last token is never fed
        assert spent.decode_row_tokens == decode_tokens
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
    """The raw baseline is an optional capability, outside the Engine interface; both backends
    here have it, and the engine's stats count its work (no selections)."""
    groups = [group(engine, g, 3, 5) for g in range(2)]
    assert isinstance(engine, RawDecoding) and not hasattr(Engine, "run_raw")
    before = engine.stats
    assert engine.run_raw(groups, seed=0) == 2 * 4 * 5
    spent = engine.stats.since(before)
    assert (spent.steps, spent.selections, spent.selection_seconds) == (5, 0, 0.0)
    assert spent.decode_row_tokens == 2 * 4 * (5 - 1) and spent.groups_finished == 2


def test_stats_count_a_known_request(engine):
    """One group of one private row and the public row, 5 tokens: each prompt prefilled once
    (one row per batch: nothing to share), 5 steps with one selection each, one token per row
    fed in each step after the first; the phase seconds fit in the run's wall time."""
    import time

    req = GroupRequest(0, (prompt(engine, 0),), engine.encode_chat("Write one text message."), 5, ignore_eos=True)
    before = engine.stats
    t0 = time.perf_counter()
    (result,) = engine.run([req], selector())
    wall = time.perf_counter() - t0
    spent = engine.stats.since(before)
    assert len(result.token_ids) == 5
    assert spent.prefill_tokens == len(req.rows[0]) + len(req.public)
    assert (spent.steps, spent.selections, spent.groups_finished, spent.out_of_step) == (5, 5, 1, 0)
    assert spent.decode_row_tokens == 2 * (5 - 1)
    if engine.name == "vllm":  # one batched forward per engine step, the first prefills
        assert (spent.forwards, spent.prefill_forwards) == (5, 1)
    else:  # a forward per batch (private, public) per step after the first, beside the prefills
        assert spent.forwards - spent.prefill_forwards == 2 * (5 - 1) and spent.prefill_forwards >= 2
    assert spent.prefill_seconds > 0 and spent.decode_seconds > 0 and spent.selection_seconds > 0
    assert spent.forward_seconds + spent.selection_seconds <= wall
    assert engine.stats.max_batch_rows_seen >= 2


def test_stats_are_snapshots(engine):
    """A snapshot never changes under its reader while the engine works on."""
    import dataclasses

    before = engine.stats
    frozen = dataclasses.astuple(before)
    list(engine.run([group(engine, 0, 2, 3)], selector()))
    assert dataclasses.astuple(before) == frozen and engine.stats.steps == before.steps + 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        before.steps = 0  # type: ignore[misc]


def test_tensor_parallel_setting_is_checked(monkeypatch):
    """The vLLM tensor-parallel setting comes from the environment and is validated before any
    engine starts."""
    from service.engine.loader import _vllm

    monkeypatch.setenv("PRIVTEXT_TENSOR_PARALLEL_SIZE", "zero")
    with pytest.raises(ValueError, match="PRIVTEXT_TENSOR_PARALLEL_SIZE must be an integer >= 1"):
        _vllm("/nonexistent")


# Issue 21: the public row is public, admission follows public numbers, capacity is checked.

FORCED = [" The", " message", " is", " short", "."]


def _forced(engine, gid, steps):
    """Force the group's tokens so that every run sees the same public history."""
    ids = [engine.encode_chat("x")[-1]] * 0 + [int(engine.tokenizer.encode(t, add_special_tokens=False)[0]) for t in FORCED]
    return {(gid, s): ids[s % len(ids)] for s in range(steps)}


def _public_blocks(engine, groups, gid, steps):
    spy = Spy(selector(seed=3), force=_forced(engine, gid, steps))
    list(engine.run(groups, spy))
    return [pub for _, pub in spy.blocks(gid)]


def test_public_logits_are_bitwise_the_same_whatever_private_rows_share_the_batch(engine):
    """Add, remove and change private rows of a group, and the rows of a group beside it: the
    public row's logits (and so the public candidate set) are equal to the last bit. A flipped
    near-tie in the public top-k would give a token probability zero under one neighbour."""
    from mechanisms import candidate_sets

    steps = 5
    public = engine.encode_chat("Write one text message.")

    def run(rows0, rows1):
        g0 = GroupRequest(0, tuple(rows0), public, steps, ignore_eos=True, max_rows=4, max_row_tokens=256)
        g1 = GroupRequest(1, tuple(rows1), public, steps, ignore_eos=True, max_rows=40, max_row_tokens=256)
        return _public_blocks(engine, [g0, g1], 0, steps)

    p = [prompt(engine, i, " and more" * i) for i in range(6)]
    base = run(p[:2], p[2:4])
    variants = {
        "a unit added": run(p[:3], p[2:4]),
        "a unit removed": run(p[:1], p[2:4]),
        "a unit changed": run([p[0], p[5]], p[2:4]),
        "no private rows": run([], p[2:4]),
        "the group beside changed": run(p[:2], [p[4], p[5], p[0], p[1]]),
        "a crowded group beside": run(p[:2], p * 6),
    }
    cfg = DecodingConfig(mechanism="em", partitions=4, clip=2.0, top_k=20)
    for name, blocks in variants.items():
        assert len(blocks) == len(base) == steps, name
        for step, (a, b) in enumerate(zip(base, blocks)):
            assert np.array_equal(a, b), f"{name}: public logits differ at step {step} (max {np.abs(a - b).max():.3g})"
            ids_a, _ = candidate_sets(a[None, :].astype(np.float64), cfg)
            ids_b, _ = candidate_sets(b[None, :].astype(np.float64), cfg)
            assert np.array_equal(ids_a, ids_b), name


def test_admission_follows_the_public_worst_case_not_the_actual_rows(engine):
    """Groups are admitted as max_rows + 1 rows whatever rows they really have, so which
    groups decode together is the same for a corpus and its neighbour."""

    def co_batched(n_rows):
        groups = [GroupRequest(g, tuple(prompt(engine, g + i) for i in range(n_rows[g])), engine.encode_chat("Write one."),
                               3 + g % 2, ignore_eos=True, max_rows=3, max_row_tokens=256) for g in range(5)]
        spy = Spy(selector())
        list(engine.run(groups, spy, max_batch_rows=8))  # 8 // (3 + 1) = 2 groups at a time
        return [tuple(ids) for ids, *_ in spy.calls]

    full = co_batched([3, 3, 3, 3, 3])
    assert max(len(c) for c in full) == 2
    assert co_batched([1, 3, 0, 2, 1]) == full  # fewer actual rows: the same groups share each step


def test_capacity_problems_name_the_numbers(engine):
    ok = engine.capacity_problems(max_rows=24, max_row_tokens=256, public_tokens=40, max_tokens=64, max_batch_rows=160)
    assert ok == []
    bad = engine.capacity_problems(max_rows=200, max_row_tokens=engine.max_model_len, public_tokens=40, max_tokens=64,
                                   max_batch_rows=160)
    text = " ".join(bad)
    assert f"max_row_tokens {engine.max_model_len} + max_tokens 64" in text
    assert "201 rows are over the batch limit of 160 rows (batch_rows)" in text


def test_a_row_over_its_declared_cap_is_refused_before_the_model(engine):
    long = prompt(engine, 0, " and more" * 40)
    req = GroupRequest(0, (long,), engine.encode_chat("Write one."), 3, max_rows=2, max_row_tokens=len(long) - 1)
    with pytest.raises(ValueError, match="over its max_row_tokens"):
        list(engine.run([req], selector()))
