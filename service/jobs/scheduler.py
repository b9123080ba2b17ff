"""One engine per process, shared by every request and job: fair admission, cancellation.

A thread runs one endless `engine.run` over a *live* source. Each request opens a `Ticket`
with its own lazy groups and its own selector (its own mechanism, settings and randomness);
the source hands the engine the next group of the ticket with the fewest groups in flight
(ties: the one served least recently), so a large job holding many groups cannot starve a
streaming client that arrives later: the newcomer takes the next free place in the batch.

Group ids are renumbered on the way in (each ticket keeps its own) and the step's selection is
split by ticket, so one request's selector never sees another's rows. Cancelling a ticket
stops its pending groups at once and halts its admitted ones before their next step; their
results are discarded. Nothing here chooses a token or looks at a logit.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import queue
import threading
from collections.abc import Iterator, Sequence

import numpy as np

from ..engine.interface import Engine, GroupRequest, GroupResult, Selector

log = logging.getLogger(__name__)
_DONE = object()


class SchedulerClosed(RuntimeError):
    pass


class Ticket:
    """One request's share of the engine: feed it groups, read its results, cancel it."""

    def __init__(self, scheduler: EngineScheduler, groups: Iterator[GroupRequest], selector: Selector, name: str):
        self.name = name
        self.selector = selector
        self._groups = groups
        self._scheduler = scheduler
        self._results: queue.Queue = queue.Queue()
        self.cancelled = threading.Event()
        self.exhausted = False
        self.inflight = 0
        self.served = 0  # admission order, for round-robin ties
        self.finished = False

    @property
    def pending(self) -> bool:
        return not (self.exhausted or self.cancelled.is_set() or self.finished)

    def cancel(self) -> None:
        """Stop: no further group is admitted, admitted groups halt before their next step."""
        self.cancelled.set()
        self._scheduler._cancelled(self)

    def results(self, timeout: float | None = None) -> Iterator[GroupResult]:
        """The ticket's finished groups (its own group ids), until it is exhausted or cancelled.
        Raises what failed it (the engine or its own group source)."""
        while True:
            item = self._results.get(timeout=timeout)
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


class _Mux:
    """The engine's selector: each ticket's groups go to that ticket's selector, under its ids."""

    def __init__(self, owner: dict[int, tuple[Ticket, int]]):
        self.owner = owner

    def select(self, group_ids: Sequence[int], private_logits: np.ndarray, group_sizes: np.ndarray, public_logits: np.ndarray) -> np.ndarray:
        sizes = np.asarray(group_sizes)
        starts = np.concatenate([[0], np.cumsum(sizes)])
        by_ticket: dict[int, list[int]] = {}
        tickets: dict[int, Ticket] = {}
        for i, g in enumerate(group_ids):
            t = self.owner[g][0]
            by_ticket.setdefault(id(t), []).append(i)
            tickets[id(t)] = t
        out = np.empty(len(group_ids), dtype=np.int64)
        for key, idx in by_ticket.items():
            rows = np.concatenate([np.arange(starts[i], starts[i + 1]) for i in idx])
            local = [self.owner[group_ids[i]][1] for i in idx]
            out[idx] = tickets[key].selector.select(local, private_logits[rows], sizes[idx], public_logits[idx])
        return out

    def halted(self, group_id: int) -> bool:
        t, local = self.owner[group_id]
        return t.cancelled.is_set() or t.selector.halted(local)

    def release(self, group_id: int) -> None:
        t, local = self.owner[group_id]
        t.selector.release(local)


class EngineScheduler:
    def __init__(self, engine: Engine, max_batch_rows: int = 160):
        self.engine = engine
        self.max_batch_rows = max_batch_rows
        self._cond = threading.Condition()
        self._tickets: list[Ticket] = []
        self._owner: dict[int, tuple[Ticket, int]] = {}
        self._ids = itertools.count()
        self._served = itertools.count(1)
        self._inflight = 0
        self._closed = False
        self.tokens = 0  # tokens of every finished group (public: lengths of released records)
        self._thread = threading.Thread(target=self._run, name="privtext-engine", daemon=True)
        self._thread.start()

    # -- the request side ---------------------------------------------------------------------

    def open(self, groups: Iterator[GroupRequest], selector: Selector, name: str = "") -> Ticket:
        with self._cond:
            if self._closed:
                raise SchedulerClosed("the server is shutting down")
            t = Ticket(self, iter(groups), selector, name)
            self._tickets.append(t)
            self._cond.notify_all()
        return t

    @property
    def active_groups(self) -> int:
        return self._inflight

    @property
    def queued_tickets(self) -> int:
        with self._cond:
            return sum(1 for t in self._tickets if t.pending and t.inflight == 0)

    def close(self, timeout: float | None = None) -> None:
        """Shut down: no new tickets, open ones are cancelled (their admitted groups halt before
        their next step), and the engine thread ends once nothing is in flight."""
        with self._cond:
            self._closed = True
            for t in list(self._tickets):
                t.cancelled.set()
                self._maybe_finish(t)
            self._cond.notify_all()
        self._thread.join(timeout)

    # -- the engine thread --------------------------------------------------------------------

    def _cancelled(self, t: Ticket) -> None:
        with self._cond:
            self._maybe_finish(t)
            self._cond.notify_all()

    def _maybe_finish(self, t: Ticket) -> None:
        """Under the lock: a ticket with nothing pending and nothing in flight is done."""
        if not t.finished and not t.pending and t.inflight == 0:
            t.finished = True
            t._results.put(_DONE)
            self._tickets.remove(t)

    def _pick(self) -> Ticket | None:
        live = [t for t in self._tickets if t.pending]
        return min(live, key=lambda t: (t.inflight, t.served)) if live else None

    def _source(self) -> Iterator[GroupRequest | None]:
        while True:
            with self._cond:
                while True:
                    t = self._pick()
                    if t is not None or self._inflight > 0:
                        break
                    if self._closed:
                        return
                    self._cond.wait()
            if t is None:
                yield None  # groups are decoding; nothing new to admit
                continue
            try:
                req = next(t._groups)  # outside the lock: it may tokenize or write to the store
                # A group that could never be admitted fails its own ticket here, not the
                # engine (which would fail every tenant's groups in flight).
                self.engine.validate(req)
                self.engine.check_admissible(req, self.max_batch_rows)
            except StopIteration:
                with self._cond:
                    t.exhausted = True
                    self._maybe_finish(t)
                continue
            except Exception as e:  # the ticket's own source failed: fail it, not the engine
                log.error("ticket %s: its group source failed: %s", t.name, type(e).__name__)
                t._results.put(e)
                with self._cond:
                    t.exhausted = True
                    self._maybe_finish(t)
                continue
            gid = next(self._ids)
            with self._cond:
                self._owner[gid] = (t, req.group_id)
                t.inflight += 1
                t.served = next(self._served)
                self._inflight += 1
            yield dataclasses.replace(req, group_id=gid)

    def _run(self) -> None:
        while True:
            try:
                for res in self.engine.run(self._source(), _Mux(self._owner), self.max_batch_rows):
                    with self._cond:
                        t, local = self._owner.pop(res.group_id)
                        t.inflight -= 1
                        self._inflight -= 1
                    self.tokens += len(res.token_ids)
                    if not t.cancelled.is_set():
                        t._results.put(dataclasses.replace(res, group_id=local))
                    with self._cond:
                        self._maybe_finish(t)
                return  # the source ended: closed and idle
            except Exception as e:  # fail every ticket with groups in the engine; keep serving
                log.error("engine failed: %s", type(e).__name__)
                with self._cond:
                    hit = {id(t): t for t, _ in self._owner.values()}
                    self._owner.clear()
                    self._inflight = 0
                    for t in hit.values():
                        t.inflight = 0
                        t.exhausted = True
                        t._results.put(RuntimeError("the engine failed while decoding this request"))
                        self._maybe_finish(t)
