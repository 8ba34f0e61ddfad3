"""Kubernetes API access for the rig (nodes, RBAC objects) with the admin kubeconfig."""

from __future__ import annotations

from pathlib import Path

import kubernetes
from kubernetes.client.rest import ApiException

from .config import NodeSpec

RIG_NODE_LABEL = "kubexdp.io/rig-node"


def client(kubeconfig: Path) -> kubernetes.client.ApiClient:
    return kubernetes.config.new_client_from_config(config_file=str(kubeconfig))


def ensure_node(api: kubernetes.client.ApiClient, node: NodeSpec) -> None:
    """Create or update the Node object: labels exactly as configured (user labels added or
    changed by hand on nodes are replaced with the rig's), status Ready with the node's
    first address, so `kubectl get nodes` reads as a cluster would."""
    core = kubernetes.client.CoreV1Api(api)
    body = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node.name, "labels": node.labels}}
    try:
        current = core.read_node(node.name)
        labels = {**{k: None for k in (current.metadata.labels or {}) if k not in node.labels}, **node.labels}
        core.patch_node(node.name, {"metadata": {"labels": labels}})
    except ApiException as e:
        if e.status != 404:
            raise
        core.create_node(body)
    core.patch_node_status(node.name, {"status": {
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeXdpRig",
                        "message": "simulated node of the kube-xdp rig (no kubelet)"}],
        "addresses": [{"type": "InternalIP", "address": node.links[0].node_ip},
                      {"type": "Hostname", "address": node.name}],
    }})


def rig_nodes(api: kubernetes.client.ApiClient) -> list[str]:
    core = kubernetes.client.CoreV1Api(api)
    return sorted(n.metadata.name for n in core.list_node(label_selector=f"{RIG_NODE_LABEL}=true").items)


def delete_node(api: kubernetes.client.ApiClient, name: str) -> None:
    try:
        kubernetes.client.CoreV1Api(api).delete_node(name)
    except ApiException as e:
        if e.status != 404:
            raise
