"""Conditions and kstatus (kube_xdp_api.conditions)."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone

import pytest

from kube_xdp_api import reasons
from kube_xdp_api.conditions import (
    CURRENT,
    FAILED,
    IN_PROGRESS,
    MESSAGE_MAX,
    TERMINATING,
    format_time,
    get_condition,
    kstatus,
    set_condition,
    trim_message,
)

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


def test_new_condition_is_appended_with_now():
    conditions = set_condition([], "Ready", "False", "Progressing", "starting", 1, T0)
    assert conditions == [{"type": "Ready", "status": "False", "reason": "Progressing", "message": "starting",
                           "lastTransitionTime": T0, "observedGeneration": 1}]


def test_same_status_keeps_last_transition_time_and_updates_the_rest():
    before = set_condition([], "Ready", "False", "Progressing", "starting", 1, T0)
    after = set_condition(before, "Ready", "False", "NodesNotReady", "1/2 ready", 2, T1)
    assert after[0]["lastTransitionTime"] == T0
    assert (after[0]["reason"], after[0]["message"], after[0]["observedGeneration"]) == (
        "NodesNotReady", "1/2 ready", 2)


def test_status_change_moves_last_transition_time():
    before = set_condition([], "Ready", "False", "Progressing", "starting", 1, T0)
    after = set_condition(before, "Ready", "True", "Ready", "2/2", 1, T1)
    assert after[0]["lastTransitionTime"] == T1


def test_input_is_not_modified_and_order_is_kept():
    before = set_condition([], "Ready", "False", "Progressing", "", 1, T0)
    before = set_condition(before, "Stalled", "False", "AsExpected", "", 1, T0)
    frozen = copy.deepcopy(before)
    after = set_condition(before, "Ready", "True", "Ready", "ok", 1, T1)
    assert before == frozen
    assert [c["type"] for c in after] == ["Ready", "Stalled"]


def test_get_condition():
    conditions = set_condition(None, "Stalled", "True", "CompileError", "x", 1, T0)
    assert get_condition(conditions, "Stalled")["reason"] == "CompileError"
    assert get_condition(conditions, "Ready") is None
    assert get_condition(None, "Ready") is None


def test_empty_message_gets_the_reason_meaning():
    conditions = set_condition([], "Reconciling", "False", reasons.AS_EXPECTED, "", 1, T0)
    assert conditions[0]["message"] == reasons.CATALOGUE[reasons.AS_EXPECTED]


@pytest.mark.parametrize(
    ("status", "reason"),
    [("true", "Ready"), ("Yes", "Ready"), ("True", ""), ("True", "not camel"), ("True", "1Ready")],
    ids=["lowercase-status", "bad-status", "empty-reason", "spaces-in-reason", "digit-first-reason"],
)
def test_bad_status_or_reason_is_a_programming_error(status, reason):
    with pytest.raises(ValueError):
        set_condition([], "Ready", status, reason, "", 1, T0)


def test_a_reason_not_in_the_catalogue_is_refused():
    """CamelCase is not enough: every reason written is documented in reasons.CATALOGUE."""
    with pytest.raises(ValueError, match="not in kube_xdp_api.reasons.CATALOGUE"):
        set_condition([], "Ready", "False", "SomethingNew", "", 1, T0)
    assert set_condition([], "Ready", "False", reasons.CONFLICT, "", 1, T0)[0]["reason"] == "Conflict"


def test_long_message_is_trimmed():
    conditions = set_condition([], "Stalled", "True", "CompileError", "e" * 10000, 1, T0)
    assert len(conditions[0]["message"]) == MESSAGE_MAX


@pytest.mark.parametrize("keep", ["head", "tail"])
def test_trim_message_keeps_the_useful_end(keep):
    text = "FIRST " + "x" * 5000 + " LAST"
    trimmed = trim_message(text, 100, keep=keep)
    assert len(trimmed) == 100
    assert ("FIRST" in trimmed) == (keep == "head")
    assert ("LAST" in trimmed) == (keep == "tail")
    assert "trimmed" in trimmed
    assert trim_message("short", 100, keep=keep) == "short"


def test_format_time_is_rfc3339_utc():
    moment = datetime(2026, 1, 1, 1, 2, 3, 999, tzinfo=timezone(timedelta(hours=2)))
    assert format_time(moment) == "2025-12-31T23:02:03Z"


def obj(generation=2, observed=2, deleting=False, **conditions):
    status_conditions = [
        {"type": t, "status": s, "reason": "R", "message": "", "lastTransitionTime": T0}
        for t, s in conditions.items()
    ]
    metadata = {"name": "p", "generation": generation}
    if deleting:
        metadata["deletionTimestamp"] = T1
    status = {"conditions": status_conditions}
    if observed is not None:
        status["observedGeneration"] = observed
    return {"metadata": metadata, "status": status}


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        (obj(Ready="True", Reconciling="False", Stalled="False"), CURRENT),
        (obj(deleting=True, Ready="True", Reconciling="False", Stalled="False"), TERMINATING),
        (obj(observed=1, Ready="True", Reconciling="False", Stalled="False"), IN_PROGRESS),
        (obj(observed=None), IN_PROGRESS),
        (obj(Ready="False", Reconciling="True", Stalled="False"), IN_PROGRESS),
        (obj(Ready="False", Reconciling="True", Stalled="True"), IN_PROGRESS),
        (obj(Ready="False", Reconciling="False", Stalled="True"), FAILED),
        (obj(Ready="False", Reconciling="False", Stalled="False"), IN_PROGRESS),
        (obj(Ready="Unknown"), IN_PROGRESS),
        ({"metadata": {"name": "x"}}, IN_PROGRESS),
    ],
    ids=["ready", "deleting", "stale-generation", "never-reconciled", "reconciling",
         "reconciling-wins-over-stalled", "stalled", "ready-false-idle", "ready-unknown", "no-status"],
)
def test_kstatus(resource, expected):
    assert kstatus(resource) == expected


@pytest.mark.parametrize("old, new, unchanged", [
    ({"a": 1, "b": 2}, {"a": 1}, True),
    ({"a": 1}, {"a": 2}, False),
    ({}, {"a": None}, True),             # null deletes in a merge patch: nothing to do
    ({}, {"a": 0}, False),
    ({"a": [1]}, {"a": [1]}, True),
])
def test_status_unchanged(old, new, unchanged):
    from kube_xdp_api.conditions import status_unchanged
    assert status_unchanged(old, new) is unchanged
