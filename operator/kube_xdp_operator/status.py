"""XdpAttachments -> the XdpProgram's status and Events (pure).

No kopf and no Kubernetes client: handlers.py lists the program's attachments, calls
`aggregate`, writes the result as the program's status (every key is always present,
so a merge patch of the whole status never leaves a stale value behind), and emits the
Events `transitions` returns.

Per selected node, the attachment is:
- current: it exists, its agent acted on its latest spec (status.observedGeneration ==
  metadata.generation) and that spec was built from the program's current generation
  (spec.programGeneration == program metadata.generation). Only current attachments
  count as ready or failed, and only their interfaces count in `modes`;
- ready: current and Ready=True;
- stalled: current and Stalled=True (a permanent failure: compile error, verifier...);
- pending: everything else (missing, stale, not reported yet, or retrying a transient
  failure).

Program conditions (kstatus):
- Ready=True when every selected node is ready (reason Ready). Otherwise False with the
  stalled reason, or NodesNotReady.
- Reconciling=True while any node is pending, or an attachment for a node no longer
  selected is still being removed (reason Progressing).
- Stalled=True when any node is stalled: the nodes' common reason, or AttachmentsFailed
  when they differ; the message names the nodes.
- No node selected: Ready=True with reason NoNodesSelected. Decided so: a program that
  selects nothing has nothing left to do, and kstatus readers (Flux, Argo CD) must not
  wait for a timeout; the reason, the "0/0" node summary and an Event say so.
- Program being deleted: Ready=False and Reconciling=True, reason Deleting.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kube_xdp_api import conditions as cond
from kube_xdp_api import reasons
from kube_xdp_api.spec import MODES

FAILING_NODES_MAX = 10
FAILING_MESSAGE_MAX = 1024
NO_MODES = "none"
_NAMES_IN_MESSAGE = 5

Event = tuple[str, str, str]  # (type: Normal|Warning, reason, message)


@dataclass(frozen=True)
class _Failure:
    node: str
    reason: str
    message: str
    stalled: bool


def aggregate(
    program: Mapping[str, Any], attachments: Iterable[Mapping[str, Any]], selected_nodes: Iterable[str], now: str
) -> dict[str, Any]:
    """The XdpProgram status for `program`, given its attachments and selected node names.

    `now` is an RFC 3339 time (conditions.format_time), used for lastTransitionTime when
    a condition changes status; conditions that keep their status keep their time.
    """
    metadata = program.get("metadata") or {}
    generation = metadata.get("generation")
    old_status = program.get("status") or {}
    selected = sorted(set(selected_nodes))
    by_node = _attachments_by_node(attachments)

    ready: list[str] = []
    pending: list[tuple[str, str]] = []
    failures: list[_Failure] = []
    modes: Counter[str] = Counter()
    for node in selected:
        attachment = by_node.get(node)
        if attachment is None:
            pending.append((node, "attachment not created yet"))
            continue
        why_stale = _why_not_current(attachment, generation)
        if why_stale:
            pending.append((node, why_stale))
            continue
        status = attachment.get("status") or {}
        for interface in status.get("interfaces") or ():
            if interface.get("mode") in MODES:
                modes[interface["mode"]] += 1
        conditions = status.get("conditions") or []
        if cond.is_true(conditions, cond.READY):
            ready.append(node)
            continue
        failure = _failure(node, status)
        if failure is not None:
            failures.append(failure)
        if failure is None or not failure.stalled:
            pending.append((node, failure.reason if failure else "agent at work"))
    leftovers = sorted(node for node in by_node if node not in set(selected))
    stalled = [f for f in failures if f.stalled]

    new_conditions = list(old_status.get("conditions") or [])

    def put(type_: str, status: str, reason: str, message: str) -> None:
        nonlocal new_conditions
        new_conditions = cond.set_condition(new_conditions, type_, status, reason, message, generation, now)

    if metadata.get("deletionTimestamp"):
        left = len(by_node)
        message = f"deleting: {left} attachment(s) left" if left else "deleting: no attachment left"
        put(cond.READY, cond.FALSE, reasons.DELETING, message)
        put(cond.RECONCILING, cond.TRUE, reasons.DELETING, message)
        put(cond.STALLED, cond.FALSE, reasons.AS_EXPECTED, "")
    else:
        if not selected:
            put(cond.READY, cond.TRUE, reasons.NO_NODES_SELECTED, "spec.nodeSelector matches no node")
        elif len(ready) == len(selected):
            put(cond.READY, cond.TRUE, reasons.READY, f"{len(ready)}/{len(selected)} nodes ready")
        elif stalled:
            put(cond.READY, cond.FALSE, _common_reason(stalled), _stalled_message(stalled, len(selected)))
        else:
            waiting = _name_list(node for node in selected if node not in set(ready))
            put(cond.READY, cond.FALSE, reasons.NODES_NOT_READY,
                f"{len(ready)}/{len(selected)} nodes ready; waiting for {waiting}")

        if pending or leftovers:
            parts = []
            if pending:
                parts.append(f"waiting for {len(pending)} node(s): " + _name_list(f"{n} ({why})" for n, why in pending))
            if leftovers:
                parts.append(f"removing from {len(leftovers)} node(s) no longer selected: " + _name_list(leftovers))
            put(cond.RECONCILING, cond.TRUE, reasons.PROGRESSING, "; ".join(parts))
        else:
            put(cond.RECONCILING, cond.FALSE, reasons.AS_EXPECTED, "")

        if stalled:
            put(cond.STALLED, cond.TRUE, _common_reason(stalled), _stalled_message(stalled, len(selected)))
        else:
            put(cond.STALLED, cond.FALSE, reasons.AS_EXPECTED, "")

    ordered_modes = {mode: modes[mode] for mode in MODES if modes[mode]}
    return {
        "observedGeneration": generation,
        "conditions": new_conditions,
        "selectedNodes": len(selected),
        "readyNodes": len(ready),
        "failedNodes": len(failures),
        "nodeSummary": f"{len(ready)}/{len(selected)}",
        "modes": ordered_modes,
        "modeSummary": ",".join(f"{m}={n}" for m, n in ordered_modes.items()) or NO_MODES,
        "failingNodes": [
            {
                "node": f.node,
                "reason": f.reason,
                "message": cond.trim_message(
                    f.message or reasons.CATALOGUE.get(f.reason, f.reason), FAILING_MESSAGE_MAX
                ),
            }
            for f in sorted(failures, key=lambda f: f.node)[:FAILING_NODES_MAX]
        ],
    }


def stalled_status(program: Mapping[str, Any], reason: str, message: str, now: str) -> dict[str, Any]:
    """The status of a program the operator cannot place at all (InvalidSpec, SourceNotFound...).

    Ready=False and Stalled=True with `reason`; Reconciling=False (nothing will happen
    until the user changes something). Counts are kept from the previous status:
    existing attachments are left running as they are.
    """
    metadata = program.get("metadata") or {}
    generation = metadata.get("generation")
    old = dict(program.get("status") or {})
    conditions = old.get("conditions") or []
    conditions = cond.set_condition(conditions, cond.READY, cond.FALSE, reason, message, generation, now)
    conditions = cond.set_condition(conditions, cond.RECONCILING, cond.FALSE, reasons.AS_EXPECTED, "", generation, now)
    conditions = cond.set_condition(conditions, cond.STALLED, cond.TRUE, reason, message, generation, now)
    selected = old.get("selectedNodes", 0)
    ready = old.get("readyNodes", 0)
    return {
        "observedGeneration": generation,
        "conditions": conditions,
        "selectedNodes": selected,
        "readyNodes": ready,
        "failedNodes": old.get("failedNodes", 0),
        "nodeSummary": f"{ready}/{selected}",
        "modes": dict(old.get("modes") or {}),
        "modeSummary": old.get("modeSummary") or NO_MODES,
        "failingNodes": list(old.get("failingNodes") or []),
    }


def transitions(old_status: Mapping[str, Any] | None, new_status: Mapping[str, Any]) -> list[Event]:
    """Events for condition changes between two statuses (low volume by design).

    - Stalled turns True, or its reason changes while True: Warning.
    - Ready turns True, or its reason changes while True: Normal.
    - Ready turns from True to False without Stalled: Normal (a new generation, a node
      added, deletion); with Stalled the Stalled Warning says it.
    Progress (Reconciling) and repeated identical statuses emit nothing.
    """
    old_conditions = (old_status or {}).get("conditions") or []
    new_conditions = new_status.get("conditions") or []
    events: list[Event] = []

    def changed(type_: str) -> tuple[Mapping[str, Any] | None, Mapping[str, Any] | None]:
        return cond.get_condition(old_conditions, type_), cond.get_condition(new_conditions, type_)

    old_stalled, new_stalled = changed(cond.STALLED)
    stalled_now = bool(new_stalled and new_stalled.get("status") == cond.TRUE)
    if stalled_now and not _same_true(old_stalled, new_stalled):
        events.append(("Warning", new_stalled["reason"], new_stalled.get("message", "")))  # type: ignore[index]

    old_ready, new_ready = changed(cond.READY)
    if new_ready and new_ready.get("status") == cond.TRUE:
        if not _same_true(old_ready, new_ready):
            events.append(("Normal", new_ready["reason"], new_ready.get("message", "")))
    elif old_ready and old_ready.get("status") == cond.TRUE and new_ready and not stalled_now:
        events.append(("Normal", new_ready["reason"], new_ready.get("message", "")))
    return events


# --- Helpers -----------------------------------------------------------------------------------
def _attachments_by_node(attachments: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """spec.nodeName -> attachment; with two for one node, the one not being deleted wins."""
    by_node: dict[str, Mapping[str, Any]] = {}
    for attachment in attachments:
        node = (attachment.get("spec") or {}).get("nodeName")
        if not node:
            continue
        previous = by_node.get(node)
        if previous is None or _deleting(previous):
            by_node[node] = attachment
    return by_node


def _deleting(obj: Mapping[str, Any]) -> bool:
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


def _why_not_current(attachment: Mapping[str, Any], program_generation: int | None) -> str:
    """'' when the attachment is current (see the module docstring), else why not."""
    if _deleting(attachment):
        return "previous attachment still being removed"
    spec = attachment.get("spec") or {}
    if spec.get("programGeneration") != program_generation:
        return f"attachment at program generation {spec.get('programGeneration')}, not yet updated"
    observed = (attachment.get("status") or {}).get("observedGeneration")
    if not observed:            # absent, or the schema's default 0: the agent never wrote its status
        return "agent has not reported yet"
    if observed != (attachment.get("metadata") or {}).get("generation"):
        return "agent has not acted on the latest spec yet"
    return ""


def _failure(node: str, status: Mapping[str, Any]) -> _Failure | None:
    """The failure a current, not-ready attachment reports, or None when it is just busy."""
    conditions = status.get("conditions") or []
    stalled = cond.get_condition(conditions, cond.STALLED)
    if stalled is not None and stalled.get("status") == cond.TRUE:
        return _Failure(node, stalled.get("reason") or reasons.ATTACHMENTS_FAILED,
                        stalled.get("message") or status.get("message") or "", True)
    ready = cond.get_condition(conditions, cond.READY)
    if ready is None or ready.get("status") != cond.FALSE:
        return None
    reason = ready.get("reason") or ""
    if reason in ("", reasons.PROGRESSING, reasons.AS_EXPECTED):
        return None
    return _Failure(node, reason, ready.get("message") or status.get("message") or "", False)


def _common_reason(failures: list[_Failure]) -> str:
    found = {f.reason for f in failures}
    return found.pop() if len(found) == 1 else reasons.ATTACHMENTS_FAILED


def _stalled_message(stalled: list[_Failure], selected: int) -> str:
    head = f"{len(stalled)}/{selected} nodes failed: "
    parts = []
    for failure in stalled[:_NAMES_IN_MESSAGE]:
        detail = failure.message.strip().splitlines()[0] if failure.message.strip() else ""
        parts.append(f"{failure.node} ({failure.reason}{': ' + detail[:200] if detail else ''})")
    more = len(stalled) - _NAMES_IN_MESSAGE
    return head + "; ".join(parts) + (f"; and {more} more (see failingNodes)" if more > 0 else "")


def _name_list(items: Iterable[str]) -> str:
    items = list(items)
    shown = ", ".join(items[:_NAMES_IN_MESSAGE])
    more = len(items) - _NAMES_IN_MESSAGE
    return shown + (f" (+{more} more)" if more > 0 else "")


def _same_true(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> bool:
    """Both True with the same reason."""
    return bool(
        old and new and old.get("status") == cond.TRUE and new.get("status") == cond.TRUE
        and old.get("reason") == new.get("reason")
    )
