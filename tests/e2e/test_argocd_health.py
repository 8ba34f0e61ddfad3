"""The Argo CD health check against XdpPrograms as the real operator and agents leave them
on the rig: healthy (attached on a node), degraded (a compile error reported by the
agent; an invalid spec refused by the operator), progressing (a selected node whose
agent never answers), deleting (held by a finalizer of the test's own).

tests/unit/test_argocd_health.py covers every state on statuses computed in-process; this
one takes the objects from the API server, exactly what Argo CD would read.
"""

from __future__ import annotations

import uuid

import kubernetes
import pytest

from kube_xdp_api import conditions as cond
from kube_xdp_api import names

from .kubexdp import COUNT_ALL, program, wait

lupa = pytest.importorskip("lupa.lua51", reason="lupa (PyPI) provides the Lua 5.1 engine; pip install -e '.[test]'")

from ..unit.test_argocd_health import ARGO_FOR_KSTATUS, run_health  # noqa: E402

pytestmark = pytest.mark.rig

HOLD = "kubexdp.io/argo-health-test"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def health_of(kubexdp, name: str) -> dict:
    obj = kubexdp.get(name)
    health = run_health(obj)
    assert health["status"] == ARGO_FOR_KSTATUS[cond.kstatus(obj)], (health, obj.get("status"))
    return health


def test_healthy_when_attached(kubexdp, programs) -> None:
    name = unique("argo-ok")
    programs(program(name, COUNT_ALL, "xdp_count", interfaces={"names": ["eth1"]},
                     selector={"matchLabels": {"kubernetes.io/hostname": "node-1"}}))
    kubexdp.wait_ready(name)
    health = health_of(kubexdp, name)
    assert health["status"] == "Healthy" and "1/1" in health["message"], health


def test_degraded_on_a_compile_error(kubexdp, programs) -> None:
    name = unique("argo-cc")
    programs(program(name, COUNT_ALL.replace("return XDP_PASS;", "return XDP_PASSS;"), "xdp_count",
                     interfaces={"names": ["eth1"]}, selector={"matchLabels": {"kubernetes.io/hostname": "node-1"}}))
    wait(lambda: kubexdp.is_current(name, "Stalled", "True"), 90, f"{name} Stalled")
    health = health_of(kubexdp, name)
    assert health["status"] == "Degraded" and "CompileError" in health["message"], health


def test_degraded_on_an_invalid_spec(kubexdp, programs) -> None:
    name = unique("argo-bad")
    programs(program(name, COUNT_ALL, "xdp_count", interfaces={"pattern": "eth(("},
                     selector={"matchLabels": {"kubernetes.io/hostname": "node-1"}}))
    wait(lambda: kubexdp.is_current(name, "Stalled", "True"), 60, f"{name} Stalled")
    health = health_of(kubexdp, name)
    assert health["status"] == "Degraded" and "InvalidSpec" in health["message"], health


def test_progressing_while_a_node_has_not_answered(kubexdp, programs, admin) -> None:
    """A Node object with no agent behind it: the attachment is never reported."""
    name, ghost = unique("argo-wait"), unique("ghost")
    core = kubernetes.client.CoreV1Api(admin)
    core.create_node({"metadata": {"name": ghost, "labels": {HOLD: ghost}}})
    try:
        programs(program(name, COUNT_ALL, "xdp_count", selector={"matchLabels": {HOLD: ghost}}))
        wait(lambda: kubexdp.is_current(name, "Reconciling", "True"), 60, f"{name} Reconciling")
        health = health_of(kubexdp, name)
        assert health["status"] == "Progressing" and ghost in health["message"], health
        kubexdp.delete(name)
        kubexdp.wait_gone(name)
    finally:
        core.delete_node(ghost)


def test_progressing_while_deleting(kubexdp, programs) -> None:
    name = unique("argo-del")
    body = program(name, COUNT_ALL, "xdp_count", selector={"matchLabels": {HOLD: "no-such-node"}})
    body["metadata"]["finalizers"] = [HOLD]
    programs(body)
    kubexdp.wait_ready(name)                      # no node selected: Ready, NoNodesSelected
    assert health_of(kubexdp, name)["status"] == "Healthy"
    kubexdp.delete(name)
    try:
        wait(lambda: (kubexdp.condition(name, "Ready") or {}).get("reason") == "Deleting", 30, f"{name} Deleting")
        obj = kubexdp.get(name)
        assert obj["metadata"]["deletionTimestamp"]
        health = health_of(kubexdp, name)
        assert health["status"] == "Progressing" and health["message"].startswith("deleting"), health
    finally:
        kubexdp.custom.patch_cluster_custom_object(names.GROUP, names.VERSION, names.PROGRAMS, name,
                                                   {"metadata": {"finalizers": None}})
