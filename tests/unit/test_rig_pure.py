"""The rig's pure parts: node link reconciliation, namespace ownership, pid files and the
environment tag, why a rig is down, the CLI's one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
from kubernetes.client.rest import ApiException

from kube_xdp_rig import cli, netns, procs
from kube_xdp_rig.config import RigConfig
from kube_xdp_rig.rig import link_diff, why_down

SPEC = RigConfig(instance="kxu", nodes=1, interfaces=("eth0", "eth1")).node_specs()[0]
ADDRS = {l.name: {f"{l.node_ip}/{l.prefix_len}"} for l in SPEC.links}


def test_link_diff_intact_node():
    assert link_diff(SPEC.links, {"eth0": "UP", "eth1": "UP"}, ADDRS) == ([], [])


def test_link_diff_names_links_the_options_no_longer_ask_for():
    states = {"eth0": "UP", "eth1": "UP", "eth2": "UP"}
    assert link_diff(SPEC.links, states, {**ADDRS, "eth2": {"198.18.1.10/30"}}) == (["eth2"], [])


@pytest.mark.parametrize("states, addrs, broken", [
    ({"eth0": "UP"}, ADDRS, ["eth1"]),                                       # missing
    ({"eth0": "UP", "eth1": "DOWN"}, ADDRS, ["eth1"]),                       # down
    ({"eth0": "UP", "eth1": "UP"}, {"eth0": ADDRS["eth0"]}, ["eth1"]),       # no address
    ({"eth0": "UP", "eth1": "UP"}, {**ADDRS, "eth0": {"198.18.1.6/30"}}, ["eth0"]),  # another link's address
], ids=["missing", "down", "no-address", "wrong-address"])
def test_link_diff_broken_links(states, addrs, broken):
    assert link_diff(SPEC.links, states, addrs)[1] == broken


@pytest.mark.parametrize("name, mine", [
    ("kxu-node-1", True), ("kxu-node-12-src", True),
    ("kxu-lab", False), ("kxu-node-1-x", False), ("kxu-node-", False), ("kxu-node-01", False),
    ("kxuu-node-1", False), ("kx-node-1", False),
])
def test_only_the_rigs_own_namespace_names(name, mine):
    assert netns.is_rig_netns(name, "kxu") is mine


def test_pid_file_formats():
    assert procs.parse_pid_file("123 456\n") == (123, 456)
    assert procs.parse_pid_file("123") == (123, None)        # written by an older rig
    for bad in ("", "a b", "1 2 3"):
        with pytest.raises(ValueError):
            procs.parse_pid_file(bad)


def test_environment_tag_is_exact_to_the_state_dir():
    env = b"PATH=/bin\0KUBE_XDP_RIG_PROC=/run/kube-xdp-rig/kxu:etcd\0HOME=/root\0"
    assert procs.tagged(env, "/run/kube-xdp-rig/kxu")
    assert not procs.tagged(env, "/run/kube-xdp-rig/kx")          # another instance's prefix
    assert not procs.tagged(b"X=KUBE_XDP_RIG_PROC=/run/kube-xdp-rig/kxu:etcd\0", "/run/kube-xdp-rig/kxu")
    assert not procs.tagged(b"", "/run/kube-xdp-rig/kxu")


def test_pid_of_a_process_with_another_start_time_is_not_the_rigs(tmp_path):
    """Pid reuse: the pid file's pid is alive but started at another time."""
    table = procs.ProcTable(tmp_path)
    table.pid_dir.mkdir(parents=True)
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        start = procs.starttime(sleeper.pid)
        (table.pid_dir / "x.pid").write_text(f"{sleeper.pid} {start}\n")
        assert table.pid("x") == sleeper.pid
        (table.pid_dir / "x.pid").write_text(f"{sleeper.pid} {start + 1}\n")
        assert table.pid("x") is None
        assert sleeper.pid not in table.strays()                    # no tag: never a stray
    finally:
        sleeper.kill()
        sleeper.wait()


def test_started_processes_carry_the_tag_and_are_found_without_pid_file(tmp_path):
    table = procs.ProcTable(tmp_path)
    pid = table.start("sleeper", ["sleep", "30"])
    try:
        assert table.pid("sleeper") == pid
        (table.pid_dir / "sleeper.pid").unlink()                    # lost its pid file
        assert table.pid("sleeper") is None and table.strays() == [pid]
        assert table.stop_all(timeout=2) == [pid]
        assert table.strays() == [] and table.pid("sleeper") is None
    finally:
        table.stop_all(timeout=1)


def test_why_down():
    nothing = {"processes": [], "netns": [], "mounts": [], "state_dir": False}
    some = {**nothing, "netns": ["kxu-node-1"]}
    assert why_down(True, set(), nothing) is None
    assert "no rig.json" in why_down(False, set(), some)
    assert why_down(True, {"etcd"}, some) == "kube-apiserver not running"
    assert why_down(True, set(), some) == "etcd and kube-apiserver not running"
    assert why_down(True, {"etcd", "kube-apiserver"}, some) == "kube-apiserver not answering /readyz"


@pytest.mark.parametrize("exc, says", [
    (RuntimeError("openssl req failed: unable to load config\nsecond line"), "RuntimeError: openssl req failed: unable to load config"),
    (ApiException(status=403, reason="Forbidden"), "the API server answered 403 Forbidden"),
    (FileNotFoundError(2, "No such file or directory", "ip"), "command or file not found: ip (install what is missing: make deps)"),
    (subprocess.CalledProcessError(2, ["ip", "netns", "add", "x"], stderr=b"RTNETLINK answers: File exists\n"),
     "'ip netns add x' exited 2: RTNETLINK answers: File exists"),
], ids=["openssl", "api", "missing-binary", "called-process"])
def test_unexpected_errors_are_one_line_with_the_traceback_saved(tmp_path, exc, says):
    try:
        raise exc
    except Exception as e:
        line = cli.error_line("up", e, "kxu", state_root=tmp_path)
    assert "\n" not in line
    assert line.startswith("'up' failed: " + says)
    trace = tmp_path / "kxu.failed-logs" / "traceback.txt"
    assert f"traceback: {trace}" in line and "Traceback" in trace.read_text()
    assert "--instance kxu down" in line


def test_teardown_hint():
    assert cli.teardown_hint("kxr") == "make rig-down"
    assert cli.teardown_hint("two").endswith("-m kube_xdp_rig --instance two down")
    assert cli.teardown_hint("two").startswith(str(sys.executable).rsplit("/", 1)[0])
