"""kube-xdp itself on the rig: CRDs, RBAC, the operator and one agent per node.

The operator and agents run as processes tracked by the rig (so `down` stops them),
authenticated as the ServiceAccounts kube-xdp/kube-xdp-operator and
kube-xdp/kube-xdp-agent, with exactly the RBAC in kube_xdp_api.rbac: the rig proves the
least-privilege rules are enough. Each agent does its netlink work in its node's
namespace and pins in its node's bpffs.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import kubernetes

from kube_xdp_api import rbac

from . import apply as applier
from .config import RigConfig
from .controlplane import port_owner
from .rig import Rig, RigInfo

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "crds"


def install(info: RigInfo) -> None:
    """Apply the CRDs and the RBAC (idempotent)."""
    client = kubernetes.config.new_client_from_config(config_file=info.kubeconfig)
    try:
        applier.apply(client, applier.load_yaml(CRDS))
        applier.apply(client, rbac.manifests())
    finally:
        client.close()


def rig_for(info: RigInfo) -> Rig:
    cfg = info.config
    return Rig(RigConfig(instance=info.instance, nodes=cfg["nodes"], interfaces=tuple(cfg["interfaces"]),
                         apiserver_port=info.apiserver_port, etcd_port=info.etcd_port))


def agent_name(node: str) -> str:
    return f"agent-{node}"


def start_operator(info: RigInfo, *, extra: list[str] | None = None) -> int:
    procs = rig_for(info).procs
    if procs.pid("operator"):
        return procs.pid("operator")
    liveness = _free_port()
    return procs.start("operator", [sys.executable, "-m", "kube_xdp_operator",
                                    "--kubeconfig", info.kubeconfigs["operator"],
                                    "--liveness", f"http://127.0.0.1:{liveness}/healthz", *(extra or [])])


def start_agent(info: RigInfo, node: str, *, resync: float = 2.0, extra: list[str] | None = None) -> int:
    procs = rig_for(info).procs
    name = agent_name(node)
    if procs.pid(name):
        return procs.pid(name)
    n = info.node(node)
    return procs.start(name, [sys.executable, "-m", "kube_xdp_agent", "--node-name", node,
                              "--kubeconfig", info.kubeconfigs["agent"], "--bpffs", n.bpffs,
                              "--netns", n.netns, "--resync", str(resync), *(extra or [])])


def start_all(info: RigInfo, **kw) -> None:
    install(info)
    start_operator(info)
    for n in info.nodes:
        start_agent(info, n.name, **kw)


def stop(info: RigInfo, name: str) -> bool:
    return rig_for(info).procs.stop(name)


def _free_port() -> int:
    import random
    while True:
        port = random.randrange(30000, 60000)
        if not port_owner(port):
            return port


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")
