"""Attach modes and the node inventory on the main rig (veth NICs: native and generic
work, hardware offload is refused by the kernel; the offload path itself is proven on
netdevsim in tests/offload)."""

from __future__ import annotations

import subprocess

import kubernetes
import pytest

from kube_xdp_api import names

from .kubexdp import COUNT_ALL, kernel_xdp, program, wait

pytestmark = pytest.mark.rig

PERCPU = COUNT_ALL.replace("BPF_ARRAY(seen, u64, 1);", "BPF_PERCPU_ARRAY(seen, u64, 1);") \
                  .replace("__sync_fetch_and_add(v, 1);", "(*v)++;")


def _entries(kubexdp, name: str) -> dict[str, dict]:
    return {n: a["status"]["interfaces"][0] for n, a in kubexdp.attachments(name).items()}


def test_generic_only_policy(rig, kubexdp, programs):
    programs(program("e2e-generic", COUNT_ALL, "xdp_count", interfaces={"names": ["eth1"]},
                     mode="generic", fallback=[]))
    prog = kubexdp.wait_ready("e2e-generic")
    assert prog["status"]["modes"] == {"generic": 3}
    for node in rig.nodes:
        entry = _entries(kubexdp, "e2e-generic")[node.name]
        assert entry["mode"] == "generic" and "reason" not in entry
        assert kernel_xdp(node.netns, "eth1") == ("generic", entry["progId"])


def test_mode_policy_back_to_native_first_moves_the_program_back_to_native(rig, kubexdp, programs):
    """native -> generic-only -> native-first (generic allowed): the program, still allowed
    in generic, is moved back to the preferred mode the driver supports, read back from
    the kernel (it used to stay in generic: any allowed mode was kept)."""
    programs(program("e2e-mode-back", COUNT_ALL, "xdp_count", interfaces={"names": ["eth1"]},
                     mode="native", fallback=["generic"]))
    kubexdp.wait_ready("e2e-mode-back")
    seen = {}
    for mode, fallback in (("generic", []), ("native", ["generic"])):
        kubexdp.patch_spec("e2e-mode-back", {"mode": mode, "fallback": fallback})
        prog = kubexdp.wait_ready("e2e-mode-back")
        assert prog["status"]["modes"] == {mode: 3}, prog["status"]
        for node in rig.nodes:
            entry = _entries(kubexdp, "e2e-mode-back")[node.name]
            assert entry["mode"] == mode and "reason" not in entry
            assert kernel_xdp(node.netns, "eth1") == (mode, entry["progId"])
            seen.setdefault(node.name, set()).add(entry["progId"])
    assert all(len(ids) == 1 for ids in seen.values()), seen     # the same program moved, not rebuilt


@pytest.mark.parametrize("source, reason", [(COUNT_ALL, "OffloadUnsupported"), (PERCPU, "ProgramNotOffloadable")],
                         ids=["veth-cannot-offload", "percpu-map-not-offloadable"])
def test_offload_preferred_falls_back_to_native_with_the_reason(rig, kubexdp, programs, source, reason):
    programs(program("e2e-offload-pref", source, "xdp_count", interfaces={"names": ["eth1"]},
                     mode="offload", fallback=["native", "generic"]))
    prog = kubexdp.wait_ready("e2e-offload-pref")
    assert prog["status"]["modes"] == {"native": 3}
    for node in rig.nodes:
        entry = _entries(kubexdp, "e2e-offload-pref")[node.name]
        assert (entry["mode"], entry["ready"], entry["reason"]) == ("native", True, reason)
        assert "offload" in entry["message"]
        assert kernel_xdp(node.netns, "eth1") == ("native", entry["progId"])


def test_offload_required_on_veth_stalls_with_the_reason(rig, kubexdp, programs):
    programs(program("e2e-offload-only", COUNT_ALL, "xdp_count", interfaces={"names": ["eth1"]},
                     mode="offload", fallback=[]))
    wait(lambda: kubexdp.is_current("e2e-offload-only", "Stalled", "True")
         and kubexdp.get("e2e-offload-only")["status"]["failedNodes"] == 3, 90, "Stalled on 3 nodes")
    assert kubexdp.condition("e2e-offload-only", "Stalled")["reason"] == "OffloadUnsupported"
    for node in rig.nodes:
        assert kernel_xdp(node.netns, "eth1") == (None, None)


def test_one_node_limited_to_generic_is_reported_per_node_and_summarised(rig, kubexdp, programs):
    # eth5 is a veth on node-1 and node-3, a bridge on node-2 (no native XDP in the bridge driver)
    made = []
    for node in rig.nodes:
        if node.name == "node-2":
            cmd = ["ip", "-n", node.netns, "link", "add", "eth5", "type", "bridge"]
        else:
            cmd = ["ip", "-n", node.netns, "link", "add", "eth5", "type", "veth", "peer", "name", "eth5",
                   "netns", node.src_netns]
        subprocess.run(cmd, check=True)
        made.append(node)
        subprocess.run(["ip", "-n", node.netns, "link", "set", "eth5", "up"], check=True)
    try:
        programs(program("e2e-mixed", COUNT_ALL, "xdp_count", interfaces={"pattern": "eth5"}))
        prog = kubexdp.wait_ready("e2e-mixed")
        assert prog["status"]["modes"] == {"native": 2, "generic": 1}
        assert prog["status"]["modeSummary"] in ("native=2,generic=1", "generic=1,native=2")
        entries = _entries(kubexdp, "e2e-mixed")
        assert entries["node-2"]["mode"] == "generic" and entries["node-2"]["reason"] == "DriverModeUnsupported"
        assert entries["node-1"]["mode"] == entries["node-3"]["mode"] == "native"
        for node in rig.nodes:
            assert kernel_xdp(node.netns, "eth5") == (entries[node.name]["mode"], entries[node.name]["progId"])
    finally:
        kubexdp.delete("e2e-mixed")
        kubexdp.wait_gone("e2e-mixed")
        for node in made:
            subprocess.run(["ip", "-n", node.netns, "link", "del", "eth5"], check=False)


def test_every_node_publishes_its_inventory(rig, kubexdp):
    custom = kubexdp.custom

    def inventories():
        items = custom.list_cluster_custom_object(names.GROUP, names.VERSION, names.NODES)["items"]
        return {i["metadata"]["name"]: i for i in items if (i.get("status") or {}).get("interfaces")}

    found = wait(lambda: len(inventories()) == 3 and inventories(), 90, "3 XdpNodes with interfaces")
    for node in rig.nodes:
        st = found[node.name]["status"]
        assert st["kernelRelease"] and st["btf"] is True and st["headers"]["found"] is True
        ifaces = {i["name"]: i for i in st["interfaces"]}
        eth0 = ifaces["eth0"]
        assert eth0["driver"] == "veth"
        # probed by attaching, or unknown if the hook was in use at probe time
        assert set(eth0["modes"]) | set(eth0.get("unknownModes", [])) >= {"native", "generic"}
        assert "offload" not in eth0["modes"]
