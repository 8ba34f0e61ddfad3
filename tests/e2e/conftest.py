"""The rig fixture: a real kube-apiserver + etcd and simulated nodes, on an instance of
its own (prefix 'kxe', free ports below the ephemeral range) so tests never touch a person's demo rig."""

from __future__ import annotations

import os

import pytest

from kube_xdp_rig.cluster import admin_client as api_client   # tests import it from here
from kube_xdp_rig.cluster import rig_ports, rig_up
from kube_xdp_rig.config import RigConfig
from kube_xdp_rig.rig import RigInfo

from .kubexdp import Cluster

# KUBE_XDP_E2E_INSTANCE: another instance name, to run two e2e sessions side by side
TEST_INSTANCE = os.environ.get("KUBE_XDP_E2E_INSTANCE", "kxe")


TEST_CONFIG = dict(instance=TEST_INSTANCE, nodes=3, interfaces=("eth0", "eth1"), **rig_ports(),
                   node_labels={"node-2": {"role": "edge"}})


@pytest.fixture(scope="session")
def rig() -> RigInfo:
    with rig_up(RigConfig(**TEST_CONFIG)) as info:
        yield info


@pytest.fixture()
def admin(rig):
    client = api_client(rig)
    yield client
    client.close()


@pytest.fixture(scope="session")
def kubexdp(rig):
    """kube-xdp installed on the rig: CRDs, RBAC, operator, one agent per node (all as
    real processes, the operator and agents with their ServiceAccount identities)."""
    with Cluster(rig).deploy(resync=1.0) as cluster:
        yield cluster


@pytest.fixture()
def programs(kubexdp):
    """Create programs through this fixture; they are deleted (and their removal from
    every node awaited) after the test, pass or fail."""
    with kubexdp.tracked_programs() as create:
        yield create
