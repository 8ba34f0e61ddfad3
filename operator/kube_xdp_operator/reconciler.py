"""The operator's reconcile of one XdpProgram, and its clean-ups of what is left behind.

Runs on the operator's worker threads (workers.py), one program at a time per program
(the work queue's rule), against kopf's indexes (bound by handlers.py) and the writes of
kubeapi.ClusterApi:

    orphans of the name deleted -> placement.wanted_attachments -> placement.plan_attachments
    -> kubeapi writes -> status.aggregate -> status patch (only when it changed)
    -> Events on transitions

It holds the operator finalizer on every XdpProgram: it adds it with the program's first
reconcile, and when the program is deleted it deletes the attachments and removes the
finalizer once every agent has released its own (or after AGENT_CLEANUP_TIMEOUT).

A reconcile returns when it wants to look again (a blocked attachment, a deferred status
write, a deletion bound running out) instead of scheduling anything: the worker turns
that into the queue's `add_after`. A failure raises; the worker retries with backoff.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import time
from collections.abc import Mapping
from typing import Any

from kube_xdp_api import conditions, names, reasons
from kube_xdp_api.spec import ProgramSpec, SpecError, source_digest

from . import placement
from . import status as status_mod
from .kubeapi import ClusterApi

log = logging.getLogger("kube_xdp_operator")

# An attachment the plan cannot write yet (one of the same name still being deleted):
# look again after this long.
BLOCKED_RECHECK_SECONDS = 2.0
# A program's status is written at most once per this interval while a rollout is in
# progress (1/3 -> 2/3 -> ... ready); a new generation, Ready turning True and Stalled
# are written at once. At 200 nodes this turns ~200 progress writes into a handful.
STATUS_MIN_INTERVAL = 1.0
# How long a deleted program waits for a node's agent to confirm it detached (the agent
# may be down). After that the operator releases the agent's finalizer and says so in a
# Warning Event; the agent removes the program when it returns (orphan cleanup: pinned
# programs without an attachment on its node are detached and unpinned).
AGENT_CLEANUP_TIMEOUT = 600.0
# A deletion still within its bound is looked at again at the latest after this long.
CLEANUP_RECHECK_MAX = 30.0

Event = tuple[str, str, str]     # (type, reason, message)


def _monotonic() -> float:
    return time.monotonic()


@dataclasses.dataclass
class Outcome:
    """What one reconcile of a program did: the Events to post about `program` (the body
    they concern), and when to look again (seconds; None: when something changes)."""

    events: list[Event]
    program: dict | None
    recheck: float | None = None


def soonest(*delays: float | None) -> float | None:
    known = [d for d in delays if d is not None]
    return min(known) if known else None


class Reconciler:
    def __init__(self, api: ClusterApi):
        self.api = api
        self.programs: Any = None        # kopf.Index: program name -> [body]
        self.nodes: Any = None           # kopf.Index: node name -> [{"metadata": ...}]
        self.attachments: Any = None     # kopf.Index: program name -> [attachment bodies]
        self.agent_nodes: Any = None     # kopf.Index: node name -> [its XdpNode's uid] (an agent runs there)
        self._status_written: dict[str, float] = {}  # program -> monotonic time of the last write
        self._finalized: set[str] = set()            # program uids we put our finalizer on
        # program name -> (uid, the status our last write left on the server). Only the
        # operator writes program status, so it is the current one even while the index
        # (fed by the watch) still shows an older one: comparing with that older one
        # re-wrote the same status and posted its transition Events twice.
        self._written: dict[str, tuple[str, dict]] = {}
        self._inventory_suspects: dict[str, str] = {}  # XdpNodes the last sweep found without a Node

    def bind(self, programs, nodes, attachments, agent_nodes) -> None:
        self.programs, self.nodes, self.attachments = programs, nodes, attachments
        self.agent_nodes = agent_nodes

    @property
    def bound(self) -> bool:
        """kopf's indexes are in hand (its first handler ran, after they were fully listed)."""
        return self.programs is not None

    # -- one program -------------------------------------------------------------------
    def reconcile(self, name: str) -> float | None:
        """Make the attachments labelled for program `name` match it (none if it is gone),
        write its status, post its Events. Returns when to look again (None: when
        something changes). Raises on API errors (the caller retries)."""
        if self.orphans(name):            # also at start-up: what a crashed operator left behind
            self.delete_orphans(name)
        outcome = self._reconcile(name)
        for type_, reason, message in outcome.events:
            self.api.post_event(outcome.program, type_, reason, message)
        return outcome.recheck

    def _reconcile(self, name: str) -> Outcome:
        program = first(self.programs, name)
        if program is None:
            self._status_written.pop(name, None)
            self._written.pop(name, None)
            return Outcome([], None)
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
            return Outcome([], program)   # not held by us (any more): orphans go when it is gone
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
                events, recheck = self._write_status(program, new)
                return Outcome(events, program, recheck)
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
        # e.g. an attachment of the same name still being deleted: come back shortly
        blocked = BLOCKED_RECHECK_SECONDS if plan.blocked else None
        events, released, cleanup = self._release_stuck(attachments)
        left = [a for a in attachments if placement.is_owned_by(a, uid) and a["metadata"]["name"] not in released]
        new = status_mod.aggregate(program, left if deleting else attachments, selected, conditions.now())
        # Written before the finalizer goes too: a program still held by someone else's
        # finalizer says Deleting (kstatus, Argo CD), not the Ready it had.
        status_events, deferred = self._write_status(program, new)
        events += status_events
        if deleting and not left:
            self.api.set_program_finalizer(program, present=False)
            self._status_written.pop(name, None)
            self._finalized.discard(uid)
            self._written.pop(name, None)
        return Outcome(events, program, soonest(blocked, cleanup, deferred))

    def _agent_nodes(self) -> set[str] | None:
        """Nodes with a kube-xdp agent (an XdpNode); None when unknown (no index)."""
        if self.agent_nodes is None:
            return None
        return set(self.agent_nodes)

    def _release_stuck(self, attachments: list) -> tuple[list[Event], set[str], float | None]:
        """Attachments of this program deleted more than AGENT_CLEANUP_TIMEOUT ago and still
        held by an agent's finalizer: that node's agent is gone or down. Release them (the
        agent removes the program when it returns: orphan cleanup) and say so in a Warning.
        Returns (events, released names, when to look again for the ones still within the
        bound)."""
        released: set[str] = set()
        events: list[Event] = []
        now = datetime.datetime.now(datetime.timezone.utc)
        recheck = None
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
                recheck = soonest(recheck, min(AGENT_CLEANUP_TIMEOUT - since + 0.05, CLEANUP_RECHECK_MAX))
                continue
            node = (att.get("spec") or {}).get("nodeName", "?")
            self.api.release_attachment(att)
            released.add(meta["name"])
            events.append(("Warning", reasons.CLEANUP_ABANDONED,
                           f"the agent of node {node} did not confirm detaching within {AGENT_CLEANUP_TIMEOUT:.0f}s; "
                           "released; it removes the program when it returns"))
        return events, released, recheck

    def _write_status(self, program: dict, new: dict) -> tuple[list[Event], float | None]:
        """Write `new` unless it is what the server has; progress waits for the rate limit.
        Returns (transition Events, when to look again for a deferred write)."""
        uid = program["metadata"]["uid"]
        old = program.get("status") or {}      # _reconcile put our last write there
        if conditions.status_unchanged(old, new):
            return [], None
        name = program["metadata"]["name"]
        since = _monotonic() - self._status_written.get(name, float("-inf"))
        if since < STATUS_MIN_INTERVAL and not _urgent(old, new):
            return [], STATUS_MIN_INTERVAL - since
        patch = dict(new)
        removed_modes = set(old.get("modes") or {}) - set(new.get("modes") or {})
        if removed_modes:    # a merge patch keeps map keys it does not mention
            patch["modes"] = {**new.get("modes", {}), **{m: None for m in removed_modes}}
        written = self.api.patch_program_status(name, patch)
        if written is not None:
            self._written[name] = (uid, written)
        self._status_written[name] = _monotonic()
        return status_mod.transitions(old, new), None

    # -- attachments whose program is gone ---------------------------------------------------
    def orphans(self, program: str) -> list[dict]:
        """Attachments labelled for `program` whose owner (an XdpProgram uid) no longer exists:
        the program was deleted before the operator's finalizer was on it (created just before
        an API outage or an operator crash), or replaced by one of the same name. A cluster's
        garbage collector would delete them eventually; the operator does not rely on it (the
        rig has none), and a stale one would block the new program's attachment of that name."""
        current = first(self.programs, program)
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

    # -- XdpNodes of Nodes that are gone ----------------------------------------------------
    def node_gone(self, name: str, uid: str) -> None:
        """A Node was deleted: its XdpNode (the object with `uid`, as the index showed it
        then) goes too: no agent will ever update it again, and a Node re-created under the
        same name must not inherit it. An XdpNode re-published meanwhile has another uid
        and stays (the delete's precondition)."""
        self.api.delete_xdpnode(name, uid)
        log.info("deleted XdpNode %s: its Node is gone", name)

    def sweep_inventories(self) -> None:
        """At each resync: XdpNodes whose Node vanished while the operator was not watching
        (deleted after two sweeps, see placement.stale_inventories)."""
        if self.agent_nodes is None or self.nodes is None:
            return
        inventories = {name: first(self.agent_nodes, name) for name in list(self.agent_nodes)}
        doomed, self._inventory_suspects = placement.stale_inventories(
            inventories, set(self.nodes), self._inventory_suspects)
        for name, uid in doomed:
            self.api.delete_xdpnode(name, uid)
            log.info("deleted XdpNode %s: no Node of that name in two resyncs", name)


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


def first(index, key):
    """The first value kopf's `index` holds under `key` (None if none)."""
    if index is None or key not in index:
        return None
    for value in index[key]:
        return value
    return None
