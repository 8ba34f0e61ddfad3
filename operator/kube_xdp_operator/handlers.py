"""kopf wiring of the operator: indexes, event handlers, deletion, periodic resync.

All triggers (a program changed, a node relabelled/added/removed, an attachment's
status changed, a resync tick) funnel into `Reconciler.request(program)`, which
coalesces bursts and runs one reconcile per program at a time:

    placement.wanted_attachments -> placement.plan_attachments -> kubeapi writes
    status.aggregate -> status patch (only when it changed) -> Events on transitions

kopf holds the operator finalizer on every XdpProgram; the deletion handler deletes the
program's attachments and keeps the finalizer until every agent has released its own.
kopf does not run handlers before its indexes are fully listed, so a restarting
operator never plans against a partial view of the nodes.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Mapping
from typing import Any

import kopf
import urllib3
from kubernetes.client.rest import ApiException

from kube_xdp_api import names, reasons
from kube_xdp_api.spec import ProgramSpec, SpecError, source_digest

from . import placement
from . import status as status_mod
from .kubeapi import ClusterApi

log = logging.getLogger("kube_xdp_operator")

RESYNC_SECONDS = 30.0
RETRY_SECONDS = 2.0
# How long a deleted program waits for a node's agent to confirm it detached (the agent
# may be down). After that the operator releases the agent's finalizer and says so in a
# Warning Event; the agent removes the program when it returns (orphan cleanup: pinned
# programs without an attachment on its node are detached and unpinned).
AGENT_CLEANUP_TIMEOUT = 600.0


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _plain(obj: Any) -> Any:
    """kopf bodies are read-only views; indexes keep plain copies."""
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


class Reconciler:
    def __init__(self, api: ClusterApi):
        self.api = api
        self.programs: kopf.Index | None = None
        self.nodes: kopf.Index | None = None
        self.attachments: kopf.Index | None = None
        self._dirty: set[str] = set()
        self._running: set[str] = set()
        self._node_seen: dict[str, tuple] = {}
        self._retry_soon: set[str] = set()
        self._retry_pending: set[str] = set()

    def bind(self, programs, nodes, attachments) -> None:
        self.programs, self.nodes, self.attachments = programs, nodes, attachments

    async def request(self, name: str) -> None:
        """Reconcile `name` soon; concurrent requests for one program coalesce."""
        self._dirty.add(name)
        if name in self._running:
            return
        self._running.add(name)
        try:
            while name in self._dirty:
                self._dirty.discard(name)
                try:
                    events, body = await asyncio.to_thread(self._reconcile, name)
                except (ApiException, OSError, urllib3.exceptions.HTTPError) as e:
                    # urllib3's MaxRetryError (API server unreachable) is not an OSError: without
                    # it here the handler failed to kopf, which retries a failed handler only
                    # after its own backoff (60 s), not RETRY_SECONDS.
                    log.warning("reconcile of %s failed, retrying in %.0fs: %s", name, RETRY_SECONDS,
                                str(e).splitlines()[0][:300] if str(e) else type(e).__name__)
                    self._retry_later(name)
                    return
                for type_, reason, message in events:
                    kopf.event(body, type=type_, reason=reason, message=message)
                if name in self._retry_soon:
                    self._retry_soon.discard(name)
                    self._retry_later(name)
        finally:
            self._running.discard(name)

    def _retry_later(self, name: str) -> None:
        """One pending retry per program: every failed trigger (events, timers) used to
        start its own retry chain, so an API outage multiplied the retries with its length."""
        if name in self._retry_pending:
            return
        self._retry_pending.add(name)

        def fire() -> None:
            self._retry_pending.discard(name)
            asyncio.ensure_future(self.request(name))

        asyncio.get_running_loop().call_later(RETRY_SECONDS, fire)

    def node_changed(self, name: str, labels: Mapping, deleting: bool, event_type: str | None) -> bool:
        """True if a node event can change placement (labels, deletion, appearance)."""
        key = (tuple(sorted((labels or {}).items())), deleting, event_type == "DELETED")
        if self._node_seen.get(name) == key:
            return False
        self._node_seen[name] = key
        if event_type == "DELETED":
            self._node_seen.pop(name, None)
        return True

    # -- the reconcile, synchronous (runs in a worker thread) ------------------------
    def _reconcile(self, name: str) -> tuple[list, dict | None]:
        program = _first(self.programs, name)
        if program is None:
            return [], None
        nodes = [n for store in list(self.nodes.values()) for n in list(store)]
        attachments = list(self.attachments.get(name, []))
        uid = program["metadata"]["uid"]
        deleting = bool(program["metadata"].get("deletionTimestamp"))
        selected: list[str] = []
        wanted: dict = {}
        if not deleting:
            try:
                spec = ProgramSpec.from_dict(program.get("spec"))
                digest = source_digest(self.api.read_source(program["spec"]["source"]))
                wanted = placement.wanted_attachments(program, nodes, digest)
                selected = placement.selected_nodes(spec.node_selector, nodes)
            except SpecError as e:
                # A wrong spec or a missing source: say so and leave running attachments be.
                new = status_mod.stalled_status(program, e.reason, e.message, _now())
                return self._write_status(program, new), program
        plan = placement.plan_attachments(wanted, attachments, owner_uid=uid)
        node_names = {n["metadata"]["name"] for n in nodes}
        for body in plan.create:
            self.api.create_attachment(body)
        for att_name, patch in plan.update:
            self.api.patch_attachment(att_name, patch)
        by_name = {a["metadata"]["name"]: a for a in attachments}
        for att_name in plan.delete:
            self.api.delete_attachment(att_name)
            att = by_name.get(att_name) or {}
            if (att.get("spec") or {}).get("nodeName") not in node_names:
                self.api.release_attachment(att)
        if plan.blocked:
            # e.g. an attachment of the same name still being deleted: come back shortly
            self._retry_soon.add(name)
        new = status_mod.aggregate(program, attachments, selected, _now())
        return self._write_status(program, new), program

    def _write_status(self, program: dict, new: dict) -> list:
        old = program.get("status") or {}
        if _same_status(old, new):
            return []
        patch = dict(new)
        removed_modes = set(old.get("modes") or {}) - set(new.get("modes") or {})
        if removed_modes:    # a merge patch keeps map keys it does not mention
            patch["modes"] = {**new.get("modes", {}), **{m: None for m in removed_modes}}
        self.api.patch_program_status(program["metadata"]["name"], patch)
        return status_mod.transitions(old, new)

    def orphans(self, program: str) -> list[dict]:
        """Attachments labelled for `program` whose owner (an XdpProgram uid) no longer exists:
        the program was deleted before the operator's finalizer was on it (created just before
        an API outage or an operator crash), or replaced by one of the same name. A cluster's
        garbage collector would delete them eventually; the operator does not rely on it (the
        rig has none), and a stale one would block the new program's attachment of that name."""
        current = _first(self.programs, program)
        uid = (current or {}).get("metadata", {}).get("uid")
        out = []
        for att in list(self.attachments.get(program, [])):
            refs = [r for r in (att.get("metadata") or {}).get("ownerReferences") or []
                    if r.get("kind") == names.PROGRAM_KIND]
            if refs and not any(r.get("uid") == uid for r in refs) \
                    and not (att.get("metadata") or {}).get("deletionTimestamp"):
                out.append(att)
        return out

    def delete_orphans(self, program: str) -> None:
        nodes = {n["metadata"]["name"] for store in list(self.nodes.values()) for n in list(store)}
        for att in self.orphans(program):
            log.warning("deleting attachment %s: its XdpProgram is gone", att["metadata"]["name"])
            self.api.delete_attachment(att["metadata"]["name"])
            if (att.get("spec") or {}).get("nodeName") not in nodes:
                self.api.release_attachment(att)       # no agent to wait for

    def owned_attachments(self, name: str, uid: str) -> list[dict]:
        return [a for a in list(self.attachments.get(name, [])) if placement.is_owned_by(a, uid)]


def _age(timestamp: str | None, now: datetime.datetime) -> float | None:
    if not timestamp:
        return None
    try:
        then = datetime.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        return None
    return (now - then).total_seconds()


def _same_status(old: Mapping, new: Mapping) -> bool:
    return {k: v for k, v in old.items() if k in new} == dict(new) and set(new) <= set(old)


def _first(index, key):
    if index is None or key not in index:
        return None
    for value in index[key]:
        return value
    return None


RECONCILER: Reconciler | None = None


def install(api: ClusterApi) -> Reconciler:
    global RECONCILER
    RECONCILER = Reconciler(api)
    return RECONCILER


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = names.FINALIZER_OPERATOR
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=names.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=names.GROUP, key="last-handled-configuration")
    # Silent hung watches are a known kopf failure: make the server and the client end them.
    settings.watching.server_timeout = 240
    settings.watching.client_timeout = 270
    settings.watching.connect_timeout = 30
    settings.posting.level = logging.WARNING      # kopf's own per-handler events: failures only
    settings.networking.request_timeout = 60


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


def _bound(program_index, node_index, attachment_index) -> Reconciler:
    assert RECONCILER is not None, "handlers.install(api) must run before kopf starts"
    RECONCILER.bind(program_index, node_index, attachment_index)
    return RECONCILER


@kopf.on.event(names.GROUP, names.VERSION, names.PROGRAMS)
async def program_event(name: str, type: str, program_index, node_index, attachment_index, **_: Any) -> None:
    rec = _bound(program_index, node_index, attachment_index)
    if type != "DELETED":
        await rec.request(name)
    elif rec.orphans(name):                 # deleted without our finalizer: nobody else deletes them
        await asyncio.to_thread(rec.delete_orphans, name)


@kopf.on.event("v1", "nodes")
async def node_event(name: str, type: str, labels: Mapping, meta: Mapping,
                     program_index, node_index, attachment_index, **_: Any) -> None:
    rec = _bound(program_index, node_index, attachment_index)
    if rec.node_changed(name, labels, bool(meta.get("deletionTimestamp")), type):
        await asyncio.gather(*(rec.request(p) for p in list(program_index)))


@kopf.on.event(names.GROUP, names.VERSION, names.ATTACHMENTS)
async def attachment_event(labels: Mapping, program_index, node_index, attachment_index, **_: Any) -> None:
    program = labels.get(names.LABEL_PROGRAM)
    if program:
        rec = _bound(program_index, node_index, attachment_index)
        if rec.orphans(program):            # also at start-up: what a crashed operator left behind
            await asyncio.to_thread(rec.delete_orphans, program)
        await rec.request(program)


@kopf.timer(names.GROUP, names.VERSION, names.PROGRAMS, interval=RESYNC_SECONDS, idle=RESYNC_SECONDS)
async def resync(name: str, program_index, node_index, attachment_index, **_: Any) -> None:
    """Catches what no event announces: a ConfigMap source edited, a lost watch event."""
    await _bound(program_index, node_index, attachment_index).request(name)


@kopf.on.delete(names.GROUP, names.VERSION, names.PROGRAMS)
async def program_deleted(name: str, uid: str, body: Mapping, program_index, node_index, attachment_index,
                          **_: Any) -> None:
    """Delete the program's attachments and hold the finalizer until agents released them
    (at most AGENT_CLEANUP_TIMEOUT per attachment)."""
    rec = _bound(program_index, node_index, attachment_index)
    await rec.request(name)
    left = rec.owned_attachments(name, uid)
    now = datetime.datetime.now(datetime.timezone.utc)
    for att in list(left):
        since = _age(att.get("metadata", {}).get("deletionTimestamp"), now)
        if since is not None and since > AGENT_CLEANUP_TIMEOUT:
            node = (att.get("spec") or {}).get("nodeName", "?")
            await asyncio.to_thread(rec.api.release_attachment, att)
            kopf.event(body, type="Warning", reason=reasons.CLEANUP_ABANDONED,
                       message=f"the agent of node {node} did not confirm detaching within {AGENT_CLEANUP_TIMEOUT:.0f}s; "
                               "released; it removes the program when it returns")
            left.remove(att)
    if left:
        nodes = sorted((a.get("spec") or {}).get("nodeName", "?") for a in left)
        raise kopf.TemporaryError(f"waiting for the agents of {len(left)} node(s) to detach: {', '.join(nodes[:10])}",
                                  delay=2)
