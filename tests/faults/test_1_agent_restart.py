"""Fault 1: a node's agent is SIGKILLed with programs attached, then restarted.

Holds: zero packets mishandled (the datapath never depends on the agent process); after
the restart the same program ids are attached by the same bpf_links and pinned (adopted
from the pins, links and netlink: nothing re-attached or rebuilt); the status stays Ready
throughout: every version the API server stores of the XdpProgram and of node-1's
XdpAttachment, seen through a watch, is Ready for its generation.
"""

from __future__ import annotations

import time

import pytest

from kube_xdp_api import names
from kube_xdp_rig import workloads
from tests.e2e.kubexdp import kernel_xdp, pins_of

from .conftest import SHIPPED_RESYNC
from .faultlib import TABLE, Counter, Flow, ReadyWatch, fault_program, hook_link, mishandled, wait_until

pytestmark = pytest.mark.rig


def test_agent_sigkill_and_restart_adopts_and_mishandles_nothing(fx, frig, programs):
    node = frig.node("node-1")
    programs(fault_program("kxf-adopt", 9101))
    fx.wait_ready("kxf-adopt")
    prog_id = fx.iface_status("kxf-adopt", "node-1", "eth0")["progId"]
    assert kernel_xdp(node.netns, "eth0") == ("native", prog_id)
    hook = hook_link(node.netns, "eth0")
    assert hook[2] is not None                            # held by the program's pinned bpf_link
    pins = pins_of(node.bpffs, "kxf-adopt")
    counter = Counter(prog_id)
    agent = workloads.agent_name("node-1")

    att = names.attachment_name("kxf-adopt", "node-1")
    with ReadyWatch(fx, "kxf-adopt") as watch, ReadyWatch(fx, att, names.ATTACHMENTS) as att_watch, \
            Flow(node, 9101, max_seconds=30) as flow:
        time.sleep(1.0)
        old_pid = fx.sigkill(agent)
        time.sleep(2.0)                                  # the agent is gone; packets keep coming
        assert kernel_xdp(node.netns, "eth0") == ("native", prog_id)
        log_mark = len(fx.log(agent))
        restarted = time.monotonic()
        new_pid = workloads.start_agent(frig, "node-1", resync=SHIPPED_RESYNC)
        _, resumed = wait_until(lambda: "listed 1 attachment" in fx.log(agent)[log_mark:], 60,
                                "the restarted agent to list its attachments")
        time.sleep(2 * SHIPPED_RESYNC + 0.5)             # two resyncs of the new agent
        assert flow.running(), "the flow ended before the agent's resyncs: the window was cut short"
        result = flow.wait()
    counted = counter.delta()
    bad = mishandled(result, counted)
    new_log = fx.log(agent)[log_mark:]
    TABLE.add("1 agent SIGKILL + restart", result.sent, bad, f"agent back in control {resumed:.1f} s after restart",
              f"same prog id {prog_id}, same link {hook[2]} (its pin held it while the agent was down); "
              f"{len(watch.versions)} program and {len(att_watch.versions)} attachment "
              f"status versions seen by a watch, {len(watch.not_ready) + len(att_watch.not_ready)} not Ready")

    assert new_pid != old_pid
    assert bad == 0, f"{result} counted {counted}"
    assert counted == result.delivered and result.reached_stack == 0
    # adopted: the same program on the hook and in the pins, nothing rebuilt or re-attached
    assert kernel_xdp(node.netns, "eth0") == ("native", prog_id)
    assert hook_link(node.netns, "eth0") == hook                               # the same link, adopted
    assert pins_of(node.bpffs, "kxf-adopt") == pins
    assert fx.iface_status("kxf-adopt", "node-1", "eth0")["progId"] == prog_id
    assert "compiled and pinned" not in new_log and "-> program" not in new_log, new_log
    # status: every stored version of the program and of node-1's attachment was Ready for
    # its generation; the watches ran without an error
    assert watch.not_ready == [] and att_watch.not_ready == [], (watch.not_ready, att_watch.not_ready)
    assert watch.versions and att_watch.versions and watch.errors == att_watch.errors == 0
    assert time.monotonic() - restarted < 60
    counter.close()
