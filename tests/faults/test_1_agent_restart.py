"""Fault 1: a node's agent is SIGKILLed with programs attached, then restarted.

Holds: zero packets mishandled (the datapath never depends on the agent process); after
the restart the same program ids are attached and pinned (adopted from pins and netlink,
not re-attached or rebuilt); the XdpProgram's status stays Ready throughout (polled
every 0.2 s).
"""

from __future__ import annotations

import time

import pytest

from kube_xdp_rig import workloads
from tests.e2e.kubexdp import kernel_xdp, pins_of

from .faultlib import TABLE, Counter, Flow, ReadyWatch, fault_program, mishandled, wait_until

pytestmark = pytest.mark.rig


def test_agent_sigkill_and_restart_adopts_and_mishandles_nothing(fx, frig, programs):
    node = frig.node("node-1")
    programs(fault_program("kxf-adopt", 9101))
    fx.wait_ready("kxf-adopt")
    prog_id = fx.iface_status("kxf-adopt", "node-1", "eth0")["progId"]
    assert kernel_xdp(node.netns, "eth0") == ("native", prog_id)
    pins = pins_of(node.bpffs, "kxf-adopt")
    counter = Counter(prog_id)
    agent = workloads.agent_name("node-1")

    with ReadyWatch(fx, "kxf-adopt") as watch, Flow(node, 9101, max_seconds=20) as flow:
        time.sleep(1.0)
        old_pid = fx.sigkill(agent)
        time.sleep(2.0)                                  # the agent is gone; packets keep coming
        assert kernel_xdp(node.netns, "eth0") == ("native", prog_id)
        log_mark = len(fx.log(agent))
        restarted = time.monotonic()
        new_pid = workloads.start_agent(frig, "node-1", resync=1.0)
        _, resumed = wait_until(lambda: "listed 1 attachment" in fx.log(agent)[log_mark:], 60,
                                "the restarted agent to list its attachments")
        time.sleep(2.5)                                  # two resyncs of the new agent
        result = flow.wait()
    counted = counter.delta()
    bad = mishandled(result, counted)
    new_log = fx.log(agent)[log_mark:]
    TABLE.add("1 agent SIGKILL + restart", result.sent, bad, f"agent back in control {resumed:.1f} s after restart",
              f"same prog id {prog_id}, status Ready in {watch.polls}/{watch.polls} polls")

    assert new_pid != old_pid
    assert bad == 0, f"{result} counted {counted}"
    assert counted == result.delivered and result.reached_stack == 0
    # adopted: the same program on the hook and in the pins, nothing rebuilt or re-attached
    assert kernel_xdp(node.netns, "eth0") == ("native", prog_id)
    assert pins_of(node.bpffs, "kxf-adopt") == pins
    assert fx.iface_status("kxf-adopt", "node-1", "eth0")["progId"] == prog_id
    assert "compiled and pinned" not in new_log and "-> program" not in new_log, new_log
    # status: Ready for the current generation at every poll, and polled often
    assert watch.polls >= 20 and watch.not_ready == [], watch.not_ready
    assert time.monotonic() - restarted < 60
    counter.close()
