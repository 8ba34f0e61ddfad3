"""kopf wiring of the operator: indexes, event handlers, start-up and clean-up.

kopf is the watch and index layer, and nothing more: its handlers bind the indexes and
add keys to the operator's work queue (workers.py), and return at once. Reconciles run
on the workers' threads (reconciler.py), never in a handler:

- an XdpProgram event (any type, DELETED included) adds the program's key;
- an XdpAttachment event adds its program's key (the program label);
- a Node event that can change placement (labels, appearance, deletion) adds every
  program's key; a Node's deletion also adds the deletion of its XdpNode.

kopf is used for watching and indexes only (Events are posted through
kube_xdp_api.events, so that `kubectl describe` finds them): no kopf change handlers,
timers or daemons, so kopf writes nothing on the objects (no finalizer, no
last-handled-configuration copy of the spec, no progress annotations), which keeps the
API writes per rollout down (see bench/). kopf does not run handlers before its indexes
are fully listed, and the workers have nothing to do before a handler bound them, so a
restarting operator never plans against a partial view of the nodes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from kube_xdp_api import names

from .kubeapi import ClusterApi
from .reconciler import Reconciler, first
from .workers import Workers

log = logging.getLogger("kube_xdp_operator")


def _plain(obj: Any) -> Any:
    """kopf bodies are read-only views; indexes keep plain copies."""
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


class NodeChanges:
    """Which Node events can change placement (event loop only)."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple] = {}

    def changed(self, name: str, labels: Mapping, deleting: bool, event_type: str | None) -> bool:
        """True if a node event can change placement (labels, deletion, appearance)."""
        key = (tuple(sorted((labels or {}).items())), deleting, event_type == "DELETED")
        if self._seen.get(name) == key:
            return False
        self._seen[name] = key
        if event_type == "DELETED":
            self._seen.pop(name, None)
        return True


RECONCILER: Reconciler | None = None
WORKERS: Workers | None = None
NODES = NodeChanges()


def install(api: ClusterApi) -> Workers:
    """Build the operator before kopf runs: the reconciler and its work queue."""
    global RECONCILER, WORKERS
    RECONCILER = Reconciler(api)
    WORKERS = Workers(RECONCILER)
    return WORKERS


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # kopf must never hold or remove our finalizer: it manages only its own, which with no
    # change handlers, timers or daemons it never adds (and removes if it finds it).
    settings.persistence.finalizer = KOPF_FINALIZER
    # Silent hung watches are a known kopf failure: make the server and the client end them.
    settings.watching.server_timeout = 240
    settings.watching.client_timeout = 270
    settings.watching.connect_timeout = 30
    settings.posting.level = logging.WARNING      # kopf's own per-handler events: failures only
    settings.networking.request_timeout = 60
    # kopf scans CRDs to follow resources that appear later; ours are installed before the
    # operator, and scanning would need cluster-wide read of CustomResourceDefinitions.
    settings.scanning.disabled = True
    _workers().start()


@kopf.on.cleanup()
async def stop(**_: Any) -> None:
    """kopf is exiting: stop taking keys, let reconciles in flight finish (bounded)."""
    await asyncio.to_thread(_workers().stop)


# The finalizer name kopf is told to use: never one of ours (kopf removes its finalizer
# from objects that no handler needs it for, so it must not be names.FINALIZER_OPERATOR).
KOPF_FINALIZER = f"{names.GROUP}/kopf-unused"


@kopf.index("v1", "nodes")
def node_index(name: str, labels: Mapping, meta: Mapping, **_: Any) -> dict:
    return {name: {"metadata": {"name": name, "labels": dict(labels),
                                "deletionTimestamp": meta.get("deletionTimestamp")}}}


@kopf.index(names.GROUP, names.VERSION, names.ATTACHMENTS)
def attachment_index(labels: Mapping, body: Mapping, **_: Any) -> dict:
    return {labels.get(names.LABEL_PROGRAM, ""): _plain(body)}


@kopf.index(names.GROUP, names.VERSION, names.PROGRAMS)
def program_index(name: str, body: Mapping, **_: Any) -> dict:
    return {name: _plain(body)}


@kopf.index(names.GROUP, names.VERSION, names.NODES)
def agent_node_index(name: str, uid: str, **_: Any) -> dict:
    """Nodes whose agent registered (published its XdpNode) -> the XdpNode's uid. New
    attachments for them are created with the agent's finalizer already on, which saves
    each agent one write per rollout. Nodes without one get none: the agent adds it if it
    ever appears, and a program on a node with no agent never waits for one to delete.
    The uid guards the deletion of XdpNodes whose Node is gone."""
    return {name: uid}


def _workers() -> Workers:
    assert WORKERS is not None, "handlers.install(api) must run before kopf starts"
    return WORKERS


def _bound(kw: Mapping[str, Any]) -> Workers:
    workers = _workers()
    workers.reconciler.bind(kw["program_index"], kw["node_index"], kw["attachment_index"], kw["agent_node_index"])
    return workers


@kopf.on.event(names.GROUP, names.VERSION, names.PROGRAMS)
async def program_event(name: str, **kw: Any) -> None:
    # DELETED too: the reconcile of a program that is gone deletes its orphaned attachments
    # (deleted before the operator's finalizer was on it, nobody else deletes them).
    _bound(kw).program(name)


@kopf.on.event("v1", "nodes")
async def node_event(name: str, type: str, labels: Mapping, meta: Mapping, **kw: Any) -> None:
    workers = _bound(kw)
    if type == "DELETED":
        uid = first(kw["agent_node_index"], name)
        if uid:
            workers.node_gone(name, uid)
    if NODES.changed(name, labels, bool(meta.get("deletionTimestamp")), type):
        for program in list(kw["program_index"]):
            workers.program(program)


@kopf.on.event(names.GROUP, names.VERSION, names.ATTACHMENTS)
async def attachment_event(labels: Mapping, **kw: Any) -> None:
    program = labels.get(names.LABEL_PROGRAM)
    if program:
        _bound(kw).program(program)
