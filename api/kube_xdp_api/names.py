"""Stable names: API group, resources, labels, finalizers, bpffs layout.

Everything that two processes (operator, agent, rig, tests) must agree on lives here.
"""

from __future__ import annotations

import hashlib
import re

GROUP = "kubexdp.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# Resources (all cluster-scoped): plural, singular, kind, short names.
PROGRAMS = "xdpprograms"
PROGRAM_KIND = "XdpProgram"
ATTACHMENTS = "xdpattachments"
ATTACHMENT_KIND = "XdpAttachment"
NODES = "xdpnodes"
NODE_KIND = "XdpNode"
CATEGORY = "kube-xdp"
PROGRAM_SHORT_NAME = "xdpp"
ATTACHMENT_SHORT_NAME = "xdpa"
NODE_SHORT_NAME = "xdpn"

# Labels put on every XdpAttachment by the operator. The operator indexes attachments by
# LABEL_PROGRAM; LABEL_NODE is for people (`kubectl get xdpa -l kubexdp.io/node=NODE`):
# the agent lists/watches its own attachments with the field selector spec.nodeName=NODE
# (a selectable field of the CRD), not by label.
LABEL_PROGRAM = f"{GROUP}/program"
LABEL_NODE = f"{GROUP}/node"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "kube-xdp-operator"

# Finalizers: the operator holds one on each XdpProgram (it deletes the attachments
# itself, so deletion works without a garbage collector); the agent holds one on each
# XdpAttachment until it has detached and unpinned.
FINALIZER_OPERATOR = f"{GROUP}/operator"
FINALIZER_AGENT = f"{GROUP}/agent"

# Default root of kube-xdp's pins inside a node's bpffs.
DEFAULT_BPFFS = "/sys/fs/bpf"
PIN_SUBDIR = "kube-xdp"

_LABEL_VALUE_MAX = 63
_LABEL_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def node_label_value(node_name: str) -> str:
    """The value of LABEL_NODE for a node.

    Node names are DNS subdomains (up to 253 characters) but label values stop at 63;
    long names are shortened to a prefix plus a digest, deterministically, so operator
    and agent compute the same value independently.
    """
    if len(node_name) <= _LABEL_VALUE_MAX and _LABEL_VALUE_RE.match(node_name):
        return node_name
    digest = hashlib.sha256(node_name.encode()).hexdigest()[:16]
    prefix = re.sub(r"[^A-Za-z0-9_.-]", "-", node_name)[: _LABEL_VALUE_MAX - 17].strip("-_.")
    return f"{prefix}-{digest}" if prefix else digest


def attachment_name(program: str, node_name: str) -> str:
    """Name of the XdpAttachment of `program` on `node_name` (a DNS subdomain, <= 253)."""
    name = f"{program}.{node_name}"
    if len(name) <= 253:
        return name
    digest = hashlib.sha256(node_name.encode()).hexdigest()[:16]
    return f"{program}.{digest}"
