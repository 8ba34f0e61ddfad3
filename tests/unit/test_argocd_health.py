"""The Argo CD health check (deploy/argocd/xdpprogram-health.lua) run by a real Lua engine.

Argo CD runs health checks with gopher-lua (Lua 5.1) and an `obj` global holding the
resource; the check returns {status, message}. lupa's Lua 5.1 runtime stands in for it.
The statuses fed to it are produced by the operator's own status code
(kube_xdp_operator.status.aggregate / stalled_status), so the test follows the real
status shape, and each verdict is compared with kube_xdp_api.conditions.kstatus: Argo CD
and Flux must agree on every state.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

lupa = pytest.importorskip("lupa.lua51", reason="lupa (PyPI) provides the Lua 5.1 engine; pip install -e '.[test]'")

from kube_xdp_api import conditions as cond  # noqa: E402
from kube_xdp_api import reasons  # noqa: E402
from kube_xdp_operator.status import aggregate, stalled_status  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
LUA = REPO / "deploy" / "argocd" / "xdpprogram-health.lua"
CM_PATCH = REPO / "deploy" / "argocd" / "argocd-cm-patch.yaml"
HEALTH_KEY = "resource.customizations.health.kubexdp.io_XdpProgram"

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z"
GEN = 3
NODES = ["node-1", "node-2"]

# Argo CD health <-> kstatus: the same state seen by both tools.
ARGO_FOR_KSTATUS = {
    cond.CURRENT: "Healthy",
    cond.IN_PROGRESS: "Progressing",
    cond.FAILED: "Degraded",
    cond.TERMINATING: "Progressing",
}


def run_health(obj: dict) -> dict:
    """Run the check as Argo CD does: a fresh state, `obj` global, the script's return value."""
    lua = lupa.LuaRuntime(unpack_returned_tuples=False)
    assert lua.execute("return _VERSION") == "Lua 5.1"
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(LUA.read_text())
    return {"status": result["status"], "message": result["message"]}


# --- objects in each state, built with the operator's status code -------------------------
def program(generation: int = GEN, *, deleting: bool = False, status: dict | None = None) -> dict:
    metadata = {"name": "udp-drop", "uid": "uid-1", "generation": generation}
    if deleting:
        metadata["deletionTimestamp"] = T1
    obj = {"apiVersion": "kubexdp.io/v1alpha1", "kind": "XdpProgram", "metadata": metadata,
           "spec": {"entrypoint": "xdp_udp_drop"}}
    if status is not None:
        obj["status"] = status
    return obj


def attachment(node: str, state: str, *, reason: str = "", message: str = "") -> dict:
    """What an agent reports: ready (attached natively), stalled (permanent) or retrying."""
    ready = {"ready": (cond.TRUE, reasons.ATTACHED), "stalled": (cond.FALSE, reason),
             "retrying": (cond.FALSE, reason)}[state]
    conditions = cond.set_condition([], cond.READY, *ready, message, 1, T0)
    conditions = cond.set_condition(conditions, cond.STALLED, cond.TRUE if state == "stalled" else cond.FALSE,
                                    reason if state == "stalled" else reasons.AS_EXPECTED, message, 1, T0)
    return {
        "metadata": {"name": f"udp-drop.{node}", "generation": 1},
        "spec": {"nodeName": node, "programGeneration": GEN},
        "status": {"observedGeneration": 1, "conditions": conditions,
                   "interfaces": [{"name": "eth0", "mode": "native"}] if state == "ready" else []},
    }


def with_status(prog: dict, status: dict) -> dict:
    return {**prog, "status": status}


def state_progressing() -> dict:
    prog = program()
    return with_status(prog, aggregate(prog, [attachment("node-1", "ready")], NODES, T0))


def state_retrying() -> dict:
    prog = program()
    atts = [attachment("node-1", "ready"), attachment("node-2", "retrying", reason=reasons.HOOK_BUSY, message="busy")]
    return with_status(prog, aggregate(prog, atts, NODES, T0))


def state_healthy() -> dict:
    prog = program()
    return with_status(prog, aggregate(prog, [attachment(n, "ready") for n in NODES], NODES, T0))


def state_no_nodes() -> dict:
    prog = program()
    return with_status(prog, aggregate(prog, [], [], T0))


def state_degraded_compile_error() -> dict:
    prog = program()
    atts = [attachment(n, "stalled", reason=reasons.COMPILE_ERROR, message="main.c:3: error: undeclared XDP_PASSS")
            for n in NODES]
    return with_status(prog, aggregate(prog, atts, NODES, T0))


def state_degraded_invalid_spec() -> dict:
    prog = program()
    return with_status(prog, stalled_status(prog, reasons.INVALID_SPEC, "spec.interfaces.pattern: bad regex", T0))


def state_stalled_and_pending() -> dict:
    prog = program()
    atts = [attachment("node-1", "stalled", reason=reasons.VERIFIER_REJECTED, message="R1 invalid mem access")]
    return with_status(prog, aggregate(prog, atts, NODES, T0))


def state_deleting() -> dict:
    healthy = state_healthy()
    prog = program(deleting=True, status=healthy["status"])
    return with_status(prog, aggregate(prog, [attachment("node-1", "ready")], NODES, T1))


def state_new_generation() -> dict:
    healthy = state_healthy()          # status of generation GEN, spec now at GEN + 1
    return program(GEN + 1, status=healthy["status"])


def state_never_reconciled() -> dict:
    return program()


STATES = {
    # name: (object, Argo CD status, words the message must contain)
    "progressing": (state_progressing, "Progressing", ["Progressing", "node-2", "nodes 1/2"]),
    "progressing-retrying": (state_retrying, "Progressing", ["Progressing", "node-2"]),
    "healthy": (state_healthy, "Healthy", ["Ready", "2/2 nodes ready", "modes native=2"]),
    "healthy-no-nodes-selected": (state_no_nodes, "Healthy", ["NoNodesSelected", "nodes 0/0"]),
    "degraded-compile-error": (state_degraded_compile_error, "Degraded", ["CompileError", "XDP_PASSS"]),
    "degraded-invalid-spec": (state_degraded_invalid_spec, "Degraded", ["InvalidSpec", "bad regex"]),
    "stalled-while-reconciling": (state_stalled_and_pending, "Progressing", ["stalled: VerifierRejected"]),
    "deleting": (state_deleting, "Progressing", ["deleting: 1 attachment(s) left"]),
    "deleting-before-the-operator-saw-it": (lambda: program(deleting=True, status=state_healthy()["status"]),
                                            "Progressing", ["deleting: waiting for the operator"]),
    "new-generation-not-observed": (state_new_generation, "Progressing", [f"generation {GEN + 1}"]),
    "never-reconciled": (state_never_reconciled, "Progressing", ["operator to report status"]),
}


@pytest.mark.parametrize("name", STATES)
def test_health_of_each_state(name: str) -> None:
    build, expected, words = STATES[name]
    obj = build()
    health = run_health(obj)
    assert health["status"] == expected, health
    for word in words:
        assert word in health["message"], health


@pytest.mark.parametrize("name", STATES)
def test_argo_cd_and_kstatus_agree(name: str) -> None:
    obj = STATES[name][0]()
    assert run_health(obj)["status"] == ARGO_FOR_KSTATUS[cond.kstatus(obj)]


@pytest.mark.parametrize("name", [n for n in STATES if not n.startswith("deleting")])
def test_any_state_being_deleted_is_progressing(name: str) -> None:
    """Argo CD releases that short-circuit deletion say Progressing ("Pending deletion")
    without running the script; releases that run it keep Progressing too. The script
    must agree whatever status the program had (a stalled program being deleted is not
    Degraded), so the verdict is the same with either kind of release."""
    obj = STATES[name][0]()
    obj["metadata"]["deletionTimestamp"] = T1
    assert run_health(obj)["status"] == "Progressing"
    assert cond.kstatus(obj) == cond.TERMINATING


def test_real_status_shape_is_used() -> None:
    """Guard against the builders drifting from the operator: the statuses carry every
    key the check reads, with the condition types it looks for."""
    status = state_healthy()["status"]
    assert {"observedGeneration", "conditions", "nodeSummary", "modeSummary"} <= set(status)
    assert {c["type"] for c in status["conditions"]} == {cond.READY, cond.RECONCILING, cond.STALLED}


def test_a_wrong_script_is_caught() -> None:
    """The harness can fail: a check that ignores Stalled calls a failed program healthy."""
    broken = LUA.read_text().replace('stalled.status == "True"', 'stalled.status == "Never"')
    lua = lupa.LuaRuntime(unpack_returned_tuples=False)
    lua.globals().obj = lua.table_from(state_degraded_invalid_spec(), recursive=True)
    assert lua.execute(broken)["status"] != "Degraded"


def test_argocd_cm_patch_ships_the_same_lua() -> None:
    patch = yaml.safe_load(CM_PATCH.read_text())
    assert patch["kind"] == "ConfigMap" and patch["metadata"] == {"name": "argocd-cm", "namespace": "argocd"}
    assert list(patch["data"]) == [HEALTH_KEY]
    assert patch["data"][HEALTH_KEY] == LUA.read_text(), "argocd-cm-patch.yaml drifted from xdpprogram-health.lua"
