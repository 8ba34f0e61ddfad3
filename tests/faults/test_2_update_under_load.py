"""Fault 2: a program's spec changes while traffic flows (a new version replaces it).

Holds: the swap is atomic (BPF_LINK_UPDATE of the program's bpf_link with the old program
as expected: the same link holds the hook before and after): every packet delivered is
counted by exactly one of the two versions, none reaches the node's stack. The old
program's counter is read through a map fd opened BEFORE the update (its pins are removed
once it is replaced).
"""

from __future__ import annotations

import time

import pytest

from tests.e2e.kubexdp import kernel_xdp, pins_of

from .faultlib import TABLE, Counter, Flow, fault_program, hook_link, mishandled, wait_until

pytestmark = pytest.mark.rig


def test_update_under_load_is_hitless(fx, frig, programs):
    node = frig.node("node-1")
    programs(fault_program("kxf-update", 9102, version=1))
    fx.wait_ready("kxf-update")
    old_id = fx.iface_status("kxf-update", "node-1", "eth0")["progId"]
    _, _, link_id = hook_link(node.netns, "eth0")
    assert link_id is not None and fx.iface_status("kxf-update", "node-1", "eth0")["linkId"] == link_id
    old = Counter(old_id)                                 # held by fd: readable after unpin

    with Flow(node, 9102, rate=None, max_seconds=30) as flow:
        time.sleep(1.5)
        fx.patch_spec("kxf-update", {"defines": {"PORT": "9102", "VERSION": "2"}})
        patched = time.monotonic()
        (_, new_id), swap = wait_until(lambda: (lambda h: h if h[1] not in (None, old_id) else None)(
            kernel_xdp(node.netns, "eth0")), 60, "the new version on node-1 eth0")
        new = Counter(new_id, fresh=True)
        fx.wait_ready("kxf-update", timeout=90)
        ready = time.monotonic() - patched
        assert flow.running(), "the flow ended before the swap: lengthen it"
        result = flow.wait()
    counted_old, counted_new = old.delta(), new.delta()
    bad = mishandled(result, counted_old + counted_new)
    TABLE.add("2 update under load", result.sent, bad,
              f"swapped {swap:.1f} s after the patch (Ready on 3 nodes {ready:.1f} s)",
              f"BPF_LINK_UPDATE of link {link_id} (the same link before and after): old {counted_old} + new "
              f"{counted_new} = delivered {result.delivered}")

    assert bad == 0, (result, counted_old, counted_new)
    assert counted_old + counted_new == result.delivered
    assert counted_old > 0 and counted_new > 0            # both versions saw traffic: the swap was under load
    assert kernel_xdp(node.netns, "eth0") == ("native", new_id)
    assert hook_link(node.netns, "eth0") == ("native", new_id, link_id)      # updated in place: the same link
    assert fx.iface_status("kxf-update", "node-1", "eth0")["linkId"] == link_id
    assert len(pins_of(node.bpffs, "kxf-update")) == 1     # the old version unpinned
    old.close()
    new.close()
