"""What the agent did -> the XdpAttachment's status (pure).

Conditions follow kstatus: Ready=True only when the program is attached, read back, on
every wanted interface; a failure whose reason needs a human (reasons.STALLING: compile
or verifier errors, a conflict, a missing interface...) sets Stalled=True; anything still
moving (a transient error, a source digest not caught up yet) sets Reconciling=True.
The agent keeps re-checking in every case, so a Stalled attachment recovers by itself
when its cause goes away (an interface appears, a foreign program is removed).

`status.interfaces[]` is the structured record (record.py): one entry per interface,
what the agent decides from on its next reconcile. The top-level `reason`/`message` and
the conditions' messages are for people.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from kube_xdp_api import conditions as cond
from kube_xdp_api import reasons

from .record import IfaceRecord

INTERFACES_MAX = 64

Failure = tuple[str, str]     # (reason, message)


@dataclasses.dataclass(frozen=True)
class Report:
    """A status to write, and the failure it reports (None: Ready), for the Events."""
    status: dict[str, Any]
    failure: Failure | None


def failure_of(interfaces: list[IfaceRecord] | None, failure: Failure | None = None) -> Failure | None:
    """The attachment's failure: `failure` (what stopped the agent before any interface
    was touched: spec, source, compile), else the interfaces' (one reason shared by all
    failing interfaces; the first one's when each needs a human; else AttachFailed),
    else NoInterfacesMatched when there is no interface at all; None: Ready."""
    if failure is not None:
        return failure
    bad = [r for r in interfaces or [] if not r.ready]
    if bad:
        common = {r.reason for r in bad}
        if len(common) == 1:
            reason = common.pop() or reasons.ATTACH_FAILED
        elif all(reasons.is_stalling(r.reason or "") for r in bad):
            reason = bad[0].reason or reasons.ATTACH_FAILED    # every one needs a human: stay Stalled
        else:
            reason = reasons.ATTACH_FAILED
        return reason, "; ".join(f"{r.name}: {r.message}" for r in bad)
    if not interfaces:
        return reasons.NO_INTERFACES_MATCHED, "no interface selected on this node"
    return None


def attachment_status(*, old: Mapping[str, Any] | None, generation: int, now: str,
                      interfaces: list[IfaceRecord] | None = None, failure: Failure | None = None,
                      compile_info: Mapping[str, Any] | None = None) -> Report:
    """`failure` is a (reason, message) that stopped the agent before any interface was
    touched (spec, source, compile); `interfaces` are the per-interface records."""
    old = old or {}
    failure = failure_of(interfaces, failure)
    entries = [r.to_entry() for r in (interfaces or [])[:INTERFACES_MAX]]
    conditions = old.get("conditions") or []
    if failure is None:
        conditions = _set3(conditions, generation, now, ready=(cond.TRUE, reasons.ATTACHED, _ready_message(interfaces)),
                           reconciling=(cond.FALSE, reasons.AS_EXPECTED, ""), stalled=(cond.FALSE, reasons.AS_EXPECTED, ""))
        top = None
    else:
        keep = "tail" if failure[0] == reasons.VERIFIER_REJECTED else "head"
        reason, message = reasons.require(failure[0]), cond.trim_message(failure[1], keep=keep)
        if reasons.is_stalling(reason):
            conditions = _set3(conditions, generation, now, ready=(cond.FALSE, reason, message),
                               reconciling=(cond.FALSE, reasons.AS_EXPECTED, ""), stalled=(cond.TRUE, reason, message))
        else:
            conditions = _set3(conditions, generation, now, ready=(cond.FALSE, reason, message),
                               reconciling=(cond.TRUE, reason, message), stalled=(cond.FALSE, reasons.AS_EXPECTED, ""))
        top = (reason, message or reason)
    # On success reason/message are None: the merge patch removes a previous failure's.
    status: dict[str, Any] = {"observedGeneration": generation, "conditions": conditions, "interfaces": entries,
                              "reason": top[0] if top else None, "message": top[1] if top else None}
    if compile_info is not None:
        status["compile"] = dict(compile_info)
    elif "compile" in old:
        status["compile"] = old["compile"]
    return Report(status, top)


def _ready_message(interfaces: list[IfaceRecord] | None) -> str:
    return ", ".join(f"{r.name}={r.mode}" for r in interfaces or [])


def _set3(conditions, generation, now, *, ready, reconciling, stalled):
    for type_, (status, reason, message) in ((cond.READY, ready), (cond.RECONCILING, reconciling),
                                             (cond.STALLED, stalled)):
        conditions = cond.set_condition(conditions, type_, status, reason, message, generation, now)
    return conditions


def transition_events(old: Mapping[str, Any] | None, new: Report) -> list[tuple[str, str, str]]:
    """Events for condition transitions (low volume): Stalled turning True or changing
    reason -> Warning, with the failure's message. A node turning Ready posts nothing: the
    program's Ready Event (the operator's) says it once for all nodes, and one Normal
    Event per node and rollout was a fifth of kube-xdp's API writes (bench/). Recoveries
    worth a line (DriftRepaired, PinRepaired, TookOver) are posted where they happen."""
    def get(status, type_):
        return cond.get_condition((status or {}).get("conditions"), type_) or {}
    old_stalled, new_stalled = get(old, cond.STALLED), get(new.status, cond.STALLED)
    if new.failure is not None and new_stalled.get("status") == cond.TRUE and (
            old_stalled.get("status") != cond.TRUE or old_stalled.get("reason") != new_stalled.get("reason")):
        return [("Warning", new.failure[0], new.failure[1][:1024])]
    return []
