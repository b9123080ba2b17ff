"""EngineScheduler on the real default model: many tickets share one engine thread, each gets
exactly its own results under its own group ids, its selector sees only its own rows, a late
small ticket is admitted ahead of a large one's backlog, and cancel / failures / close are
contained to the ticket (or scheduler) they belong to."""

from __future__ import annotations

import concurrent.futures
import threading
import time

import numpy as np
import pytest

pytest.importorskip("torch")

from mechanisms import DecodingConfig, JobRandomness  # noqa: E402
from service.engine.interface import GroupRequest  # noqa: E402
from service.generation.selector import MechanismSelector  # noqa: E402
from service.jobs.scheduler import EngineScheduler, SchedulerClosed  # noqa: E402


@pytest.fixture()
def scheduler(engine, request):
    """A fresh scheduler per test (the engine is not re-entrant: only one runs at a time);
    closing it at teardown must end its engine thread, or later tests would share the engine."""
    made: list[EngineScheduler] = []

    def make(max_batch_rows: int = 160) -> EngineScheduler:
        s = EngineScheduler(engine, max_batch_rows)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close(120)
        assert not s._thread.is_alive(), "the engine thread outlived close()"


def grp(engine, gid: int, tag: str, private_rows: int = 1, max_tokens: int = 3, public: str = "hi") -> GroupRequest:
    """A tiny group: identical private rows, a public row, a fixed number of tokens."""
    row = engine.encode_chat(f"Say {tag}.")
    return GroupRequest(gid, (row,) * private_rows, engine.encode_chat(f"Say {public}."), max_tokens, ignore_eos=True)


def first_logits(engine, ids) -> np.ndarray:
    """The next-token logits of a prompt by a plain forward (no cache, no batch): what a group's
    first step must show its selector."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one short prompt: far quicker on one thread when the cores are busy
    try:
        with torch.inference_mode():
            return engine.model(input_ids=torch.tensor([list(ids)], device=engine.device)).logits[0, -1].float().cpu().numpy()
    finally:
        torch.set_num_threads(threads)


class Recording:
    """A real MechanismSelector that also records what the engine showed it and when."""

    def __init__(self, seed: int = 0):
        self.inner = MechanismSelector(DecodingConfig(mechanism="em", partitions=4, clip=2.0, top_k=20), JobRandomness.replay(b"privtext test secret", seed))
        self.lock = threading.Lock()
        self.selected: list[list[int]] = []
        self.blocks: list[tuple[list[int], np.ndarray, np.ndarray, np.ndarray]] = []
        self.chosen: dict[int, list[int]] = {}
        self.asked_halted: set[int] = set()
        self.released: list[int] = []

    def select(self, group_ids, private_logits, group_sizes, public_logits):
        toks = self.inner.select(group_ids, private_logits, group_sizes, public_logits)
        with self.lock:
            self.selected.append(list(group_ids))
            self.blocks.append((list(group_ids), private_logits.copy(), np.asarray(group_sizes).copy(), public_logits.copy()))
            for g, t in zip(group_ids, toks):
                self.chosen.setdefault(int(g), []).append(int(t))
        return toks

    def halted(self, group_id):
        self.asked_halted.add(group_id)
        return self.inner.halted(group_id)

    def release(self, group_id):
        self.released.append(group_id)
        self.inner.release(group_id)

    @property
    def calls(self) -> int:
        with self.lock:
            return len(self.selected)


def wait_for(cond, timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_concurrent_tickets_get_their_own_results_and_see_only_their_own_rows(engine, scheduler):
    """Three tickets opened from three threads all use local group ids 0 and 1, with different
    row counts, prompts and lengths, decoding in one batch. Each gets back exactly its groups,
    under its own ids, with the tokens its own selector chose; its selector was only ever shown
    its own groups, with its own row counts, and at each group's first step exactly the logits
    of that group's own prompts (no row of another group or ticket)."""
    sched = scheduler(160)
    n_tickets = 3
    sels = [Recording(seed=k) for k in range(n_tickets)]
    max_tokens = {(k, g): 2 + 2 * k + g for k in range(n_tickets) for g in range(2)}
    reqs = {(k, g): grp(engine, g, f"ticket {k} group {g}", private_rows=k + 2, max_tokens=max_tokens[(k, g)], public=f"hi to {k}")
            for k in range(n_tickets) for g in range(2)}
    ref = {p: first_logits(engine, p) for r in reqs.values() for p in (r.rows[0], r.public)}
    expect = {kg: (ref[r.rows[0]], ref[r.public]) for kg, r in reqs.items()}
    barrier = threading.Barrier(n_tickets)

    def client(k: int):
        barrier.wait()
        t = sched.open(iter([reqs[(k, 0)], reqs[(k, 1)]]), sels[k], name=f"t{k}")
        return list(t.results(timeout=300))

    with concurrent.futures.ThreadPoolExecutor(n_tickets) as pool:
        results = list(pool.map(client, range(n_tickets)))

    for k, (res, sel) in enumerate(zip(results, sels)):
        by_id = {r.group_id: r for r in res}
        assert len(res) == 2 and sorted(by_id) == [0, 1], f"ticket {k} got {[r.group_id for r in res]}"
        for g, r in by_id.items():
            assert r.finish_reason == "length"
            assert len(r.token_ids) == max_tokens[(k, g)]
            assert list(r.token_ids) == sel.chosen[g], f"ticket {k} group {g}: not the tokens its own selector chose"
        assert {g for ids in sel.selected for g in ids} == {0, 1}
        assert sel.asked_halted <= {0, 1}
        assert sorted(sel.released) == [0, 1]
        first_step = set()
        for ids, priv, sizes, pub in sel.blocks:
            assert list(sizes) == [k + 2] * len(ids)
            assert priv.shape[0] == sizes.sum() and pub.shape[0] == len(ids)
            for i, g in enumerate(ids):
                block = priv[i * (k + 2):(i + 1) * (k + 2)]
                assert np.abs(block - block[0]).max() < 1e-3, f"ticket {k}: a block mixed rows of different prompts"
                if g not in first_step:  # the group's first step: the logits of its own prompts
                    first_step.add(g)
                    np.testing.assert_allclose(block[0], expect[(k, g)][0], atol=2e-3)
                    np.testing.assert_allclose(pub[i], expect[(k, g)][1], atol=2e-3)
        assert first_step == {0, 1}
    assert sched.tokens == sum(max_tokens.values())  # every finished token counted once


def test_a_late_small_ticket_is_admitted_ahead_of_a_large_backlog(engine, scheduler):
    """Only two groups fit in the batch. A 12-group ticket starts first; a 1-group ticket opened
    right after must take the next free place, not wait behind the big ticket's backlog."""
    sched = scheduler(max_batch_rows=4)  # groups of 2 rows: two at a time
    order: list[tuple[str, int]] = []
    lock = threading.Lock()
    n_big = 12

    def consume(ticket):
        for r in ticket.results(timeout=300):
            with lock:
                order.append((ticket.name, r.group_id))

    big = sched.open((grp(engine, g, f"big {g}", max_tokens=3) for g in range(n_big)), Recording(1), name="big")
    consumers = [threading.Thread(target=consume, args=(big,))]
    consumers[0].start()
    wait_for(lambda: sched.active_groups > 0, what="the big ticket to start")
    small = sched.open(iter([grp(engine, 0, "small", max_tokens=3)]), Recording(2), name="small")
    consumers.append(threading.Thread(target=consume, args=(small,)))
    consumers[1].start()
    for c in consumers:
        c.join(300)
    assert not any(c.is_alive() for c in consumers)

    assert sorted(order) == sorted([("big", g) for g in range(n_big)] + [("small", 0)])
    big_before_small = order.index(("small", 0))
    assert big_before_small < n_big // 2, f"the small ticket waited for {big_before_small} of {n_big} big groups: {order}"


def test_cancel_halts_the_ticket_and_the_others_finish(engine, scheduler):
    """Cancelling a long ticket mid-decode: its results() ends at once with nothing (its groups'
    results are discarded), no further group of it is admitted, its admitted groups get at most
    the step already under way, and another ticket decoding beside it finishes in full."""
    sched = scheduler(max_batch_rows=8)
    pulled = [0]

    def long_groups():
        for g in range(50):
            pulled[0] += 1
            yield grp(engine, g, f"long {g}", max_tokens=500)

    sel_a, sel_b = Recording(3), Recording(4)
    a = sched.open(long_groups(), sel_a, name="a")
    b = sched.open(iter([grp(engine, g, f"other {g}", max_tokens=4) for g in range(2)]), sel_b, name="b")
    b_results: list = []
    tb = threading.Thread(target=lambda: b_results.extend(b.results(timeout=300)))
    tb.start()
    wait_for(lambda: sel_a.calls >= 2, what="ticket a to decode")

    a.cancel()
    calls_at_cancel, pulled_at_cancel = sel_a.calls, pulled[0]
    t0 = time.monotonic()
    a_results = list(a.results(timeout=60))  # queue.Empty if it does not end
    assert time.monotonic() - t0 < 60
    assert a_results == []
    tb.join(300)
    assert not tb.is_alive()
    wait_for(lambda: sched.active_groups == 0, timeout=60, what="the cancelled groups to leave the engine")

    assert sel_a.calls <= calls_at_cancel + 1, "a cancelled ticket's groups went on decoding"
    assert pulled[0] <= pulled_at_cancel + 1, "groups of a cancelled ticket were still admitted"
    assert sorted(r.group_id for r in b_results) == [0, 1]
    assert all(r.finish_reason == "length" and len(r.token_ids) == 4 for r in b_results)


def test_cancel_ends_a_ticket_whose_group_waits_for_room(engine, scheduler):
    """The batch is full with a long ticket's groups; a second ticket's group has been taken
    from it and waits for room. Cancelling that ticket must end its results() promptly, not
    when the long ticket's groups finally finish."""
    sched = scheduler(max_batch_rows=4)  # two groups of 2 rows
    sel_long = Recording(9)
    long = sched.open(iter([grp(engine, g, f"long {g}", max_tokens=40) for g in range(2)]), sel_long, name="long")
    wait_for(lambda: sel_long.calls >= 1, what="the long ticket to fill the batch")
    pulled = threading.Event()

    def one():
        pulled.set()
        yield grp(engine, 0, "waiting", max_tokens=3)

    waiting = sched.open(one(), Recording(10), name="waiting")
    assert pulled.wait(60)
    time.sleep(0.2)  # the engine has it now, with no room to admit it
    waiting.cancel()
    assert list(waiting.results(timeout=300)) == []
    still_decoding = not sel_long.released
    long.cancel()
    assert list(long.results(timeout=300)) == []
    assert still_decoding, "results() of the cancelled ticket ended only after the long ticket's groups finished"


def _source_fails(engine):
    yield grp(engine, 0, "fine")
    raise ValueError("the ticket's own source broke")


def _engine_rejects(engine):
    yield GroupRequest(0, (engine.encode_chat("x"),), engine.encode_chat("y"), max_tokens=0)


@pytest.mark.parametrize(
    "source, error, match",
    [
        (_source_fails, ValueError, "the ticket's own source broke"),  # its own iterator raised
        (_engine_rejects, ValueError, "max_tokens must be >= 1"),  # refused before the engine: its own ticket fails
    ],
    ids=["source-raises", "engine-rejects"],
)
def test_a_failing_ticket_gets_its_error_and_the_engine_keeps_serving(engine, scheduler, source, error, match):
    sched = scheduler()
    bad = sched.open(source(engine), Recording(5), name="bad")
    with pytest.raises(error, match=match):
        list(bad.results(timeout=60))
    assert sched._thread.is_alive()
    good = sched.open(iter([grp(engine, g, f"after {g}", max_tokens=3) for g in range(2)]), Recording(6), name="good")
    res = list(good.results(timeout=60))
    assert sorted((r.group_id, len(r.token_ids)) for r in res) == [(0, 3), (1, 3)]


@pytest.mark.parametrize("busy", [False, True], ids=["idle", "busy"])
def test_close_refuses_new_tickets_and_ends_the_engine_thread(engine, scheduler, busy):
    """close() is a shutdown: open tickets are cancelled (their admitted groups halt, nothing of
    theirs is delivered, results() ends), the engine thread ends, a later open() is refused."""
    sched = scheduler()
    t = None
    if busy:
        t = sched.open(iter([grp(engine, g, f"closing {g}", max_tokens=60) for g in range(8)]), Recording(7), name="t")
        wait_for(lambda: sched.active_groups >= 2, what="groups admitted")
    sched.close(120)
    assert not sched._thread.is_alive()
    with pytest.raises(SchedulerClosed):
        sched.open(iter([grp(engine, 0, "late")]), Recording(8))
    if t is not None:
        assert list(t.results(timeout=5)) == []  # cancelled: its 8 groups of 60 tokens were not run to the end


def test_a_group_that_can_never_be_admitted_fails_its_own_ticket_only(engine, scheduler):
    """A group over the batch limit used to raise inside the engine and fail every ticket in
    flight, other tenants' included; it now fails its own ticket before reaching the engine."""
    sched = scheduler(max_batch_rows=6)
    ok = sched.open(iter([grp(engine, 0, "fine", private_rows=2, max_tokens=4)]), Recording(seed=1), "fine")
    big = sched.open(iter([grp(engine, 0, "huge", private_rows=9)]), Recording(seed=2), "huge")
    with pytest.raises(Exception, match="over max_batch_rows 6"):
        list(big.results(timeout=300))
    (res,) = list(ok.results(timeout=300))
    assert len(res.token_ids) == 4
