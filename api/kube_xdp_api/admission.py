"""The agents' node restriction: a ValidatingAdmissionPolicy (and its binding) that lets
each agent write only its own node's XdpAttachments and XdpNode. The one source of truth:
the rig and kubectl users apply `manifests()`; the Helm chart's
templates/admission-policy.yaml must render the same spec (tests/unit/test_admission_policy.py).

RBAC grants a verb on a resource, never "only the objects of my node" (every agent has
the same ServiceAccount). The API server puts the node of a pod-bound ServiceAccount token
in the user's extra (`authentication.kubernetes.io/node-name`, GA in Kubernetes 1.32), so
an admission policy can compare it with the node an object names: the idea of the
kubelet's NodeRestriction plugin. The policy

- matches only requests of the agent's ServiceAccount (the operator and everyone else
  pass untouched), on xdpattachments and xdpnodes, their status subresources included,
  for CREATE, UPDATE (patch is an UPDATE at admission) and DELETE;
- denies a token without exactly one node name (not bound to a Pod on a node);
- denies unless every node the request touches is the token's node: an XdpAttachment's
  `spec.nodeName` in the stored object (oldObject) and in the written one (object), so an
  attachment cannot be moved to or away from a node; an XdpNode's name and its
  `spec.nodeName`, old and new.

Pure data: no client, no I/O.
"""

from __future__ import annotations

from typing import Any

from . import names, rbac

API_VERSION = "admissionregistration.k8s.io/v1"
NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"
NAME_SUFFIX = "agent-node-restriction"
RESOURCES = [names.ATTACHMENTS, f"{names.ATTACHMENTS}/status", names.NODES, f"{names.NODES}/status"]
OPERATIONS = ["CREATE", "UPDATE", "DELETE"]

# CEL. `object` is null on DELETE and `oldObject` on CREATE; `.?` and orValue turn a
# missing field into '' (which equals no node name) instead of an evaluation error.
# Each expression is one line here; the chart writes it folded (`>-`) over several.
_IS_XDPNODE = f"request.resource.resource == '{names.NODES}'"
VARIABLES = [
    # the node of a pod-bound token; '' when there is none (or, never seen, several)
    ("tokenNodes", f"request.userInfo.?extra[?'{NODE_NAME_EXTRA}'].orValue([])"),
    ("tokenNode", "size(variables.tokenNodes) == 1 ? variables.tokenNodes[0] : ''"),
    # the nodes the stored and the written object name: spec.nodeName first, and for an
    # XdpNode also its name (an XdpNode is named after its node)
    ("oldNodes", "oldObject == null ? [] : [oldObject.?spec.?nodeName.orValue('')]"
                 f" + ({_IS_XDPNODE} ? [oldObject.metadata.name] : [])"),
    ("newNodes", "object == null ? [] : [object.?spec.?nodeName.orValue('')]"
                 f" + ({_IS_XDPNODE} ? [object.metadata.name] : [])"),
    ("foreignNodes", "(variables.oldNodes + variables.newNodes).filter(n, n != variables.tokenNode)"),
    ("moves", "size(variables.oldNodes) > 0 && size(variables.newNodes) > 0"
              " && variables.oldNodes[0] != variables.newNodes[0]"),
    ("attempt", "request.operation + ' of ' + request.resource.resource"
                " + (request.?subResource.orValue('') != '' ? '/' + request.subResource : '')"
                " + ' \"' + request.name + '\"'"),
]

NO_NODE_MESSAGE = (
    "kube-xdp node restriction: the agent's ServiceAccount may write XdpAttachments and XdpNodes only with "
    f"a token bound to a Pod on a node (user extra {NODE_NAME_EXTRA}, which the API server sets for "
    "pod-bound tokens); this request's token names no node. Run the agent as the chart's DaemonSet pod "
    "(its projected token), or request its token with a Pod boundObjectRef (TokenRequest)")

FOREIGN_NODE_MESSAGE = (
    "\"kube-xdp node restriction: the agent of node '\" + variables.tokenNode + \"' (its token's node) may write"
    " only that node's XdpAttachments and XdpNode; this \" + variables.attempt + (variables.moves"
    " ? \" would move it from node '\" + variables.oldNodes[0] + \"' to node '\" + variables.newNodes[0] + \"'\""
    " : \" is for node '\" + variables.foreignNodes[0] + \"'\") + \". An agent acts only for the node its pod"
    " runs on: check the agent's --node-name (NODE_NAME, from the pod's spec.nodeName)\"")

# (expression, message or None, messageExpression or None)
VALIDATIONS = [
    ("variables.tokenNode != ''", NO_NODE_MESSAGE, None),
    ("size(variables.foreignNodes) == 0", None, FOREIGN_NODE_MESSAGE),
]


def agent_username(namespace: str, service_account: str) -> str:
    return f"system:serviceaccount:{namespace}:{service_account}"


def policy_name(prefix: str = "kube-xdp") -> str:
    """The policy's and the binding's name: `<prefix>-agent-node-restriction` (the chart's
    prefix is its full name, which is kube-xdp for release kube-xdp)."""
    return f"{prefix}-{NAME_SUFFIX}"


def policy_spec(namespace: str, service_account: str) -> dict[str, Any]:
    validations = []
    for expression, message, message_expression in VALIDATIONS:
        v: dict[str, Any] = {"expression": expression}
        if message is not None:
            v["message"] = message
        if message_expression is not None:
            v["messageExpression"] = message_expression
        v["reason"] = "Forbidden"
        validations.append(v)
    return {
        "failurePolicy": "Fail",
        "matchConstraints": {
            "resourceRules": [{"apiGroups": [names.GROUP], "apiVersions": ["*"], "operations": list(OPERATIONS),
                               "resources": list(RESOURCES), "scope": "Cluster"}],
        },
        "matchConditions": [{
            "name": "agent-service-account",
            "expression": f"request.userInfo.username == '{agent_username(namespace, service_account)}'",
        }],
        "variables": [{"name": n, "expression": e} for n, e in VARIABLES],
        "validations": validations,
    }


def binding_spec(name: str) -> dict[str, Any]:
    return {"policyName": name, "validationActions": ["Deny"]}


def manifests(namespace: str = rbac.NAMESPACE, service_account: str = rbac.AGENT_SA,
              name: str | None = None) -> list[dict[str, Any]]:
    """The policy and its binding, for the rig and kubectl users (cluster-scoped objects;
    `namespace` and `service_account` say whose requests they restrict)."""
    name = name or policy_name()
    return [
        {"apiVersion": API_VERSION, "kind": "ValidatingAdmissionPolicy", "metadata": {"name": name},
         "spec": policy_spec(namespace, service_account)},
        {"apiVersion": API_VERSION, "kind": "ValidatingAdmissionPolicyBinding", "metadata": {"name": name},
         "spec": binding_spec(name)},
    ]
