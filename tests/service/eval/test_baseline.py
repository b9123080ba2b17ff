"""The non-private ceiling's selector: the plain average of the group's rows, over the public top-k."""

from __future__ import annotations

import numpy as np

from mechanisms import DecodingConfig, JobRandomness
from service.eval.baseline import NonPrivateSelector


def _select(cfg, private, sizes, public, seed=0):
    sel = NonPrivateSelector(cfg, JobRandomness.replay(b"privtext test secret", seed))
    return sel, sel.select(list(range(len(sizes))), np.asarray(private, float), np.asarray(sizes), np.asarray(public, float))


def test_follows_the_rows_average_not_the_public_row():
    v = 6
    public = np.zeros((2, v))
    private = np.zeros((5, v))
    private[:3, 4] = 30.0  # group 0's three rows all want token 4
    private[3:, 1] = 30.0  # group 1's two rows want token 1
    sel, tokens = _select(DecodingConfig(mechanism="em", partitions=8, top_k=None), private, [3, 2], public)
    assert tokens.tolist() == [4, 1]
    assert sel.private_tokens == 2 and not sel.halted(0)


def test_no_clipping_one_row_can_decide():
    """Unlike em/amin, a single outlying row moves the choice: this is what privacy prevents."""
    v = 4
    private = np.zeros((8, v))
    private[0, 2] = 200.0  # one row out of eight; mean logit of token 2 is 25
    _, tokens = _select(DecodingConfig(mechanism="em", partitions=8, top_k=None), private, [8], np.zeros((1, v)))
    assert tokens.tolist() == [2]


def test_candidates_are_the_public_top_k():
    v = 10
    public = np.arange(v, dtype=float)[None, :]  # top-3 public: tokens 7, 8, 9
    private = np.zeros((2, v))
    private[:, 0] = 50.0  # the rows want token 0, outside the public top-3
    cfg = DecodingConfig(mechanism="em", partitions=2, top_k=3)
    seen = {int(t) for seed in range(50) for t in _select(cfg, private, [2], public, seed)[1]}
    assert seen <= {7, 8, 9} and len(seen) > 1


def test_group_without_rows_samples_the_public_row():
    public = np.array([[0.0, 0.0, 40.0]])
    _, tokens = _select(DecodingConfig(mechanism="em", partitions=4, top_k=None), np.zeros((0, 3)), [0], public)
    assert tokens.tolist() == [2]


def test_samples_at_the_temperature():
    """Two tokens with mean logits 1 and 0 at tau = 1: P(first) = e / (1 + e) ~ 0.731."""
    private = np.array([[1.0, 0.0]] * 2)
    cfg = DecodingConfig(mechanism="em", partitions=2, top_k=None, temperature=1.0)
    sel = NonPrivateSelector(cfg, JobRandomness.replay(b"privtext test secret", 1))
    n = 20_000
    tokens = sel.select(list(range(n)), np.tile(private, (n, 1)), np.full(n, 2), np.zeros((n, 2)))
    assert abs(np.mean(tokens == 0) - np.e / (1 + np.e)) < 0.015


def test_only_the_eval_reaches_the_non_private_selector():
    """The ceiling's selector releases raw, unclipped averages: no path outside `privtext eval`
    (server, `privtext generate`, client, load test) may import it or pass a selector_for."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    offenders = []
    for path in [*root.joinpath("service").rglob("*.py"), *root.joinpath("loadtest").rglob("*.py")]:
        if path.is_relative_to(root / "service" / "eval"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").endswith("baseline"):
                offenders.append(f"{path.relative_to(root)}:{node.lineno} imports {node.module}")
            if isinstance(node, ast.Call) and any(k.arg == "selector_for" for k in node.keywords):
                offenders.append(f"{path.relative_to(root)}:{node.lineno} passes selector_for")
    assert offenders == []
