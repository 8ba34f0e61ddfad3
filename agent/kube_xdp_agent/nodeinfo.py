"""This node's XdpNode: the capability inventory (kernel, BTF, bcc, headers, interfaces
with driver, xdp-features and XDP modes), created by the agent and kept current.

The modes come from the kernel's `xdp-features` (netdev family, read without touching any
interface). A test program is attached to interfaces only where the kernel has no netdev
family (before 6.3), or when the operator opts in (`probe_modes`: --probe-xdp-modes,
chart agent.probeXdpModes); then to EMPTY hooks only, only on interfaces the agent's
--inventory-interfaces selects, once per interface: a refresh reuses earlier probes,
and so does a restarted agent, from the XdpNode it published before
(`inventory.previous_from_status`). So an agent restart or upgrade attaches nothing to
any NIC. It runs on the agent's worker thread, so it never races the agent's own
attaches.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from kubernetes.client.rest import ApiException

from kube_xdp_api import conditions as cond
from kube_xdp_api import names, reasons

from .inventory import PROBE_ALWAYS, PROBE_AUTO, NodeInventory, interface_selector, previous_from_status, probe_node
from .kernel.netlink import Interface

log = logging.getLogger("kube_xdp_agent.nodeinfo")


def node_status(inv: NodeInventory, old: dict | None, generation: int) -> dict:
    """XdpNode status (pure): the inventory plus a Ready condition (headers present)."""
    status = inv.to_status()
    status["observedGeneration"] = generation
    conditions = (old or {}).get("conditions") or []
    if inv.headers.found:
        conditions = cond.set_condition(conditions, cond.READY, cond.TRUE, reasons.PROBED,
                                        f"{status['modeSummary']} interface(s) per mode", generation, cond.now())
    else:
        conditions = cond.set_condition(conditions, cond.READY, cond.FALSE, reasons.HEADERS_NOT_FOUND,
                                        "no kernel headers for bcc: mount the host's /lib/modules and /usr/src, "
                                        "or enable CONFIG_IKHEADERS", generation, cond.now())
    status["conditions"] = conditions
    return status


class NodePublisher:
    def __init__(self, custom, node_name: str, netlink, *, probe_modes: bool = False,
                 select: Callable[[Interface], bool] | None = None):
        self.custom = custom
        self.node_name = node_name
        self.netlink = netlink
        # attach-probe where the kernel reports no xdp-features (auto), or everywhere
        # selected when the operator opted in (--probe-xdp-modes)
        self.probe = PROBE_ALWAYS if probe_modes else PROBE_AUTO
        # which interfaces may be probed: --inventory-interfaces (default: not pods' veths,
        # not overlay devices, never loopback)
        self.select = select if select is not None else interface_selector()
        self.inventory: NodeInventory | None = None

    def refresh(self) -> None:
        obj = self._get_or_create()
        previous = self.inventory
        if previous is None:        # a (re)started agent: the probes it published before
            previous = previous_from_status(obj.get("status"))
        self.inventory = probe_node(self.netlink, probe=self.probe, previous=previous, select=self.select)
        status = node_status(self.inventory, obj.get("status"), int(obj["metadata"].get("generation") or 1))
        if all((obj.get("status") or {}).get(k) == v for k, v in status.items()):
            return
        self.custom.patch_cluster_custom_object_status(names.GROUP, names.VERSION, names.NODES, self.node_name,
                                                       {"status": status})

    def _get_or_create(self) -> dict:
        try:
            return self.custom.get_cluster_custom_object(names.GROUP, names.VERSION, names.NODES, self.node_name)
        except ApiException as e:
            if e.status != 404:
                raise
        body = {"apiVersion": names.API_VERSION, "kind": names.NODE_KIND,
                "metadata": {"name": self.node_name, "labels": {names.LABEL_NODE: names.node_label_value(self.node_name)}},
                "spec": {"nodeName": self.node_name}}
        try:
            return self.custom.create_cluster_custom_object(names.GROUP, names.VERSION, names.NODES, body)
        except ApiException as e:
            if e.status != 409:
                raise
            return self.custom.get_cluster_custom_object(names.GROUP, names.VERSION, names.NODES, self.node_name)
