"""Generation from a stored dataset: count (once) -> plan -> reserve -> decode -> records.

The server's path through the same layers `privtext generate` uses. The order is the privacy
argument:
1. A DP count (or label histogram) is drawn, then charged and stored in one transaction;
   only the stored value is ever used (a draw that lost a race or could not be paid for is
   discarded unseen). Later requests reuse it for free.
2. The plan is made from that public count and the request's public settings; its worst case
   is reserved on the dataset's ledger (checked against the cap in the same transaction).
3. Only then does any group reach the engine. A cancelled or failed request keeps its
   reservation: its groups were decoded on private data.
A job resumed after a restart re-derives the same plan from the stored count, checks it
against its reservation, and skips every group it had started (each group is decoded at most
once, so nothing is spent twice).

Private Evolution (method "pe") takes the same path: the same released count, a plan of T
Gaussian histograms (mechanisms.pe) reserved in one ledger entry before any candidate is
written or any vote computed, then the loop of service/jobs/pe_job.py on the shared scheduler,
and the same PII filter and persistence. Its histograms live only in the memory of the run that
released them, so a PE job resumes only if it had not started (nothing released yet) or had
stored all its records; otherwise it fails with a message, never releasing its histograms again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from mechanisms import BudgetExceeded, JobRandomness, Ledger, Plan, count_event, dp_count, dp_histogram, plan
from mechanisms.accounting import epsilon_of
from mechanisms.pe import PeBudgetExceeded, PePlan, plan_pe

from ..engine.interface import Engine, GroupRequest, GroupResult
from ..generation.corpus import Corpus
from ..generation.embed import embed
from ..generation.pe import PeOutcome
from ..generation.prompts import Template
from ..generation.selector import MechanismSelector
from ..store.interface import UNFINISHED_JOB_STATES, Conflict, DatasetInfo, JobInfo, NotFound, Store, describe_internal
from .generate import decode_records, label_units, strata_from
from .capacity import check_capacity
from .corpora import CORPORA
from .errors import JobFailed
from .pe_job import check_engine, check_request, per_label_records, plan_request, run_evolution
from .records import OutRecord, RecordFilter
from .request import JobRequest
from .scheduler import EngineScheduler, Ticket

log = logging.getLogger(__name__)
Embed = Callable[[Sequence[str]], np.ndarray]
# A PE job has no groups of its own to mark: these two marks in its started groups say, durably,
# that its evolution began (its histograms are being released) and that all its records are stored.
PE_STARTED, PE_STORED = 0, 1
_EMBED_LOCK = threading.Lock()


def shared_embed(texts: Sequence[str]) -> np.ndarray:
    """MiniLM (generation.embed) for every request of the server, one call at a time: its fast
    tokenizer is not safe to call from several threads at once (concurrent padding/truncation
    settings can fail with "Already borrowed")."""
    with _EMBED_LOCK:
        return embed(texts)


PE_NOT_RESUMABLE = (
    "a Private Evolution job cannot resume after an interruption: its histograms were released in the memory of the run "
    "that stopped, and running them again would release new ones its reservation did not pay for. Its reservation stays "
    "charged; records it stored before the interruption are kept. Submit a new job to generate again"
)


@dataclass(frozen=True)
class Prepared:
    """A request whose cost is reserved: everything the decode loop needs."""

    tenant: str
    dataset: DatasetInfo
    request: JobRequest
    plan: Plan | PePlan  # PePlan for method "pe"
    corpus: Corpus
    secret: bytes  # the dataset's partition secret
    ledger_id: int
    randomness: JobRandomness  # this request's own nonce; never shared with another release
    cache_salt: str  # the engine's prefix cache is shared only within one tenant's dataset
    per_label: dict[str | None, int] | None = None  # pe: records wanted per label (public)

    @property
    def labels(self) -> list[str] | None:
        return self.request.wanted_labels()


def count_kind(info: DatasetInfo, labels: list[str] | None) -> str | None:
    """The released count a request's plan needs: the label histogram of its labels, else the
    unit count; None when the uploader declared the unit count public."""
    if labels is not None:
        return "label histogram " + json.dumps(labels)
    return None if info.declared_public_units is not None else "unit count"


def _released(store: Store, tenant: str, info: DatasetInfo, labels: list[str] | None, corpus: Corpus,
              count_noise: float | None, rng: np.random.Generator | None):
    """The stored value of the count `labels` need (count_kind). One not yet released is drawn,
    charged and stored with count_noise and rng; without them (a resumed job) it must exist."""
    kind = count_kind(info, labels)
    got = store.released_count(tenant, info.id, kind)
    if got is None:
        if rng is None:
            raise RuntimeError(f"the {kind} this job was planned with is missing from the store")
        if labels is not None:
            value = dp_histogram(label_units(corpus, labels), count_noise, rng)
            what = "label histogram"
        else:
            value = dp_count(len(corpus.units()), count_noise, rng)
            what = "unit count"
        got = store.save_released_count(tenant, info.id, kind, value, [count_event(count_noise, what)])
    return got.value


def public_units(store: Store, tenant: str, info: DatasetInfo, corpus: Corpus, count_noise: float | None,
                 rng: np.random.Generator | None) -> tuple[int, str]:
    """(units, units source) without labels: the declared count, or the DP unit count
    (released once per dataset, charged when drawn)."""
    if count_kind(info, None) is None:
        return max(info.declared_public_units, 1), "declared-public"
    return max(int(_released(store, tenant, info, None, corpus, count_noise, rng)), 1), "dp-count"


def _counts(store: Store, tenant: str, info: DatasetInfo, request: JobRequest, corpus: Corpus, count_noise: float | None,
            rng: np.random.Generator | None) -> tuple[int, str, dict | None]:
    """(units, units source, strata) from public counts. With count_noise and rng, a count not
    yet released is drawn, charged and stored; without them (a resumed job) it must exist."""
    labels = request.wanted_labels()
    if labels is None:
        return (*public_units(store, tenant, info, corpus, count_noise, rng), None)
    value = _released(store, tenant, info, labels, corpus, count_noise, rng)
    strata = strata_from(request, {lab: int(v) for lab, v in value.items()})
    return sum(n for n, _ in strata.values()), "dp-count", strata


def pe_within_cap(store: Store, tenant: str, info: DatasetInfo, p: PePlan, count_noise: float | None = None,
                  count_what: str = "unit count") -> PePlan:
    """p checked against the dataset's ledger, with the DP count's event beside it when the
    count is still to be released (count_noise): over the cap raises BudgetExceeded
    (RESOURCE_EXHAUSTED, with what fits) before anything is drawn, computed or reserved. A PE
    plan's sigma does not depend on the unit count, so it can be checked before the count."""
    ledger = store.composed_ledger(tenant, info.id)
    try:
        return plan_pe(units=p.units, records=p.records, iterations=p.iterations, threshold=p.threshold, delta=p.delta,
                       sigma=p.sigma, units_source="dp-count" if count_noise is not None else p.units_source,
                       count_noise=count_noise, count_what=count_what, ledger=ledger)
    except PeBudgetExceeded as e:  # the same refusal as a decoding plan's (errors.py reads its ledger and fits)
        raise BudgetExceeded(e.plan, ledger, e.fits) from None


def unreleased(store: Store, tenant: str, info: DatasetInfo, labels: list[str] | None, count_noise: float) -> tuple[float | None, str]:
    """(count_noise, what) of the DP count a request would release first, or (None, what) when
    it is released already or declared public: the count's cost to check before drawing it."""
    kind = count_kind(info, labels)
    what = "label histogram" if labels is not None else "unit count"
    if kind is None or store.released_count(tenant, info.id, kind) is not None:
        return None, what
    return count_noise, what


def _corpus(store: Store, tenant: str, info: DatasetInfo) -> Corpus:
    return CORPORA.get(store, tenant, info)


def _plan(store: Store, tenant: str, info: DatasetInfo, request: JobRequest, units: int, source: str, strata, check: bool) -> Plan:
    """The plan, checked (check=True) against the ledger's composed cost: one row, whatever
    the ledger's length, so a long ledger never slows a request."""
    inputs = dict(units=units, records=request.records, max_tokens=request.max_tokens, delta=info.delta,
                  config=request.decoding_config(), units_source=source, strata=strata)
    if request.fixed_config:  # a fixed clip/noise is costed, then refused if over the request's epsilon
        plan(**inputs, epsilon=None, ledger=Ledger(request.epsilon, info.delta))
    return plan(**inputs, epsilon=None if request.fixed_config else request.epsilon,
                ledger=store.composed_ledger(tenant, info.id) if check else None)


SEED_REFUSED = (
    "seed: the server does not accept a seed; every request draws fresh randomness, because two releases "
    "that share noise are not covered by the ledger's accounting (leave seed unset)"
)


def failure_message(e: BaseException) -> str:
    """What a failed job says: a bad request's own message, a store failure's cause (database
    messages name files and constraints, never records), else a generic line (an engine's
    message may name a group's shape, which depends on private data)."""
    if isinstance(e, (ValueError, NotFound, JobFailed)):
        return str(e)
    told = describe_internal(e)
    if told != type(e).__name__:
        return f"the store failed while running this job ({told}); records already stored are kept"
    return "generation failed on the server; the server log has the error type"


def reserved(store: Store, job: JobInfo) -> tuple[int, float]:
    """(records requested, epsilon reserved) of a job, from its one ledger entry."""
    records = JobRequest.model_validate_json(job.request_json).records
    if job.ledger_id is None:
        return records, 0.0
    row = store.ledger_row(job.tenant, job.dataset_id, job.ledger_id)
    return records, epsilon_of(row.events, store.get_dataset(job.tenant, job.dataset_id).delta)


def cache_salt(server_secret: bytes, tenant: str, dataset_id: str) -> str:
    """A keyed hash of (tenant, dataset): vLLM reuses cached prefixes only between requests with
    the same salt, so no tenant can time a prefill to learn what another's prompts hold."""
    return hmac.new(server_secret, json.dumps(["cache salt", tenant, dataset_id]).encode(), hashlib.sha256).hexdigest()[:32]


def fresh_randomness(server_secret: bytes) -> JobRandomness:
    """A release's own randomness: a fresh 128-bit nonce under the server's secret, never
    chosen by a client, never shared with another release (every request, job and selection)."""
    return JobRandomness.fresh(server_secret)


def prepare(store: Store, tenant: str, dataset_id: str, request: JobRequest, label: str, count_noise: float,
            server_secret: bytes, engine: Engine, batch_rows: int, embed_fn: Embed = shared_embed,
            randomness: JobRandomness | None = None) -> Prepared:
    """Count (once per dataset), plan, check the plan against the engine, reserve. Raises
    NotFound, ValueError (bad request, a seed, a plan that cannot fit the engine),
    mechanisms.CalibrationError, BudgetExceeded / BudgetExhausted (over the cap).
    method "pe": the plan (T histograms) is checked against the cap, with the DP count's cost
    if it is still to be released, before the count is drawn; embed_fn must load (MiniLM).

    Every request gets a fresh nonce under the server's secret (mechanisms.randomness): a
    client can neither choose nor repeat the noise of a release. Only `privtext generate` passes
    `randomness` (a seeded local replay, generate.run_randomness); a request's seed is refused
    without it."""
    if request.seed is not None and randomness is None:
        raise ValueError(SEED_REFUSED)
    info = store.get_dataset(tenant, dataset_id)
    if request.wanted_labels() is not None and not info.label_field:
        raise ValueError(f"labels: dataset {info.id} has no label field, so it cannot generate per label")
    template = Template.load(request.template, request.max_record_chars)
    pe = request.method == "pe"
    if pe:  # everything that can refuse a PE request, before the count is drawn
        check_request(request)
        check_engine(engine, template, request.wanted_labels() or [None], request.max_tokens, batch_rows, embed_fn)
        noise, what = unreleased(store, tenant, info, request.wanted_labels(), count_noise)
        pe_within_cap(store, tenant, info, plan_request(request, 1, "declared-public", info.delta), noise, what)
    randomness = randomness or fresh_randomness(server_secret)
    corpus = _corpus(store, tenant, info)
    units, source, strata = _counts(store, tenant, info, request, corpus, count_noise, randomness.stream("counts"))
    per_label = None
    if pe:
        per_label = per_label_records(request, strata)
        p = pe_within_cap(store, tenant, info, plan_request(request, units, source, info.delta))
    else:
        p = _plan(store, tenant, info, request, units, source, strata, check=True)
        check_capacity(engine, p, template, request.wanted_labels(), request.max_row_tokens, batch_rows)
    row = store.reserve(tenant, dataset_id, label, p.events)
    return Prepared(tenant, info, request, p, corpus, store.partition_secret(tenant, dataset_id), row.id, randomness,
                    cache_salt(server_secret, tenant, dataset_id), per_label)


def reprepare(store: Store, job: JobInfo, server_secret: bytes) -> Prepared:
    """A resumed job's Prepared, from its stored request, counts and nonce; never charges
    anything and refuses to go on unless the plan's events are exactly the ones its reservation
    paid for. Its groups draw from their own streams under the job's stored nonce; the started
    ones are skipped, so no stream is used twice."""
    request = JobRequest.model_validate_json(job.request_json)
    info = store.get_dataset(job.tenant, job.dataset_id)
    corpus = _corpus(store, job.tenant, info)
    units, source, strata = _counts(store, job.tenant, info, request, corpus, None, None)
    per_label = None
    if request.method == "pe":
        per_label = per_label_records(request, strata)
        p = plan_request(request, units, source, info.delta)
    else:
        p = _plan(store, job.tenant, info, request, units, source, strata, check=False)
    paid = store.ledger_row(job.tenant, job.dataset_id, job.ledger_id) if job.ledger_id is not None else None
    if paid is None or tuple(paid.events) != tuple(p.events):
        raise RuntimeError("the resumed plan differs from the reservation that paid for it")
    nonce = job.nonce
    # A job stored before nonces were: a fresh nonce (its started groups are skipped, so the
    # groups left have never drawn from any stream).
    randomness = JobRandomness(server_secret, nonce) if nonce else fresh_randomness(server_secret)
    return Prepared(job.tenant, info, request, p, corpus, store.partition_secret(job.tenant, job.dataset_id), job.ledger_id,
                    randomness, cache_salt(server_secret, job.tenant, job.dataset_id), per_label)


class Admission:
    """The decode function over the shared scheduler, remembering the ticket to cancel it."""

    def __init__(self, scheduler: EngineScheduler, name: str):
        self.scheduler, self.name = scheduler, name
        self.ticket: Ticket | None = None
        self._cancelled = threading.Event()

    def __call__(self, groups: Iterator[GroupRequest], selector: MechanismSelector) -> Iterator[GroupResult]:
        self.ticket = self.scheduler.open(groups, selector, self.name)
        if self._cancelled.is_set():
            self.ticket.cancel()
        return self.ticket.results()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        self._cancelled.set()
        if self.ticket is not None:
            self.ticket.cancel()


class DirectAdmission:
    """The decode function straight on an engine (a local run owns its engine: no scheduler)."""

    cancelled = False

    def __init__(self, engine: Engine, batch_rows: int):
        self.engine, self.batch_rows = engine, batch_rows

    def __call__(self, groups: Iterator[GroupRequest], selector: MechanismSelector) -> Iterator[GroupResult]:
        return self.engine.run(groups, selector, max_batch_rows=self.batch_rows)


class EvolutionCancelled(RuntimeError):
    """A PE run's admission was cancelled (the client, a shutdown, a lost lease): its loop stops."""


class ScheduledEngine:
    """The engine as PE's loop sees it on the server: every batch of candidates goes through the
    shared scheduler (fair admission beside every other request, cancellation); tokenization and
    limits are the engine's own. A cancelled admission ends the loop (EvolutionCancelled)
    instead of handing it a short population."""

    def __init__(self, engine: Engine, admission: Admission):
        self.engine, self.admission = engine, admission

    def __getattr__(self, name: str):
        return getattr(self.engine, name)

    def run(self, groups: Iterator[GroupRequest], selector, max_batch_rows: int | None = None) -> Iterator[GroupResult]:
        yield from self.admission(groups, selector)
        if self.admission.cancelled:
            raise EvolutionCancelled("the request was cancelled")


def evolve_records(prep: Prepared, engine: Engine, admission: Admission, records: RecordFilter,
                   on_start: Callable[[int], bool] | None = None, embed_fn: Embed = shared_embed,
                   on_outcome: Callable[[PeOutcome], None] | None = None,
                   say: Callable[[str], None] = lambda _m: None) -> Iterator[OutRecord]:
    """A prepared PE request's records: its evolution (pe_job.run_evolution) on the shared
    scheduler, then each record through the PII filter. on_start(PE_STARTED) claims the run
    durably before any private record is read; a job that had claimed it already fails
    (JobFailed) rather than release its histograms again."""
    if on_start is not None and not on_start(PE_STARTED):
        raise JobFailed(PE_NOT_RESUMABLE)
    template = Template.load(prep.request.template, prep.request.max_record_chars)
    outcome = run_evolution(prep.request, prep.corpus.units(), prep.plan, prep.per_label, template,
                            ScheduledEngine(engine, admission), prep.randomness, embed_fn, say=say)
    if on_outcome is not None:
        on_outcome(outcome)
    for result, label in outcome.records:
        yield records(result, label)


def mechanism_selector(prep: Prepared) -> MechanismSelector:
    """The private mechanism of a prepared decoding request, on the request's own randomness."""
    return MechanismSelector(prep.plan.config, prep.randomness)


def decode(prep: Prepared, engine: Engine, admission: Admission | DirectAdmission, records: RecordFilter,
           skip: frozenset[int] = frozenset(), on_start: Callable[[int], None] | None = None,
           selector: MechanismSelector | None = None, on_outcome: Callable[[PeOutcome], None] | None = None,
           say: Callable[[str], None] = lambda _m: None) -> Iterator[OutRecord]:
    """A prepared request's records, whichever its method (PE: evolve_records). `selector`
    replaces the private mechanism: only `privtext eval` passes one, for its epsilon = infinity
    ceiling (service/eval/baseline.py)."""
    if prep.request.method == "pe":
        if selector is not None:
            raise ValueError("selector replaces a private decoding mechanism; method 'pe' has none")
        return evolve_records(prep, engine, admission, records, on_start, on_outcome=on_outcome, say=say)
    selector = selector or mechanism_selector(prep)
    template = Template.load(prep.request.template, prep.request.max_record_chars)
    return decode_records(prep.request, prep.corpus, prep.plan, prep.secret, template, engine, admission, selector,
                          records, skip=skip, on_start=on_start, cache_salt=prep.cache_salt)


class JobRunner:
    """Batch jobs: each runs in its own thread over the shared scheduler, results go to the
    store as they finish, and unfinished jobs resume after a restart.

    Several servers may share one store (PostgreSQL): a job runs under a lease that only one
    server holds while it is live (Store.claim_job). The lease thread renews this server's
    leases every lease_s / 3 seconds, stops decoding a job whose lease another server took, and
    takes over unfinished jobs whose lease expired (their server died): they resume without
    decoding a started group again or charging anything again."""

    def __init__(self, store: Store, scheduler: EngineScheduler, engine: Engine, server_secret: bytes,
                 max_running: int = 4, on_record: Callable[[str, OutRecord], None] | None = None, workers=None,
                 owner: str | None = None, lease_s: float = 30.0):
        self.store, self.scheduler, self.engine = store, scheduler, engine
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.lease_s = lease_s
        self._leases: threading.Thread | None = None
        self.workers = workers  # a service.jobs.ray_executor.RayWorkers pool, or None: the local engine
        self.server_secret = server_secret
        self._slots = threading.Semaphore(max_running)
        self._running: dict[str, Admission] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._failed: dict[str, str] = {}  # job id -> failure the store could not record yet
        self._lost: set[str] = set()  # jobs whose lease another server took: they end there, not here
        self.on_record = on_record

    def submit(self, prep: Prepared) -> JobInfo:
        job_id = self.store.create_job(prep.tenant, prep.dataset.id, prep.request.model_dump_json(), prep.ledger_id,
                                       prep.randomness.nonce)
        self.store.claim_job(job_id, self.owner, self.lease_s)
        self._start(job_id, prep)
        return self.store.get_job(job_id)

    def resume_all(self) -> int:
        """Start every unfinished job that no live server holds (a restart, or a dead server's)."""
        started = 0
        for job in self.store.list_unfinished_jobs():
            with self._lock:
                mine = job.id in self._threads
            if not mine and self.store.claim_job(job.id, self.owner, self.lease_s):
                self._start(job.id, None)
                started += 1
        return started

    def start_leases(self) -> None:
        """Renew this server's leases and take over expired ones, until stop()."""
        self._leases = threading.Thread(target=self._lease_loop, name="privtext-job-leases", daemon=True)
        self._leases.start()

    def _lease_loop(self) -> None:
        while not self._stopping.wait(self.lease_s / 3):
            try:
                with self._lock:
                    mine = list(self._threads)
                kept = self.store.renew_leases(self.owner, mine, self.lease_s)
                for job_id in set(mine) - kept:
                    with self._lock:
                        adm = self._running.get(job_id)
                    if adm is not None:
                        log.warning("job %s: its lease was taken over by another server; stopping here", job_id)
                        self._lost.add(job_id)
                        adm.cancel()
                taken = self.resume_all()
                if taken:
                    log.info("took over %d job(s) whose server stopped renewing its lease", taken)
            except Exception as e:  # the store is unreachable: try again next round
                log.error("job leases: %s", describe_internal(e))

    def cancel(self, tenant: str, job_id: str) -> JobInfo:
        job = self.store.get_job(job_id, tenant)
        if job.state in ("queued", "running"):
            try:
                self.store.update_job(job_id, "cancelled", message="cancelled by the client")
            except Conflict:
                pass  # it finished meanwhile
        with self._lock:
            adm = self._running.get(job_id)
        if adm is not None:
            adm.cancel()
        return self.store.get_job(job_id, tenant)

    def stop(self, timeout: float | None = None) -> None:
        """Shutdown: stop decoding but leave each job's state as it is, to resume on restart."""
        self._stopping.set()
        with self._lock:
            for adm in self._running.values():
                adm.cancel()
            threads = list(self._threads.values())
        for t in threads:
            t.join(timeout)

    def _start(self, job_id: str, prep: Prepared | None) -> None:
        t = threading.Thread(target=self._run, args=(job_id, prep), name=f"job-{job_id}", daemon=True)
        with self._lock:
            self._threads[job_id] = t
        t.start()

    def _run(self, job_id: str, prep: Prepared | None) -> None:
        with self._slots:
            try:
                self._decode(job_id, prep)
            except Exception as e:
                log.error("job %s failed: %s", job_id, describe_internal(e))
                self._fail(job_id, failure_message(e))
            finally:
                with self._lock:
                    self._running.pop(job_id, None)
                    self._threads.pop(job_id, None)

    def _fail(self, job_id: str, message: str) -> None:
        """Mark a job failed. If the store cannot take even that (a full disk), the failure is
        kept here and reported by get_job until a write succeeds: no job stays RUNNING forever."""
        try:
            self.store.update_job(job_id, "failed", message=message)
            self._failed.pop(job_id, None)
        except Conflict:
            self._failed.pop(job_id, None)  # it ended (cancelled) meanwhile
        except Exception as e:
            log.error("job %s: could not record its failure (%s); reporting it from memory", job_id, describe_internal(e))
            self._failed[job_id] = message

    def get_job(self, job_id: str, tenant: str | None = None) -> JobInfo:
        """The stored job, or its failure if the store could not record it (retried here)."""
        job = self.store.get_job(job_id, tenant)
        message = self._failed.get(job_id)
        if message is None or job.state not in UNFINISHED_JOB_STATES:
            return job
        self._fail(job_id, message)
        return dataclasses.replace(job, state="failed", message=message) if job_id in self._failed else self.store.get_job(job_id, tenant)

    def _decode(self, job_id: str, prep: Prepared | None) -> None:
        job = self.store.get_job(job_id)
        if job.state not in ("queued", "running") or self._stopping.is_set():
            return
        if prep is None:
            prep = reprepare(self.store, job, self.server_secret)
        if prep.request.method == "pe":
            return self._evolve(job, prep)
        adm = Admission(self.scheduler, job_id) if self.workers is None else self.workers.run()
        with self._lock:
            self._running[job_id] = adm
        self.store.update_job(job_id, "running")
        started = frozenset(self.store.started_groups(job_id))
        records = RecordFilter(prep.request.pii)
        total = prep.plan.records
        seq, done = job.results, 0
        # groups started by an earlier run and not decoded again (each group is decoded at most
        # once): those whose record was not stored are lost to the interruption
        unstored = max(len(started) - job.results, 0)
        for rec in decode(prep, self.engine, adm, records, skip=started,
                          on_start=lambda g: self.store.mark_group_started(job_id, g)):
            if rec.finish_reason == "worker_lost":
                continue  # claimed, never decoded again: counted in the message below
            done += 1
            seq = self._store_record(job_id, prep, rec, seq, done, total, adm)
        if self._stopping.is_set() or job_id in self._lost:
            return  # shutting down (resumes on restart) or taken over: skipping every started group
        message = f"{seq} records; {done + len(started)} of {total} groups decoded"
        lost = getattr(adm, "lost_groups", 0)
        if lost:
            message += f"; {lost} groups lost when an engine worker died (claimed before dispatch, so never decoded again)"
        if started:
            message += (f"; resumed after an interruption: {len(started)} groups had started before it and were not "
                        f"decoded again, {unstored} of them without a stored record (lost, or empty or dropped by the PII filter)")
        self._succeed(job_id, message)

    def _store_record(self, job_id: str, prep: Prepared, rec: OutRecord, seq: int, done: int, total: int, adm) -> int:
        """Persist one finished record (if released) and the job's progress; returns the next seq."""
        if rec.released:
            self.store.append_result(job_id, seq, json.dumps(rec.to_json(prep.labels is not None), ensure_ascii=False))
            seq += 1
        if self.on_record is not None:
            self.on_record(prep.dataset.id, rec)
        try:
            self.store.update_job(job_id, "running", progress=min(done / total, 1.0))
        except Conflict:
            adm.cancel()  # cancelled by the client: stop admitting its groups
        return seq

    def _succeed(self, job_id: str, message: str) -> None:
        try:
            self.store.update_job(job_id, "succeeded", progress=1.0, message=message)
        except Conflict:
            pass  # cancelled meanwhile

    def _evolve(self, job: JobInfo, prep: Prepared) -> None:
        """A PE job: evolve once on the local scheduler (Ray workers decode private-decoding groups
        only), store its records, mark them stored. Resumed: succeeds at once if its records were
        all stored, fails (PE_NOT_RESUMABLE) if its evolution had begun, else runs from the start
        under its stored nonce (nothing had been released)."""
        job_id = job.id
        started = self.store.started_groups(job_id)
        if PE_STORED in started:
            return self._succeed(job_id, f"{job.results} records; Private Evolution: stored before an interruption")
        adm = Admission(self.scheduler, job_id)
        with self._lock:
            self._running[job_id] = adm
        self.store.update_job(job_id, "running")
        records = RecordFilter(prep.request.pii)
        outcomes: list[PeOutcome] = []
        seq, done, total = job.results, 0, prep.plan.records
        try:
            for rec in evolve_records(prep, self.engine, adm, records, on_start=lambda g: self.store.mark_group_started(job_id, g),
                                      on_outcome=outcomes.append):
                done += 1
                seq = self._store_record(job_id, prep, rec, seq, done, total, adm)
        except EvolutionCancelled:
            return  # cancelled by the client, shutting down or taken over: its state says which
        self.store.mark_group_started(job_id, PE_STORED)
        o = outcomes[0]
        message = (f"{seq} records; Private Evolution: {o.histograms} histograms released, {o.generated} candidates written"
                   + (f", {len(o.fallbacks)} step(s) where noise left every count of a label at 0 (the previous population's "
                      "order was kept)" if o.fallbacks else ""))
        self._succeed(job_id, message)
