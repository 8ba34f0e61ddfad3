"""The local cluster rig, exercised for real: API server, RBAC, CRDs, nodes, packets, bpffs."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import kubernetes
import pytest
from kubernetes.client.rest import ApiException

from kube_xdp_rig import netns as rig_netns
from kube_xdp_rig.apply import wait_established
from kube_xdp_rig import traffic
from kube_xdp_rig.cluster import admin_client, rig_ports
from kube_xdp_rig.config import ConfigError, RigConfig
from kube_xdp_rig.controlplane import RigError
from kube_xdp_rig.rig import Rig

from .conftest import TEST_CONFIG, TEST_INSTANCE, api_client


pytestmark = pytest.mark.rig

REPO = Path(__file__).resolve().parents[2]
# the instance for the tests that bring up a rig of their own, one at a time (never the
# session's, never a person's): the session's name plus "2"
SECOND = TEST_INSTANCE[:7] + "2"


def quiet(*_):
    pass


def rig_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kube_xdp_rig", "--instance", SECOND, *args],
                          capture_output=True, text=True, env=env, timeout=300)


def test_api_server_answers_with_tls_and_token(admin):
    version = kubernetes.client.VersionApi(admin).get_code()
    assert version.git_version.startswith("v1.37.")
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
    messages = []
    again = Rig(RigConfig(**TEST_CONFIG)).up(log=messages.append)
    assert [n.name for n in again.nodes] == [n.name for n in rig.nodes]
    assert again.nodes[0].interfaces == rig.nodes[0].interfaces   # nothing was rebuilt
    assert any(m.startswith(f"rig: already up ({rig.server})") for m in messages), messages
    assert not any("creating node" in m or "stale" in m for m in messages), messages


def test_status_while_up(rig):
    proc = subprocess.run([sys.executable, "-m", "kube_xdp_rig", "--instance", TEST_INSTANCE, "status"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert f"rig '{TEST_INSTANCE}': up at {rig.server}" in proc.stdout
    for name in ("etcd", "kube-apiserver"):
        assert f"process {name}" in proc.stdout
    for node in rig.nodes:
        assert f"node {node.name}" in proc.stdout and f"netns {node.netns}" in proc.stdout
    assert proc.stdout.count("eth0:UP, eth1:UP") == 3 and "bpffs mounted" in proc.stdout
    status = Rig(RigConfig(**TEST_CONFIG)).status()
    assert status["up"] and status["leftovers"] is None and status["problem"] is None


def _taken_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s, s.getsockname()[1]


def test_port_already_taken_is_a_clear_error():
    s, port = _taken_port()
    with s:
        with pytest.raises(RigError, match=rf"^port {port} for kube-apiserver is already in use by .*: stop it, or pass --apiserver-port PORT$"):
            Rig(RigConfig(instance=SECOND, nodes=1, apiserver_port=port, etcd_port=rig_ports()["etcd_port"])).up(log=quiet)
    assert not any(Rig(RigConfig(instance=SECOND)).leftovers().values())


def test_etcd_port_already_taken_is_a_clear_error():
    s, port = _taken_port()
    with s:
        proc = rig_cli("up", "--nodes", "1", "--etcd-port", str(port), "--apiserver-port", str(rig_ports()["apiserver_port"]))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert re.fullmatch(rf"kube-xdp-rig: port {port} for etcd is already in use by .*pid={os.getpid()}.*: "
                        r"stop it, or pass --etcd-port PORT", lines[0]), lines   # names the owner: this test
    assert not any(Rig(RigConfig(instance=SECOND)).leftovers().values())


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
    proc = rig_cli("down")
    assert proc.returncode == 0 and proc.stdout.strip() == f"rig: nothing to do: no rig '{SECOND}' is up"
    status = rig_cli("status")
    assert status.returncode == 3 and status.stdout.strip() == f"rig '{SECOND}': down"


class Bystanders:
    """Processes of a person that name paths in the rig's state directory but are not the
    rig's: `tail -f` of a log, a client with the admin kubeconfig. They must survive."""

    def __init__(self, state_dir: str):
        self.procs = [
            subprocess.Popen(["tail", "-f", f"{state_dir}/logs/etcd.log"], stdout=subprocess.DEVNULL),
            subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)",
                              "--kubeconfig", f"{state_dir}/admin.kubeconfig", "get", "-w"]),
        ]

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def stop(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()


def test_down_leaves_nothing_behind_and_only_stops_the_rigs_processes():
    root = Path(tempfile.mkdtemp(prefix="kxd-root-", dir="/run"))
    r = Rig(RigConfig(instance=SECOND, nodes=2, state_root=root / "kube-xdp-rig", **rig_ports()))
    info = r.up(log=quiet)
    bystanders = Bystanders(info.state_dir)
    try:
        pids = [p.pid for p in r.procs.running()]
        assert len(pids) == 2 and len(rig_netns.rig_netns(SECOND)) == 4 and rig_netns.mounts_under(Path(info.state_dir))
        # a namespace that only looks like the rig's is not the rig's
        subprocess.run(["ip", "netns", "add", f"{SECOND}-lab"], check=True)
        # a rig process that lost its pid file (a crash between start and write) is still found
        (r.procs.pid_dir / "etcd.pid").unlink()
        assert r.procs.pid("etcd") is None and set(r.procs.strays()) == set(pids)
        r.down(log=quiet)
        assert r.leftovers() == {"processes": [], "netns": [], "mounts": [], "state_dir": False}
        assert not any(Path(f"/proc/{p}").exists() for p in pids)
        assert bystanders.alive(), "down signalled a process the rig did not start"
        assert f"{SECOND}-lab" in rig_netns.list_netns(f"{SECOND}-")
        assert not Path(info.state_dir).exists()
        assert not (root / "kube-xdp-rig").exists(), "the empty state root stays after down"
    finally:
        bystanders.stop()
        subprocess.run(["ip", "netns", "del", f"{SECOND}-lab"], capture_output=True)
        r.down(log=quiet)
        shutil.rmtree(root, ignore_errors=True)


def test_up_recovers_a_crashed_rig():
    r = Rig(RigConfig(instance=SECOND, nodes=1, **rig_ports()))
    info = r.up(log=quiet)
    bystanders = Bystanders(info.state_dir)
    try:
        os.kill(r.procs.pid("kube-apiserver"), 9)          # crash: pid file and namespaces stay
        os.kill(r.procs.pid("etcd"), 9)
        status = rig_cli("status")
        assert status.returncode == 3
        assert f"rig '{SECOND}': DOWN, but parts of it are still here (etcd and kube-apiserver not running)" in status.stdout
        assert f"netns   {SECOND}-node-1" in status.stdout and f"--instance {SECOND} down" in status.stdout
        messages = []
        info = r.up(log=messages.append)
        assert any("stale rig" in m for m in messages)
        assert r.healthy() and [n.name for n in info.nodes] == ["node-1"]
        assert bystanders.alive(), "stale-rig cleanup signalled a process the rig did not start"
    finally:
        bystanders.stop()
        r.down(log=quiet)


def test_up_never_wipes_a_live_rig():
    """A slow API server is waited for (bounded, then a clear error that removes nothing);
    a dead API server on a live etcd is restarted on the rig's data; status says which."""
    cfg = RigConfig(instance=SECOND, nodes=1, **rig_ports())
    r = Rig(cfg)
    info = r.up(log=quiet)
    try:
        marker = {"metadata": {"name": "survivor"}, "data": {"a": "b"}}
        with admin_client(info) as api:
            kubernetes.client.CoreV1Api(api).create_namespaced_config_map("default", marker)
        etcd = r.procs.pid("etcd")
        apiserver = r.procs.pid("kube-apiserver")

        os.kill(apiserver, signal.SIGSTOP)                 # alive, but /readyz does not answer
        try:
            with pytest.raises(RigError, match=r"has not answered /readyz for 3s .*nothing was removed.*'down' to start over"):
                Rig(cfg, ready_wait=3).up(log=quiet)
            assert r.procs.pid("etcd") == etcd and r.procs.pid("kube-apiserver") == apiserver
            status = rig_cli("status")
            assert status.returncode == 3 and "(kube-apiserver not answering /readyz)" in status.stdout
            threading.Timer(4, os.kill, (apiserver, signal.SIGCONT)).start()
            messages = []
            Rig(cfg, ready_wait=60).up(log=messages.append)
        finally:
            os.kill(apiserver, signal.SIGCONT)
        assert any("not answering /readyz; retrying for up to 60s" in m for m in messages), messages
        assert any(m.startswith("rig: already up") for m in messages), messages
        assert r.procs.pid("etcd") == etcd and r.procs.pid("kube-apiserver") == apiserver

        os.kill(apiserver, signal.SIGKILL)
        controlplane_gone = time.monotonic() + 10
        while r.procs.pid("kube-apiserver") and time.monotonic() < controlplane_gone:
            time.sleep(0.1)
        status = rig_cli("status")
        assert status.returncode == 3 and "(kube-apiserver not running)" in status.stdout and f"etcd[{etcd}]" in status.stdout
        messages = []
        info = r.up(log=messages.append)
        assert any("kube-apiserver is not running (etcd is" in m for m in messages), messages
        assert r.procs.pid("etcd") == etcd and r.procs.pid("kube-apiserver") not in (None, apiserver)
        with admin_client(info) as api:                    # etcd's data was kept
            assert kubernetes.client.CoreV1Api(api).read_namespaced_config_map("survivor", "default").data == {"a": "b"}
    finally:
        r.down(log=quiet)


def test_a_second_up_with_fewer_interfaces_removes_the_extra_ones():
    ports = rig_ports()
    r = Rig(RigConfig(instance=SECOND, nodes=1, interfaces=("eth0", "eth1", "eth2"), **ports))
    r.up(log=quiet)
    try:
        etcd = r.procs.pid("etcd")
        node = r.info().nodes[0]
        mac0 = rig_netns.mac(node.netns, "eth0")
        messages = []
        info = Rig(RigConfig(instance=SECOND, nodes=1, interfaces=("eth0", "eth1"), **ports)).up(log=messages.append)
        assert any("removing interface(s) eth2" in m for m in messages), messages
        assert rig_netns.link_states(node.netns) == {"eth0": "UP", "eth1": "UP"}
        assert set(rig_netns.link_states(node.src_netns)) == {"eth0", "eth1"}
        assert [l["name"] for l in info.nodes[0].interfaces] == ["eth0", "eth1"]
        assert r.info().config["interfaces"] == ["eth0", "eth1"]
        assert rig_netns.mac(node.netns, "eth0") == mac0 and r.procs.pid("etcd") == etcd   # nothing else rebuilt
        # a different set in another order: the node is rebuilt to exactly it
        info = Rig(RigConfig(instance=SECOND, nodes=1, interfaces=("eth1", "eth0"), **ports)).up(log=quiet)
        assert rig_netns.link_states(node.netns) == {"eth0": "UP", "eth1": "UP"}
        addrs = rig_netns.link_addrs(node.netns)
        assert addrs == {l["name"]: {l["node_ip"] + "/30"} for l in info.nodes[0].interfaces}
        assert addrs["eth1"] == {"198.18.1.2/30"}
    finally:
        r.down(log=quiet)


def test_a_missing_binary_is_one_line_and_cleans_up():
    """No openssl (nor anything else) on PATH: one line naming it, exit 1, nothing left."""
    env = {**os.environ, "PATH": "/nonexistent"}
    proc = rig_cli("up", "--nodes", "1", *sum(([f"--{k.replace('_', '-')}", str(v)] for k, v in rig_ports().items()), []),
                   env=env)
    try:
        assert proc.returncode == 1, proc.stdout + proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert lines[0].startswith("kube-xdp-rig: 'up' failed: command or file not found: openssl (install what is missing: make deps)")
        trace = Path(lines[0].split("traceback: ", 1)[1].split(";", 1)[0])
        assert trace.is_file() and "FileNotFoundError" in trace.read_text()
        left = Rig(RigConfig(instance=SECOND)).leftovers()
        assert left["processes"] == [] and left["netns"] == [] and left["mounts"] == []
    finally:
        assert rig_cli("down").returncode == 0
    assert not any(Rig(RigConfig(instance=SECOND)).leftovers().values())


# -- a failed package install (no network needed); the Go builds: test_gobuild.py ------------
def _fake_apt(bin_dir: Path, log: Path) -> None:
    """apt-get that logs its arguments and fails where FAKE_APT_FAIL says."""
    (bin_dir / "apt-get").write_text(
        "#!/bin/sh\n"
        f"echo \"$*\" >> {log}\n"
        'case "$1" in "$FAKE_APT_FAIL") echo "E: fake $1 failure" >&2; exit 100;; esac\n'
        "exit 0\n")
    (bin_dir / "apt-get").chmod(0o755)


def _deps_env(tmp_path: Path, fail: str, missing: str = "") -> dict:
    """PATH with only what install-host-deps.sh needs, dpkg-query saying every package but
    `missing` is installed, and a fake apt-get."""
    fake = tmp_path / "bin"
    fake.mkdir()
    for tool in ("id", "grep", "uname", "ls", "sort", "tail", "mkdir", "ln", "cat"):
        (fake / tool).symlink_to(shutil.which(tool))
    (fake / "dpkg-query").write_text(        # dpkg-query -W -f='${Status}' PACKAGE
        "#!/bin/sh\n"
        f'case "$3" in "{missing or "-"}") echo "dpkg-query: no packages found matching $3" >&2; exit 1;; esac\n'
        "printf 'install ok installed'\n")
    (fake / "dpkg-query").chmod(0o755)
    _fake_apt(fake, tmp_path / "apt.log")
    sources = tmp_path / "deb-src.sources"
    sources.write_text("# present\n")
    return {"PATH": str(fake), "FAKE_APT_FAIL": fail, "KUBE_XDP_DEB_SRC_FILE": str(sources)}


def _deps(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([shutil.which("bash"), str(REPO / "scripts" / "install-host-deps.sh")],
                          capture_output=True, text=True, env=env, timeout=60)


needs_headers = pytest.mark.skipif(not Path(f"/lib/modules/{os.uname().release}/build/include").exists(),
                                   reason="kernel headers not linked yet (make deps does it)")


@needs_headers
@pytest.mark.parametrize("fail, message", [
    ("install", "install-host-deps: apt-get install failed for: netsniff-ng (apt's reason is above; fix it, then rerun 'make deps')"),
    ("update", "install-host-deps: apt-get update failed: check network access and the Debian mirror in "
               "/etc/apt/sources.list.d, then rerun 'make deps'"),
])
def test_deps_install_what_is_missing_and_say_what_failed(tmp_path, fail, message):
    proc = _deps(_deps_env(tmp_path, fail, missing="netsniff-ng"))
    assert proc.returncode == 1
    assert [l for l in proc.stderr.splitlines() if l.startswith("install-host-deps:")] == [message]
    calls = (tmp_path / "apt.log").read_text().splitlines()
    assert calls[0] == "update -qq"
    if fail == "install":
        assert calls[1].startswith("install ") and calls[1].split()[-1] == "netsniff-ng"


@needs_headers
def test_deps_with_everything_present_touch_nothing(tmp_path):
    proc = _deps(_deps_env(tmp_path, "update"))
    assert proc.returncode == 0 and proc.stdout.strip() == "install-host-deps: ok", proc.stderr
    assert not (tmp_path / "apt.log").exists()
