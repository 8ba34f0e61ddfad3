"""The work queue (kube_xdp_api.workqueue): dedup, one worker per key, delayed adds,
backoff with jitter, shutdown, depth, and the worker loop.

Timers and jitter run on an injected fake clock and seeded random sources: no test
sleeps to wait for a timer. The few tests that need real threads (a worker blocked in
`get` woken by a timer or by shutdown, N workers at once) use events and joins with
generous bounds, never a sleep that decides the outcome.
"""

from __future__ import annotations

import collections
import queue as stdlib_queue
import random
import threading
import time

import pytest

from kube_xdp_api.workqueue import Backoff, Depth, ShutDown, WorkQueue, process, serve


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Fixed:
    """A random source that always draws `value` (exact delays)."""

    def __init__(self, value: float):
        self.value = value

    def random(self) -> float:
        return self.value


@pytest.fixture()
def clock() -> FakeClock:
    return FakeClock()


def make(clock: FakeClock, *, base: float = 1.0, cap: float = 30.0, rng=None) -> WorkQueue:
    return WorkQueue(backoff=Backoff(base=base, cap=cap, rng=rng or random.Random(1)), clock=clock)


def drain(q: WorkQueue) -> list:
    """Every key ready now, each taken and done (never blocks)."""
    out = []
    while (key := q.get(timeout=0)) is not None:
        out.append(key)
        q.done(key)
    return out


# -- dedup and order ---------------------------------------------------------------------
@pytest.mark.parametrize("adds, expected", [
    (["a"], ["a"]),
    (["a", "a", "a"], ["a"]),
    (["a", "b", "a", "c", "b"], ["a", "b", "c"]),      # FIFO by first add
    ([("program", "p"), ("program", "p"), ("node-gone", "p")], [("program", "p"), ("node-gone", "p")]),
], ids=["one", "same-key-thrice", "fifo-by-first-add", "tuple-keys"])
def test_a_key_added_many_times_before_a_worker_takes_it_is_processed_once(clock, adds, expected):
    q = make(clock)
    for key in adds:
        q.add(key)
    assert len(q) == len(expected)
    assert drain(q) == expected
    assert drain(q) == []


def test_none_is_not_a_key(clock):
    with pytest.raises(ValueError):
        make(clock).add(None)


# -- one worker per key --------------------------------------------------------------------
@pytest.mark.parametrize("readds", [1, 5], ids=["added-once-meanwhile", "added-5-times-meanwhile"])
def test_a_key_added_while_processed_is_held_back_then_processed_once_more_after_done(clock, readds):
    q = make(clock)
    q.add("a")
    q.add("b")
    assert q.get(timeout=0) == "a"
    for _ in range(readds):
        q.add("a")                           # a change seen while "a" is being reconciled
    assert q.get(timeout=0) == "b"           # never "a": a worker holds it
    assert q.get(timeout=0) is None
    assert q.depth() == Depth(ready=0, processing=2, delayed=0, failing=0)
    q.done("a")
    assert q.get(timeout=0) == "a"           # once more, and only once
    q.done("a")
    q.done("b")
    assert drain(q) == []


def test_a_key_not_added_while_processed_is_not_processed_again(clock):
    q = make(clock)
    q.add("a")
    assert q.get(timeout=0) == "a"
    q.done("a")
    assert q.get(timeout=0) is None


def test_done_of_a_key_not_being_processed_is_an_error(clock):
    q = make(clock)
    q.add("a")
    with pytest.raises(ValueError, match="not being processed"):
        q.done("a")


class NaiveQueue:
    """What a plain queue with an "already queued" set gives (the agent's queue.Queue +
    _queued before this module): dedup, but no notion of a key being processed."""

    def __init__(self):
        self._q: stdlib_queue.Queue = stdlib_queue.Queue()
        self._queued: set = set()
        self._lock = threading.Lock()

    def add(self, key):
        with self._lock:
            if key in self._queued:
                return
            self._queued.add(key)
        self._q.put(key)

    def get(self, timeout=None):
        try:
            key = self._q.get(timeout=timeout)
        except stdlib_queue.Empty:
            return None
        with self._lock:
            self._queued.discard(key)
        return key

    def done(self, key):
        pass


@pytest.mark.parametrize("factory, exclusive", [
    (lambda: WorkQueue(), True),
    (NaiveQueue, False),
], ids=["workqueue", "naive-queue-fails"])
def test_a_second_worker_never_gets_a_key_the_first_still_holds(factory, exclusive):
    """Worker A takes "k" and is held inside its reconcile; "k" is added again; worker B
    asks for work. With the work queue B gets nothing until A is done; with a naive
    queue B gets "k" and two reconciles of one key overlap (the test would catch it)."""
    q = factory()
    q.add("k")
    inside, release = threading.Event(), threading.Event()
    got: dict[str, object] = {}

    def worker_a():
        key = q.get(timeout=5)
        got["a"] = key
        inside.set()
        release.wait(5)
        q.done(key)

    a = threading.Thread(target=worker_a)
    a.start()
    assert inside.wait(5)
    q.add("k")
    got["b"] = q.get(timeout=0.2)            # worker B, while A holds "k"
    release.set()
    a.join(5)
    assert got["a"] == "k"
    assert (got["b"] is None) == exclusive
    if exclusive:
        assert q.get(timeout=5) == "k"       # B gets it once A is done
        q.done("k")


@pytest.mark.parametrize("workers, keys, adds", [(4, 3, 400), (8, 20, 1000)], ids=["4x3keys", "8x20keys"])
def test_n_workers_never_process_one_key_at_once_and_never_lose_an_add(workers, keys, adds):
    """N worker threads, producers adding a few keys over and over. Held: no key is ever
    in two reconciles at once, and every add is followed by a reconcile of that key that
    started after it (the dirty set: an add during processing is not lost)."""
    q: WorkQueue[int] = WorkQueue()
    lock = threading.Lock()
    in_flight: collections.Counter = collections.Counter()
    overlaps: list[int] = []
    seq = iter(range(10**9))
    last_add: dict[int, int] = {}
    last_start: dict[int, int] = {}

    def reconcile(key: int) -> None:
        with lock:
            in_flight[key] += 1
            if in_flight[key] > 1:
                overlaps.append(key)
            last_start[key] = next(seq)
        time.sleep(0)                         # let other threads run inside the "reconcile"
        with lock:
            in_flight[key] -= 1

    threads = [threading.Thread(target=serve, args=(q, reconcile)) for _ in range(workers)]
    for t in threads:
        t.start()
    rng = random.Random(3)
    for _ in range(adds):
        key = rng.randrange(keys)
        with lock:
            last_add[key] = next(seq)
        q.add(key)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        d = q.depth()
        if d.ready == d.processing == 0:
            break
        time.sleep(0.01)
    q.shutdown()
    for t in threads:
        t.join(5)
    assert not any(t.is_alive() for t in threads)
    assert overlaps == []
    assert all(last_start[k] > last_add[k] for k in last_add), (last_add, last_start)


# -- delayed adds ------------------------------------------------------------------------------
@pytest.mark.parametrize("delay", [0.5, 5.0, 3600.0])
def test_add_after_releases_the_key_at_its_deadline_not_before(clock, delay):
    q = make(clock)
    q.add_after("a", delay)
    assert q.get(timeout=0) is None and len(q) == 0 and q.depth().delayed == 1
    clock.advance(delay * 0.999)
    assert q.get(timeout=0) is None
    clock.advance(delay * 0.001)
    assert q.get(timeout=0) == "a"
    q.done("a")
    clock.advance(delay * 10)
    assert drain(q) == []                     # one timer, one add


@pytest.mark.parametrize("delays, fires_at", [
    ((10.0, 3.0), 3.0),       # an earlier deadline replaces a later one
    ((3.0, 10.0), 3.0),       # a later one is ignored
    ((5.0, 5.0, 5.0), 5.0),
], ids=["earlier-replaces", "later-ignored", "same"])
def test_one_timer_per_key_and_the_earliest_deadline_wins(clock, delays, fires_at):
    q = make(clock)
    for d in delays:
        q.add_after("a", d)
    assert q.depth().delayed == 1
    clock.advance(fires_at - 0.01)
    assert drain(q) == []
    clock.advance(0.01)
    assert drain(q) == ["a"]
    clock.advance(max(delays) * 2)
    assert drain(q) == []                     # the replaced timer does not fire too


def test_timers_release_keys_in_deadline_order_and_a_zero_delay_is_an_add(clock):
    q = make(clock)
    q.add_after("late", 2.0)
    q.add_after("soon", 1.0)
    q.add_after("now", 0)
    assert drain(q) == ["now"]
    clock.advance(5)
    assert drain(q) == ["soon", "late"]


def test_a_timer_firing_while_the_key_is_processed_queues_it_again_after_done(clock):
    q = make(clock)
    q.add("a")
    q.add_after("a", 1.0)                     # a recheck requested; the key is queued too
    assert q.get(timeout=0) == "a"
    clock.advance(1.0)
    assert q.get(timeout=0) is None           # due, but a worker holds "a"
    q.done("a")
    assert drain(q) == ["a"]


def test_a_timer_firing_for_a_queued_key_does_not_queue_it_twice(clock):
    q = make(clock)
    q.add_after("a", 1.0)
    clock.advance(2.0)
    q.add("a")
    assert drain(q) == ["a"]


# -- backoff --------------------------------------------------------------------------------
@pytest.mark.parametrize("base, cap, retries, ceiling", [
    (1.0, 30.0, 0, 1.0),
    (1.0, 30.0, 1, 2.0),
    (1.0, 30.0, 4, 16.0),
    (1.0, 30.0, 5, 30.0),       # 32 capped
    (1.0, 30.0, 10_000, 30.0),  # no overflow
    (0.005, 1000.0, 3, 0.04),
])
def test_backoff_ceiling_doubles_per_retry_up_to_the_cap(base, cap, retries, ceiling):
    assert Backoff(base=base, cap=cap).ceiling(retries) == pytest.approx(ceiling)


@pytest.mark.parametrize("draw", [0.0, 0.25, 0.999])
def test_full_jitter_draws_the_delay_uniformly_below_the_ceiling(draw):
    b = Backoff(base=1.0, cap=30.0, rng=Fixed(draw))
    assert [b.delay(n) for n in range(7)] == pytest.approx([draw * c for c in (1, 2, 4, 8, 16, 30, 30)])


@pytest.mark.parametrize("base, cap", [(0, 1), (2, 1), (-1, 5)])
def test_backoff_refuses_nonsense(base, cap):
    with pytest.raises(ValueError):
        Backoff(base=base, cap=cap)


def test_add_rate_limited_counts_retries_and_waits_its_backoff_and_forget_resets(clock):
    q = make(clock, base=1.0, cap=30.0, rng=Fixed(0.5))
    assert q.retries("a") == 0
    delays = []
    for _ in range(4):
        delays.append(q.add_rate_limited("a"))
        clock.advance(delays[-1] - 0.001)
        assert q.get(timeout=0) is None        # not before its backoff
        clock.advance(0.001)
        assert q.get(timeout=0) == "a"
        q.done("a")
    assert delays == [0.5, 1.0, 2.0, 4.0]
    assert q.retries("a") == 4 and q.depth().failing == 1
    q.forget("a")
    assert q.retries("a") == 0 and q.depth().failing == 0
    assert q.add_rate_limited("a") == 0.5      # from the start again
    assert q.retries("b") == 0                 # per key


def busiest(times: list[float], width: float) -> int:
    """The most of `times` inside any interval of `width`."""
    return max(sum(1 for t in times if lo <= t < lo + width) for lo in times)


def test_add_rate_limited_says_when_the_key_really_runs_when_an_earlier_timer_is_pending(clock):
    """One timer per key, the earliest wins: a backoff of 0.5 s behind a recheck already
    due in 0.2 s runs in 0.2 s, and says so (the log line must not promise 0.5 s)."""
    q = make(clock, rng=Fixed(0.5))
    assert q.add_after("a", 0.2) == 0.2
    assert q.add_rate_limited("a") == pytest.approx(0.2)
    assert q.add_after("a", 10) == pytest.approx(0.2)
    clock.advance(0.2)
    assert drain(q) == ["a"]
    assert q.add_after("a", 0) == 0.0 and drain(q) == ["a"]


def test_retries_of_100_keys_failing_at_the_same_instant_do_not_fire_together(clock):
    """100 keys fail at one instant (an API server outage ends a reconcile of each), in
    three rounds. Their retries spread over each round's window; with the jitter taken
    away (a constant draw) they fire as one wave, which this test would catch."""
    def rounds(rng) -> list[list[float]]:
        q = make(clock, base=1.0, cap=30.0, rng=rng)
        out = []
        for n in range(3):
            out.append(sorted(q.add_rate_limited(k) for k in range(100)))
            clock.advance(2.0 ** n)             # the round's retries fire (and fail again)
            assert len(drain(q)) == 100
        return out

    for n, delays in enumerate(rounds(random.Random(17))):
        window = 2.0 ** n
        assert len(set(delays)) == 100                      # no two at the same instant
        assert 0 <= delays[0] and delays[-1] < window
        # spread: a wave would put all 100 in one burst; uniform puts ~1 in each hundredth
        # of the window and ~10 in each tenth (the busiest ones hold a few more)
        assert busiest(delays, window / 100) <= 8
        assert busiest(delays, window / 10) <= 25
        assert delays[-1] - delays[0] > 0.9 * window
    for delays in rounds(Fixed(0.5)):
        assert busiest(delays, 1e-9) == 100                  # the wave the jitter prevents


# -- shutdown ---------------------------------------------------------------------------------
@pytest.mark.parametrize("pending", ["nothing", "a-timer"])
def test_shutdown_wakes_workers_blocked_in_get(pending):
    q: WorkQueue[str] = WorkQueue()
    if pending == "a-timer":
        q.add_after("later", 3600)
    ended: list[str] = []
    started = threading.Barrier(4)

    def worker():
        started.wait(5)
        try:
            q.get()
        except ShutDown:
            ended.append("shutdown")

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    started.wait(5)
    q.shutdown()
    for t in threads:
        t.join(5)
    assert ended == ["shutdown"] * 3


def test_after_shutdown_adds_are_ignored_and_get_raises(clock):
    q = make(clock)
    q.add("a")
    assert q.get(timeout=0) == "a"
    q.add_after("b", 1)
    q.shutdown()
    q.add("c")
    q.add_after("d", 1)
    q.add_rate_limited("e")
    q.done("a")                                # a worker still finishes what it holds
    assert q.shutting_down and len(q) == 0 and q.depth().delayed == 0
    with pytest.raises(ShutDown):
        q.get(timeout=0)


def test_serve_returns_on_shutdown():
    q: WorkQueue[str] = WorkQueue()
    seen = []
    t = threading.Thread(target=serve, args=(q, seen.append))
    t.start()
    q.add("a")
    deadline = time.monotonic() + 5
    while not seen and time.monotonic() < deadline:
        time.sleep(0.005)
    q.shutdown()
    t.join(5)
    assert not t.is_alive() and seen == ["a"]


# -- a blocked worker and timers, on the real clock ------------------------------------------
def test_a_worker_blocked_in_get_wakes_for_a_timer_without_any_timer_thread():
    q: WorkQueue[str] = WorkQueue()
    threads_before = threading.active_count()
    q.add_after("a", 0.05)
    assert threading.active_count() == threads_before     # no thread per timer, none at all
    t0 = time.monotonic()
    assert q.get(timeout=5) == "a"
    assert 0.05 <= time.monotonic() - t0 < 4


def test_an_earlier_timer_wakes_a_worker_waiting_for_a_later_one():
    q: WorkQueue[str] = WorkQueue()
    q.add_after("late", 3600)
    got = []

    def worker():
        try:
            got.append(q.get())
        except ShutDown:
            got.append("shut down instead")

    t = threading.Thread(target=worker)
    t.start()
    time.sleep(0.05)                           # let it block on the 3600 s timer
    q.add_after("soon", 0.01)
    t.join(5)
    q.shutdown()                               # if it did not wake: end it, and fail below
    t.join(5)
    assert got == ["soon"]


def test_get_with_a_timeout_returns_none_when_nothing_comes():
    q: WorkQueue[str] = WorkQueue()
    t0 = time.monotonic()
    assert q.get(timeout=0.02) is None
    assert time.monotonic() - t0 >= 0.02


# -- depth ------------------------------------------------------------------------------------
def test_len_and_depth_count_what_metrics_need(clock):
    q = make(clock, rng=Fixed(0.5))
    for key in ("a", "b", "c"):
        q.add(key)
    q.add_after("d", 5)
    q.add_rate_limited("e")
    assert q.get(timeout=0) == "a"
    assert len(q) == 2
    assert q.depth() == Depth(ready=2, processing=1, delayed=2, failing=1)
    clock.advance(10)                          # "d" and "e" are due
    assert len(q) == 4 and q.depth().delayed == 0


# -- the worker loop ---------------------------------------------------------------------------
def take(q: WorkQueue, key):
    assert q.get(timeout=0) == key
    return key


def test_process_forgets_the_failures_of_a_key_that_succeeds(clock):
    q = make(clock, rng=Fixed(0.5))
    q.add_rate_limited("a")
    q.add_rate_limited("a")
    clock.advance(1)
    process(q, take(q, "a"), lambda key: None)
    assert q.retries("a") == 0 and q.depth() == Depth(0, 0, 0, 0)


def test_process_retries_a_failing_key_with_backoff_and_reports_the_delay(clock):
    q = make(clock, rng=Fixed(0.5))
    errors = []

    def failing(key):
        raise OSError(111, "connection refused")

    q.add("a")
    process(q, take(q, "a"), failing, lambda key, e, delay: errors.append((key, e.errno, delay)))
    clock.advance(0.5)
    process(q, take(q, "a"), failing, lambda key, e, delay: errors.append((key, e.errno, delay)))
    assert errors == [("a", 111, 0.5), ("a", 111, 1.0)]
    assert q.retries("a") == 2 and q.depth().processing == 0
    clock.advance(1.0)
    assert drain(q) == ["a"]


def test_process_requeues_after_the_delay_a_reconcile_returns(clock):
    q = make(clock)
    q.add("a")
    process(q, take(q, "a"), lambda key: 2.5)
    clock.advance(2.4)
    assert drain(q) == []
    clock.advance(0.1)
    assert drain(q) == ["a"]
    assert q.retries("a") == 0


def test_process_releases_the_key_even_when_the_error_handler_fails(clock):
    q = make(clock)
    q.add("a")

    def bad_handler(key, e, delay):
        raise RuntimeError("logging broke")

    with pytest.raises(RuntimeError):
        process(q, take(q, "a"), lambda key: 1 / 0, bad_handler)
    assert q.depth().processing == 0 and q.retries("a") == 1
