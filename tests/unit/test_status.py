"""XdpAttachments -> XdpProgram status and Events (kube_xdp_operator.status)."""

from __future__ import annotations

import pytest

from kube_xdp_api import conditions as cond
from kube_xdp_api import schema
from kube_xdp_operator.status import aggregate, stalled_status, transitions

T0, T1, T2 = "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z", "2026-01-01T00:02:00Z"
GEN = 5
COMPILER_OUTPUT = (
    "/virtual/main.c:3:12: error: use of undeclared identifier 'XDP_PASSS'\n"
    "    return XDP_PASSS;\n           ^\n1 error generated."
)


def program(generation=GEN, deleting=False, status=None):
    metadata = {"name": "drop-udp", "uid": "uid-1", "generation": generation}
    if deleting:
        metadata["deletionTimestamp"] = T1
    obj = {"metadata": metadata, "spec": {}}
    if status is not None:
        obj["status"] = status
    return obj


def attachment(node, *, state="ready", modes=("native",), program_generation=GEN, generation=2, observed=2,
               reason="", message="", deleting=False):
    """An attachment for `node`; state: ready | progressing | stalled | retrying | unreported."""
    metadata = {"name": f"drop-udp.{node}", "generation": generation}
    if deleting:
        metadata["deletionTimestamp"] = T0
    obj = {"metadata": metadata, "spec": {"nodeName": node, "programGeneration": program_generation}}
    if state == "unreported":
        return obj
    ready = {"ready": ("True", "Attached"), "progressing": ("False", "Progressing"),
             "stalled": ("False", reason), "retrying": ("False", reason)}[state]
    conditions = cond.set_condition([], "Ready", *ready, message, generation, T0)
    conditions = cond.set_condition(conditions, "Stalled", "True" if state == "stalled" else "False",
                                    reason if state == "stalled" else "AsExpected", message, generation, T0)
    obj["status"] = {
        "observedGeneration": observed,
        "conditions": conditions,
        "interfaces": [{"name": f"eth{i}", "mode": m} for i, m in enumerate(modes)],
    }
    if message:
        obj["status"].update(reason=reason, message=message)
    return obj


def conditions_of(status):
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def kstatus_of(prog, status):
    return cond.kstatus({**prog, "status": status})


def test_all_ready():
    status = aggregate(program(), [attachment("n1"), attachment("n2")], ["n1", "n2"], T1)
    assert conditions_of(status) == {"Ready": ("True", "Ready"), "Reconciling": ("False", "AsExpected"),
                                     "Stalled": ("False", "AsExpected")}
    assert status["observedGeneration"] == GEN
    assert (status["selectedNodes"], status["readyNodes"], status["failedNodes"]) == (2, 2, 0)
    assert status["nodeSummary"] == "2/2"
    assert status["failingNodes"] == []
    assert all(c["observedGeneration"] == GEN for c in status["conditions"])
    assert kstatus_of(program(), status) == cond.CURRENT


def test_one_missing():
    status = aggregate(program(), [attachment("n1")], ["n1", "n2"], T1)
    assert conditions_of(status)["Ready"] == ("False", "NodesNotReady")
    assert conditions_of(status)["Reconciling"] == ("True", "Progressing")
    assert "n2 (attachment not created yet)" in cond.get_condition(status["conditions"], "Reconciling")["message"]
    assert status["nodeSummary"] == "1/2"
    assert kstatus_of(program(), status) == cond.IN_PROGRESS


@pytest.mark.parametrize(
    "stale",
    [attachment("n2", program_generation=GEN - 1), attachment("n2", generation=3, observed=2),
     attachment("n2", state="unreported"), attachment("n2", state="progressing"),
     attachment("n2", deleting=True)],
    ids=["program-generation-behind", "observed-generation-behind", "not-reported", "agent-progressing",
         "previous-being-deleted"],
)
def test_stale_or_busy_attachment_is_reconciling(stale):
    status = aggregate(program(), [attachment("n1"), stale], ["n1", "n2"], T1)
    assert conditions_of(status) == {"Ready": ("False", "NodesNotReady"), "Reconciling": ("True", "Progressing"),
                                     "Stalled": ("False", "AsExpected")}
    assert status["readyNodes"] == 1 and status["failedNodes"] == 0
    assert kstatus_of(program(), status) == cond.IN_PROGRESS


def test_stale_attachment_modes_are_not_counted():
    status = aggregate(program(), [attachment("n1"), attachment("n2", modes=("generic",), program_generation=1)],
                       ["n1", "n2"], T1)
    assert status["modes"] == {"native": 1}


def test_one_stalled_with_compiler_output():
    atts = [attachment("n1"), attachment("n2", state="stalled", reason="CompileError", message=COMPILER_OUTPUT)]
    status = aggregate(program(), atts, ["n1", "n2"], T1)
    assert conditions_of(status) == {"Ready": ("False", "CompileError"), "Reconciling": ("False", "AsExpected"),
                                     "Stalled": ("True", "CompileError")}
    stalled = cond.get_condition(status["conditions"], "Stalled")["message"]
    assert "n2" in stalled and "use of undeclared identifier 'XDP_PASSS'" in stalled
    assert status["failingNodes"] == [{"node": "n2", "reason": "CompileError", "message": COMPILER_OUTPUT}]
    assert status["failedNodes"] == 1
    assert kstatus_of(program(), status) == cond.FAILED


def test_stalled_nodes_with_different_reasons():
    atts = [attachment("n1", state="stalled", reason="CompileError", message="e"),
            attachment("n2", state="stalled", reason="InterfaceNotFound", message="no eth9")]
    status = aggregate(program(), atts, ["n1", "n2"], T1)
    assert conditions_of(status)["Stalled"] == ("True", "AttachmentsFailed")
    assert [f["node"] for f in status["failingNodes"]] == ["n1", "n2"]


def test_stalled_while_others_progress_is_in_progress_then_failed():
    atts = [attachment("n1", state="stalled", reason="VerifierRejected", message="R0 invalid mem access"),
            attachment("n2", state="unreported")]
    status = aggregate(program(), atts, ["n1", "n2"], T1)
    assert conditions_of(status)["Stalled"] == ("True", "VerifierRejected")
    assert conditions_of(status)["Reconciling"] == ("True", "Progressing")
    assert kstatus_of(program(), status) == cond.IN_PROGRESS


def test_transient_failure_is_listed_but_not_stalled():
    atts = [attachment("n1", state="retrying", reason="AttachFailed", message="EBUSY")]
    status = aggregate(program(), atts, ["n1"], T1)
    assert conditions_of(status) == {"Ready": ("False", "NodesNotReady"), "Reconciling": ("True", "Progressing"),
                                     "Stalled": ("False", "AsExpected")}
    assert status["failingNodes"] == [{"node": "n1", "reason": "AttachFailed", "message": "EBUSY"}]


def test_mixed_modes():
    atts = [attachment("n1", modes=("native", "native")), attachment("n2", modes=("generic", "native")),
            attachment("n3", modes=("offload",))]
    status = aggregate(program(), atts, ["n1", "n2", "n3"], T1)
    assert status["modes"] == {"offload": 1, "native": 3, "generic": 1}
    assert status["modeSummary"] == "offload=1,native=3,generic=1"


def test_zero_nodes_is_ready_with_no_nodes_selected():
    status = aggregate(program(), [], [], T1)
    assert conditions_of(status) == {"Ready": ("True", "NoNodesSelected"), "Reconciling": ("False", "AsExpected"),
                                     "Stalled": ("False", "AsExpected")}
    assert (status["nodeSummary"], status["modes"], status["modeSummary"]) == ("0/0", {}, "none")
    assert kstatus_of(program(), status) == cond.CURRENT


def test_deselected_nodes_are_reconciling_until_their_attachment_is_gone():
    status = aggregate(program(), [attachment("n1"), attachment("old", deleting=True)], ["n1"], T1)
    assert conditions_of(status)["Ready"] == ("True", "Ready")
    assert conditions_of(status)["Reconciling"] == ("True", "Progressing")
    assert "old" in cond.get_condition(status["conditions"], "Reconciling")["message"]
    assert status["modes"] == {"native": 1}


def test_deleting():
    status = aggregate(program(deleting=True), [attachment("n1")], ["n1"], T1)
    assert conditions_of(status) == {"Ready": ("False", "Deleting"), "Reconciling": ("True", "Deleting"),
                                     "Stalled": ("False", "AsExpected")}
    assert kstatus_of(program(deleting=True), status) == cond.TERMINATING


def test_failing_nodes_are_capped_and_sorted():
    nodes = [f"n{i:02d}" for i in range(15, 0, -1)]
    atts = [attachment(n, state="stalled", reason="HookBusy", message="xdp-filter owns the hook") for n in nodes]
    status = aggregate(program(), atts, nodes, T1)
    assert [f["node"] for f in status["failingNodes"]] == [f"n{i:02d}" for i in range(1, 11)]
    assert status["failedNodes"] == 15
    assert "and 10 more" in cond.get_condition(status["conditions"], "Stalled")["message"]


def test_last_transition_time_is_kept_while_status_holds():
    first = aggregate(program(), [attachment("n1")], ["n1", "n2"], T1)
    second = aggregate(program(status=first), [attachment("n1")], ["n1", "n2"], T2)
    assert all(c["lastTransitionTime"] == T1 for c in second["conditions"])
    third = aggregate(program(status=second), [attachment("n1"), attachment("n2")], ["n1", "n2"], T2)
    times = {c["type"]: c["lastTransitionTime"] for c in third["conditions"]}
    assert times == {"Ready": T2, "Reconciling": T2, "Stalled": T1}


def test_aggregate_output_satisfies_the_status_schema_limits():
    nodes = [f"node-{i}" for i in range(30)]
    atts = [attachment(n, state="stalled", reason="CompileError", message="x" * 9000) for n in nodes]
    status = aggregate(program(), atts, nodes, T1)
    status_schema = schema.program_status_schema()
    assert len(status["failingNodes"]) <= status_schema["properties"]["failingNodes"]["maxItems"]
    message_max = status_schema["properties"]["failingNodes"]["items"]["properties"]["message"]["maxLength"]
    assert all(len(f["message"]) <= message_max for f in status["failingNodes"])
    assert all(len(c["message"]) <= 4096 for c in status["conditions"])


def test_stalled_status_for_an_unplaceable_program():
    previous = aggregate(program(), [attachment("n1")], ["n1"], T0)
    status = stalled_status(program(generation=GEN + 1, status=previous), "InvalidSpec", "spec.entrypoint: bad", T1)
    assert conditions_of(status) == {"Ready": ("False", "InvalidSpec"), "Reconciling": ("False", "AsExpected"),
                                     "Stalled": ("True", "InvalidSpec")}
    assert status["observedGeneration"] == GEN + 1
    assert (status["nodeSummary"], status["modes"]) == ("1/1", {"native": 1})
    assert kstatus_of(program(generation=GEN + 1), status) == cond.FAILED


# --- Events ---------------------------------------------------------------------------------------
def _status(atts, nodes, prev=None, deleting=False, at=T1):
    return aggregate(program(deleting=deleting, status=prev), atts, nodes, at)


READY = _status([attachment("n1")], ["n1"])
WAITING = _status([], ["n1"])
STALLED = _status([attachment("n1", state="stalled", reason="CompileError", message="boom")], ["n1"])
VERIFIER = _status([attachment("n1", state="stalled", reason="VerifierRejected", message="R1 !read_ok")], ["n1"])
EMPTY = _status([], [])


@pytest.mark.parametrize(
    ("old", "new", "events"),
    [
        (None, WAITING, []),
        (WAITING, WAITING, []),
        (None, READY, [("Normal", "Ready", "1/1 nodes ready")]),
        (WAITING, READY, [("Normal", "Ready", "1/1 nodes ready")]),
        (READY, READY, []),
        (READY, STALLED, [("Warning", "CompileError",
                           cond.get_condition(STALLED["conditions"], "Stalled")["message"])]),
        (STALLED, STALLED, []),
        (STALLED, VERIFIER, [("Warning", "VerifierRejected",
                              cond.get_condition(VERIFIER["conditions"], "Stalled")["message"])]),
        (STALLED, READY, [("Normal", "Ready", "1/1 nodes ready")]),
        (READY, WAITING, [("Normal", "NodesNotReady",
                           cond.get_condition(WAITING["conditions"], "Ready")["message"])]),
        (EMPTY, READY, [("Normal", "Ready", "1/1 nodes ready")]),
        (None, EMPTY, [("Normal", "NoNodesSelected", "spec.nodeSelector matches no node")]),
        (READY, _status([attachment("n1")], ["n1"], deleting=True),
         [("Normal", "Deleting", "deleting: 1 attachment(s) left")]),
    ],
    ids=["first-waiting", "still-waiting", "first-ready", "became-ready", "still-ready", "became-stalled",
         "still-stalled",
         "stalled-reason-changed", "recovered", "ready-lost", "selected-nodes-appeared", "selects-nothing",
         "deleting"],
)
def test_transitions(old, new, events):
    assert transitions(old, new) == events
