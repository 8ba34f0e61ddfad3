"""The local cluster rig, exercised for real: API server, RBAC, CRDs, nodes, packets, bpffs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import kubernetes
import pytest
from kubernetes.client.rest import ApiException

from kube_xdp_rig import netns as rig_netns
from kube_xdp_rig.apply import wait_established
from kube_xdp_rig import traffic
from kube_xdp_rig.cluster import rig_ports
from kube_xdp_rig.config import ConfigError, RigConfig
from kube_xdp_rig.controlplane import RigError
from kube_xdp_rig.rig import Rig

from .conftest import TEST_CONFIG, api_client


pytestmark = pytest.mark.rig


def test_api_server_answers_with_tls_and_token(admin):
    version = kubernetes.client.VersionApi(admin).get_code()
    assert version.git_version.startswith("v1.20")
    names = [n.metadata.name for n in kubernetes.client.CoreV1Api(admin).list_node().items]
    assert names == ["node-1", "node-2", "node-3"]


def test_rbac_denies_a_token_without_bindings(rig, admin):
    nobody = api_client(rig, "nobody")
    body = {"metadata": {"name": f"rbac-probe-{uuid.uuid4().hex[:6]}"}, "data": {"a": "b"}}
    with pytest.raises(ApiException) as denied:
        kubernetes.client.CoreV1Api(nobody).create_namespaced_config_map("default", body)
    assert denied.value.status == 403
    # the same write is allowed to the admin: the 403 is RBAC, not a broken request
    kubernetes.client.CoreV1Api(admin).create_namespaced_config_map("default", body)
    kubernetes.client.CoreV1Api(admin).delete_namespaced_config_map(body["metadata"]["name"], "default")
    nobody.close()


def test_rbac_is_not_always_allow(rig):
    cmdline = Path(f"/proc/{Rig(RigConfig(**TEST_CONFIG)).procs.pid('kube-apiserver')}/cmdline").read_bytes()
    assert b"--authorization-mode=RBAC\0" in cmdline
    assert b"AlwaysAllow" not in cmdline


def test_custom_object_round_trips_with_status(admin):
    ext = kubernetes.client.ApiextensionsV1Api(admin)
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.rigtest.kubexdp.io"},
        "spec": {
            "group": "rigtest.kubexdp.io", "scope": "Cluster",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{"name": "v1", "served": True, "storage": True, "subresources": {"status": {}},
                          "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                              "spec": {"type": "object", "properties": {"size": {"type": "integer", "maximum": 10}}},
                              "status": {"type": "object", "properties": {"seen": {"type": "integer"}}}}}}}],
        },
    }
    try:
        ext.create_custom_resource_definition(crd)
    except ApiException as e:
        if e.status != 409:
            raise
    custom = kubernetes.client.CustomObjectsApi(admin)
    wait_established(admin, crd["metadata"]["name"])
    name = f"w-{uuid.uuid4().hex[:6]}"
    custom.create_cluster_custom_object("rigtest.kubexdp.io", "v1", "widgets",
                                        {"apiVersion": "rigtest.kubexdp.io/v1", "kind": "Widget",
                                         "metadata": {"name": name}, "spec": {"size": 3}})
    custom.patch_cluster_custom_object_status("rigtest.kubexdp.io", "v1", "widgets", name, {"status": {"seen": 3}})
    obj = custom.get_cluster_custom_object("rigtest.kubexdp.io", "v1", "widgets", name)
    assert obj["spec"] == {"size": 3} and obj["status"] == {"seen": 3}
    with pytest.raises(ApiException) as invalid:   # schema validation is enforced
        custom.create_cluster_custom_object("rigtest.kubexdp.io", "v1", "widgets",
                                            {"apiVersion": "rigtest.kubexdp.io/v1", "kind": "Widget",
                                             "metadata": {"name": name + "x"}, "spec": {"size": 11}})
    assert invalid.value.status == 422
    custom.delete_cluster_custom_object("rigtest.kubexdp.io", "v1", "widgets", name)


def test_nodes_carry_their_labels(rig, admin):
    nodes = {n.metadata.name: n.metadata.labels for n in kubernetes.client.CoreV1Api(admin).list_node().items}
    assert nodes["node-2"]["role"] == "edge"
    assert "role" not in nodes["node-1"]
    assert all(labels["kubernetes.io/hostname"] == name for name, labels in nodes.items())


def test_every_node_namespace_has_its_interfaces_up(rig):
    for node in rig.nodes:
        states = rig_netns.link_states(node.netns)
        assert states == {"eth0": "UP", "eth1": "UP"}, (node.name, states)
        assert set(rig_netns.link_states(node.src_netns)) == {"eth0", "eth1"}


def test_default_route_points_at_the_first_interface(rig):
    out = subprocess.run(["ip", "-n", rig.nodes[0].netns, "route", "show", "default"],
                         capture_output=True, text=True, check=True).stdout
    assert "dev eth0" in out


@pytest.mark.parametrize("ifindex", [0, 1], ids=["eth0", "eth1"])
def test_packets_from_the_traffic_source_arrive_at_the_node_interface(rig, ifindex):
    node = rig.nodes[ifindex]      # a different node per case: every node is wired
    link = node.interfaces[ifindex]
    with traffic.UdpReceiver(node.netns, 5555, bind=link["node_ip"]) as rx:
        traffic.send_udp(node.src_netns, link["node_ip"], 5555, count=25)
        assert rx.count() == 25


def test_traffic_never_leaves_the_rig_range():
    with pytest.raises(ValueError):
        traffic.send_udp("kxe-node-1-src", "10.0.0.1", 53)


def test_each_node_has_its_own_bpffs(rig):
    a, b = Path(rig.nodes[0].bpffs), Path(rig.nodes[1].bpffs)
    assert rig_netns.is_bpffs(a) and rig_netns.is_bpffs(b)
    assert os.stat(a).st_dev != os.stat(b).st_dev          # separate bpffs instances
    marker = a / f"pin-probe-{uuid.uuid4().hex[:6]}"
    marker.mkdir()
    try:
        assert not (b / marker.name).exists()
        # the node's agent runs in the node's namespace context and sees its own pins:
        # prove a pinned BPF object is invisible across nodes with a real map pin
        _pin_map(marker / "probe_map")
        assert (marker / "probe_map").exists() and not (b / marker.name / "probe_map").exists()
    finally:
        for p in sorted(marker.rglob("*"), reverse=True):
            p.unlink()
        marker.rmdir()


def _pin_map(path: Path) -> None:
    """Create a real BPF array map with bcc's libbpf bindings and pin it at `path`."""
    code = ("import ctypes,sys\nfrom bcc.libbcc import lib\n"
            "fd = lib.bcc_create_map(2, b'probe', 4, 8, 1, 0)\n"
            "assert fd >= 0, fd\n"
            "assert lib.bpf_obj_pin(fd, sys.argv[1].encode()) == 0\n")
    subprocess.run(["/usr/bin/python3", "-c", code, str(path)], check=True, capture_output=True)


def test_up_is_idempotent(rig):
    again = Rig(RigConfig(**TEST_CONFIG)).up(log=lambda *_: None)
    assert [n.name for n in again.nodes] == [n.name for n in rig.nodes]
    assert again.nodes[0].interfaces == rig.nodes[0].interfaces   # nothing was rebuilt


def test_port_already_taken_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(RigError, match=rf"port {port} for kube-apiserver is already in use.*--apiserver-port"):
            Rig(RigConfig(instance="kxp", nodes=1, apiserver_port=port, etcd_port=rig_ports()["etcd_port"])).up(log=lambda *_: None)
    assert not Rig(RigConfig(instance="kxp")).leftovers()["netns"]


@pytest.mark.parametrize("bad, match", [
    (dict(nodes=0), "--nodes"),
    (dict(interfaces=("eth0", "eth0")), "unique"),
    (dict(interfaces=("../x",)), "interface name"),
    (dict(interfaces=("lo",)), "interface name"),
    (dict(labels={"bad key!": "x"}), "label key"),
    (dict(node_labels={"node-9": {"a": "b"}}), "unknown node"),
    (dict(instance="Bad"), "instance"),
    (dict(apiserver_port=80), "port"),
], ids=["zero-nodes", "dup-iface", "path-iface", "loopback", "bad-label", "unknown-node", "bad-instance", "low-port"])
def test_bad_options_are_refused_before_anything_is_touched(bad, match):
    with pytest.raises(ConfigError, match=match):
        RigConfig(**{**dict(instance="kxq"), **bad})


def test_cli_down_when_nothing_is_up_says_so():
    proc = subprocess.run([sys.executable, "-m", "kube_xdp_rig", "--instance", "kxn", "down"],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "nothing to do" in proc.stdout
    status = subprocess.run([sys.executable, "-m", "kube_xdp_rig", "--instance", "kxn", "status"],
                            capture_output=True, text=True)
    assert status.returncode == 3 and "down" in status.stdout


def test_down_leaves_nothing_behind():
    r = Rig(RigConfig(instance="kxd", nodes=2, **rig_ports()))
    info = r.up(log=lambda *_: None)
    pids = [p.pid for p in r.procs.running()]
    assert len(pids) == 2 and len(rig_netns.list_netns("kxd-")) == 4 and rig_netns.mounts_under(Path(info.state_dir))
    r.down(log=lambda *_: None)
    assert r.leftovers() == {"processes": [], "netns": [], "mounts": [], "state_dir": False}
    assert not any(Path(f"/proc/{p}").exists() for p in pids)
    assert not Path(info.state_dir).exists()
    assert not any(p.name.startswith(".kxd") for p in Path(info.state_dir).parent.iterdir())


def test_up_recovers_a_crashed_rig():
    r = Rig(RigConfig(instance="kxc", nodes=1, **rig_ports()))
    r.up(log=lambda *_: None)
    try:
        os.kill(r.procs.pid("kube-apiserver"), 9)          # crash: pid file and namespaces stay
        os.kill(r.procs.pid("etcd"), 9)
        messages = []
        info = r.up(log=messages.append)
        assert any("stale rig" in m for m in messages)
        assert r.healthy() and [n.name for n in info.nodes] == ["node-1"]
    finally:
        r.down(log=lambda *_: None)
