"""The mechanism registry: everything about one private token-selection mechanism, in one object.

A mechanism is one module plus one registry line. The module (mechanisms/em.py, amin.py,
gaussian.py) subclasses `Mechanism` and exposes the instance as `MECHANISM`; the one line is
its name in `BUILTIN` below. Everything else (select_tokens, the costs, calibration, the plan,
JobRequest's validation, the CLI's choices, the eval grid, the audit, the plot styles) reads
names and properties from here and never branches on a mechanism's name. A mechanism defined
elsewhere (a test, an experiment) is added with `register(instance)` and removed with
`unregister(name)`; docs/adding-a-mechanism.md says what to write and which tests to add.

Modelled on opacus's accountant registry (consumers look a name up in one table instead of
branching on it) and dp-accounting's immutable events: a mechanism is a stateless object of
pure functions of the public config, and what it tells the accountant is an event description,
never a running total.

Pure: the standard library and numpy only, and nothing of this package at import time (the
mechanism modules import this one; the built-ins are imported on first use).
"""

from __future__ import annotations

import importlib
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from .config import DecodingConfig
    from .ops import Coins

# The built-in mechanisms, in their order everywhere (CLI choices, eval grid, audit, plots):
# mechanisms/<name>.py, whose MECHANISM is registered on first use. A new one adds its name here.
BUILTIN: tuple[str, ...] = ("em", "amin", "gaussian")

RESERVED = frozenset({"none", "raw"})  # eval's no-privacy cell and bench's raw decoding use these labels
_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")  # a CLI choice, a JSON key and MECHANISM_<NAME> in the API's enum


# ---------------------------------------------------------------------------------------------
# What a mechanism declares


@dataclass(frozen=True)
class Calibration:
    """Which DecodingConfig parameter `calibrate` solves from epsilon, and its direction.

    parameter: "clip" or "noise_multiplier" (the fields JobRequest and the CLI can also fix).
    more_private: "smaller" when lowering the parameter lowers the cost (a clip), "larger" when
        raising it does (a noise multiplier); the accountant's final check nudges it that way.
    label: the plan table's row for it, e.g. "clip (C)".
    """

    parameter: Literal["clip", "noise_multiplier"]
    more_private: Literal["smaller", "larger"]
    label: str


@dataclass(frozen=True)
class PlotStyle:
    """How every plot draws the mechanism: a matplotlib colour and marker."""

    colour: str
    marker: str


@dataclass(frozen=True)
class Neighbours:
    """Crafted neighbouring inputs of ONE selection step for the empirical audit.

    D = background + the crafted row, D' = background (add/remove one unit = one row in the
    default layout), both decoded against the public row `public`. Chosen near the mechanism's
    worst case, so the estimated loss comes close to the claim (the audit reports how close)."""

    public: tuple[float, ...]
    background: tuple[tuple[float, ...], ...]
    crafted: tuple[float, ...]

    @property
    def d_rows(self) -> np.ndarray:
        v = len(self.public)
        return np.vstack([np.asarray(self.background, dtype=np.float64).reshape(-1, v), np.asarray(self.crafted, dtype=np.float64)[None, :]])

    @property
    def dp_rows(self) -> np.ndarray:
        return np.asarray(self.background, dtype=np.float64).reshape(-1, len(self.public))


@dataclass(frozen=True)
class Batch:
    """One decoding step of G groups, as `select_tokens` hands it to a mechanism.

    private_logits: (R, V) the private rows (non-finite rows already removed: absent), the rows
        of group g contiguous; sizes: (G,) rows per group; row_group: (R,) each row's group.
    ids, valid: (G, S) each group's public candidate set (the mechanism's `candidates`).
    zp: (G, S) float64, the public row's logits at the candidates; zs: (R, S) float64, each
        private row's logits at its group's candidates; valid_rows: valid[row_group].
    """

    private_logits: np.ndarray
    sizes: np.ndarray
    row_group: np.ndarray
    ids: np.ndarray
    valid: np.ndarray
    zp: np.ndarray
    zs: np.ndarray
    valid_rows: np.ndarray


class Mechanism(ABC):
    """One private token-selection mechanism. Subclass it, set the class attributes, implement
    the abstract methods; the instance must be stateless (one instance serves every job).

    Adjacency everywhere: add or remove one privacy unit. Default layout: that adds or removes
    one row; few-shot layout (cfg.units_per_row > 1): it can change one row
    (mechanisms.costs.row_change_factor gives the factor 1 or 2 to apply to the sensitivity).
    """

    name: str  # a CLI choice and a JSON value: lowercase letters, digits, underscores
    summary: str  # one line: what it does and where it comes from
    calibration: Calibration
    sensitivity_norm: str  # how the plan names the sensitivity: "per coordinate", "L2"
    style: PlotStyle
    audit_claim: Literal["pure", "gaussian-dp"]  # which per-token claim the empirical audit tests

    # -- candidates: public logits only ------------------------------------------------------

    def candidates(self, public_logits: np.ndarray, cfg: DecodingConfig) -> tuple[np.ndarray, np.ndarray]:
        """(ids (G, S), valid (G, S)): the token ids each group may emit, padded, computed from
        the public rows alone. Default: the public top-k (whole vocabulary when top_k is None)."""
        from .ops import public_top_k

        return public_top_k(public_logits, cfg.top_k)

    def candidates_note(self, cfg: DecodingConfig) -> str:
        """What the plan appends to "top-k (public candidates)" after k ("" by default)."""
        return ""

    # -- selection ---------------------------------------------------------------------------

    @abstractmethod
    def choose(self, batch: Batch, cfg: DecodingConfig, rng: Coins) -> np.ndarray:
        """(G,) the chosen candidate column of every group (an index into batch.ids' columns).

        All randomness through mechanisms.ops (sample, noise): with one generator per group,
        each group must draw from its own stream only."""

    # -- costs: the derivations live in each implementation's docstrings ----------------------

    @abstractmethod
    def sensitivity(self, cfg: DecodingConfig) -> float:
        """Sensitivity of the quantity the mechanism privatises, under add/remove one unit."""

    @abstractmethod
    def rho_selection(self, cfg: DecodingConfig) -> float:
        """zCDP of selecting one private token."""

    def selection_event(self, cfg: DecodingConfig, rho: float) -> tuple[str, float, str]:
        """(kind, parameter, what) of the accountant's event for one private token: the ledger
        charges PrivacyEvent(kind, parameter, n, f"{what}, {n} private tokens"). rho: this
        selection's zCDP as the accountant computes it. Default: a zCDP event of rho."""
        return "zcdp", rho, f"{self.name} selection"

    # -- calibration --------------------------------------------------------------------------

    @abstractmethod
    def solve(self, cfg: DecodingConfig, rho: float) -> float:
        """The value of `calibration.parameter` at which rho_selection(cfg) == rho."""

    # -- empirical audit ----------------------------------------------------------------------

    @abstractmethod
    def crafted_row(self, cfg: DecodingConfig, public: Sequence[float]) -> tuple[float, ...]:
        """The one unit's row that moves the output most against this public row."""

    @abstractmethod
    def audit_neighbours(self, cfg: DecodingConfig, low_prob: float = 0.1) -> Neighbours:
        """Near-worst-case neighbouring inputs of one step (default layout, no gate, top_k None).
        low_prob: for a pure claim, the probability of the favoured token under D'."""

    @abstractmethod
    def claimed_bound(self, cfg: DecodingConfig) -> float:
        """The per-token figure the audit tests: eps0 for a "pure" claim, mu for "gaussian-dp"."""

    def __repr__(self) -> str:
        return f"<mechanism {self.name}>"


# ---------------------------------------------------------------------------------------------
# The table


_TABLE: dict[str, Mechanism] = {}  # replaced, never mutated, once loaded: readers need no lock
_LOCK = threading.RLock()
_loaded = False


def _check(m: object) -> Mechanism:
    def bad(what: str) -> ValueError:
        return ValueError(f"mechanism must be {what}, got {m!r}")

    if not isinstance(m, Mechanism):
        raise bad("a mechanisms.registry.Mechanism instance")
    name = getattr(m, "name", None)
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in RESERVED:
        raise bad(f"named by 1-32 lowercase letters, digits or underscores (not {', '.join(sorted(RESERVED))})")
    cal = getattr(m, "calibration", None)
    if not isinstance(cal, Calibration) or cal.parameter not in ("clip", "noise_multiplier") or cal.more_private not in ("smaller", "larger"):
        raise bad("given a Calibration of clip or noise_multiplier, smaller or larger")
    if not isinstance(getattr(m, "style", None), PlotStyle):
        raise bad("given a PlotStyle")
    if getattr(m, "audit_claim", None) not in ("pure", "gaussian-dp"):
        raise bad("given an audit_claim of pure or gaussian-dp")
    if not isinstance(getattr(m, "summary", None), str) or not isinstance(getattr(m, "sensitivity_norm", None), str):
        raise bad("given a summary and a sensitivity_norm")
    return m


def _table() -> dict[str, Mechanism]:
    global _TABLE, _loaded
    if not _loaded:
        with _LOCK:
            if not _loaded:
                table = {}
                for name in BUILTIN:
                    m = _check(importlib.import_module(f"{__package__}.{name}").MECHANISM)
                    if m.name != name:
                        raise ValueError(f"mechanisms/{name}.py's MECHANISM must be named {name!r}, got {m.name!r}")
                    table[name] = m
                _TABLE, _loaded = table, True
    return _TABLE


def register(mechanism: Mechanism, *, replace: bool = False) -> Mechanism:
    """Add a mechanism (after the built-ins); returns it. ValueError for an invalid one, or a
    name already taken (unless replace=True; a built-in is never replaced)."""
    global _TABLE
    m = _check(mechanism)
    with _LOCK:
        table = _table()
        if m.name in BUILTIN and table[m.name] is not m:
            raise ValueError(f"mechanism {m.name!r} is built in and cannot be replaced")
        if m.name in table and not replace and table[m.name] is not m:
            raise ValueError(f"mechanism {m.name!r} is already registered (register(..., replace=True) to replace it)")
        _TABLE = {**table, m.name: m}
    return m


def unregister(name: str) -> None:
    """Remove a registered mechanism (KeyError if absent; a built-in cannot be removed)."""
    global _TABLE
    with _LOCK:
        if name in BUILTIN:
            raise ValueError(f"mechanism {name!r} is built in and cannot be unregistered")
        table = dict(_table())
        del table[name]
        _TABLE = table


def get(name: str) -> Mechanism:
    """The mechanism registered as `name`; ValueError naming the registered ones otherwise."""
    table = _table()
    m = table.get(name) if isinstance(name, str) else None
    if m is None:
        raise ValueError(f"mechanism must be one of {', '.join(table)}, got {name!r}")
    return m


def names() -> tuple[str, ...]:
    """The registered names, built-ins first, then in registration order."""
    return tuple(_table())


def mechanisms() -> tuple[Mechanism, ...]:
    """The registered mechanisms, in the order of `names()`."""
    return tuple(_table().values())


class Names(Sequence[str]):
    """The registered names as a live, read-only sequence: it reads the registry at every use,
    so a mechanism registered after an import of it is in it (mechanisms.MECHANISMS)."""

    def __getitem__(self, i):  # type: ignore[override]
        return names()[i]

    def __len__(self) -> int:
        return len(_table())

    def __iter__(self) -> Iterator[str]:
        return iter(names())

    def __contains__(self, name: object) -> bool:
        return name in names()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (Names, tuple, list)):
            return names() == tuple(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(names())


NAMES = Names()
