"""kopf wiring of the operator: indexes, event handlers, deletion, periodic resync.

All triggers (a program changed, a node relabelled/added/removed, an attachment's
status changed, a resync tick) funnel into `Reconciler.request(program)`, which
coalesces bursts and runs one reconcile per program at a time:

    placement.wanted_attachments -> placement.plan_attachments -> kubeapi writes
    status.aggregate -> status patch (only when it changed) -> Events on transitions

The reconcile itself holds the operator finalizer on every XdpProgram: it adds it with
the program's first reconcile, and when the program is deleted it deletes the
attachments and removes the finalizer once every agent has released its own (or after
AGENT_CLEANUP_TIMEOUT). kopf is used for watching and indexes only (Events are posted through
kube_xdp_api.events, so that `kubectl describe` finds them): no kopf
change handlers, timers or daemons, so kopf writes nothing on the objects (no finalizer,
no last-handled-configuration copy of the spec, no progress annotations), which keeps
the API writes per rollout down (see bench/). The periodic resync is an asyncio task.
kopf does not run handlers before its indexes are fully listed, so a restarting
operator never plans against a partial view of the nodes.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Mapping
from typing import Any

import kopf
import urllib3
from kubernetes.client.rest import ApiException

from kube_xdp_api import conditions, names, reasons
from kube_xdp_api.spec import ProgramSpec, SpecError, source_digest

from . import placement
from . import status as status_mod
from .kubeapi import ClusterApi

log = logging.getLogger("kube_xdp_operator")

RESYNC_SECONDS = 30.0
RETRY_SECONDS = 2.0
# A program's status is written at most once per this interval while a rollout is in
# progress (1/3 -> 2/3 -> ... ready); a new generation, Ready turning True and Stalled
# are written at once. At 200 nodes this turns ~200 progress writes into a handful.
STATUS_MIN_INTERVAL = 1.0
# How long a deleted program waits for a node's agent to confirm it detached (the agent
# may be down). After that the operator releases the agent's finalizer and says so in a
# Warning Event; the agent removes the program when it returns (orphan cleanup: pinned
# programs without an attachment on its node are detached and unpinned).
AGENT_CLEANUP_TIMEOUT = 600.0


def _monotonic() -> float:
    return time.monotonic()


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
        self._recheck: dict[str, float] = {}         # program -> seconds (set by _reconcile)
        self._recheck_pending: dict[str, asyncio.TimerHandle] = {}
        self._status_written: dict[str, float] = {}  # program -> monotonic time of the last write
        self._finalized: set[str] = set()            # program uids we put our finalizer on
        # program uid -> the status our last write left on the server. Only the operator
        # writes program status, so it is the current one even while the index (fed by the
        # watch) still shows an older one: comparing with that older one re-wrote the same
        # status and posted its transition Events twice.
        self._written: dict[str, tuple[str, dict]] = {}   # name -> (uid, status)
        self.agent_nodes: kopf.Index | None = None   # node name -> its XdpNode's uid (an agent runs there)
        self._inventory_suspects: dict[str, str] = {}  # XdpNodes the last sweep found without a Node

    def bind(self, programs, nodes, attachments, agent_nodes) -> None:
        self.programs, self.nodes, self.attachments = programs, nodes, attachments
        self.agent_nodes = agent_nodes

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
                    self._recheck_in(name, RETRY_SECONDS)
                    return
                for type_, reason, message in events:
                    await asyncio.to_thread(self.api.post_event, body, type_, reason, message)
                if name in self._recheck:
                    self._recheck_in(name, self._recheck.pop(name))
        finally:
            self._running.discard(name)

    def _recheck_in(self, name: str, delay: float) -> None:
        """Reconcile `name` again after `delay` s (a failed reconcile, a blocked attachment,
        a deferred status write, a deletion timeout); one pending recheck per program, the
        earliest wins: every failed trigger (events, timers) used to start its own retry
        chain, so an API outage multiplied the retries with its length."""
        loop = asyncio.get_running_loop()
        pending = self._recheck_pending.get(name)
        if pending is not None and not pending.cancelled() and pending.when() <= loop.time() + delay:
            return
        if pending is not None:
            pending.cancel()

        def fire() -> None:
            self._recheck_pending.pop(name, None)
            asyncio.ensure_future(self.request(name))

        self._recheck_pending[name] = loop.call_later(max(delay, 0.01), fire)

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
            self._status_written.pop(name, None)
            self._written.pop(name, None)
            return [], None
        written_uid, written = self._written.get(name, (None, None))
        if written is not None and written_uid == program["metadata"]["uid"]:
            program = {**program, "status": written}
        nodes = [n for store in list(self.nodes.values()) for n in list(store)]
        attachments = list(self.attachments.get(name, []))
        uid = program["metadata"]["uid"]
        deleting = bool(program["metadata"].get("deletionTimestamp"))
        finalizers = program["metadata"].get("finalizers") or []
        selected: list[str] = []
        wanted: dict = {}
        if deleting and names.FINALIZER_OPERATOR not in finalizers:
            return [], program     # not held by us (any more): the DELETED event deletes orphans
        if not deleting:
            # _finalized: added by us, the index may not show it yet (re-adding with its older
            # resourceVersion would fail with a conflict and delay the whole reconcile).
            if names.FINALIZER_OPERATOR not in finalizers and uid not in self._finalized:
                self.api.set_program_finalizer(program, present=True)
                self._finalized.add(uid)
            try:
                spec = ProgramSpec.from_dict(program.get("spec"))
                digest = source_digest(self.api.read_source(program["spec"]["source"]))
                wanted = placement.wanted_attachments(program, nodes, digest, agent_nodes=self._agent_nodes())
                selected = placement.selected_nodes(spec.node_selector, nodes)
            except SpecError as e:
                # A wrong spec or a missing source: say so and leave running attachments be.
                new = status_mod.stalled_status(program, e.reason, e.message, conditions.now())
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
            self._want_recheck(name, RETRY_SECONDS)
        events, released = self._release_stuck(program, attachments)
        left = [a for a in attachments if placement.is_owned_by(a, uid) and a["metadata"]["name"] not in released]
        new = status_mod.aggregate(program, left if deleting else attachments, selected, conditions.now())
        # Written before the finalizer goes too: a program still held by someone else's
        # finalizer says Deleting (kstatus, Argo CD), not the Ready it had.
        events += self._write_status(program, new)
        if deleting and not left:
            self.api.set_program_finalizer(program, present=False)
            self._status_written.pop(name, None)
            self._finalized.discard(uid)
            self._written.pop(name, None)
        return events, program

    def _agent_nodes(self) -> set[str] | None:
        """Nodes with a kube-xdp agent (an XdpNode); None when unknown (no index)."""
        if self.agent_nodes is None:
            return None
        return set(self.agent_nodes)

    # -- XdpNodes of Nodes that are gone ----------------------------------------------
    def node_gone(self, name: str) -> None:
        """A Node was deleted: its XdpNode goes too (no agent will ever update it again, and
        a Node re-created under the same name must not inherit it)."""
        uid = _first(self.agent_nodes, name)
        if uid:
            self.api.delete_xdpnode(name, uid)
            log.info("deleted XdpNode %s: its Node is gone", name)

    def sweep_inventories(self) -> None:
        """At each resync: XdpNodes whose Node vanished while the operator was not watching
        (deleted after two sweeps, see placement.stale_inventories)."""
        if self.agent_nodes is None or self.nodes is None:
            return
        inventories = {name: _first(self.agent_nodes, name) for name in list(self.agent_nodes)}
        doomed, self._inventory_suspects = placement.stale_inventories(
            inventories, set(self.nodes), self._inventory_suspects)
        for name, uid in doomed:
            self.api.delete_xdpnode(name, uid)
            log.info("deleted XdpNode %s: no Node of that name in two resyncs", name)

    def _release_stuck(self, program: Mapping, attachments: list) -> tuple[list, set[str]]:
        """Attachments of this program deleted more than AGENT_CLEANUP_TIMEOUT ago and still
        held by an agent's finalizer: that node's agent is gone or down. Release them (the
        agent removes the program when it returns: orphan cleanup) and say so in a Warning.
        Schedules a recheck for the ones still within the bound. Returns (events, released names)."""
        released: set[str] = set()
        events = []
        now = datetime.datetime.now(datetime.timezone.utc)
        soonest = None
        for att in attachments:
            meta = att.get("metadata") or {}
            if names.FINALIZER_AGENT not in (meta.get("finalizers") or []):
                continue
            since = _age(meta.get("deletionTimestamp"), now)
            if since is None:
                continue
            # deletionTimestamp has whole seconds: the deletion may be up to 1 s younger
            since -= 1.0
            if since < AGENT_CLEANUP_TIMEOUT:
                left = AGENT_CLEANUP_TIMEOUT - since + 0.05
                soonest = left if soonest is None else min(soonest, left)
                continue
            node = (att.get("spec") or {}).get("nodeName", "?")
            self.api.release_attachment(att)
            released.add(meta["name"])
            events.append(("Warning", reasons.CLEANUP_ABANDONED,
                           f"the agent of node {node} did not confirm detaching within {AGENT_CLEANUP_TIMEOUT:.0f}s; "
                           "released; it removes the program when it returns"))
        if soonest is not None:
            self._want_recheck(program["metadata"]["name"], min(soonest, RESYNC_SECONDS))
        return events, released

    def _want_recheck(self, name: str, delay: float) -> None:
        current = self._recheck.get(name)
        self._recheck[name] = delay if current is None else min(current, delay)

    def _write_status(self, program: dict, new: dict) -> list:
        uid = program["metadata"]["uid"]
        old = program.get("status") or {}      # _reconcile put our last write there
        if conditions.status_unchanged(old, new):
            return []
        name = program["metadata"]["name"]
        since = _monotonic() - self._status_written.get(name, float("-inf"))
        if since < STATUS_MIN_INTERVAL and not _urgent(old, new):
            self._want_recheck(name, STATUS_MIN_INTERVAL - since)
            return []
        patch = dict(new)
        removed_modes = set(old.get("modes") or {}) - set(new.get("modes") or {})
        if removed_modes:    # a merge patch keeps map keys it does not mention
            patch["modes"] = {**new.get("modes", {}), **{m: None for m in removed_modes}}
        written = self.api.patch_program_status(name, patch)
        if written is not None:
            self._written[name] = (uid, written)
        self._status_written[name] = _monotonic()
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


def _age(timestamp: str | None, now: datetime.datetime) -> float | None:
    if not timestamp:
        return None
    try:
        then = datetime.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        return None
    return (now - then).total_seconds()


def _urgent(old: Mapping, new: Mapping) -> bool:
    """A status that must not wait for the progress rate limit: a new observedGeneration
    (kstatus clients wait for it), Ready or Stalled changing status (the outcome), or the
    last Reconciling of a rollout turning False."""
    if old.get("observedGeneration") != new.get("observedGeneration"):
        return True
    for type_ in (conditions.READY, conditions.STALLED, conditions.RECONCILING):
        before = conditions.get_condition(old.get("conditions") or [], type_) or {}
        after = conditions.get_condition(new.get("conditions") or [], type_) or {}
        if before.get("status") != after.get("status"):
            return True
    return False


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
    _TASKS.add(asyncio.get_running_loop().create_task(_resync_forever()))


# The finalizer name kopf is told to use: never one of ours (kopf removes its finalizer
# from objects that no handler needs it for, so it must not be names.FINALIZER_OPERATOR).
KOPF_FINALIZER = f"{names.GROUP}/kopf-unused"
_TASKS: set[asyncio.Task] = set()


async def _resync_forever() -> None:
    """Every RESYNC_SECONDS, reconcile every program: catches what no event announces (a
    ConfigMap source edited, a lost watch event). A task of its own rather than a kopf
    timer: kopf timers put kopf's finalizer on every object (two writes per program)."""
    while True:
        await asyncio.sleep(RESYNC_SECONDS)
        rec = RECONCILER
        if rec is None or rec.programs is None:
            continue
        for name in list(rec.programs):
            try:
                await rec.request(name)
            except Exception:        # a resync must never end the loop
                log.exception("resync of %s failed", name)
        try:
            await asyncio.to_thread(rec.sweep_inventories)
        except Exception:
            log.exception("sweep of XdpNodes without a Node failed")


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


def _bound(kw: Mapping[str, Any]) -> Reconciler:
    assert RECONCILER is not None, "handlers.install(api) must run before kopf starts"
    RECONCILER.bind(kw["program_index"], kw["node_index"], kw["attachment_index"], kw["agent_node_index"])
    return RECONCILER


@kopf.on.event(names.GROUP, names.VERSION, names.PROGRAMS)
async def program_event(name: str, type: str, **kw: Any) -> None:
    rec = _bound(kw)
    if type != "DELETED":
        await rec.request(name)
    elif rec.orphans(name):                 # deleted without our finalizer: nobody else deletes them
        await asyncio.to_thread(rec.delete_orphans, name)


@kopf.on.event("v1", "nodes")
async def node_event(name: str, type: str, labels: Mapping, meta: Mapping, **kw: Any) -> None:
    rec = _bound(kw)
    if type == "DELETED":
        try:
            await asyncio.to_thread(rec.node_gone, name)
        except (ApiException, OSError, urllib3.exceptions.HTTPError) as e:   # the resync sweep retries
            log.warning("could not delete the XdpNode of deleted Node %s: %s", name, e)
    if rec.node_changed(name, labels, bool(meta.get("deletionTimestamp")), type):
        await asyncio.gather(*(rec.request(p) for p in list(kw["program_index"])))


@kopf.on.event(names.GROUP, names.VERSION, names.ATTACHMENTS)
async def attachment_event(labels: Mapping, **kw: Any) -> None:
    program = labels.get(names.LABEL_PROGRAM)
    if program:
        rec = _bound(kw)
        if rec.orphans(program):            # also at start-up: what a crashed operator left behind
            await asyncio.to_thread(rec.delete_orphans, program)
        await rec.request(program)
