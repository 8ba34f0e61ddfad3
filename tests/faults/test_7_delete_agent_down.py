"""Fault 7: an XdpProgram is deleted while one node's agent is down.

The operator runs with --agent-cleanup-timeout 10 for this test (the bound on how long a
deletion waits for a node whose agent does not answer; default 600 s). Holds: the nodes
whose agents run detach and unpin at once; the program waits for the down node at most
the bound, then is released with a CleanupAbandoned Warning Event; the down node keeps the
program until its agent returns, then the agent removes it (orphan cleanup: no XDP left,
no pin left); a canary flow through another program sees zero mishandled packets.
"""

from __future__ import annotations

import time

import pytest

from kube_xdp_rig import workloads
from tests.e2e.kubexdp import kernel_xdp, pins_of

from .conftest import SHIPPED_RESYNC
from .faultlib import TABLE, Counter, Flow, fault_program, mishandled, wait_until

pytestmark = pytest.mark.rig

BOUND = 10.0


def _restart_operator(frig, extra=None):
    workloads.stop(frig, "operator")
    workloads.start_operator(frig, extra=extra)


def test_delete_while_an_agent_is_down_is_bounded_and_cleaned_on_return(fx, frig, programs):
    n1, n3 = frig.node("node-1"), frig.node("node-3")
    agent3 = workloads.agent_name("node-3")
    programs(fault_program("kxf-canary7", 9111, interfaces={"names": ["eth1"]},
                           selector={"matchLabels": {"kubernetes.io/hostname": "node-1"}}))
    fx.wait_ready("kxf-canary7")
    counter = Counter(fx.iface_status("kxf-canary7", "node-1", "eth1")["progId"])
    _restart_operator(frig, ["--agent-cleanup-timeout", str(BOUND)])
    try:
        with Flow(n1, 9111, iface=1, max_seconds=120) as flow:
            fx.create(fault_program("kxf-gone", 9112))
            fx.wait_ready("kxf-gone")
            pinned3 = pins_of(n3.bpffs, "kxf-gone")
            attached3 = kernel_xdp(n3.netns, "eth0")
            workloads.stop(frig, agent3)
            fx.delete("kxf-gone")
            deleted = time.monotonic()
            _, others = wait_until(lambda: all(kernel_xdp(frig.node(n).netns, "eth0") == (None, None)
                                               and not pins_of(frig.node(n).bpffs, "kxf-gone")
                                               for n in ("node-1", "node-2")), 30, "node-1 and node-2 clean")
            assert fx.get("kxf-gone") is not None            # still waiting for node-3
            _, released = wait_until(lambda: fx.get("kxf-gone") is None and not fx.attachments("kxf-gone"),
                                     BOUND + 30, "the program released after the bound", interval=0.2)
            released += others
            abandoned = fx.events("kxf-gone", "CleanupAbandoned")
            # the down node still has it: nobody could remove it
            assert kernel_xdp(n3.netns, "eth0") == attached3 and pins_of(n3.bpffs, "kxf-gone") == pinned3
            returned = time.monotonic()
            workloads.start_agent(frig, "node-3", resync=SHIPPED_RESYNC)
            _, cleaned = wait_until(lambda: kernel_xdp(n3.netns, "eth0") == (None, None)
                                    and not pins_of(n3.bpffs, "kxf-gone"), 60, "node-3 cleaned by its agent")
            result = flow.wait()
        bad = mishandled(result, counter.delta())
        TABLE.add("7 delete while an agent is down", result.sent, bad,
                  f"2 nodes clean in {others:.1f} s; released after {released:.1f} s (bound {BOUND:.0f} s, "
                  f"CleanupAbandoned); down node clean {cleaned:.1f} s after its agent returned",
                  "flow through a canary on node-1")
        assert bad == 0
        assert others < 10
        assert BOUND <= released < BOUND + 15
        assert abandoned and "node-3" in abandoned[0].message and abandoned[0].type == "Warning"
        assert cleaned < 30 and time.monotonic() - returned < 60     # agent start-up + its first resync
        assert "removed orphan program kxf-gone" in fx.log(agent3)
        assert time.monotonic() - deleted < 120
    finally:
        if not fx.pid(agent3):
            workloads.start_agent(frig, "node-3", resync=SHIPPED_RESYNC)
        _restart_operator(frig)
        fx.delete("kxf-gone")
        fx.wait_gone("kxf-gone", timeout=60)
        counter.close()
