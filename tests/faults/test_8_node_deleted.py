"""Fault 8: a Node object is deleted while a program runs on it.

Holds: the node's attachment goes (the operator deletes it and releases the agent's
finalizer: there is no agent of a deleted node to wait for), nothing stays with a
deletionTimestamp; the program becomes Ready on the nodes that remain; the node's agent,
still running here, removes the program from the node (orphan cleanup); the other nodes'
datapath is untouched (zero mishandled on node-1); the operator deletes the node's XdpNode.
The Node is then created again and the program comes back on it.
"""

from __future__ import annotations

import threading
import time

import kubernetes
import pytest

from kube_xdp_api import names

from kube_xdp_rig import kube, workloads
from tests.e2e.kubexdp import kernel_xdp, pins_of

from .faultlib import TABLE, Counter, Flow, fault_program, mishandled, wait_until

pytestmark = pytest.mark.rig


class DeletionWatch:
    """Watches one XdpNode from its current version on and records when it is DELETED.
    (Polling for its absence would race with the node's agent, still running here, which
    publishes its inventory again at its next refresh.)"""

    def __init__(self, fx, name: str):
        self.fx, self.name = fx, name
        self.deleted_at: float | None = None
        obj = fx.custom.get_cluster_custom_object(names.GROUP, names.VERSION, names.NODES, name)
        self._rv = obj["metadata"]["resourceVersion"]
        self._watch = kubernetes.watch.Watch()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for event in self._watch.stream(self.fx.custom.list_cluster_custom_object, names.GROUP, names.VERSION,
                                        names.NODES, field_selector=f"metadata.name={self.name}",
                                        resource_version=self._rv, timeout_seconds=120):
            if event["type"] == "DELETED":
                self.deleted_at = time.monotonic()
                break

    def stop(self) -> None:
        self._watch.stop()


def test_node_deleted_its_attachments_go_and_nothing_waits_forever(fx, frig, programs):
    n1, n3 = frig.node("node-1"), frig.node("node-3")
    spec3 = next(s for s in workloads.rig_for(frig).config.node_specs() if s.name == "node-3")
    programs(fault_program("kxf-node", 9113, interfaces={"names": ["eth1"]}))
    fx.wait_ready("kxf-node")
    counter = Counter(fx.iface_status("kxf-node", "node-1", "eth1")["progId"])
    inventory = DeletionWatch(fx, "node-3")
    try:
        with Flow(n1, 9113, iface=1, max_seconds=90) as flow:
            time.sleep(0.5)
            fx.core.delete_node("node-3")
            deleted_at = time.monotonic()
            _, gone = wait_until(lambda: "node-3" not in fx.attachments("kxf-node"), 60,
                                 "node-3's attachment gone", interval=0.1)
            _, ready = wait_until(lambda: fx.is_current("kxf-node") and
                                  fx.get("kxf-node")["status"]["nodeSummary"] == "2/2", 60, "Ready on 2/2")
            _, cleaned = wait_until(lambda: kernel_xdp(n3.netns, "eth1") == (None, None)
                                    and not pins_of(n3.bpffs, "kxf-node"), 60, "node-3's kernel cleaned")
            wait_until(lambda: inventory.deleted_at, 30, "node-3's XdpNode deleted by the operator", interval=0.1)
            inventory_gone = inventory.deleted_at - deleted_at
            stuck = [a["metadata"]["name"] for a in fx.custom.list_cluster_custom_object(
                "kubexdp.io", "v1alpha1", "xdpattachments")["items"] if a["metadata"].get("deletionTimestamp")]
            time.sleep(1.0)
            kube.ensure_node(fx.client, spec3)                # the node comes back
            _, back = wait_until(lambda: fx.is_current("kxf-node") and
                                 fx.get("kxf-node")["status"]["nodeSummary"] == "3/3", 90, "the program back on node-3")
            result = flow.wait()
        bad = mishandled(result, counter.delta())
        TABLE.add("8 Node object deleted", result.sent, bad,
                  f"attachment gone {gone:.1f} s, Ready 2/2 {gone + ready:.1f} s, node's kernel clean "
                  f"{gone + ready + cleaned:.1f} s, XdpNode deleted {inventory_gone:.1f} s; Node re-created: Ready 3/3 in {back:.1f} s",
                  "flow through the program on node-1")
        assert bad == 0
        assert stuck == []
        assert gone < 15
        assert kernel_xdp(n3.netns, "eth1")[1] == fx.iface_status("kxf-node", "node-3", "eth1")["progId"]
    finally:
        kube.ensure_node(fx.client, spec3)
        counter.close()
        inventory.stop()
