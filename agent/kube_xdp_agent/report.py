"""What the agent did -> the XdpAttachment's status (pure).

Conditions follow kstatus: Ready=True only when the program is attached, read back, on
every wanted interface; a failure whose reason needs a human (reasons.STALLING: compile
or verifier errors, a conflict, a missing interface...) sets Stalled=True; anything still
moving (a transient error, a source digest not caught up yet) sets Reconciling=True.
The agent keeps re-checking in every case, so a Stalled attachment recovers by itself
when its cause goes away (an interface appears, a foreign program is removed).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kube_xdp_api import conditions as cond
from kube_xdp_api import reasons

from .execute import IfaceResult

INTERFACES_MAX = 64


def attachment_status(*, old: Mapping[str, Any] | None, generation: int, now: str,
                      interfaces: list[IfaceResult] | None = None, failure: tuple[str, str] | None = None,
                      compile_info: Mapping[str, Any] | None = None, pin_path: str | None = None,
                      tag: str | None = None) -> dict[str, Any]:
    """`failure` is a (reason, message) that stopped the agent before any interface was
    touched (spec, source, compile); `interfaces` are the per-interface results."""
    old = old or {}
    entries = []
    for r in (interfaces or [])[:INTERFACES_MAX]:
        entry: dict[str, Any] = {"name": r.interface, "ready": r.ok}
        if r.ok:
            entry.update(mode=r.mode, progId=r.prog_id)
            if tag:
                entry["tag"] = tag
            if pin_path:
                entry["pinPath"] = pin_path
        elif r.mode and r.prog_id:      # not what is wanted, but what the kernel holds there
            entry.update(mode=r.mode, progId=r.prog_id)
        if r.reason:
            entry["reason"] = r.reason
            entry["message"] = cond.trim_message(r.message)
        entries.append(entry)

    bad = [r for r in interfaces or [] if not r.ok]
    if failure is None and bad:
        common = {r.reason for r in bad}
        if len(common) == 1:
            reason = common.pop()
        elif all(reasons.is_stalling(r.reason) for r in bad):
            reason = bad[0].reason      # every one needs a human: stay Stalled, name the first
        else:
            reason = reasons.ATTACH_FAILED
        failure = (reason, "; ".join(f"{r.interface}: {r.message}" for r in bad))
    if failure is None and not interfaces:
        failure = (reasons.NO_INTERFACES_MATCHED, "no interface selected on this node")

    conditions = old.get("conditions") or []
    if failure is None:
        conditions = _set3(conditions, generation, now, ready=(cond.TRUE, reasons.ATTACHED, _ready_message(interfaces)),
                           reconciling=(cond.FALSE, reasons.AS_EXPECTED, ""), stalled=(cond.FALSE, reasons.AS_EXPECTED, ""))
    else:
        keep = "tail" if failure[0] == reasons.VERIFIER_REJECTED else "head"
        reason, message = failure[0], cond.trim_message(failure[1], keep=keep)
        if reasons.is_stalling(reason):
            conditions = _set3(conditions, generation, now, ready=(cond.FALSE, reason, message),
                               reconciling=(cond.FALSE, reasons.AS_EXPECTED, ""), stalled=(cond.TRUE, reason, message))
        else:
            conditions = _set3(conditions, generation, now, ready=(cond.FALSE, reason, message),
                               reconciling=(cond.TRUE, reason, message), stalled=(cond.FALSE, reasons.AS_EXPECTED, ""))
    # On success reason/message are None: the merge patch removes a previous failure's.
    status: dict[str, Any] = {"observedGeneration": generation, "conditions": conditions, "interfaces": entries,
                              "reason": failure[0] if failure else None,
                              "message": (cond.trim_message(failure[1], keep="tail" if failure[0] == reasons.VERIFIER_REJECTED
                                                            else "head") or failure[0]) if failure else None}
    if compile_info is not None:
        status["compile"] = dict(compile_info)
    elif "compile" in old:
        status["compile"] = old["compile"]
    return status


def _ready_message(interfaces: list[IfaceResult] | None) -> str:
    return ", ".join(f"{r.interface}={r.mode}" for r in interfaces or [])


def _set3(conditions, generation, now, *, ready, reconciling, stalled):
    for type_, (status, reason, message) in ((cond.READY, ready), (cond.RECONCILING, reconciling),
                                             (cond.STALLED, stalled)):
        conditions = cond.set_condition(conditions, type_, status, reason, message, generation, now)
    return conditions


def transition_events(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """Events for condition transitions (low volume): Stalled turning True or changing
    reason -> Warning. A node turning Ready posts nothing: the program's Ready Event (the
    operator's) says it once for all nodes, and one Normal Event per node and rollout was
    a fifth of kube-xdp's API writes (bench/). Recoveries worth a line (DriftRepaired,
    PinRepaired, TookOver) are posted by the controller where they happen."""
    def get(status, type_):
        return cond.get_condition((status or {}).get("conditions"), type_) or {}
    out = []
    old_stalled, new_stalled = get(old, cond.STALLED), get(new, cond.STALLED)
    if new_stalled.get("status") == cond.TRUE and (old_stalled.get("status") != cond.TRUE
                                                    or old_stalled.get("reason") != new_stalled.get("reason")):
        out.append(("Warning", new_stalled.get("reason", "Stalled"), new_stalled.get("message", "")[:1024]))
    return out
