"""The one work queue of kube-xdp's controllers (the operator and the agent).

A queue of keys (any hashable value: a program name, an attachment name, a small frozen
dataclass) with the semantics of client-go's `util/workqueue`, written for Python:

- **Dedup.** A key added many times before a worker takes it is processed once.
- **One worker per key.** A key taken by a worker is not handed to another until the
  first calls `done(key)`. A key added while it is being processed is marked dirty and
  handed out again after `done(key)`: a change seen mid-reconcile is never lost, and
  never reconciled by two workers at once.
- **Delayed adds.** `add_after(key, delay)` adds the key once `delay` seconds have
  passed. One pending timer per key: a second `add_after` keeps the earlier deadline.
  A timer is independent of the key's other state: it fires (an `add`) even if the key
  is queued or being processed meanwhile.
- **Backoff.** `add_rate_limited(key)` is `add_after` with a per-key exponential
  backoff with full jitter (`Backoff`); `retries(key)` counts the calls since the last
  `forget(key)`, which a successful reconcile makes.
- **Shutdown.** `shutdown()` wakes every worker blocked in `get`, which raises
  `ShutDown` from then on; adds are ignored and pending timers dropped.
- **Depth.** `len(queue)` is the number of keys ready for a worker; `depth()` also
  counts keys being processed, waiting on a timer, and failing (for metrics).

Timers without threads. Delayed keys wait in a heap inside the queue. Whoever touches
the queue next (`get`, `add`, `len`, `depth`) moves the keys that are due into the
queue, and a worker blocked in `get` sleeps only until the earliest deadline (a new
earlier one wakes it). So a delayed key is released on time whenever a worker is
waiting, and otherwise as soon as one is free: it could not be processed earlier anyway.
No thread per timer, no scheduler thread.

Thread/async contract. Every method is thread-safe. Only `get` blocks; every other
method only takes the queue's lock, held for O(log n) bookkeeping and never across a
reconcile or I/O. Hence:
- worker threads call `get` (directly or through `serve`); an event loop never calls
  `get` (there is no async get);
- anything else, an asyncio coroutine included, calls `add`, `add_after`,
  `add_rate_limited`, `forget`, `retries`, `len`, `depth` and `shutdown` directly, with
  no await and no adapter: they return at once.
An asyncio program (the operator: kopf's handlers) therefore only adds keys from its
coroutines and runs its reconciles, which are blocking code over the synchronous
Kubernetes client, on worker threads.

How a thread-based controller uses it (the agent: a watch thread adds keys, one worker
thread reconciles, so changes to the node's kernel stay serial):

    queue = WorkQueue(backoff=Backoff(base=1.0, cap=30.0))
    # watch thread, for every event:      queue.add(name)
    # resync tick:                        for name in cache: queue.add(name)
    # a reconcile that must look again:   return that delay from reconcile(name)
    threading.Thread(target=serve, args=(queue, reconcile), kwargs={"on_error": log_it}).start()
    ...
    queue.shutdown()                      # the worker's get raises ShutDown; serve returns

or, with its own loop (e.g. to do periodic work between keys):

    while True:
        try:
            key = queue.get(timeout=seconds_to_next_tick)   # None: the timeout passed
        except ShutDown:
            break
        if key is None:
            tick(); continue
        try:
            reconcile(key)
        except Exception:
            queue.add_rate_limited(key)
        else:
            queue.forget(key)
        finally:
            queue.done(key)

The clock and the random source are injected (`clock=`, `Backoff(rng=)`), so that
tests drive timers and jitter deterministically: with a fake clock, advance it and call
`get(timeout=0)`, which never blocks.

This module is pure Python (threading, heapq): no Kubernetes client, no kernel.
"""

from __future__ import annotations

import collections
import dataclasses
import heapq
import random
import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, Protocol, TypeVar

K = TypeVar("K", bound=Hashable)

# 2**64 * any sensible base is far beyond any cap: stop doubling there (and never
# overflow a float).
_MAX_DOUBLINGS = 64


class ShutDown(Exception):
    """The queue was shut down: a worker's `get` raises this and the worker ends."""


class RandomSource(Protocol):
    def random(self) -> float:
        """A float in [0, 1)."""


@dataclasses.dataclass(frozen=True)
class Backoff:
    """Per-key exponential backoff with full jitter.

    The n-th retry of a key (n = `retries(key)` before it, from 0) waits a uniformly
    random time in [0, min(cap, base * 2**n)).

    Why full jitter (Brooker, "Exponential Backoff And Jitter", AWS Architecture Blog,
    2015): keys that fail together (every program during an API server outage, every
    agent of a cluster) retry at independent, uniformly spread moments within each
    round's window, never in a synchronized wave; among the schemes compared there it
    made the fewest calls for the same completion time. It needs no state beyond the
    retry count the queue keeps anyway (decorrelated jitter would also keep each key's
    previous delay), and its bounds are exact: no retry waits longer than `cap`, so
    after an outage every key is retried within `cap` seconds. The price is that a
    draw can be close to 0 (an early retry); the expected delay still doubles with
    each failure.
    """

    base: float = 1.0
    cap: float = 30.0
    rng: RandomSource = dataclasses.field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not (self.base > 0 and self.cap >= self.base):
            raise ValueError(f"backoff needs 0 < base <= cap, got base={self.base} cap={self.cap}")

    def ceiling(self, retries: int) -> float:
        """The upper bound of the delay of retry number `retries` (from 0)."""
        return min(self.cap, self.base * 2.0 ** min(max(retries, 0), _MAX_DOUBLINGS))

    def delay(self, retries: int) -> float:
        return self.ceiling(retries) * self.rng.random()


@dataclasses.dataclass(frozen=True)
class Depth:
    """How much work the queue holds (a snapshot, for metrics and logs)."""

    ready: int        # queued, waiting for a worker (len(queue))
    processing: int   # held by a worker
    delayed: int      # waiting on a timer (add_after, add_rate_limited)
    failing: int      # keys with retries(key) > 0


class WorkQueue(Generic[K]):
    """See the module docstring for the rules and the thread/async contract."""

    def __init__(self, *, backoff: Backoff | None = None, clock: Callable[[], float] = time.monotonic):
        self.backoff = backoff or Backoff()
        self._clock = clock
        self._cond = threading.Condition(threading.Lock())
        self._ready: collections.deque[K] = collections.deque()   # FIFO of keys for workers
        self._dirty: set[K] = set()          # needs processing (queued, or re-queued at done)
        self._processing: set[K] = set()     # held by a worker
        self._timers: dict[K, tuple[float, int]] = {}      # key -> (deadline, seq) of its one timer
        self._heap: list[tuple[float, int, K]] = []         # (deadline, seq, key); stale entries skipped
        self._seq = 0
        self._failures: dict[K, int] = {}
        self._shutting_down = False

    # -- adding ----------------------------------------------------------------------
    def add(self, key: K) -> None:
        """Queue `key` for a worker (at most once; again after `done` if being processed)."""
        _check_key(key)
        with self._cond:
            if self._shutting_down:
                return
            self._release_due(self._clock())
            self._add_locked(key)

    def add_after(self, key: K, delay: float) -> float:
        """`add(key)` once `delay` seconds have passed; the earlier of two deadlines wins.
        Returns the seconds until the key's timer fires (shorter than `delay` when an
        earlier one was pending; 0: added now)."""
        _check_key(key)
        if delay <= 0:
            self.add(key)
            return 0.0
        with self._cond:
            if self._shutting_down:
                return delay
            now = self._clock()
            deadline = now + delay
            current = self._timers.get(key)
            if current is not None and current[0] <= deadline:
                return current[0] - now
            self._seq += 1
            self._timers[key] = (deadline, self._seq)
            heapq.heappush(self._heap, (deadline, self._seq, key))
            self._cond.notify_all()          # a waiting worker may have to wake earlier
            return delay

    def add_rate_limited(self, key: K) -> float:
        """Add `key` after its backoff delay (retry number `retries(key)`), count the retry,
        and return when it will run (`add_after`'s answer: an earlier timer already
        pending for the key wins; for a log line)."""
        _check_key(key)
        with self._cond:
            retries = self._failures.get(key, 0)
            self._failures[key] = retries + 1
        return self.add_after(key, self.backoff.delay(retries))

    def forget(self, key: K) -> None:
        """The key succeeded: its next failure backs off from the start again. A timer
        already pending for it still fires."""
        with self._cond:
            self._failures.pop(key, None)

    def retries(self, key: K) -> int:
        """How many times `key` was added with `add_rate_limited` since it was last forgotten."""
        with self._cond:
            return self._failures.get(key, 0)

    # -- working ---------------------------------------------------------------------
    def get(self, timeout: float | None = None) -> K | None:
        """Take the next key; the caller must call `done(key)` when finished with it.

        Blocks until a key is ready; with `timeout`, returns None once it has passed
        (`timeout=0` never blocks). Raises ShutDown once the queue is shut down.
        Never call it from an event loop."""
        with self._cond:
            until = None if timeout is None else self._clock() + timeout
            while True:
                if self._shutting_down:
                    raise ShutDown()
                now = self._clock()
                self._release_due(now)
                if self._ready:
                    key = self._ready.popleft()
                    self._dirty.discard(key)
                    self._processing.add(key)
                    return key
                waits = [t - now for t in (until, self._heap[0][0] if self._heap else None) if t is not None]
                if until is not None and until <= now:
                    return None
                self._cond.wait(min(waits) if waits else None)

    def done(self, key: K) -> None:
        """The worker finished `key`: release it, and hand it out again if it was added
        meanwhile."""
        with self._cond:
            if key not in self._processing:
                raise ValueError(f"done({key!r}): that key is not being processed")
            self._processing.discard(key)
            if key in self._dirty and not self._shutting_down:
                self._ready.append(key)
                self._cond.notify()

    def shutdown(self) -> None:
        """Stop: wake every worker (their `get` raises ShutDown), ignore adds from now on,
        drop pending timers. Keys being processed may still be `done`."""
        with self._cond:
            self._shutting_down = True
            self._ready.clear()
            self._dirty.clear()
            self._timers.clear()
            self._heap.clear()
            self._cond.notify_all()

    @property
    def shutting_down(self) -> bool:
        with self._cond:
            return self._shutting_down

    # -- depth -----------------------------------------------------------------------
    def __len__(self) -> int:
        """Keys ready for a worker (due timers included)."""
        with self._cond:
            self._release_due(self._clock())
            return len(self._ready)

    def depth(self) -> Depth:
        with self._cond:
            self._release_due(self._clock())
            return Depth(ready=len(self._ready), processing=len(self._processing),
                         delayed=len(self._timers), failing=sum(1 for n in self._failures.values() if n))

    # -- inside the lock ---------------------------------------------------------------
    def _add_locked(self, key: K) -> None:
        if key in self._dirty:
            return                       # queued already, or re-queued when its worker is done
        self._dirty.add(key)
        if key in self._processing:
            return                       # done(key) queues it
        self._ready.append(key)
        self._cond.notify()

    def _release_due(self, now: float) -> None:
        """Move the keys whose timer is due into the queue (in deadline order)."""
        while self._heap and self._heap[0][0] <= now:
            deadline, seq, key = heapq.heappop(self._heap)
            if self._timers.get(key) != (deadline, seq):
                continue                 # replaced by an earlier timer that already fired
            del self._timers[key]
            self._add_locked(key)


def _check_key(key: object) -> None:
    if key is None:
        raise ValueError("a work queue key cannot be None (get returns None on a timeout)")


# -- the worker loop -------------------------------------------------------------------
Reconcile = Callable[[K], "float | None"]
OnError = Callable[[K, Exception, float], None]


def process(queue: WorkQueue[K], key: K, reconcile: Reconcile, on_error: OnError | None = None) -> None:
    """Reconcile one key taken from `queue` and settle it, whatever happens:

    - `reconcile(key)` returns None: done; its failures are forgotten.
    - it returns a delay in seconds: done for now, look again then (`add_after`); its
      failures are forgotten (a requested recheck is not a failure).
    - it raises an Exception: the key is retried with backoff (`add_rate_limited`), and
      `on_error(key, exception, delay)` is told (to log it). The worker carries on.
    `done(key)` is always called."""
    try:
        again = reconcile(key)
    except Exception as e:   # one key's trouble never ends a worker
        delay = queue.add_rate_limited(key)
        if on_error is not None:
            on_error(key, e, delay)
    else:
        queue.forget(key)
        if again is not None:
            queue.add_after(key, again)
    finally:
        queue.done(key)


def serve(queue: WorkQueue[K], reconcile: Reconcile, *, on_error: OnError | None = None) -> None:
    """A worker: take keys and `process` them until the queue shuts down. Run it on a
    thread of its own (one per worker)."""
    while True:
        try:
            key = queue.get()
        except ShutDown:
            return
        process(queue, key, reconcile, on_error)
