"""Fault 9 (found by fault 3): a program deleted before the operator's finalizer was on it.

A program created just before an API outage (or an operator crash) can get its
attachments before kopf manages to add the operator's finalizer; deleting it then removes
it at once, and nothing deletes its attachments (a cluster's garbage collector would,
eventually; the rig has none, and a stale attachment blocks a new program of the same
name). Holds: the operator deletes such orphaned attachments, whether it sees the
program's DELETED event or finds them when it starts; the agents then detach and unpin.
"""

from __future__ import annotations

import time

import pytest

from kube_xdp_api import names
from kube_xdp_rig import workloads
from tests.e2e.kubexdp import kernel_xdp, pins_of

from .faultlib import TABLE, fault_program, wait_until

pytestmark = pytest.mark.rig


def _delete_without_finalizer(fx, name: str) -> None:
    fx.custom.patch_cluster_custom_object(names.GROUP, names.VERSION, names.PROGRAMS, name,
                                          {"metadata": {"finalizers": None}})
    fx.delete(name)
    wait_until(lambda: fx.get(name) is None, 10, f"{name} gone at once")


@pytest.mark.parametrize("operator_up", [True, False], ids=["operator-running", "operator-down"])
def test_attachments_of_a_program_deleted_without_our_finalizer_are_removed(fx, frig, operator_up):
    name = f"kxf-orphan-{'up' if operator_up else 'down'}"
    node = frig.node("node-1")
    fx.create(fault_program(name, 9114, interfaces={"names": ["eth1"]},
                            selector={"matchLabels": {"kubernetes.io/hostname": "node-1"}}))
    try:
        fx.wait_ready(name)
        assert kernel_xdp(node.netns, "eth1")[1] is not None
        if not operator_up:
            fx.sigkill("operator")
        _delete_without_finalizer(fx, name)
        t0 = time.monotonic()
        if not operator_up:
            time.sleep(2.0)
            assert fx.attachments(name)                          # nobody removes it meanwhile
            workloads.start_operator(frig)
        _, gone = wait_until(lambda: not fx.attachments(name), 60, f"{name}'s attachment removed", interval=0.1)
        _, clean = wait_until(lambda: kernel_xdp(node.netns, "eth1") == (None, None)
                              and not pins_of(node.bpffs, name), 30, "node-1 clean")
        TABLE.add(f"9 program deleted without the operator's finalizer ({'operator up' if operator_up else 'operator down, restarted'})",
                  0, 0, f"attachment removed {gone:.1f} s, node clean {gone + clean:.1f} s", "no traffic: control plane only")
        assert time.monotonic() - t0 < 90
    finally:
        if not fx.pid("operator"):
            workloads.start_operator(frig)
        fx.delete(name)
