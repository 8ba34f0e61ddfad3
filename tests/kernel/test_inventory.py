"""Node inventory on the real kernel, in a named namespace: modes read from xdp-features
(the default), or probed by attaching (probe="always": the operator's opt-in; "auto" on a
kernel without the netdev family, which the offload lab's 6.1 guest checks).

veth supports native and generic XDP, and refuses offload (a program cannot even be
loaded bound to it: EINVAL); lo supports generic only (native: EOPNOTSUPP): the features
say so, and so do the probes. A hook that holds a program is never probed. Every result
is checked against iproute2's view of the hook afterwards: a probe must leave nothing
behind. What the kernel notifies is recorded: an agent restart changes no link state on
any interface (no RTM_NEWLINK at all), and an interface not selected for probing sees no
XDP attach.
"""

from __future__ import annotations

import errno
import json
import os
import queue
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from kube_xdp_agent import inventory
from kube_xdp_agent.inventory import (
    NOT_SELECTED,
    SUPPORTED,
    UNKNOWN,
    UNSUPPORTED,
    find_headers,
    interface_selector,
    probe_interface,
    probe_node,
)
from kube_xdp_agent.kernel import Netlink, XdpLinks
from kube_xdp_agent.kernel.errors import BpfSyscallError
from kube_xdp_agent.kernel.netlink import RTM_NEWLINK, decode_link, rtattrs, split_dump
from kube_xdp_agent.nodeinfo import NodePublisher

from .conftest import PREFIX, _counter, run

pytestmark = pytest.mark.kernel


def hook(netns: str, ifname: str) -> dict[str, Any] | None:
    out = subprocess.run(["ip", "-j", "-d", "-n", netns, "link", "show", ifname],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)[0].get("xdp")


def test_modes_read_from_xdp_features(netns_pair) -> None:
    """The default: the modes of every interface from xdp-features; nothing attached."""
    with Netlink(netns_pair.ns) as nl:
        calls = []
        real_attach = nl.attach
        nl.attach = lambda *a, **k: calls.append(a) or real_attach(*a, **k)  # type: ignore[method-assign]
        inv = probe_node(nl)
    assert calls == [] and inv.netdev_family is True
    veth, lo = inv.interface(netns_pair.ns_if), inv.interface("lo")
    assert veth.source == "xdpFeatures" and veth.modes == ("native", "generic") and "basic" in veth.features
    assert lo.source == "xdpFeatures" and lo.modes == ("generic",) and lo.features == ()
    assert veth.probes == () and veth.unknown_modes == ()
    assert hook(netns_pair.ns, netns_pair.ns_if) is None and hook(netns_pair.ns, "lo") is None


def test_probe_node_in_a_namespace(netns_pair) -> None:
    """Opt-in probing: the kernel's answers agree with what xdp-features said."""
    with Netlink(netns_pair.ns) as nl:
        inv = probe_node(nl, probe="always")
    assert inv.kernel_release == os.uname().release
    assert inv.btf == os.path.exists("/sys/kernel/btf/vmlinux")
    assert inv.bcc_version and inv.bcc_version[0].isdigit()
    assert {i.name for i in inv.interfaces} == {"lo", netns_pair.ns_if}

    veth = inv.interface(netns_pair.ns_if)
    assert veth is not None and veth.driver == "veth" and veth.kind == "veth"
    assert veth.modes == ("native", "generic")
    off = veth.probe("offload")
    assert off.result == UNSUPPORTED and off.errno == errno.EINVAL
    assert veth.attached == () and veth.unknown_modes == ()

    lo = inv.interface("lo")
    assert lo.modes == ("generic",)
    native = lo.probe("native")
    assert native.result == UNSUPPORTED and native.errno == errno.EOPNOTSUPP and native.detail
    # Nothing left on any hook.
    assert hook(netns_pair.ns, netns_pair.ns_if) is None and hook(netns_pair.ns, "lo") is None


def test_occupied_hook_is_never_probed(netns_pair, pass_progs) -> None:
    prog = pass_progs[0]
    with Netlink(netns_pair.ns) as nl:
        nl.attach(netns_pair.ns_if, prog.prog_fd, "generic")
        try:
            calls = []
            real_attach = nl.attach
            nl.attach = lambda *a, **k: calls.append(a) or real_attach(*a, **k)  # type: ignore[method-assign]
            veth = probe_interface(nl, netns_pair.ns_if)
            assert calls == []  # not one attach on an occupied hook
            assert veth.modes == ()
            assert veth.unknown_modes == ("offload", "native", "generic")
            assert all(str(prog.prog_id) in p.detail for p in veth.probes)
            assert [(a.mode, a.prog_id) for a in veth.attached] == [("generic", prog.prog_id)]
            # The program is still there, untouched.
            state = hook(netns_pair.ns, netns_pair.ns_if)
            assert state["mode"] == 2 and state["prog"]["id"] == prog.prog_id
        finally:
            nl.detach(netns_pair.ns_if, "generic", expected_prog_fd=prog.prog_fd)


def test_refresh_reuses_probes_and_rereads_attached(netns_pair, pass_progs) -> None:
    prog = pass_progs[1]
    with Netlink(netns_pair.ns) as nl:
        first = probe_node(nl, probe="always")
        nl.attach(netns_pair.ns_if, prog.prog_fd, "native")
        try:
            calls = []
            real_attach = nl.attach
            nl.attach = lambda *a, **k: calls.append(a) or real_attach(*a, **k)  # type: ignore[method-assign]
            again = probe_node(nl, probe="always", previous=first)
            assert calls == []
            veth = again.interface(netns_pair.ns_if)
            assert veth.modes == ("native", "generic")  # from the earlier probe
            assert [(a.mode, a.prog_id) for a in veth.attached] == [("native", prog.prog_id)]
        finally:
            nl.detach(netns_pair.ns_if, "native", expected_prog_fd=prog.prog_fd)


def test_probe_never_reads_only(netns_pair) -> None:
    """probe="never" on a kernel whose features cannot be read: modes unknown, nothing attached."""
    with Netlink(netns_pair.ns) as nl:
        inv = probe_node(nl, probe="never", features=lambda _nl: ({}, None))
    veth = inv.interface(netns_pair.ns_if)
    assert veth.modes == () and set(veth.unknown_modes) == {"offload", "native", "generic"}
    assert veth.source == "none"


def test_select_limits_what_is_probed(netns_pair) -> None:
    with Netlink(netns_pair.ns) as nl:
        calls = []
        real_attach = nl.attach
        nl.attach = lambda *a, **k: calls.append(a[0]) or real_attach(*a, **k)  # type: ignore[method-assign]
        inv = probe_node(nl, probe="always", select=lambda i: i.name == "lo")
    assert set(calls) == {"lo"}
    assert inv.interface("lo").modes == ("generic",) and inv.interface("lo").source == "probe"
    veth = inv.interface(netns_pair.ns_if)        # not probed: its modes as the features say
    assert veth.source == "xdpFeatures" and not veth.probed and veth.modes == ("native", "generic")


# -- the agent's selection, seen by the kernel --------------------------------------------------


@pytest.fixture
def pod_node() -> Iterator[str]:
    """A node namespace as on a real cluster: a NIC (eth0, a veth whose peer is elsewhere),
    two pods' veths (vethab12cd34, cali0123abcd), a CNI bridge (cni0), lo, all up; and
    docker0 (a bridge) whose MTU marks the start and end of a recording."""
    n = next(_counter)
    node, pods = f"{PREFIX}-{n}", f"{PREFIX}-{n}-pods"
    try:
        run("ip", "netns", "add", node)
        run("ip", "netns", "add", pods)
        for name, peer in (("eth0", "nic-peer"), ("vethab12cd34", "pod1-eth0"), ("cali0123abcd", "pod2-eth0")):
            run("ip", "link", "add", name, "netns", node, "type", "veth", "peer", "name", peer, "netns", pods)
            run("ip", "-n", pods, "link", "set", peer, "up")
        for bridge in ("cni0", "docker0"):
            run("ip", "-n", node, "link", "add", bridge, "type", "bridge")
        for name in ("lo", "eth0", "vethab12cd34", "cali0123abcd", "cni0", "docker0"):
            run("ip", "-n", node, "link", "set", name, "up")
        _wait_carrier(node, ("eth0", "vethab12cd34", "cali0123abcd"))
        yield node
    finally:
        run("ip", "netns", "del", node, check=False)
        run("ip", "netns", "del", pods, check=False)


def _wait_carrier(netns: str, veths: tuple[str, ...], timeout: float = 10.0) -> None:
    """Until each veth's operstate is UP: the kernel's linkwatch sets it, and notifies the
    carrier change, a moment after `link set up` (a recording started before that saw the
    notification on a pod's veth and took it for a probe)."""
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run(["ip", "-j", "-n", netns, "link", "show"], check=True, capture_output=True,
                             text=True).stdout
        states = {link["ifname"]: link.get("operstate") for link in json.loads(out)}
        if all(states.get(v) == "UP" for v in veths):
            return
        assert time.monotonic() < deadline, f"veths not UP after {timeout}s: {states}"
        time.sleep(0.05)


class LinkMonitor:
    """`ip -n NS monitor link`: every RTM_NEWLINK the kernel sends about the namespace's
    interfaces (an XDP attach or detach on an interface that is up sends one: do_setlink's
    notification), recorded between two marks (an MTU change on `marker`)."""

    START_MTU, END_MTU = 1300, 1301

    def __init__(self, netns: str, marker: str) -> None:
        self.netns, self.marker = netns, marker
        self.proc = subprocess.Popen(["ip", "-o", "-n", netns, "monitor", "link"], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1)
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.lines: list[str] = []

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self._lines.put(line.strip())
        self._lines.put(None)

    def _mark(self, mtu: int, timeout: float = 30.0) -> list[str]:
        """Set the marker's MTU; the lines seen before its notification."""
        run("ip", "-n", self.netns, "link", "set", "dev", self.marker, "mtu", str(mtu))
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                raise AssertionError(f"ip monitor never showed the mark (mtu {mtu}); got {seen}")
            if line.split(":", 2)[1].strip() == self.marker and f" mtu {mtu} " in line:
                return seen
            seen.append(line)

    def __enter__(self) -> LinkMonitor:
        self._mark(self.START_MTU)        # the monitor is listening from here on
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                self.lines = self._mark(self.END_MTU)   # everything the probes caused is before this
        finally:
            self.proc.kill()
            self.proc.wait()
            self._reader.join(timeout=5)
            self.proc.stdout.close()  # type: ignore[union-attr]

    def about(self, name: str) -> list[str]:
        """Notifications about interface `name` (`<index>: <name>[@peer]: <...>`)."""
        return [line for line in self.lines if line.split(":", 2)[1].strip().split("@")[0] == name]


class RecordedLinks(XdpLinks):
    """The real XdpLinks, each link create recorded (the interface's name)."""

    created: list[str] = []

    def create(self, ifindex, prog_fd, mode, *, interface=None):
        RecordedLinks.created.append(interface)
        return super().create(ifindex, prog_fd, mode, interface=interface)


class NetlinkOnlyLinks(RecordedLinks):
    """Links refused as a kernel before 5.9 refuses them (EINVAL): attach.place attaches
    through netlink, which the kernel notifies (RTM_NEWLINK), a link attach not."""

    def create(self, ifindex, prog_fd, mode, *, interface=None):
        RecordedLinks.created.append(interface)
        raise BpfSyscallError("BPF_LINK_CREATE failed: Invalid argument", cmd="BPF_LINK_CREATE", errno=errno.EINVAL)


def test_a_link_attach_is_not_notified_a_netlink_one_is(netns_pair, pass_progs) -> None:
    """Why the tests below record the agent's attach calls too: an XDP attach through a
    bpf_link sends no RTM_NEWLINK (dev_xdp_attach_link does not notify); a netlink attach
    does (do_setlink)."""
    prog = pass_progs[0]
    run("ip", "-n", netns_pair.ns, "link", "add", "kxmark0", "type", "bridge")
    with Netlink(netns_pair.ns) as nl:
        index = nl.interface(netns_pair.ns_if).index
        with LinkMonitor(netns_pair.ns, "kxmark0") as by_link:
            with XdpLinks(netns_pair.ns).create(index, prog.prog_fd, "generic") as link:
                XdpLinks(netns_pair.ns).detach(link.fd)
        with LinkMonitor(netns_pair.ns, "kxmark0") as by_netlink:
            nl.attach(netns_pair.ns_if, prog.prog_fd, "generic")
            nl.detach(netns_pair.ns_if, "generic", expected_prog_fd=prog.prog_fd)
    assert by_link.about(netns_pair.ns_if) == []
    assert any(" xdpgeneric/id:" in line for line in by_netlink.about(netns_pair.ns_if))


def test_unselected_interfaces_see_no_xdp_attach(pod_node, monkeypatch) -> None:
    """Opt-in probing with the agent's default selection on a node with pods, attaching
    through netlink so that the kernel notifies every attach: the NIC is probed; the pods'
    veths, the CNI bridge and lo are listed (their modes from xdp-features) but the kernel
    never reports an XDP attach or any other change on them."""
    attaches: list[str] = []
    RecordedLinks.created = []
    monkeypatch.setattr(inventory, "XdpLinks", NetlinkOnlyLinks)
    with Netlink(pod_node) as nl:
        real_attach = nl.attach
        nl.attach = lambda *a, **k: attaches.append(a[0]) or real_attach(*a, **k)  # type: ignore[method-assign]
        with LinkMonitor(pod_node, "docker0") as mon:
            inv = probe_node(nl, probe="always", select=interface_selector())
    # The recording works: eth0's generic and native probes, attach and detach, were notified.
    nic = mon.about("eth0")
    assert any(" xdpgeneric/id:" in line for line in nic) and any(" xdp/id:" in line for line in nic), nic
    assert inv.interface("eth0").modes == ("native", "generic") and inv.interface("eth0").probed
    for name in ("vethab12cd34", "cali0123abcd", "cni0", "lo"):
        assert mon.about(name) == [], f"{name} is not selected, yet the kernel reported: {mon.about(name)}"
        listed = inv.interface(name)
        assert listed is not None and not listed.probed and listed.source == "xdpFeatures"
        assert {p.detail for p in listed.probes} == {NOT_SELECTED}
    assert set(RecordedLinks.created) == set(attaches) == {"eth0"}     # the agent's side agrees
    assert inv.interface("vethab12cd34").driver == "veth" and inv.interface("cni0").driver == "bridge"
    for name in ("eth0", "vethab12cd34", "cali0123abcd", "cni0", "lo"):
        assert hook(pod_node, name) is None


# -- an agent restart, as the kernel sees it -------------------------------------------------------


IFLA_CARRIER, IFLA_CARRIER_CHANGES = 33, 35
RTMGRP_LINK = 1


class RtnlRecorder:
    """Every RTM_NEWLINK the kernel multicasts about a namespace's interfaces (RTMGRP_LINK),
    decoded: interface, ifi_flags, ifi_change (the flags that changed), IFLA_CARRIER and
    IFLA_CARRIER_CHANGES; between two marks (an MTU change on `marker`, as LinkMonitor)."""

    START_MTU, END_MTU = 1310, 1311

    def __init__(self, netns: str, marker: str) -> None:
        from pyroute2.netns import create_socket

        self.netns, self.marker = netns, marker
        self.sock = create_socket(netns, socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE, flags=0)
        self.sock.bind((0, RTMGRP_LINK))
        self.sock.settimeout(10)
        self.events: list[dict[str, Any]] = []

    def _until_mark(self, mtu: int) -> list[dict[str, Any]]:
        run("ip", "-n", self.netns, "link", "set", "dev", self.marker, "mtu", str(mtu))
        seen = []
        while True:
            data = self.sock.recv(1 << 16)
            for kind, payload in split_dump(data, 0).payloads:
                if kind != RTM_NEWLINK:
                    continue
                link = decode_link(payload)
                _family, _type, _index, flags, change = struct.unpack_from("=BxHiII", payload)
                attrs = rtattrs(payload, 16)
                carrier = attrs.get(IFLA_CARRIER)
                changes = attrs.get(IFLA_CARRIER_CHANGES)
                event = {"name": link.name, "flags": flags, "change": change,
                         "carrier": carrier[0] if carrier is not None else None,
                         "carrier_changes": struct.unpack_from("=I", changes)[0] if changes is not None else None,
                         "xdp": link.xdp.attached}
                if link.name == self.marker and self._mtu(payload) == mtu:
                    return seen
                seen.append(event)

    @staticmethod
    def _mtu(payload) -> int | None:
        raw = rtattrs(payload, 16).get(4)            # IFLA_MTU
        return struct.unpack_from("=I", raw)[0] if raw is not None else None

    def __enter__(self) -> RtnlRecorder:
        self._until_mark(self.START_MTU)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                self.events = self._until_mark(self.END_MTU)
        finally:
            self.sock.close()

    def state_changes(self) -> list[dict[str, Any]]:
        """The notifications with a flags or carrier change."""
        return [e for e in self.events if e["change"] or e["carrier"] is not None and e["carrier"] != 1]


def carrier_changes(netns: str) -> dict[str, int]:
    out = subprocess.run(["ip", "-j", "-d", "-n", netns, "link", "show"], check=True, capture_output=True,
                         text=True).stdout
    return {link["ifname"]: link.get("carrier_changes", 0) for link in json.loads(out)}


class XdpNodes:
    """The agent's XdpNode calls (get, create, status patch), in memory: what a restarted
    agent reads back is what it published."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}

    def get_cluster_custom_object(self, group, version, plural, name):
        from kubernetes.client.rest import ApiException

        if name not in self.objects:
            raise ApiException(status=404)
        return json.loads(json.dumps(self.objects[name]))

    def create_cluster_custom_object(self, group, version, plural, body):
        self.objects[body["metadata"]["name"]] = {**body, "metadata": {**body["metadata"], "generation": 1}}
        return self.get_cluster_custom_object(group, version, plural, body["metadata"]["name"])

    def patch_cluster_custom_object_status(self, group, version, plural, name, body):
        self.objects[name]["status"] = body["status"]


@pytest.mark.parametrize("probe_modes", [False, True], ids=["xdp-features", "probe-opt-in"])
def test_an_agent_restart_changes_no_link_state(pod_node, monkeypatch, probe_modes: bool) -> None:
    """An agent (re)start as the kernel sees it: the XdpNode published, then the agent
    restarted (a new publisher reading its XdpNode back). Recorded: the kernel's RTM_NEWLINK
    notifications on every interface (flags, carrier), and, since an attach through a
    link is not notified (test above), every attach the agent makes (netlink or link).
    Default (xdp-features): nothing at the first start or the restart. With probing opted
    in, the first start probes eth0, the restart nothing: the probes are reused from the
    XdpNode. Before (the agent of 2026-11: netlink probes on every start, no reuse across
    restarts), each restart sent the first start's notifications again: `old_way`."""
    api = XdpNodes()
    nics = ("eth0", "vethab12cd34", "cali0123abcd", "cni0", "lo")
    RecordedLinks.created = []
    monkeypatch.setattr(inventory, "XdpLinks", RecordedLinks)
    before = carrier_changes(pod_node)
    with Netlink(pod_node) as nl:
        netlink_attaches: list[str] = []
        real_attach = nl.attach
        nl.attach = lambda *a, **k: netlink_attaches.append(a[0]) or real_attach(*a, **k)  # type: ignore[method-assign]
        with RtnlRecorder(pod_node, "docker0") as first:
            NodePublisher(api, "node-a", nl, probe_modes=probe_modes).refresh()
        first_attaches = RecordedLinks.created + netlink_attaches
        RecordedLinks.created, netlink_attaches[:] = [], []
        with RtnlRecorder(pod_node, "docker0") as restart:
            NodePublisher(api, "node-a", nl, probe_modes=probe_modes).refresh()
        restart_attaches = RecordedLinks.created + netlink_attaches
        monkeypatch.setattr(inventory, "XdpLinks", NetlinkOnlyLinks)
        with RtnlRecorder(pod_node, "docker0") as old_way:      # what every start did before: netlink probes
            probe_node(nl, probe="always", select=interface_selector())
    about = lambda rec: [e for e in rec.events if e["name"] in nics]   # noqa: E731
    print(f"{'probe opt-in' if probe_modes else 'xdp-features'}: first start {len(first_attaches)} attach(es), "
          f"{len(about(first))} RTM_NEWLINK ({len(first.state_changes())} with a flags/carrier change); restart "
          f"{len(restart_attaches)} attach(es), {len(about(restart))} RTM_NEWLINK ({len(restart.state_changes())}); "
          f"the old agent's start: {len(about(old_way))} RTM_NEWLINK ({len(old_way.state_changes())})")
    assert restart_attaches == [] and about(restart) == [] and restart.state_changes() == []
    assert carrier_changes(pod_node) == before
    assert set(first_attaches) == ({"eth0"} if probe_modes else set())
    assert about(first) == [] and first.state_changes() == []       # (link probes are not notified)
    assert {e["name"] for e in about(old_way)} == {"eth0"}         # the recorder does see netlink probes
    status = api.objects["node-a"]["status"]
    eth0 = next(i for i in status["interfaces"] if i["name"] == "eth0")
    assert eth0["modes"] == ["native", "generic"]
    assert eth0["modesFrom"] == ("probe" if probe_modes else "xdpFeatures")


def test_headers_lookup(tmp_path) -> None:
    assert find_headers("0.0-none", env={"BCC_KERNEL_SOURCE": str(tmp_path)}) == inventory.HeadersInfo(True, str(tmp_path))
    missing = find_headers("0.0-none", env={})
    assert missing.found == os.path.exists(inventory.KHEADERS_PATH)
    real = find_headers(os.uname().release, env={})
    assert real.found == os.path.isdir(f"/lib/modules/{os.uname().release}/build/include") or \
        os.path.exists(inventory.KHEADERS_PATH)


def _undeclared(sch: dict[str, Any], value: Any, path: str = "status") -> list[str]:
    """Fields not declared in the schema, and enum/length violations."""
    bad: list[str] = []
    if isinstance(value, dict):
        props = sch.get("properties", {})
        for key, item in value.items():
            if key not in props:
                bad.append(f"{path}.{key} undeclared")
            else:
                bad += _undeclared(props[key], item, f"{path}.{key}")
    elif isinstance(value, list):
        if "maxItems" in sch and len(value) > sch["maxItems"]:
            bad.append(f"{path} too long")
        for i, item in enumerate(value):
            bad += _undeclared(sch.get("items", {}), item, f"{path}[{i}]")
    else:
        if "enum" in sch and value not in sch["enum"]:
            bad.append(f"{path}={value!r} not in enum")
        if isinstance(value, str) and (value == "" or len(value) > sch.get("maxLength", 1 << 30)):
            bad.append(f"{path} empty or too long")
    return bad


@pytest.mark.parametrize("probe", ["auto", "always"])
def test_status_fits_the_xdpnode_schema(netns_pair, probe: str) -> None:
    schema = pytest.importorskip("kube_xdp_api.schema")
    with Netlink(netns_pair.ns) as nl:
        inv = probe_node(nl, probe=probe)
        index = nl.interface(netns_pair.ns_if).index
    status = inv.to_status()
    assert _undeclared(schema.node_status_schema(), status) == []
    assert status["interfaceCount"] == 2 and status["netdevFamily"] is True
    by_name = {i["name"]: i for i in status["interfaces"]}
    veth = by_name[netns_pair.ns_if]
    assert {k: veth[k] for k in ("name", "ifindex", "driver", "kind", "modes", "attached", "unknownModes")} == {
        "name": netns_pair.ns_if, "ifindex": index, "driver": "veth", "kind": "veth", "modes": ["native", "generic"],
        "attached": [], "unknownModes": []}
    assert {"basic", "redirect", "rx-sg"} <= set(veth["xdpFeatures"])
    if probe == "always":
        assert veth["modesFrom"] == "probe" and veth["probed"] is True
        assert [u["mode"] for u in veth["unsupported"]] == ["offload"]
    else:
        assert veth["modesFrom"] == "xdpFeatures" and "probed" not in veth and veth["unsupported"] == []
    assert {i["name"]: i["unknownModes"] for i in status["interfaces"]} == {"lo": [], netns_pair.ns_if: []}
    assert status["modeSummary"] == "native=1,generic=2" == inv.mode_summary()


def test_probe_results_are_what_the_kernel_says() -> None:
    """The dataclass helpers agree with the probes they summarise."""
    probes = (inventory.ModeProbe("generic", SUPPORTED), inventory.ModeProbe("native", UNKNOWN, "busy"),
              inventory.ModeProbe("offload", UNSUPPORTED, "no", errno.EINVAL))
    iface = inventory.InterfaceInventory("eth0", 2, "virtio_net", None, probes)
    assert iface.modes == ("generic",) and iface.unknown_modes == ("native",)
