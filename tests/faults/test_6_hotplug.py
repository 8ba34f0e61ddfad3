"""Fault 6: a selected interface is deleted, then created again.

Holds: deleted -> the attachment and the program's status say InterfaceNotFound naming it
(the program stays pinned; its bpf_link, defunct with the device, is detached and its pin
dropped); recreated -> the program is attached to the new interface by a new link by the
same agent process (no restart), Ready again, and a flow started the moment the
interface is up is dropped by the program from then on (the packets before the attach
are counted as mishandled: that is the recovery window).
"""

from __future__ import annotations

import subprocess
import time

import pytest

from kube_xdp_rig import workloads
from tests.e2e.kubexdp import kernel_xdp, links_of, pins_of

from .faultlib import (TABLE, Counter, Flow, fault_program, hook_link, ip_in_receives, link_device, mishandled,
                        wait_until)

pytestmark = pytest.mark.rig

IFACE = "hp0"
NODE_IP, SRC_IP = "198.19.3.2", "198.19.3.1"     # inside the rig's 198.18.0.0/15


def _ip(*argv: str) -> str:
    return subprocess.run(["ip", *argv], check=True, capture_output=True, text=True).stdout


def _mac(netns: str) -> str:
    return _ip("-n", netns, "-o", "link", "show", "dev", IFACE).split("link/ether", 1)[1].split()[0]


def plug(node) -> dict:
    """A veth pair hp0 (node) <-> hp0 (traffic source), addressed, up, static neighbours."""
    _ip("-n", node.netns, "link", "add", IFACE, "type", "veth", "peer", "name", IFACE, "netns", node.src_netns)
    _ip("-n", node.netns, "addr", "add", f"{NODE_IP}/30", "dev", IFACE)
    _ip("-n", node.src_netns, "addr", "add", f"{SRC_IP}/30", "dev", IFACE)
    _ip("-n", node.netns, "link", "set", IFACE, "up")
    _ip("-n", node.src_netns, "link", "set", IFACE, "up")
    node_mac, src_mac = _mac(node.netns), _mac(node.src_netns)
    _ip("-n", node.src_netns, "neigh", "replace", NODE_IP, "lladdr", node_mac, "dev", IFACE, "nud", "permanent")
    _ip("-n", node.netns, "neigh", "replace", SRC_IP, "lladdr", src_mac, "dev", IFACE, "nud", "permanent")
    return {"name": IFACE, "node_ip": NODE_IP, "src_ip": SRC_IP, "node_mac": node_mac, "src_mac": src_mac}


def unplug(node) -> None:
    subprocess.run(["ip", "-n", node.netns, "link", "del", IFACE], check=False, capture_output=True)


def test_interface_deleted_is_reported_and_recreated_is_reattached(fx, frig, programs):
    node = frig.node("node-3")
    agent_pid = fx.pid(workloads.agent_name("node-3"))
    plug(node)
    try:
        programs(fault_program("kxf-hotplug", 9110, interfaces={"names": [IFACE]},
                               selector={"matchLabels": {"kubernetes.io/hostname": "node-3"}}))
        fx.wait_ready("kxf-hotplug")
        prog_id = fx.iface_status("kxf-hotplug", "node-3", IFACE)["progId"]
        assert kernel_xdp(node.netns, IFACE) == ("native", prog_id)
        _, _, old_link = hook_link(node.netns, IFACE)
        assert old_link is not None

        unplug(node)
        deleted = time.monotonic()
        _, reported = wait_until(lambda: (fx.condition("kxf-hotplug", "Ready") or {}).get("reason")
                                 == "InterfaceNotFound", 60, "InterfaceNotFound", interval=0.1)
        ready = fx.condition("kxf-hotplug", "Ready")
        assert IFACE in ready["message"] and ready["status"] == "False"
        assert fx.condition("kxf-hotplug", "Stalled")["status"] == "True"
        assert pins_of(node.bpffs, "kxf-hotplug")                      # still pinned: ready to come back
        # its link, defunct with the device, released (pin dropped): nothing left to hold the program but its pin
        wait_until(lambda: link_device(old_link) is None and not links_of(node.bpffs, "kxf-hotplug"), 10,
                   f"link {old_link} released")
        time.sleep(2.0)

        counter = Counter(prog_id)                     # the pinned program lives on: count from before
        link = plug(node)
        plugged = time.monotonic()
        with Flow(node, 9110, iface=link, rate=None, max_seconds=20) as flow:     # smooth: full speed
            (_, new_id), attached = wait_until(lambda: (lambda h: h if h[1] else None)(kernel_xdp(node.netns, IFACE)),
                                               30, f"the program on the new {IFACE}", interval=0.01)
            time.sleep(0.05)
            stack_at_attach = ip_in_receives(node.netns)
            fx.wait_ready("kxf-hotplug", timeout=60)
            ready_in = time.monotonic() - plugged
            time.sleep(1.0)
            result = flow.wait()
        after_attach = ip_in_receives(node.netns) - stack_at_attach
        _, _, new_link = hook_link(node.netns, IFACE)
        counted = counter.delta()
        bad = mishandled(result, counted)
        TABLE.add("6 interface deleted + recreated", result.sent, bad,
                  f"InterfaceNotFound {reported:.1f} s after delete; re-attached {attached:.2f} s after the "
                  f"new link was up (Ready {ready_in:.1f} s)", f"mishandled = passed before the re-attach; link {old_link} "
                  f"defunct with the old {IFACE}, released; the same prog id by a new link {new_link}")
        assert new_id == prog_id                       # the pinned program, attached to the new interface
        assert new_link not in (None, old_link)         # by a new link: the defunct one was dropped
        assert fx.iface_status("kxf-hotplug", "node-3", IFACE)["linkId"] == new_link
        assert fx.pid(workloads.agent_name("node-3")) == agent_pid       # no agent restart
        assert result.reached_stack == result.delivered - counted == bad    # the two views agree
        # from the attach on, every packet was dropped by the program: only the window before it passed
        assert after_attach == 0
        assert counted > 0 and time.monotonic() - deleted < 120
        counter.close()
    finally:
        unplug(node)
