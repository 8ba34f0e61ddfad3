"""The rig fixture: a real kube-apiserver + etcd and simulated nodes, on an instance of
its own (prefix 'kxe', free ports below the ephemeral range) so tests never touch a person's demo rig."""

from __future__ import annotations

from pathlib import Path

import kubernetes
import pytest

from kube_xdp_rig.config import RigConfig
from kube_xdp_rig.controlplane import free_ports
from kube_xdp_rig.rig import Rig, RigInfo

TEST_INSTANCE = "kxe"


_ETCD, _, _API = free_ports(3, consecutive=True)    # etcd uses etcd+1 too
TEST_CONFIG = dict(instance=TEST_INSTANCE, nodes=3, interfaces=("eth0", "eth1"),
                   apiserver_port=_API, etcd_port=_ETCD,
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
