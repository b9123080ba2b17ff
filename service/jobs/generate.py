"""The decode loop every job shares (decode_records), and the pieces of a run around it: the
public split of records over labels, a local run's randomness (fresh, or a seeded replay), the
corpus digest. The pipeline that calls them is service/jobs/dataset_job.py, for the server and
for `privtext generate` alike (service/jobs/local_run.py).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import secrets
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from mechanisms import JobRandomness, Plan

from ..engine.interface import Engine, GroupRequest, GroupResult
from ..generation.corpus import Corpus
from ..generation.layout import group_requests, strata_of
from ..generation.prompts import Template
from ..generation.selector import MechanismSelector
from .records import OutRecord, RecordFilter
from .request import GenerateSpec, JobRequest


SEEDED_NOTE = (
    "reproducible on this machine only: the noise comes from the seed, this machine's local secret and the whole "
    "request (corpus digest included); the same seed on any other request or corpus draws independent noise"
)


def split_records(total: int, weights: dict[str, int]) -> dict[str, int]:
    """Largest-remainder split of `total` in proportion to (DP, hence public) weights."""
    labels = sorted(weights)
    w = np.array([max(weights[l], 0) for l in labels], dtype=float)
    w = np.ones_like(w) if w.sum() == 0 else w
    exact = total * w / w.sum()
    out = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - out), kind="stable")[: total - out.sum()]:
        out[i] += 1
    return {l: int(n) for l, n in zip(labels, out)}


def local_secret(config_dir: Path | None = None) -> bytes:
    """This machine's secret for seeded runs: derived from the user's data key (created on first
    use in PRIVTEXT_CONFIG_DIR, default ~/.config/privtext, mode 0600), never from the seed alone."""
    from ..store.crypto import load_or_create_key

    where = config_dir or Path(os.environ.get("PRIVTEXT_CONFIG_DIR") or Path.home() / ".config" / "privtext")
    key, _created = load_or_create_key(where)
    return hmac.new(key, b"privtext local seeded runs", hashlib.sha256).digest()


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run_randomness(spec: GenerateSpec, digest: str) -> JobRandomness:
    """A run's randomness. Unseeded: a fresh nonce under a fresh secret. Seeded: a nonce from
    (local secret, seed, the whole request, the corpus's digest): reproducible on this machine
    for exactly this release, independent for any other request or corpus, and unpredictable
    from the seed alone (seeds such as 0, 1, 2 appear throughout the docs)."""
    if spec.seed is None:
        return JobRandomness.fresh(secrets.token_bytes(32))
    pe_only = set() if spec.method == "pe" else {"method", "iterations", "pe_threshold", "pe_population"}
    release = spec.model_dump_json(exclude={"input", "out", "report", "seed"} | pe_only)  # decode runs replay as before PE
    return JobRandomness.replay(local_secret(), spec.seed, release, digest)


def label_units(corpus: Corpus, labels: list[str]) -> dict[str, int]:
    """Exact units per requested label (private: only ever the input of a DP histogram)."""
    true = Counter(recs[0].label for recs in corpus.units().values() if recs[0].label in labels)
    return {lab: true.get(lab, 0) for lab in labels}


def strata_from(request: JobRequest, released: dict[str, int]) -> dict[str, tuple[int, int]]:
    """label -> (public unit count, records wanted), from a released (DP) label histogram."""
    labels = sorted(released)
    records = request.label_counts or split_records(request.records, released)
    return {lab: (max(released[lab], 1), records[lab]) for lab in labels}


Decode = Callable[[Iterator[GroupRequest], MechanismSelector], Iterator[GroupResult]]


def decode_records(
    request: JobRequest,
    corpus: Corpus,
    p: Plan,
    secret: bytes,
    template: Template,
    engine: Engine,
    run: Decode,
    selector: MechanismSelector,
    records: RecordFilter,
    skip: frozenset[int] = frozenset(),
    on_start: Callable[[int], None] | None = None,
    cache_salt: str | None = None,
) -> Iterator[OutRecord]:
    """The decode loop every job shares: the plan's groups, round by round, each decoded by
    `run` (the engine directly, or the server's shared scheduler) and filtered into a record.

    skip: groups not to decode (a resumed job's already started ones). on_start(group id) runs
    before a group reaches the engine (a server job claims it durably there) and returns whether
    this run claimed it: a group claimed already is skipped. cache_salt: the
    tenant's and dataset's key for the engine's prefix cache."""
    labels_of: dict[int, str | None] = {}

    def requests() -> Iterator[GroupRequest]:
        strata = strata_of(corpus, p, request.wanted_labels())
        for req, label in group_requests(strata, p, secret, template, engine, request.max_records_per_unit, request.stop,
                                         request.max_row_tokens, cache_salt):
            if req.group_id in skip:
                continue
            if on_start is not None and not on_start(req.group_id):
                continue  # claimed already (by an earlier run of this job): never decoded twice
            labels_of[req.group_id] = label
            yield req

    for result in run(requests(), selector):
        yield records(result, labels_of.pop(result.group_id, None))


def jsonable(o):
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def progress_bar(total: int, show: bool):
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="rec", desc="generating", dynamic_ncols=True)
