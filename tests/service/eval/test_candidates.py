"""The candidate-set probe: what it counts on crafted logits, and one real run per setting."""

from __future__ import annotations

import numpy as np
import pytest

from mechanisms import DecodingConfig, JobRandomness
from service.eval.candidates import CandidateProbe, main, measure

# public logits of 2 groups over 6 tokens; top-2 is {0, 1} in both
PUBLIC = np.array([[5.0, 4.9, 4.0, 3.5, 1.0, 0.0], [5.0, 4.9, -9.0, -9.0, -9.0, -9.0]])


@pytest.mark.parametrize(("clip", "plus", "sizes"), [(0.5, True, [3, 2]), (3.0, True, [6, 2]), (3.0, False, [2, 2])])
def test_probe_counts_the_candidate_set_and_tokens_outside_the_public_top_k(clip, plus, sizes):
    cfg = DecodingConfig(mechanism="em", partitions=2, clip=clip, top_k=2, top_k_plus=plus)
    probe = CandidateProbe(cfg, JobRandomness.replay(b"privtext test secret", 0))
    private = PUBLIC.repeat(2, axis=0)  # 2 rows per group, rows of a group contiguous
    private[:2, 4] = 50.0  # group 0's rows both want token 4, outside the public top-2
    for _ in range(200):
        chosen = probe.select([7, 8], private, np.array([2, 2]), PUBLIC)
        assert chosen[1] in (0, 1)
    assert probe.sizes == sizes * 200
    outside = np.asarray(probe.outside).reshape(200, 2)
    assert not outside[:, 1].any()
    if plus:  # group 0's top-k+ holds tokens beyond the public top-2, and em emits them at their softmax mass
        scores = PUBLIC[0] + np.r_[0, 0, 0, 0, clip, 0]  # both rows pull token 4 up by C; the average moves by C
        p = np.exp(scores[:sizes[0]] - 5.0) if sizes[0] == 3 else np.exp(scores - 5.0)
        expected = p[2:].sum() / p.sum()
        assert abs(outside[:, 0].mean() - expected) < 0.1 and probe.groups_outside == {7: True, 8: False}
    else:
        assert not outside[:, 0].any() and probe.groups_outside == {7: False, 8: False}


def test_real_run_widens_with_epsilon_and_not_without_top_k_plus(engine, tmp_path):
    kw = dict(records=4, max_tokens=4, engine=engine)
    wide = measure("trec", [0.5, 20.0], tmp_path / "plus", **kw)
    assert [r["epsilon"] for r in wide] == [0.5, 20.0] and wide[0]["clip"] < wide[1]["clip"]
    assert 64 <= wide[0]["size_median"] < wide[1]["size_median"]
    assert all(r["steps"] >= 4 and r["records"] >= 1 for r in wide)
    plain = measure("trec", [20.0], tmp_path / "plain", top_k_plus=False, **kw)[0]
    assert plain["size_median"] == plain["size_max"] == 64 and plain["tokens_outside_top_k"] == 0.0


def test_cli_refuses_bad_epsilons(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--out", str(tmp_path), "--epsilons", "1,inf"])
    assert e.value.code == 2 and "--epsilons must be finite and > 0" in capsys.readouterr().err
    assert not (tmp_path / "candidates.json").exists()
