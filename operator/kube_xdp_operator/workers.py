"""The operator's work: one work queue (kube_xdp_api.workqueue) and the worker threads
that drain it.

kopf is the watch and index layer: its handlers (handlers.py) only add keys here and
return. Every reconcile, delete and sweep runs on WORKERS threads taking keys from the
queue, under the queue's rules: a key added many times while it waits is processed once,
one program is reconciled by one thread at a time (so its writes are serial: one
attachment after another), a change seen mid-reconcile runs it again right after.

Keys:
- ProgramKey(name): reconcile program `name` (Reconciler.reconcile): placement, writes,
  status, Events; its orphaned attachments when it is gone. Added on every event of the
  program, of its attachments, and of a Node that changes placement; by the resync.
- NodeGoneKey(name, uid): delete the XdpNode `uid` of a deleted Node.
- RESYNC: every RESYNC_SECONDS, add every program's key (catches what no event
  announces: a ConfigMap source edited, a lost watch event) and sweep XdpNodes without a
  Node. A key rather than a task or a kopf timer (kopf timers put kopf's finalizer on
  every object: two writes per program); it re-adds itself with `add_after`.

When to look again is the reconcile's answer, not a timer of its own: a blocked
attachment, a deferred progress write, a deletion bound running out come back as a delay
and become `add_after` (one pending timer per key, the earliest wins). A failed key
(the API server away, a conflict) is retried with per-key exponential backoff with full
jitter (RETRY_BASE_SECONDS doubling up to RETRY_CAP_SECONDS), forgotten on its next
success; the resync adds every program regardless, as a watch re-list does.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

import urllib3
from kubernetes.client.rest import ApiException

from kube_xdp_api.workqueue import Backoff, WorkQueue, serve

from .reconciler import Reconciler

log = logging.getLogger("kube_xdp_operator")

RESYNC_SECONDS = 30.0
# Distinct programs reconcile in parallel on this many threads (as many as asyncio's
# default executor gave the operator before the queue, give or take); one program's
# reconcile, and so its writes, is always on one thread at a time.
WORKERS = 4
# Retries of a failed key: full jitter below 1 s, 2 s, 4 s ... 30 s. Capped at the
# resync interval: the resync adds the key anyway.
RETRY_BASE_SECONDS = 1.0
RETRY_CAP_SECONDS = RESYNC_SECONDS

# What an unreachable or refusing API server raises. urllib3's MaxRetryError is not an
# OSError. These are logged in one line; anything else with its traceback.
API_ERRORS = (ApiException, OSError, urllib3.exceptions.HTTPError)


@dataclasses.dataclass(frozen=True)
class ProgramKey:
    name: str


@dataclasses.dataclass(frozen=True)
class NodeGoneKey:
    name: str
    uid: str          # the XdpNode's uid when its Node's deletion was seen


@dataclasses.dataclass(frozen=True)
class ResyncKey:
    pass


RESYNC = ResyncKey()
Key = ProgramKey | NodeGoneKey | ResyncKey


class Workers:
    def __init__(self, reconciler: Reconciler, *, count: int = WORKERS, backoff: Backoff | None = None,
                 clock=time.monotonic):
        self.reconciler = reconciler
        self.count = count
        self.queue: WorkQueue[Key] = WorkQueue(
            backoff=backoff or Backoff(base=RETRY_BASE_SECONDS, cap=RETRY_CAP_SECONDS), clock=clock)
        self._threads: list[threading.Thread] = []

    # -- what kopf's handlers call (from the event loop: never blocks) ---------------------
    def program(self, name: str) -> None:
        self.queue.add(ProgramKey(name))

    def node_gone(self, name: str, uid: str) -> None:
        self.queue.add(NodeGoneKey(name, uid))

    # -- the threads -----------------------------------------------------------------------
    def start(self) -> None:
        self.queue.add_after(RESYNC, RESYNC_SECONDS)
        for i in range(self.count):
            t = threading.Thread(target=serve, args=(self.queue, self.reconcile), kwargs={"on_error": self._failed},
                                 name=f"reconcile-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 10.0) -> None:
        """Shut the queue down and wait (up to `timeout` in all) for reconciles in flight."""
        self.queue.shutdown()
        until = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, until - time.monotonic()))

    # -- one key ---------------------------------------------------------------------------
    def reconcile(self, key: Key) -> float | None:
        """Process one key; returns when to look at it again (None: when something changes)."""
        match key:
            case ProgramKey(name):
                return self.reconciler.reconcile(name)
            case NodeGoneKey(name, uid):
                self.reconciler.node_gone(name, uid)
                return None
            case ResyncKey():
                return self._resync()
        raise TypeError(f"not an operator work key: {key!r}")

    def _resync(self) -> float:
        rec = self.reconciler
        if rec.bound:                 # kopf binds its indexes with its first handler, once fully listed
            for name in list(rec.programs):
                self.queue.add(ProgramKey(name))
            try:
                rec.sweep_inventories()
            except Exception as e:    # not retried early: the two sightings stay a resync apart
                log.warning("sweep of XdpNodes without a Node failed; next resync in %.0fs: %s",
                            RESYNC_SECONDS, _first_line(e), exc_info=not isinstance(e, API_ERRORS))
        return RESYNC_SECONDS

    def _failed(self, key: Key, error: Exception, delay: float) -> None:
        log.warning("%s failed (%d in a row), retrying in %.1fs: %s", _describe(key), self.queue.retries(key),
                    delay, _first_line(error), exc_info=not isinstance(error, API_ERRORS))


def _describe(key: Key) -> str:
    match key:
        case ProgramKey(name):
            return f"reconcile of XdpProgram {name}"
        case NodeGoneKey(name, _):
            return f"deleting the XdpNode of deleted Node {name}"
    return "resync"


def _first_line(error: Exception) -> str:
    text = str(error)
    return text.splitlines()[0][:300] if text.strip() else type(error).__name__
