"""XdpProgram -> attachments -> agents compile, attach, pin, report: on the real rig,
against the real kernel, proven with real packets."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest

from kube_xdp_agent.kernel.bpfsys import BpfMap
from kube_xdp_rig import traffic
from .. import helm_cli

from .kubexdp import COUNT_ALL, UDP_DROP, kernel_xdp, pins_of, program, wait

pytestmark = pytest.mark.rig


def _stat(iface_status: dict, map_name: str, index: int) -> int:
    path = Path(iface_status["pinPath"]).parent / "maps" / map_name
    with BpfMap.open_pinned(str(path)) as m:
        value = m.lookup(struct.pack("<I", index))
    return sum(struct.unpack("<Q", v[:8])[0] for v in (value if isinstance(value, list) else [value]))


def _ifstatus(att: dict, ifname: str) -> dict:
    return next(i for i in att["status"]["interfaces"] if i["name"] == ifname)


def _drop_port_holds(node, link: dict, drop_port: int, pass_port: int, count: int = 40) -> tuple[int, int]:
    with traffic.UdpReceiver(node.netns, drop_port, bind=link["node_ip"]) as rx_drop, \
            traffic.UdpReceiver(node.netns, pass_port, bind=link["node_ip"]) as rx_pass:
        traffic.send_udp(node.src_netns, link["node_ip"], drop_port, count)
        traffic.send_udp(node.src_netns, link["node_ip"], pass_port, count)
        return rx_drop.count(), rx_pass.count()


def test_apply_makes_every_node_ready_with_the_mode_the_kernel_reports(rig, kubexdp, programs):
    programs(program("e2e-drop", UDP_DROP, "xdp_drop_port", defines={"DROP_PORT": "7001"}))
    prog = kubexdp.wait_ready("e2e-drop")
    assert prog["status"]["nodeSummary"] == "3/3"
    assert prog["status"]["modes"] == {"native": 3}
    atts = kubexdp.attachments("e2e-drop")
    assert sorted(atts) == ["node-1", "node-2", "node-3"]
    for node in rig.nodes:
        st = _ifstatus(atts[node.name], "eth0")
        mode, prog_id = kernel_xdp(node.netns, "eth0")
        assert (st["mode"], st["progId"]) == (mode, prog_id) == ("native", st["progId"])
        assert Path(node.bpffs, "kube-xdp", "e2e-drop").exists()
        assert kernel_xdp(node.netns, "eth1") == (None, None)          # only what was asked
        before = _stat(st, "stats", 0)
        dropped_arrived, passed_arrived = _drop_port_holds(node, node.interfaces[0], 7001, 7002)
        assert (dropped_arrived, passed_arrived) == (0, 40)
        assert _stat(st, "stats", 0) - before == 40                   # the program counted its drops


def test_describe_shows_the_events_of_the_program(rig, kubexdp, programs):
    """Events about cluster-scoped objects are found by `kubectl describe` only when their
    involvedObject has no namespace (kopf's own kopf.event() put "default" there)."""
    programs(program("e2e-events", COUNT_ALL, "xdp_count", interfaces={"names": ["eth1"]},
                     selector={"matchLabels": {"kubernetes.io/hostname": "node-1"}}))
    kubexdp.wait_ready("e2e-events")

    def described() -> str | None:
        out = subprocess.run([helm_cli.kubectl_binary(), "--kubeconfig", rig.kubeconfig, "describe", "xdpp",
                              "e2e-events"], capture_output=True, text=True, timeout=60, check=True).stdout
        events = out.split("\nEvents:", 1)[1]
        return events if "1/1 nodes ready" in events else None

    events = wait(described, 15, "the Ready Event in kubectl describe")
    assert "Normal" in events and "Ready" in events and "kube-xdp-operator" in events


def test_spec_change_replaces_the_program_on_every_node(rig, kubexdp, programs):
    programs(program("e2e-change", UDP_DROP, "xdp_drop_port", defines={"DROP_PORT": "7101"}))
    kubexdp.wait_ready("e2e-change")
    old = {n: _ifstatus(a, "eth0") for n, a in kubexdp.attachments("e2e-change").items()}
    kubexdp.patch_spec("e2e-change", {"defines": {"DROP_PORT": "7102"}})
    kubexdp.wait_ready("e2e-change")
    new = {n: _ifstatus(a, "eth0") for n, a in kubexdp.attachments("e2e-change").items()}
    for node in rig.nodes:
        assert new[node.name]["progId"] != old[node.name]["progId"]
        assert kernel_xdp(node.netns, "eth0") == ("native", new[node.name]["progId"])
        # the old program is gone: not attached, not pinned
        assert pins_of(node.bpffs, "e2e-change") == [Path(new[node.name]["pinPath"]).parent.name]
        assert _drop_port_holds(node, node.interfaces[0], 7102, 7101) == (0, 40)
        assert _stat(new[node.name], "stats", 0) == 40                # the new program's counters advance


def test_node_label_removed_detaches_from_that_node_only(rig, kubexdp, programs):
    for n in ("node-1", "node-3"):
        kubexdp.label_node(n, {"e2e-select": "yes"})
    try:
        programs(program("e2e-select", COUNT_ALL, "xdp_count", interfaces={"names": ["eth1"]},
                         selector={"matchLabels": {"e2e-select": "yes"}}))
        kubexdp.wait_ready("e2e-select")
        assert sorted(kubexdp.attachments("e2e-select")) == ["node-1", "node-3"]
        assert kernel_xdp(rig.node("node-2").netns, "eth1") == (None, None)
        kept = kernel_xdp(rig.node("node-1").netns, "eth1")
        kubexdp.label_node("node-3", {"e2e-select": None})
        wait(lambda: sorted(kubexdp.attachments("e2e-select")) == ["node-1"], 60, "node-3's attachment removed")
        wait(lambda: kernel_xdp(rig.node("node-3").netns, "eth1") == (None, None), 30, "XDP detached on node-3")
        assert pins_of(rig.node("node-3").bpffs, "e2e-select") == []
        assert kernel_xdp(rig.node("node-1").netns, "eth1") == kept          # untouched
        kubexdp.wait_ready("e2e-select")
        assert kubexdp.get("e2e-select")["status"]["nodeSummary"] == "1/1"
    finally:
        for n in ("node-1", "node-3"):
            kubexdp.label_node(n, {"e2e-select": None})


def test_deleting_the_program_leaves_nothing_on_any_node(rig, kubexdp):
    kubexdp.create(program("e2e-delete", COUNT_ALL, "xdp_count", interfaces={"pattern": "eth[01]"}))
    kubexdp.wait_ready("e2e-delete")
    assert all(kernel_xdp(n.netns, i)[0] == "native" for n in rig.nodes for i in ("eth0", "eth1"))
    kubexdp.delete("e2e-delete")
    kubexdp.wait_gone("e2e-delete")
    for node in rig.nodes:
        assert kernel_xdp(node.netns, "eth0") == (None, None) and kernel_xdp(node.netns, "eth1") == (None, None)
        assert pins_of(node.bpffs, "e2e-delete") == []


@pytest.mark.parametrize("source, reason, words", [
    ("int xdp_bad(struct xdp_md *ctx) { return XDP_PASS }", "CompileError", "error:"),
    ("#include <uapi/linux/bpf.h>\nint xdp_bad(struct xdp_md *ctx) {\n"
     "  unsigned char *p = (void *)(long)ctx->data;\n  return p[100] ? XDP_PASS : XDP_DROP;\n}\n",
     "VerifierRejected", "invalid access to packet"),
], ids=["compile-error", "verifier-rejection"])
def test_broken_program_stalls_with_the_tool_output_and_disturbs_nothing(rig, kubexdp, programs, source, reason, words):
    programs(program("e2e-healthy", COUNT_ALL, "xdp_count", interfaces={"names": ["eth1"]}))
    kubexdp.wait_ready("e2e-healthy")
    healthy = {n.name: kernel_xdp(n.netns, "eth1") for n in rig.nodes}
    programs(program("e2e-broken", source, "xdp_bad", interfaces={"names": ["eth0"]}))
    wait(lambda: kubexdp.is_current("e2e-broken", "Stalled", "True")
         and kubexdp.get("e2e-broken")["status"]["failedNodes"] == 3, 90, "e2e-broken Stalled on 3 nodes")
    stalled = kubexdp.condition("e2e-broken", "Stalled")
    assert stalled["reason"] == reason
    atts = kubexdp.attachments("e2e-broken")
    for node in rig.nodes:
        assert words in atts[node.name]["status"]["message"]          # the compiler's / verifier's own words
        assert kernel_xdp(node.netns, "eth0") == (None, None)          # nothing attached
        assert pins_of(node.bpffs, "e2e-broken") == []                 # nothing pinned
        assert kernel_xdp(node.netns, "eth1") == healthy[node.name]   # the healthy program undisturbed
    assert kubexdp.is_current("e2e-healthy")
    node = rig.nodes[0]
    st = _ifstatus(kubexdp.attachments("e2e-healthy")[node.name], "eth1")
    before = _stat(st, "seen", 0)
    traffic.send_udp(node.src_netns, node.interfaces[1]["node_ip"], 9, 25)
    assert _stat(st, "seen", 0) - before >= 25                         # and still counting


def test_missing_interface_is_reported_and_ready_once_it_appears(rig, kubexdp, programs):
    node = rig.node("node-2")
    programs(program("e2e-late", COUNT_ALL, "xdp_count", interfaces={"names": ["eth7"]},
                     selector={"matchLabels": {"kubernetes.io/hostname": "node-2"}}))
    wait(lambda: (kubexdp.condition("e2e-late", "Ready") or {}).get("reason") == "InterfaceNotFound",
         60, "InterfaceNotFound")
    assert "eth7" in kubexdp.condition("e2e-late", "Ready")["message"]
    subprocess.run(["ip", "-n", node.netns, "link", "add", "eth7", "type", "veth", "peer", "name", "eth7",
                    "netns", node.src_netns], check=True)
    try:
        subprocess.run(["ip", "-n", node.netns, "link", "set", "eth7", "up"], check=True)
        subprocess.run(["ip", "-n", node.src_netns, "link", "set", "eth7", "up"], check=True)
        kubexdp.wait_ready("e2e-late", timeout=60)
        st = _ifstatus(kubexdp.attachments("e2e-late")["node-2"], "eth7")
        assert kernel_xdp(node.netns, "eth7") == (st["mode"], st["progId"])
    finally:
        kubexdp.delete("e2e-late")
        kubexdp.wait_gone("e2e-late")
        subprocess.run(["ip", "-n", node.netns, "link", "del", "eth7"], check=False)


def test_broken_update_keeps_the_running_program_and_says_so(rig, kubexdp, programs):
    programs(program("e2e-keep", COUNT_ALL, "xdp_count", interfaces={"names": ["eth1"]}))
    kubexdp.wait_ready("e2e-keep")
    running = {n.name: kernel_xdp(n.netns, "eth1") for n in rig.nodes}
    kubexdp.patch_spec("e2e-keep", {"source": {"inline": COUNT_ALL.replace("return XDP_PASS;", "return XDP_PASS")}})
    wait(lambda: kubexdp.is_current("e2e-keep", "Stalled", "True")
         and kubexdp.get("e2e-keep")["status"]["failedNodes"] == 3, 90, "e2e-keep Stalled on 3 nodes")
    for node in rig.nodes:
        assert kernel_xdp(node.netns, "eth1") == running[node.name]      # still the old program
        entry = kubexdp.attachments("e2e-keep")[node.name]["status"]["interfaces"][0]
        assert (entry["name"], entry["ready"], entry["progId"]) == ("eth1", False, running[node.name][1])
        assert "stays attached" in entry["message"]
