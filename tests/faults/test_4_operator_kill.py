"""Fault 4: the operator is SIGKILLed in the middle of placing a program on many nodes,
then restarted.

Many nodes: the rig's 3 real nodes plus HOLLOW Node objects (no namespace, no agent), so
placement takes long enough to be interrupted. The kill is triggered by a watch on the
program's attachments: at the KILL_AT-th one created (the operator writes them one after
another, ~12 ms each, so it dies with some placed and most not). Holds: after the restart there is
exactly one attachment per selected node (none duplicated, none for a node that does not
exist), all owned by the program and built from its current generation; each real node
runs exactly one program on the interface (one pin directory); a canary flow through
another program on node-1 sees zero mishandled packets; once the hollow nodes are
deleted, their attachments go (no orphan).
"""

from __future__ import annotations

import threading
import time

import kubernetes
import pytest

from kube_xdp_api import names
from kube_xdp_rig import workloads
from tests.e2e.kubexdp import kernel_xdp, pins_of

from .faultlib import TABLE, Counter, Flow, fault_program, mishandled, wait_until

pytestmark = pytest.mark.rig

HOLLOW = 60
HOLLOW_LABEL = "kubexdp.io/fault-hollow"
KILL_AT = 10          # of 63 attachments


def _attachments_kill_operator(fx, program: str, done: threading.Event, seen: dict) -> None:
    w = kubernetes.watch.Watch()
    added = 0
    try:
        for event in w.stream(fx.custom.list_cluster_custom_object, names.GROUP, names.VERSION, names.ATTACHMENTS,
                              label_selector=f"{names.LABEL_PROGRAM}={program}", timeout_seconds=60):
            added += event["type"] == "ADDED"
            if added >= KILL_AT:
                seen["killed_pid"] = fx.sigkill("operator")
                seen["at"] = time.monotonic()
                break
    finally:
        w.stop()
        done.set()


def test_operator_sigkill_mid_placement_converges_without_duplicates(fx, frig, programs):
    hollow = [f"hollow-{i:02d}" for i in range(HOLLOW)]
    canary_node = frig.node("node-1")
    programs(fault_program("kxf-canary4", 9106, interfaces={"names": ["eth1"]}, selector={
        "matchLabels": {"kubernetes.io/hostname": "node-1"}}))
    fx.wait_ready("kxf-canary4")
    counter = Counter(fx.iface_status("kxf-canary4", "node-1", "eth1")["progId"])
    try:
        for name in hollow:
            fx.core.create_node({"metadata": {"name": name, "labels": {HOLLOW_LABEL: "true"}}})
        node_names = [n.name for n in frig.nodes] + hollow
        time.sleep(1.0)                                     # the operator's node index has them
        done, seen = threading.Event(), {}
        watcher = threading.Thread(target=_attachments_kill_operator,
                                   args=(fx, "kxf-spread", done, seen), daemon=True)
        with Flow(canary_node, 9106, iface=1, max_seconds=90) as flow:
            watcher.start()
            time.sleep(0.5)
            created = programs(fault_program("kxf-spread", 9107))
            assert done.wait(60) and "killed_pid" in seen, "the operator was not killed"
            at_kill = len(fx.attachments("kxf-spread"))
            time.sleep(2.0)                                 # nothing moves while the operator is dead
            assert len(fx.attachments("kxf-spread")) == at_kill
            restarted = time.monotonic()
            workloads.start_operator(frig)

            def converged():
                atts = fx.custom.list_cluster_custom_object(
                    names.GROUP, names.VERSION, names.ATTACHMENTS,
                    label_selector=f"{names.LABEL_PROGRAM}=kxf-spread")["items"]
                return atts if sorted(a["spec"]["nodeName"] for a in atts) == sorted(node_names) else None

            atts, converge = wait_until(converged, 120, "one attachment per node", interval=0.25)
            _, real_ready = wait_until(lambda: all(
                (fx.iface_status("kxf-spread", n.name, "eth0") or {}).get("ready") for n in frig.nodes),
                60, "the real nodes attached", interval=0.25)
            result = flow.wait()
        counted = counter.delta()
        bad = mishandled(result, counted)
        TABLE.add("4 operator SIGKILL mid-placement", result.sent, bad,
                  f"all {len(node_names)} attachments {converge:.1f} s after restart, real nodes attached "
                  f"{converge + real_ready:.1f} s", f"killed with {at_kill}/{len(node_names)} attachments created")

        assert 0 < at_kill < len(node_names), f"not killed mid-way: {at_kill}/{len(node_names)}"
        assert bad == 0 and counted == result.delivered, (result, counted)
        uid = created["metadata"]["uid"]
        generation = fx.get("kxf-spread")["metadata"]["generation"]
        assert len({a["metadata"]["name"] for a in atts}) == len(atts) == len(node_names)    # no duplicates
        for a in atts:
            assert [r["uid"] for r in a["metadata"]["ownerReferences"]] == [uid]
            assert a["spec"]["programGeneration"] == generation
            assert a["metadata"]["name"] == names.attachment_name("kxf-spread", a["spec"]["nodeName"])
        for n in frig.nodes:
            st = fx.iface_status("kxf-spread", n.name, "eth0")
            assert kernel_xdp(n.netns, "eth0") == ("native", st["progId"])
            assert len(pins_of(n.bpffs, "kxf-spread")) == 1
        # progress (3 of 63 ready) is written at most once a second (operator STATUS_MIN_INTERVAL)
        def counts():
            status = fx.get("kxf-spread").get("status") or {}
            return status.get("selectedNodes"), status.get("readyNodes")
        wait_until(lambda: counts() == (len(node_names), len(frig.nodes)), 5, "the program status counting the ready nodes",
                   interval=0.1)
        assert counts() == (len(node_names), len(frig.nodes))
        assert fx.pid("operator") and fx.pid("operator") != seen["killed_pid"]
        assert time.monotonic() - restarted < 180
    finally:
        for name in hollow:
            try:
                fx.core.delete_node(name)
            except kubernetes.client.rest.ApiException as e:
                if e.status != 404:
                    raise
        workloads.start_operator(frig)                      # whatever happened above
    # no orphan: the hollow nodes' attachments go with their nodes
    wait_until(lambda: sorted(fx.attachments("kxf-spread")) == sorted(n.name for n in frig.nodes), 60,
               "the hollow nodes' attachments removed", interval=0.5)
    counter.close()
