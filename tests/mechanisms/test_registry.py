"""mechanisms.registry: a mechanism is one module plus one registry line (issue 23).

A toy mechanism, defined here and nowhere else, is registered through the registry's public
`register` and must then be reachable from every entry point without touching any other module:
DecodingConfig, select_tokens, the costs, calibration, `privtext plan`, JobRequest, the CLI and
client choices, the eval grid and plot styles, the audit. The fixture removes it afterwards.
"""

from __future__ import annotations

import argparse
from pathlib import Path
import math

import numpy as np
import pytest

from mechanisms import MECHANISMS, DecodingConfig, GroupState, JobRandomness, calibrate, generation_events, plan, select_tokens
from mechanisms import registry
from mechanisms.costs import rho_per_token, rho_selection, row_change_factor, sensitivity
from mechanisms.em import aggregate_em
from mechanisms.ops import sample
from mechanisms.registry import Batch, Calibration, Mechanism, Neighbours, PlotStyle


class HalfEm(Mechanism):
    """em at half scale: em's clipped average, sampled from softmax(avg / (2 tau)).

    Halving every score halves the utilities' sensitivity: D = f C / (2N) per coordinate, so the
    sampler is 2D/tau = C/(N tau)-bounded-range and rho = (1/2)(D/tau)^2 = (1/8)(f C/(N tau))^2.
    For the same budget calibration therefore allows twice em's clip."""

    name = "toy"
    summary = "em with its scores halved (a test mechanism)"
    calibration = Calibration("clip", "smaller", "clip (C)")
    sensitivity_norm = "per coordinate"
    style = PlotStyle("#8c564b", "D")
    audit_claim = "pure"

    def choose(self, batch: Batch, cfg: DecodingConfig, rng) -> np.ndarray:
        return sample(0.5 * aggregate_em(batch.zs, batch.zp, batch.sizes, batch.row_group, cfg), batch.valid, rng)

    def sensitivity(self, cfg: DecodingConfig) -> float:
        return row_change_factor(cfg) * cfg.clip / (2 * cfg.partitions)

    def rho_selection(self, cfg: DecodingConfig) -> float:
        return 0.5 * (self.sensitivity(cfg) / cfg.temperature) ** 2

    def solve(self, cfg: DecodingConfig, rho: float) -> float:
        return 2 * cfg.partitions * cfg.temperature * math.sqrt(2 * rho) / row_change_factor(cfg)

    def crafted_row(self, cfg: DecodingConfig, public) -> tuple[float, ...]:
        z = np.asarray(public, dtype=float)
        return tuple((z + np.r_[10 * cfg.clip, -10 * cfg.clip, np.zeros(len(z) - 2)]).tolist())

    def audit_neighbours(self, cfg: DecodingConfig, low_prob: float = 0.1) -> Neighbours:
        # scores are halved, so the public row carries twice the log-odds of em's neighbours
        public = (0.0, 2 * cfg.temperature * math.log((1 - low_prob) / low_prob))
        return Neighbours(public, (), self.crafted_row(cfg, public))

    def claimed_bound(self, cfg: DecodingConfig) -> float:
        return 2 * self.sensitivity(cfg) / cfg.temperature


TOY = HalfEm()


@pytest.fixture
def toy():
    registry.register(TOY)
    try:
        yield TOY
    finally:
        if "toy" in registry.names():
            registry.unregister("toy")


def _toy_cfg(**kw) -> DecodingConfig:
    return DecodingConfig(mechanism="toy", **{"partitions": 4, "clip": 2.0, "top_k": 8, **kw})


# ---------------------------------------------------------------------------------------------
# The registry itself


def test_builtins_in_order_with_their_properties():
    assert registry.names() == registry.BUILTIN == ("em", "amin", "gaussian") == tuple(MECHANISMS)
    em, amin, gaussian = registry.mechanisms()
    assert (em.calibration.parameter, em.calibration.more_private) == ("clip", "smaller") == (amin.calibration.parameter, amin.calibration.more_private)
    assert (gaussian.calibration.parameter, gaussian.calibration.more_private) == ("noise_multiplier", "larger")
    assert [m.audit_claim for m in (em, amin, gaussian)] == ["pure", "pure", "gaussian-dp"]
    assert len({m.style.colour for m in registry.mechanisms()}) == 3  # one colour each, in every plot


def test_register_checks_the_mechanism_and_its_name(toy):
    with pytest.raises(ValueError, match="already registered"):
        registry.register(HalfEm())
    registry.register(TOY)  # the same object again: a no-op
    with pytest.raises(ValueError, match="built in"):
        registry.register(type("Em2", (HalfEm,), {"name": "em"})())
    for bad in ("none", "raw", "Toy", "two words", "x" * 33, ""):
        with pytest.raises(ValueError, match="^mechanism must be named"):
            registry.register(type("Bad", (HalfEm,), {"name": bad})())
    with pytest.raises(ValueError, match="Calibration"):
        registry.register(type("Bad", (HalfEm,), {"name": "bad", "calibration": Calibration("temperature", "smaller", "t")})())
    with pytest.raises(ValueError, match="Mechanism instance"):
        registry.register("toy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="built in"):
        registry.unregister("gaussian")


def test_unregister_removes_it_everywhere(toy):
    assert "toy" in MECHANISMS  # imported before the registration: a live view
    registry.unregister("toy")
    assert "toy" not in MECHANISMS and registry.names() == registry.BUILTIN
    with pytest.raises(ValueError, match="^mechanism must be one of em, amin, gaussian, got 'toy'"):
        DecodingConfig(mechanism="toy")


# ---------------------------------------------------------------------------------------------
# Reachable from every entry point


def test_config_costs_and_calibration(toy):
    cfg = _toy_cfg()
    assert "toy" in MECHANISMS and DecodingConfig(mechanism="toy").mechanism == "toy"
    assert sensitivity(cfg) == pytest.approx(2.0 / 8)
    assert rho_selection(cfg) == rho_per_token(cfg) == pytest.approx(0.5 * (2.0 / 8) ** 2)
    (event,) = generation_events(cfg, 10)
    assert (event.kind, event.count, event.note) == ("zcdp", 10, "toy selection, 10 private tokens")
    solved = calibrate(cfg, 3.0, 1e-6, 64)
    em = calibrate(cfg.replace(mechanism="em"), 3.0, 1e-6, 64)
    assert solved.clip == pytest.approx(2 * em.clip, rel=1e-6)  # half the scale, twice the clip
    assert rho_selection(solved) == pytest.approx(rho_selection(em), rel=1e-6)


def test_privtext_plan(toy, capsys):
    from service.cli import main

    args = ["plan", "--units", "5000", "--records", "200", "--max-tokens", "64", "--epsilon", "3", "--delta", "1e-6"]
    assert main([*args, "--mechanism", "toy"]) == 0
    table = capsys.readouterr().out
    assert "mechanism                  toy" in table
    assert "epsilon (accountant)       3.0000 at delta 1e-06" in table
    assert "top-k (public candidates)  64\n" in table and "sensitivity                0.07605 (per coordinate)" in table
    assert "  - toy selection, 64 private tokens: zcdp(0.0028917) x 64" in table  # em's rho at twice em's clip
    assert "clip (C)                   1.217" in table
    expected = plan(units=5000, records=200, max_tokens=64, epsilon=3.0, delta=1e-6, config=DecodingConfig(mechanism="toy"))
    assert expected.config.clip == pytest.approx(1.2168, abs=1e-4)


def test_job_request(toy):
    from service.jobs.request import JobRequest

    req = JobRequest(records=2, max_tokens=8, epsilon=1.0, mechanism="toy", clip=0.5)
    assert req.decoding_config().mechanism == "toy" and req.fixed_config
    assert not JobRequest(records=2, max_tokens=8, epsilon=1.0, mechanism="toy", noise_multiplier=3.0).fixed_config
    with pytest.raises(ValueError, match="mechanism must be one of em, amin, gaussian, toy, got 'nope'"):
        JobRequest(records=2, max_tokens=8, epsilon=1.0, mechanism="nope")


def test_select_tokens_samples_the_documented_distribution(toy):
    """Same seed, same tokens; candidates from the public row only; per-group streams; and the
    empirical distribution is softmax(avg / (2 tau)) of em's clipped average (chi-square)."""
    from service.audit.tokens import fits, softmax

    v, n = 6, 30_000
    public = np.array([1.0, 0.5, 0.0, -0.5, -1.0, -3.0])
    rows = np.array([[3.0, -2.0, 0.0, 0.0, 1.0, 9.0], [0.0, 1.0, 2.0, -1.0, 0.0, 0.0]])
    cfg = _toy_cfg(top_k=5, top_k_plus=False, temperature=0.5)  # the public top-5: token 5 never emitted
    tokens = select_tokens(np.tile(rows, (n, 1)), [2] * n, np.tile(public, (n, 1)), cfg, np.random.default_rng(3))
    avg = public + np.clip(rows - public, -cfg.clip, cfg.clip).sum(axis=0) / cfg.partitions
    p = np.r_[softmax(0.5 * avg[:5] / cfg.temperature), 0.0]
    assert fits(np.bincount(tokens, minlength=v), p, n) > 1e-3
    again = select_tokens(np.tile(rows, (n, 1)), [2] * n, np.tile(public, (n, 1)), cfg, np.random.default_rng(3))
    assert (tokens == again).all()

    r = JobRandomness.replay(b"privtext test secret", 5)
    batched = select_tokens(np.vstack([rows, rows[:1]]), [2, 1], np.vstack([public, public * 0.1]), cfg, [r.group(0), r.group(1)])
    alone = select_tokens(rows, [2], public[None, :], cfg, [JobRandomness.replay(b"privtext test secret", 5).group(0)])
    assert batched[0] == alone[0]
    states = [GroupState()]
    poisoned = np.vstack([rows, np.full(v, np.nan)])  # a non-finite private row counts as absent
    assert select_tokens(poisoned, [3], public[None, :], cfg, np.random.default_rng(9), states)[0] == \
        select_tokens(rows, [2], public[None, :], cfg, np.random.default_rng(9))[0]
    assert states[0].private_tokens == 1


def test_empirical_bound(toy):
    """The per-token audit on the toy's own neighbours: within its claimed eps0 = C/(N tau), and
    the crafted inputs come close to it."""
    from service.audit.tokens import audit_token, claimed_epsilon

    cfg = _toy_cfg(partitions=2, clip=2.0, temperature=1.0, top_k=None)
    a = audit_token(cfg, draws=40_000, seed=7)
    assert a.mechanism == "toy" and a.claim == "pure"
    assert a.claimed_epsilon == claimed_epsilon(cfg, 0.0) == pytest.approx(1.0)
    assert a.passed and a.tightness >= 0.6, a.to_dict()
    broken = audit_token(cfg, draws=40_000, seed=7, claimed=a.claimed_epsilon / 2)  # power: a halved claim is caught
    assert not broken.passed


def test_cli_client_and_audit_choices(toy):
    from service.client import cli as client
    from service.cli import build_parser

    assert build_parser().parse_args(["plan", "--units", "10", "--records", "1", "--max-tokens", "1", "--epsilon", "1",
                                      "--delta", "1e-3", "--mechanism", "toy"]).mechanism == "toy"
    assert build_parser().parse_args(["audit", "--mechanism", "toy"]).mechanism == "toy"
    parser = argparse.ArgumentParser(prog="privtext")
    client.add_parser(parser.add_subparsers(dest="command", required=True))
    ns = parser.parse_args(["client", "generate", "--dataset", "d", "--max-tokens", "8", "--records", "1", "--epsilon", "1",
                            "--mechanism", "toy"])
    assert ns.mechanism == "toy"
    # A mechanism registered after the proto's Mechanism enum travels by name (mechanism_name),
    # and the server's conversion accepts it: reachable over gRPC with no proto change.
    pytest.importorskip("grpc")
    from service.api.convert import job_request
    from service.api.settings import ServerSettings

    req = client.build_generate_request(ns)
    assert req.mechanism_name == "toy"
    _, job = job_request(req, ServerSettings(port=0, data_dir=Path("/nonexistent/data"), config_dir=Path("/nonexistent/config")))
    assert job.mechanism == "toy" and job.decoding_config().mechanism == "toy"


def test_grpc_conversion_maps_the_enum_by_registry_name(toy):
    pytest.importorskip("grpc")
    from service.api.convert import mechanism_name
    from service.api.gen.privtext.v1 import generation_pb2 as pb

    assert mechanism_name(pb.MECHANISM_UNSPECIFIED) == "em"
    for value in pb.Mechanism.values():
        if value != pb.MECHANISM_UNSPECIFIED:
            assert mechanism_name(value) == pb.Mechanism.Name(value).removeprefix("MECHANISM_").lower() in registry.names()
    assert mechanism_name(99) is None
    assert "MECHANISM_TOY" not in pb.Mechanism.keys()  # it travels as mechanism_name instead


def test_eval_grid_audit_and_plot_styles(toy):
    from service.bench.plots import mechanism_color
    from service.eval.report import colour, styles
    from service.eval.runner import EvalSettings

    s = EvalSettings()
    assert s.mechanisms == ("em", "amin", "gaussian", "toy", "pe")  # every registered mechanism, then Private Evolution
    assert (3.0, "toy") in s.cells()
    assert EvalSettings(mechanisms=("toy",)).mechanisms == ("toy",)
    assert ("toy", "D-") in styles() and colour("toy") == "#8c564b" == mechanism_color("toy")
    assert colour("none") == "black" and mechanism_color("em+gate") == "#9467bd" and mechanism_color("raw", "grey") == "grey"


def test_gone_after_the_fixture():
    assert "toy" not in registry.names()
    from service.eval.runner import EvalSettings

    assert EvalSettings().mechanisms == ("em", "amin", "gaussian", "pe")
