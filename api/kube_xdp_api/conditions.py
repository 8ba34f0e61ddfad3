"""Status conditions and kstatus, as pure functions over plain dicts.

Conditions follow `metav1.Condition`: `type`, `status` (True/False/Unknown), `reason`
(CamelCase, never empty; see reasons.py), `message`, `lastTransitionTime` (RFC 3339),
`observedGeneration`. kube-xdp objects always carry the three kstatus types
READY, RECONCILING and STALLED once their controller has seen them.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

from kube_xdp_api import reasons

READY = "Ready"
RECONCILING = "Reconciling"
STALLED = "Stalled"

TRUE, FALSE, UNKNOWN = "True", "False", "Unknown"
STATUSES = (TRUE, FALSE, UNKNOWN)

# kstatus results (sigs.k8s.io/cli-utils/pkg/kstatus), as read by Flux, kpt, Argo CD.
IN_PROGRESS = "InProgress"
FAILED = "Failed"
CURRENT = "Current"
TERMINATING = "Terminating"

# metav1.Condition's reason rule; shared with the CRD schema.
REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
REASON_MAX = 1024
# Messages kube-xdp writes (conditions, compiler/verifier output, failingNodes) are
# trimmed to this many characters; the schema allows CONDITION_MESSAGE_MAX on conditions
# (metav1's limit) and MESSAGE_MAX on the other message fields.
MESSAGE_MAX = 4096
CONDITION_MESSAGE_MAX = 32768

_TRIMMED = "\n...(trimmed)...\n"


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with second precision, as Kubernetes writes `metav1.Time`."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def now() -> str:
    """The current time as format_time writes it (for lastTransitionTime, lastUpdate...)."""
    return format_time(datetime.now(timezone.utc))


def status_unchanged(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """True when writing `new` as a merge patch over `old` would change nothing: every key
    of `new` has the same value in `old` (keys only in `old` are not compared; a null in
    `new` equals a missing key, as a merge patch deletes with null)."""
    return all(old.get(key) == value for key, value in new.items())


def trim_message(text: str, limit: int = MESSAGE_MAX, *, keep: str = "head") -> str:
    """`text` cut to at most `limit` characters, with a marker where it was cut.

    keep="head" suits compiler output (the first error matters), keep="tail" suits a
    verifier log (the last lines say why it refused).
    """
    if len(text) <= limit:
        return text
    room = max(limit - len(_TRIMMED), 0)
    if keep == "tail":
        return (_TRIMMED + text[len(text) - room :])[-limit:]
    return (text[:room] + _TRIMMED)[:limit]


def get_condition(conditions: Iterable[Mapping[str, Any]] | None, type: str) -> Mapping[str, Any] | None:  # noqa: A002
    """The condition of `type`, or None."""
    for cond in conditions or ():
        if cond.get("type") == type:
            return cond
    return None


def is_true(conditions: Iterable[Mapping[str, Any]] | None, type: str) -> bool:  # noqa: A002
    cond = get_condition(conditions, type)
    return cond is not None and cond.get("status") == TRUE


def set_condition(
    conditions: Iterable[Mapping[str, Any]] | None,
    type: str,  # noqa: A002  (the field is called `type`)
    status: str,
    reason: str,
    message: str,
    observed_generation: int | None,
    now: str,
) -> list[dict[str, Any]]:
    """A new list with the condition of `type` set; the input is not modified.

    `lastTransitionTime` changes to `now` only when `status` changes (or the condition is
    new); reason, message and observedGeneration are always updated. Order is kept, a new
    type is appended. The message is trimmed to MESSAGE_MAX characters; an empty message
    is replaced by the reason's meaning from reasons.CATALOGUE (a human always gets a
    sentence).
    """
    if status not in STATUSES:
        raise ValueError(f"condition {type}: status {status!r} is not one of {STATUSES}")
    if not reason or len(reason) > REASON_MAX or not re.fullmatch(REASON_PATTERN, reason):
        raise ValueError(f"condition {type}: reason {reason!r} is not CamelCase")
    reasons.require(reason)
    result = [copy.deepcopy(dict(c)) for c in conditions or ()]
    new: dict[str, Any] = {
        "type": type,
        "status": status,
        "reason": reason,
        "message": trim_message(message or reasons.CATALOGUE.get(reason, reason)),
        "lastTransitionTime": now,
    }
    if observed_generation is not None:
        new["observedGeneration"] = observed_generation
    for i, old in enumerate(result):
        if old.get("type") == type:
            if old.get("status") == status and old.get("lastTransitionTime"):
                new["lastTransitionTime"] = old["lastTransitionTime"]
            result[i] = new
            return result
    result.append(new)
    return result


def kstatus(obj: Mapping[str, Any]) -> str:
    """The kstatus of a kube-xdp object: Terminating, InProgress, Failed or Current.

    Rules (conventions.md), in order: deletionTimestamp -> Terminating;
    status.observedGeneration != metadata.generation -> InProgress; Reconciling=True ->
    InProgress; Stalled=True -> Failed; Ready=True -> Current; otherwise InProgress.
    The last rule is stricter than kstatus' generic one (which says Current when no
    condition says otherwise): kube-xdp objects always set Ready, so an object without
    Ready=True has not been reconciled yet.
    """
    metadata = obj.get("metadata") or {}
    if metadata.get("deletionTimestamp"):
        return TERMINATING
    status = obj.get("status") or {}
    generation = metadata.get("generation")
    if generation is not None and status.get("observedGeneration") != generation:
        return IN_PROGRESS
    conditions = status.get("conditions") or []
    if is_true(conditions, RECONCILING):
        return IN_PROGRESS
    if is_true(conditions, STALLED):
        return FAILED
    if is_true(conditions, READY):
        return CURRENT
    return IN_PROGRESS
