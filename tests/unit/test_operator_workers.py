"""The operator's work loop (kube_xdp_operator.workers) and its kopf wiring (handlers):
kopf's handlers only add keys; reconciles run from the work queue; a reconcile's recheck
becomes a delayed add; a failed reconcile is retried with backoff and forgotten on
success; the resync adds every program's key and re-adds itself.

The queue runs on a fake clock (no test waits for a timer), the reconciler on the
recording API of test_operator_reconcile. The same loop runs against the real API
server in tests/e2e and tests/faults (an API server outage, an operator SIGKILL).
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading

import pytest
from kubernetes.client.rest import ApiException

from kube_xdp_api import names
from kube_xdp_api.workqueue import Backoff, process
from kube_xdp_operator import handlers
from kube_xdp_operator.reconciler import Reconciler
from kube_xdp_operator.workers import RESYNC, RESYNC_SECONDS, NodeGoneKey, ProgramKey, Workers

from .test_operator_reconcile import UID, RecordingApi, attachment, node, program


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Fixed:
    def __init__(self, value: float):
        self.value = value

    def random(self) -> float:
        return self.value


def ready_keys(workers: Workers) -> list:
    """The keys a worker would take now, in order (taken and released)."""
    out = []
    while (key := workers.queue.get(timeout=0)) is not None:
        out.append(key)
        workers.queue.done(key)
    return out


def run_one(workers: Workers, key) -> None:
    """What a worker thread does with `key` (workqueue.serve's body), on this thread."""
    assert workers.queue.get(timeout=0) == key
    process(workers.queue, key, workers.reconcile, workers._failed)


# -- kopf's handlers only add keys ---------------------------------------------------------------
@pytest.fixture()
def wired(monkeypatch):
    """handlers wired as __main__ does, with the recording API; kopf's indexes as dicts."""
    api = RecordingApi()
    monkeypatch.setattr(handlers, "NODES", handlers.NodeChanges())
    workers = handlers.install(api)
    monkeypatch.setattr(workers.queue, "_clock", FakeClock())
    kw = {"program_index": {"p": [program()], "q": [program()]}, "node_index": {"n1": [node("n1")]},
          "attachment_index": {}, "agent_node_index": {"n1": ["uid-n1"]}}
    yield workers, api, kw
    monkeypatch.setattr(handlers, "WORKERS", None)
    monkeypatch.setattr(handlers, "RECONCILER", None)


def node_event(kw, name, type_, labels=None, deleting=None):
    asyncio.run(handlers.node_event(name=name, type=type_, labels=labels or {"role": "edge"},
                                    meta={"deletionTimestamp": deleting}, **kw))


@pytest.mark.parametrize("type_", [None, "ADDED", "MODIFIED", "DELETED"])
def test_a_program_event_adds_the_program_key_and_writes_nothing(wired, type_):
    workers, api, kw = wired
    asyncio.run(handlers.program_event(name="p", type=type_, **kw))
    asyncio.run(handlers.program_event(name="p", type=type_, **kw))
    assert ready_keys(workers) == [ProgramKey("p")]
    assert api.calls == [] and workers.reconciler.programs is kw["program_index"]   # bound


def test_an_attachment_event_adds_its_programs_key(wired):
    workers, api, kw = wired
    asyncio.run(handlers.attachment_event(labels={names.LABEL_PROGRAM: "p"}, **kw))
    asyncio.run(handlers.attachment_event(labels={}, **kw))           # not one of ours: nothing
    assert ready_keys(workers) == [ProgramKey("p")] and api.calls == []


def test_node_events_add_every_program_only_when_placement_can_change(wired):
    workers, api, kw = wired
    node_event(kw, "n1", None)
    assert ready_keys(workers) == [ProgramKey("p"), ProgramKey("q")]
    node_event(kw, "n1", "MODIFIED")                                  # a heartbeat: same labels
    assert ready_keys(workers) == []
    node_event(kw, "n1", "MODIFIED", labels={"role": "core"})
    assert ready_keys(workers) == [ProgramKey("p"), ProgramKey("q")]
    assert api.calls == []


@pytest.mark.parametrize("agent, expected", [
    (True, [NodeGoneKey("n1", "uid-n1"), ProgramKey("p"), ProgramKey("q")]),
    (False, [ProgramKey("p"), ProgramKey("q")]),                       # no XdpNode: nothing to delete
], ids=["with-an-xdpnode", "without"])
def test_a_deleted_node_adds_its_xdpnodes_deletion_with_the_uid_seen_then(wired, agent, expected):
    workers, api, kw = wired
    if not agent:
        kw["agent_node_index"] = {}
    node_event(kw, "n1", "DELETED")
    assert ready_keys(workers) == expected and api.calls == []


# -- keys to reconciles --------------------------------------------------------------------------
class Recording:
    """A stand-in Reconciler: records calls; each program's answer is a delay, None or an
    exception to raise."""

    def __init__(self, answers=None, programs=("p",)):
        self.answers = answers or {}
        self.calls: list = []
        self.programs = {p: [program()] for p in programs}
        self.bound = True

    def reconcile(self, name):
        self.calls.append(("reconcile", name))
        answer = self.answers.get(name)
        if isinstance(answer, list):
            answer = answer.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def node_gone(self, name, uid):
        self.calls.append(("node_gone", name, uid))

    def sweep_inventories(self):
        self.calls.append(("sweep",))
        answer = self.answers.get("sweep")
        if isinstance(answer, Exception):
            raise answer


def workers_for(reconciler, *, draw: float = 0.5) -> tuple[Workers, FakeClock]:
    clock = FakeClock()
    return Workers(reconciler, count=0, backoff=Backoff(base=1.0, cap=30.0, rng=Fixed(draw)), clock=clock), clock


def test_each_key_runs_its_reconcile():
    rec = Recording()
    workers, _ = workers_for(rec)
    workers.program("p")
    workers.node_gone("n9", "uid-9")
    run_one(workers, ProgramKey("p"))
    run_one(workers, NodeGoneKey("n9", "uid-9"))
    assert rec.calls == [("reconcile", "p"), ("node_gone", "n9", "uid-9")]


def test_a_reconciles_recheck_becomes_a_delayed_add():
    workers, clock = workers_for(Recording({"p": 0.8}))
    workers.program("p")
    run_one(workers, ProgramKey("p"))
    clock.now += 0.79
    assert ready_keys(workers) == []
    clock.now += 0.01
    assert ready_keys(workers) == [ProgramKey("p")]


@pytest.mark.parametrize("error, traceback", [
    (ApiException(status=503, reason="Service Unavailable"), False),
    (ConnectionRefusedError(111, "Connection refused"), False),
    (KeyError("metadata"), True),                                      # a bug: logged with its traceback
], ids=["api-503", "refused", "bug"])
def test_a_failed_reconcile_is_retried_with_backoff_then_forgotten(caplog, error, traceback):
    rec = Recording({"p": [error, error, error, None]})
    workers, clock = workers_for(rec, draw=0.5)
    workers.program("p")
    retries = []
    with caplog.at_level(logging.WARNING, logger="kube_xdp_operator"):
        for _ in range(3):
            run_one(workers, ProgramKey("p"))
            assert workers.queue.depth().delayed == 1
            clock.now += 0.001
            assert ready_keys(workers) == []                            # not at once
            retries.append(workers.queue.retries(ProgramKey("p")))
            clock.now += 8                                              # past any of these delays
        run_one(workers, ProgramKey("p"))
    assert retries == [1, 2, 3]
    assert workers.queue.retries(ProgramKey("p")) == 0                 # success forgets
    failures = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert [r.getMessage().split(" retrying in ")[1].split("s:")[0] for r in failures] == ["0.5", "1.0", "2.0"]
    assert all(bool(r.exc_info) == traceback for r in failures)


def test_retries_of_many_programs_failing_together_are_spread():
    """An API outage fails every program at once: their retries do not come as one wave."""
    programs = [f"p{i}" for i in range(50)]
    rec = Recording({p: ApiException(status=503) for p in programs}, programs=programs)
    clock = FakeClock()
    workers = Workers(rec, count=0, backoff=Backoff(base=1.0, cap=30.0, rng=random.Random(5)),
                      clock=clock)
    for p in programs:
        workers.program(p)
    for p in programs:
        run_one(workers, ProgramKey(p))
    released = []
    for step in range(100):                                            # 10 ms steps through the 1 s window
        clock.now += 0.01
        released.append(len(ready_keys(workers)))
    assert sum(released) == 50 and max(released) <= 5


# -- the resync ----------------------------------------------------------------------------------
def test_start_schedules_the_resync_which_adds_every_program_and_comes_back():
    rec = Recording(programs=("p", "q"))
    workers, clock = workers_for(rec)
    workers.start()                                                    # count=0: no thread
    assert ready_keys(workers) == []
    clock.now += RESYNC_SECONDS
    run_one(workers, RESYNC)
    assert ("sweep",) in rec.calls
    assert ready_keys(workers) == [ProgramKey("p"), ProgramKey("q")]
    clock.now += RESYNC_SECONDS
    assert ready_keys(workers) == [RESYNC]


def test_a_failed_sweep_neither_fails_nor_hastens_the_resync():
    """The sweep deletes an XdpNode only at its second sighting, a resync apart: a failed
    sweep is not retried early (that would shorten the gap), it waits for the next tick."""
    rec = Recording({"sweep": ApiException(status=503)})
    workers, clock = workers_for(rec)
    workers.queue.add(RESYNC)
    run_one(workers, RESYNC)
    assert workers.queue.retries(RESYNC) == 0
    assert ready_keys(workers) == [ProgramKey("p")]
    clock.now += RESYNC_SECONDS - 0.01
    assert ready_keys(workers) == []
    clock.now += 0.01
    assert ready_keys(workers) == [RESYNC]


def test_the_resync_waits_for_kopfs_indexes():
    rec = Recording()
    rec.bound = False
    workers, _ = workers_for(rec)
    workers.queue.add(RESYNC)
    run_one(workers, RESYNC)
    assert rec.calls == [] and ready_keys(workers) == []


# -- the real reconciler, on real threads ------------------------------------------------------
def test_worker_threads_reconcile_and_a_status_write_that_failed_is_retried():
    """Two worker threads and the real Reconciler on the recording API: the first status
    write fails (503), the retry writes it and posts the Event; nothing is left failing."""
    api = RecordingApi()
    write, post = api.patch_program_status, api.post_event
    attempts: list[str] = []
    posted = threading.Event()

    def flaky(name, status):
        attempts.append(name)
        if len(attempts) == 1:
            raise ApiException(status=503, reason="Service Unavailable")
        return write(name, status)

    def post_and_signal(*args):
        post(*args)
        posted.set()
        return True

    api.patch_program_status, api.post_event = flaky, post_and_signal
    rec = Reconciler(api)
    rec.bind({"p": [program(finalizers=[names.FINALIZER_OPERATOR])]}, {"n1": [node("n1")]},
             {"p": [attachment("n1", ready=True)]}, {})
    workers = Workers(rec, count=2, backoff=Backoff(base=0.01, cap=0.05))
    workers.start()
    try:
        workers.program("p")
        assert posted.wait(10)
    finally:
        workers.stop()
    assert not any(t.is_alive() for t in workers._threads)
    assert attempts == ["p", "p"] and api.kinds().count("status") == 1
    assert ("event", UID, "Ready") in api.calls
    assert workers.queue.retries(ProgramKey("p")) == 0
