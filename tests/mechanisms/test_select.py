"""select_token / select_tokens: public candidate sets, public divisors, validation, the gate."""

import numpy as np
import pytest

from mechanisms import DecodingConfig, GateConfig, GroupState, candidate_sets, select_token, select_tokens
from mechanisms.select import aggregate_em

V = 50


def logits(seed, shape, scale=3.0):
    return np.random.default_rng(seed).normal(0.0, scale, size=shape).astype(np.float32)


@pytest.mark.parametrize("mechanism", ["em", "amin", "gaussian"])
def test_token_always_in_public_candidate_set(mechanism):
    """Even when every private row wants a token outside the public top-k, it is never emitted."""
    public = logits(0, (V,))
    cfg = DecodingConfig(mechanism=mechanism, partitions=4, clip=0.5, top_k=5, noise_multiplier=0.1)
    ids, valid = candidate_sets(public[None, :], cfg)
    cands = set(ids[0][valid[0]].tolist())
    outside = next(t for t in np.argsort(public) if t not in cands)  # a publicly unlikely token
    private = np.tile(public, (4, 1))
    private[:, outside] = 100.0
    rng = np.random.default_rng(1)
    for _ in range(200):
        assert select_token(private, public, cfg, rng) in cands


def test_em_candidates_are_top_k_plus_from_public_only():
    public = np.array([5.0, 4.9, 4.0, 3.5, 1.0, 0.0])
    ids, valid = candidate_sets(public[None, :], DecodingConfig(mechanism="em", clip=0.5, top_k=2))
    # k-th largest public logit is 4.9; top-k+ keeps every token >= 4.9 - 2C = 3.9
    assert sorted(ids[0][valid[0]].tolist()) == [0, 1, 2]
    ids, valid = candidate_sets(public[None, :], DecodingConfig(mechanism="gaussian", top_k=2))
    assert sorted(ids[0][valid[0]].tolist()) == [0, 1]


@pytest.mark.parametrize(
    ("clip", "top_k_plus", "expected"),
    [
        (0.5, True, [0, 1, 2]),  # >= 4.9 - 1.0
        (1.0, True, [0, 1, 2, 3]),  # >= 4.9 - 2.0: the widening grows with C
        (3.0, True, [0, 1, 2, 3, 4, 5]),
        (0.5, False, [0, 1]),  # the public top-k, whatever C
        (3.0, False, [0, 1]),
    ],
)
def test_em_top_k_plus_widens_with_clip_and_can_be_turned_off(clip, top_k_plus, expected):
    public = np.array([5.0, 4.9, 4.0, 3.5, 1.0, 0.0])
    cfg = DecodingConfig(mechanism="em", clip=clip, top_k=2, top_k_plus=top_k_plus)
    ids, valid = candidate_sets(public[None, :], cfg)
    assert sorted(ids[0][valid[0]].tolist()) == expected


@pytest.mark.parametrize("mechanism", ["em", "amin", "gaussian"])
def test_private_logits_outside_candidates_do_not_matter(mechanism):
    """Same seed, private logits changed only outside the public candidate set: same tokens."""
    public = logits(2, (3, V))
    private = logits(3, (7, V))
    sizes = [2, 0, 5]
    cfg = DecodingConfig(mechanism=mechanism, partitions=4, clip=1.0, top_k=4)
    ids, valid = candidate_sets(public, cfg)
    changed = private.copy()
    row_group = np.repeat(np.arange(3), sizes)
    for r, g in enumerate(row_group):
        mask = np.ones(V, dtype=bool)
        mask[ids[g][valid[g]]] = False
        if mechanism == "amin":  # amin shifts by the row's max over the whole vocabulary: keep it
            mask[np.argmax(private[r])] = False
        changed[r, mask] = np.random.default_rng(r).normal(0, 5, mask.sum()).astype(np.float32).clip(max=private[r].max() - 1e-3)
    a = select_tokens(private, sizes, public, cfg, np.random.default_rng(7))
    b = select_tokens(changed, sizes, public, cfg, np.random.default_rng(7))
    assert (a == b).all()


def test_em_average_divides_by_public_n_and_absent_rows_are_public():
    public = np.zeros((1, 4))
    one_row = np.array([[10.0, -10.0, 0.2, 0.0]])
    cfg = DecodingConfig(mechanism="em", partitions=8, clip=1.0, temperature=1.0, top_k=None)
    avg = aggregate_em(one_row, public, np.array([1]), np.array([0]), cfg)
    # one row of eight present; seven absent rows contribute z_pub: avg = z_pub + clip(diff)/8
    np.testing.assert_allclose(avg[0], [1 / 8, -1 / 8, 0.2 / 8, 0.0])
    empty = aggregate_em(np.zeros((0, 4)), public, np.array([0]), np.array([], dtype=int), cfg)
    np.testing.assert_allclose(empty[0], public[0])


def test_batched_aggregation_equals_per_group():
    public = logits(4, (3, 12)).astype(np.float64)
    private = logits(5, (6, 12)).astype(np.float64)
    sizes = np.array([1, 3, 2])
    cfg = DecodingConfig(mechanism="em", partitions=4, clip=0.7, top_k=None)
    rg = np.repeat(np.arange(3), sizes)
    batched = aggregate_em(private, public, sizes, rg, cfg)
    start = 0
    for g, n in enumerate(sizes):
        alone = aggregate_em(private[start : start + n], public[g : g + 1], np.array([n]), np.zeros(n, dtype=int), cfg)
        np.testing.assert_allclose(batched[g], alone[0])
        start += n


@pytest.mark.parametrize("mechanism", ["em", "amin", "gaussian"])
def test_same_seed_same_tokens(mechanism):
    public, private = logits(6, (4, V)), logits(7, (10, V))
    cfg = DecodingConfig(mechanism=mechanism, partitions=3, clip=2.0, noise_multiplier=0.5)
    a = select_tokens(private, [3, 3, 0, 4], public, cfg, np.random.default_rng(11))
    b = select_tokens(private, [3, 3, 0, 4], public, cfg, np.random.default_rng(11))
    assert a.dtype == np.int64 and a.shape == (4,) and (a == b).all()


@pytest.mark.parametrize("mechanism", ["em", "amin", "gaussian"])
def test_strong_private_consensus_wins_with_a_loose_budget(mechanism):
    """Utility sanity: with a large clip (or little noise), rows that agree decide the token."""
    public = np.zeros(V)
    public[:10] = 5.0  # candidates 0..9, all equally likely publicly
    private = np.tile(public, (8, 1))
    private[:, 7] += 20.0
    cfg = DecodingConfig(mechanism=mechanism, partitions=8, clip=20.0, temperature=0.05, noise_multiplier=0.1, top_k=10)
    rng = np.random.default_rng(0)
    picks = [select_token(private, public, cfg, rng) for _ in range(50)]
    assert picks.count(7) >= 48


BAD_INPUTS = [
    (lambda p, q: (p[:, :-1], [2], q), "private_logits"),
    (lambda p, q: (p, [3], q), "group_sizes"),
    (lambda p, q: (p, [-1, 3], np.vstack([q, q])), "group_sizes"),
    (lambda p, q: (p, [2], np.where(np.arange(V) == 3, np.inf, q)), "public_logits must be finite"),
    (lambda p, q: (p[0], [2], q), "private_logits"),
]


@pytest.mark.parametrize("make,field", BAD_INPUTS)
def test_bad_inputs_raise_naming_the_field(make, field):
    p, q = logits(8, (2, V)), logits(9, (1, V))
    private, sizes, public = make(p, q)
    with pytest.raises(ValueError, match=f"^{field}"):
        select_tokens(private, sizes, public, DecodingConfig(), np.random.default_rng(0))


def test_select_token_shapes():
    with pytest.raises(ValueError, match="^public_logits must be a 1-D"):
        select_token(logits(0, (2, V)), logits(1, (1, V)), DecodingConfig(), np.random.default_rng(0))


def test_gate_emits_public_tokens_when_rows_agree_with_public_and_halts_at_cap():
    public = logits(10, (V,))
    agree = np.tile(public, (8, 1))  # TV distance 0: below any threshold, save for the noise
    cfg = DecodingConfig(mechanism="em", partitions=8, clip=1.0, gate=GateConfig(threshold=0.5, epsilon=2.0, max_private_tokens=3))
    rng = np.random.default_rng(0)
    state = GroupState()
    for _ in range(40):
        select_token(agree, public, cfg, rng, state)
        if state.halted:
            break
    assert state.public_tokens > state.private_tokens
    far = np.tile(public, (8, 1))
    far[:, np.argmin(public)] = 100.0  # every row certain of a publicly unlikely token: TV ~ 1
    cfg_far = cfg.replace(top_k=None)
    state = GroupState()
    steps = 0
    while not state.halted:
        select_token(far, public, cfg_far, rng, state)
        steps += 1
        assert steps < 100
    assert state.private_tokens == 3  # the cap fixed in advance, then the group halts
    with pytest.raises(ValueError, match="^states"):
        select_token(far, public, cfg_far, rng, state)


def test_gate_threshold_persists_through_below_answers_and_is_redrawn_after_above():
    """The AboveThreshold analysis: one noisy threshold per instance, kept across below answers,
    drawn afresh only after an above (paid) answer."""
    public = logits(11, (V,))
    cfg = DecodingConfig(mechanism="em", partitions=8, clip=1.0, top_k=None,
                         gate=GateConfig(threshold=0.5, epsilon=1.0, max_private_tokens=50))
    agree = np.tile(public, (8, 1))
    far = np.tile(public, (8, 1))
    far[:, np.argmin(public)] = 100.0
    rng = np.random.default_rng(4)
    state = GroupState()
    seen_below = seen_above = 0
    for step in range(60):
        rows = far if step % 3 == 0 else agree
        before_private, before = state.private_tokens, state.noisy_threshold
        select_token(rows, public, cfg, rng, state)
        if state.private_tokens == before_private:  # below: same instance, same threshold
            seen_below += 1
            assert before is None or state.noisy_threshold == before
            assert state.noisy_threshold is not None
        else:  # above: paid, and the next step starts a fresh instance
            seen_above += 1
            assert state.noisy_threshold is None
    assert seen_below > 10 and seen_above > 10
    assert state.private_tokens + state.public_tokens == 60


SECRET = b"privtext test secret"


def _steps(private, sizes, public, cfg, nonce_seed, steps=6):
    """Tokens of `steps` selections for every group, each group on its own stream."""
    from mechanisms import JobRandomness

    r = JobRandomness.replay(SECRET, nonce_seed)
    rngs = [r.group(g) for g in range(len(sizes))]
    states = [GroupState() for _ in sizes]
    return [select_tokens(private, sizes, public, cfg, rngs, states).tolist() for _ in range(steps)]


CONFIGS = [
    DecodingConfig(mechanism="em", partitions=4, clip=2.0, top_k=20),
    DecodingConfig(mechanism="em", partitions=4, clip=2.0, top_k=20, top_k_plus=False),
    DecodingConfig(mechanism="amin", partitions=4, clip=2.0, top_k=20),
    DecodingConfig(mechanism="gaussian", partitions=4, noise_multiplier=0.5, top_k=20),
    DecodingConfig(mechanism="em", partitions=4, clip=2.0, top_k=20, gate=GateConfig(threshold=0.2, epsilon=1.0, max_private_tokens=50)),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.mechanism}{'-gate' if c.gate else ''}{'' if c.top_k_plus else '-topk'}")
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_private_row_with_a_non_finite_logit_counts_as_absent(cfg, bad):
    """One unit whose prompt drives the model to NaN/inf must not fail the step (its outcome
    would then be decided by one unit): the row is treated exactly as if it were absent."""
    private, public = logits(21, (5, V)), logits(22, (2, V))
    poisoned = private.copy()
    poisoned[1, 17] = bad  # group 0's second row
    with_bad = _steps(poisoned, [3, 2], public, cfg, nonce_seed=5)
    without = _steps(np.delete(private, 1, axis=0), [2, 2], public, cfg, nonce_seed=5)
    assert with_bad == without


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.mechanism}{'-gate' if c.gate else ''}{'' if c.top_k_plus else '-topk'}")
def test_a_groups_draws_do_not_depend_on_the_groups_beside_it(cfg):
    """Group 0 on its own stream picks the same tokens alone or batched beside groups whose
    candidate sets are wider or narrower (top-k+ widths differ per group)."""
    private, public = logits(31, (6, V)), logits(32, (3, V))
    public[1] *= 0.2  # a flat public row: a wide top-k+ set
    batched = _steps(private, [2, 2, 2], public, cfg, nonce_seed=9)
    alone = _steps(private[:2], [2], public[:1], cfg, nonce_seed=9)
    assert [t[0] for t in batched] == [t[0] for t in alone]


def test_one_generator_per_group_is_checked():
    with pytest.raises(ValueError, match="^rng must be one generator per group"):
        select_tokens(logits(1, (2, V)), [1, 1], logits(2, (2, V)), DecodingConfig(), [np.random.default_rng(0)])
