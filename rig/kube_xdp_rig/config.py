"""Rig configuration and addressing: pure data, no side effects.

Addresses come from 198.18.0.0/15 (RFC 2544, reserved for benchmarking): node i's
interface j is the /30 198.18.i.4j/30 (node i <= 254, j <= 62), with the traffic source
at .4j+1 and the node at .4j+2. Nodes 255.. use 198.19.(i-254). The Service CIDR is
198.19.240.0/24, above every node's block (MAX_NODES keeps nodes below 198.19.0.0).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from pathlib import Path

DEFAULT_INSTANCE = "kxr"
DEFAULT_STATE_ROOT = Path(os.environ.get("KUBE_XDP_RIG_ROOT", "/run/kube-xdp-rig"))
DEFAULT_CACHE = Path(os.environ.get("KUBE_XDP_CACHE", str(Path.home() / ".cache" / "kube-xdp")))

_INSTANCE_RE = re.compile(r"^[a-z][a-z0-9]{1,7}$")
_IFNAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,14}$")
_LABEL_KEY_RE = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")
MAX_NODES = 200
SERVICE_CIDR = "198.19.240.0/24"
MAX_IFACES = 8


class ConfigError(ValueError):
    """A rig option is invalid; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class Link:
    """One veth "NIC" of a node and its peer in the node's traffic-source namespace."""

    name: str
    node_ip: str
    src_ip: str
    prefix_len: int = 30


@dataclasses.dataclass(frozen=True)
class NodeSpec:
    name: str
    index: int
    labels: dict
    links: tuple[Link, ...]

    def netns(self, instance: str) -> str:
        return f"{instance}-{self.name}"

    def src_netns(self, instance: str) -> str:
        return f"{instance}-{self.name}-src"


@dataclasses.dataclass(frozen=True)
class RigConfig:
    instance: str = DEFAULT_INSTANCE
    nodes: int = 3
    interfaces: tuple[str, ...] = ("eth0", "eth1")
    labels: dict = dataclasses.field(default_factory=dict)          # applied to every node
    node_labels: dict = dataclasses.field(default_factory=dict)     # node name -> {k: v}
    apiserver_port: int = 6443
    etcd_port: int = 2379
    state_root: Path = DEFAULT_STATE_ROOT
    cache_dir: Path = DEFAULT_CACHE
    audit: bool = False      # write an audit log of every API request (<state>/audit.log)

    def __post_init__(self) -> None:
        if not _INSTANCE_RE.match(self.instance):
            raise ConfigError(f"instance {self.instance!r}: 2-8 lowercase letters/digits, starting with a letter")
        if not 1 <= self.nodes <= MAX_NODES:
            raise ConfigError(f"--nodes {self.nodes}: must be between 1 and {MAX_NODES}")
        if not 1 <= len(self.interfaces) <= MAX_IFACES:
            raise ConfigError(f"--interfaces: between 1 and {MAX_IFACES} names")
        for name in self.interfaces:
            if not _IFNAME_RE.match(name) or name in ("lo",):
                raise ConfigError(f"interface name {name!r}: a letter then up to 14 of [A-Za-z0-9_], not 'lo'")
        if len(set(self.interfaces)) != len(self.interfaces):
            raise ConfigError("--interfaces: names must be unique")
        for port, what in ((self.apiserver_port, "apiserver"), (self.etcd_port, "etcd")):
            if not 1024 <= port <= 65534:
                raise ConfigError(f"{what} port {port}: must be between 1024 and 65534")
        if self.etcd_port + 1 == self.apiserver_port or self.etcd_port == self.apiserver_port:
            raise ConfigError("etcd uses its port and the next one (peer): pick an apiserver port apart from them")
        for labels in [self.labels, *self.node_labels.values()]:
            check_labels(labels)
        unknown = set(self.node_labels) - {n.name for n in self.node_specs()}
        if unknown:
            raise ConfigError(f"--node-label names unknown node(s) {sorted(unknown)}; nodes are node-1..node-{self.nodes}")

    @property
    def state_dir(self) -> Path:
        return self.state_root / self.instance

    def node_specs(self) -> list[NodeSpec]:
        specs = []
        for i in range(1, self.nodes + 1):
            name = f"node-{i}"
            labels = {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubexdp.io/rig-node": "true",
                **self.labels,
                **self.node_labels.get(name, {}),
            }
            links = tuple(_link(i, j, ifname) for j, ifname in enumerate(self.interfaces))
            specs.append(NodeSpec(name=name, index=i, labels=labels, links=links))
        return specs


def _link(node_index: int, link_index: int, name: str) -> Link:
    base = ipaddress.IPv4Address("198.18.0.0") + (node_index << 8) + 4 * link_index
    return Link(name=name, src_ip=str(base + 1), node_ip=str(base + 2))


def check_labels(labels: dict) -> None:
    for key, value in labels.items():
        if not _LABEL_KEY_RE.match(key) or len(key) > 253:
            raise ConfigError(f"label key {key!r} is not a valid Kubernetes label key")
        if not _LABEL_VALUE_RE.match(value):
            raise ConfigError(f"label value {value!r} (key {key}) is not a valid Kubernetes label value")


def parse_labels(text: str) -> dict:
    """'a=b,c=d' -> {'a': 'b', 'c': 'd'}; raises ConfigError on malformed input."""
    out = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"label {item!r}: expected key=value")
        out[key] = value
    check_labels(out)
    return out
