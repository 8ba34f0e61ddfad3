"""Fault 3: the API server is stopped for 60 s, then started again.

Holds: the datapath is unaffected (a flow through a program on node-2 for the whole
outage: zero mishandled); drift is still repaired during the outage (the agent needs no
API to put its own program back); the operator and the agents are the same processes
before and after (they reconnect, nobody restarts them); the changes applied just before
the outage (a new program, a spec update) are not lost: they converge once the API
server is back.
"""

from __future__ import annotations

import os
import time

import pytest

from kube_xdp_agent.kernel import XdpLinks
from kube_xdp_rig import workloads
from tests.e2e.kubexdp import kernel_xdp

from .faultlib import TABLE, Counter, Flow, fault_program, hook_link, mishandled, wait_until

pytestmark = pytest.mark.rig

OUTAGE = float(os.environ.get("KUBE_XDP_FAULT_OUTAGE", "60"))   # seconds


def test_apiserver_outage_datapath_unaffected_and_everything_converges(fx, frig, programs):
    rig = workloads.rig_for(frig)
    n2, n3 = frig.node("node-2"), frig.node("node-3")
    programs(fault_program("kxf-steady", 9103))
    programs(fault_program("kxf-updated", 9104, interfaces={"names": ["eth1"]}, version=1, selector={
        "matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["node-1", "node-2"]}]}))
    fx.wait_ready("kxf-steady")
    fx.wait_ready("kxf-updated")
    steady_id = fx.iface_status("kxf-steady", "node-2", "eth0")["progId"]
    steady_n3 = fx.iface_status("kxf-steady", "node-3", "eth0")["progId"]
    steady_link = fx.iface_status("kxf-steady", "node-3", "eth0")["linkId"]
    assert kernel_xdp(n3.netns, "eth0") == ("native", steady_n3)
    old_eth1 = {n: kernel_xdp(frig.node(n).netns, "eth1")[1] for n in ("node-1", "node-2")}
    counter = Counter(steady_id)
    names = ["operator"] + [workloads.agent_name(n.name) for n in frig.nodes]
    pids = {name: fx.pid(name) for name in names}

    with Flow(n2, 9103, rate=20_000, max_seconds=OUTAGE + 120) as flow:
        time.sleep(1.0)
        # changes applied just before the outage: a new program and an update
        programs(fault_program("kxf-late", 9105, interfaces={"names": ["eth1"]}, selector={
            "matchLabels": {"kubernetes.io/hostname": "node-3"}}, mode="generic", fallback=[]))
        fx.patch_spec("kxf-updated", {"defines": {"PORT": "9104", "VERSION": "2"}})
        assert rig.stop_apiserver()
        down = time.monotonic()
        try:
            time.sleep(3.0)
            # drift during the outage: detached behind the agent's back (its bpf_link detached, as
            # `bpftool link detach` does: `ip link set ... xdp off` is refused by the kernel while
            # the link holds the hook), repaired without the API
            with XdpLinks(n3.netns).open_id(steady_link) as link:
                XdpLinks(n3.netns).detach(link.fd)
            assert kernel_xdp(n3.netns, "eth0") == (None, None)
            (_, repaired_id), repaired_in = wait_until(lambda: (lambda h: h if h[1] else None)(
                kernel_xdp(n3.netns, "eth0")), 30, "node-3 eth0 repaired while the API server is down")
            time.sleep(max(0.0, OUTAGE - (time.monotonic() - down)))
        finally:
            rig.start_apiserver(timeout=180)     # whatever happened: the next scenarios need it
        back = time.monotonic()
        outage = back - down
        print(f"API server back after {outage:.1f} s; flow running for {flow.elapsed():.1f} s")
        assert flow.running(), "the flow ended before the API server came back: lengthen it"

        def converged():
            late, upd = fx.get("kxf-late"), fx.get("kxf-updated")
            if not (late and upd and fx.is_current("kxf-late") and fx.is_current("kxf-updated")
                    and fx.is_current("kxf-steady")):
                return False
            now_eth1 = {n: kernel_xdp(frig.node(n).netns, "eth1")[1] for n in old_eth1}
            return all(now_eth1[n] not in (None, old_eth1[n]) for n in old_eth1) and \
                kernel_xdp(n3.netns, "eth1")[0] == "generic"

        _, converge = wait_until(converged, 120, "everything converged after the outage", interval=0.5)
        print(f"converged {converge:.1f} s after the API server was back")
        result = flow.wait()
    relinked = hook_link(n3.netns, "eth0")[2]
    counted = counter.delta()
    bad = mishandled(result, counted)
    TABLE.add(f"3 API server down {OUTAGE:.0f} s", result.sent, bad,
              f"converged {converge:.1f} s after the API server was back; drift repaired in {repaired_in:.1f} s "
              "during the outage", f"outage {outage:.0f} s; operator and agents not restarted; the drift: link "
              f"{steady_link} detached by id, re-attached by link {relinked}")

    assert bad == 0, (result, counted)
    assert {name: fx.pid(name) for name in names} == pids          # nobody was restarted
    # the drift was repaired with the same pinned program, and it is still there
    assert repaired_id == steady_n3 and kernel_xdp(n3.netns, "eth0") == ("native", steady_n3)
    assert relinked not in (None, steady_link)                     # by a new link (the old one defunct, dropped)
    # the changes applied just before the outage were not lost
    assert fx.get("kxf-updated")["status"]["observedGeneration"] == fx.get("kxf-updated")["metadata"]["generation"] == 2
    late = fx.attachments("kxf-late")
    assert sorted(late) == ["node-3"]
    assert kernel_xdp(n3.netns, "eth1") == ("generic", fx.iface_status("kxf-late", "node-3", "eth1")["progId"])
    counter.close()
