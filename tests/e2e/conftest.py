"""The rig fixture: a real kube-apiserver + etcd and simulated nodes, on an instance of
its own (prefix 'kxe', ports 16443/12379) so tests never touch a person's demo rig."""

from __future__ import annotations

from pathlib import Path

import kubernetes
import pytest

from kube_xdp_rig.config import RigConfig
from kube_xdp_rig.rig import Rig, RigInfo

TEST_INSTANCE = "kxe"


def free_ports(n: int = 1, consecutive: bool = False) -> list[int]:
    """Ports free on 127.0.0.1 right now (the machine may run other API servers)."""
    from kube_xdp_rig.controlplane import port_owner
    import random
    rnd = random.Random()
    while True:
        base = rnd.randrange(20000, 60000)
        ports = [base + i for i in range(n)] if consecutive else [rnd.randrange(20000, 60000) for _ in range(n)]
        if len(set(ports)) == n and not any(port_owner(p) for p in ports):
            return ports


_ETCD = free_ports(2, consecutive=True)[0]
TEST_CONFIG = dict(instance=TEST_INSTANCE, nodes=3, interfaces=("eth0", "eth1"),
                   apiserver_port=free_ports()[0], etcd_port=_ETCD,
                   node_labels={"node-2": {"role": "edge"}})


@pytest.fixture(scope="session")
def rig() -> RigInfo:
    r = Rig(RigConfig(**TEST_CONFIG))
    info = r.up(log=lambda *_: None)
    yield info
    r.down(log=lambda *_: None)


def api_client(info: RigInfo, identity: str = "admin") -> kubernetes.client.ApiClient:
    return kubernetes.config.new_client_from_config(config_file=info.kubeconfigs[identity])


@pytest.fixture()
def admin(rig):
    client = api_client(rig)
    yield client
    client.close()


@pytest.fixture(scope="session")
def kubexdp(rig):
    """kube-xdp installed on the rig: CRDs, RBAC, operator, one agent per node (all as
    real processes, the operator and agents with their ServiceAccount identities)."""
    from kube_xdp_rig import workloads

    from .kubexdp import Cluster

    workloads.start_all(rig, resync=1.0)
    client = api_client(rig)
    yield Cluster(client)
    client.close()


@pytest.fixture()
def programs(kubexdp):
    """Create programs through this fixture; they are deleted (and their removal from
    every node awaited) after the test, pass or fail."""
    created: list[str] = []

    def create(body: dict) -> dict:
        created.append(body["metadata"]["name"])
        return kubexdp.create(body)

    yield create
    for name in created:
        kubexdp.delete(name)
    for name in created:
        kubexdp.wait_gone(name)
