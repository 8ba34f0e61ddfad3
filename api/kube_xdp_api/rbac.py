"""Least-privilege RBAC of the operator and the agent: the one source of truth.

Each rule says why it exists. The rig applies these (bound to the ServiceAccounts whose
identities its tokens carry); the Helm chart's ClusterRoles must equal them (tested).
"""

from __future__ import annotations

from typing import Any

from . import names

NAMESPACE = "kube-xdp"
OPERATOR_SA = "kube-xdp-operator"
AGENT_SA = "kube-xdp-agent"

G = names.GROUP

# (apiGroup, resources, verbs, why)
OPERATOR_RULES = [
    (G, ["xdpprograms"], ["get", "list", "watch", "patch"],
     "watch programs; patch only metadata: the operator's finalizer"),
    (G, ["xdpprograms/status"], ["get", "patch"], "write the aggregated program status"),
    (G, ["xdpprograms/finalizers"], ["update"],
     "set blockOwnerDeletion on attachments' ownerReferences where OwnerReferencesPermissionEnforcement is on"),
    (G, ["xdpattachments"], ["get", "list", "watch", "create", "patch", "delete"],
     "place one attachment per selected node; release the agent finalizer of nodes that are gone"),
    ("", ["nodes"], ["get", "list", "watch"], "select nodes by label"),
    (G, ["xdpnodes"], ["get", "list", "watch", "delete"],
     "know which nodes run an agent (preset its finalizer on their attachments); "
     "delete the XdpNode of a Node that is gone"),
    ("", ["configmaps"], ["get"], "read sources given by configMapRef (digest)"),
    ("", ["events"], ["create"],
     "Events on program condition transitions (kube_xdp_api.events and kopf's own: core/v1, created, never patched)"),
]

AGENT_RULES = [
    (G, ["xdpattachments"], ["get", "list", "watch", "patch"],
     "watch this node's attachments (label selector); add/remove the agent finalizer"),
    (G, ["xdpattachments/status"], ["get", "patch"], "report what the kernel did"),
    (G, ["xdpprograms"], ["get"], "read a program's source (inline or the configMapRef)"),
    ("", ["configmaps"], ["get"], "read sources given by configMapRef"),
    (G, ["xdpnodes"], ["get", "list", "watch", "create", "patch"], "this node's capability inventory"),
    (G, ["xdpnodes/status"], ["get", "patch"], "this node's capability inventory"),
    ("", ["events"], ["create"], "Events about attach failures on this node (core/v1, created, never patched)"),
]


def cluster_role(name: str, rules: list) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": name},
        "rules": [{"apiGroups": [g], "resources": list(r), "verbs": list(v)} for g, r, v, _ in rules],
    }


def manifests(namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    """Namespace, ServiceAccounts, ClusterRoles and bindings, for the rig and kubectl users."""
    out: list[dict[str, Any]] = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}]
    for sa, rules in ((OPERATOR_SA, OPERATOR_RULES), (AGENT_SA, AGENT_RULES)):
        out.append({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa, "namespace": namespace}})
        out.append(cluster_role(sa, rules))
        out.append({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": sa},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": sa},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}],
        })
    return out
