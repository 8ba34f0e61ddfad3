"""Node inventory on the real kernel: modes probed by attaching, in a named namespace.

veth supports native and generic XDP, and refuses offload (a program cannot even be
loaded bound to it: EINVAL); lo supports generic only (native: EOPNOTSUPP). A hook that
holds a program is never probed. Every result is checked against iproute2's view of the
hook afterwards: a probe must leave nothing behind. The agent's selection of interfaces
(--inventory-interfaces: not pods' veths, overlay devices or loopback) is checked against
the kernel's own link notifications: an interface not selected sees no XDP attach.
"""

from __future__ import annotations

import errno
import json
import os
import queue
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
from kube_xdp_agent.kernel import Netlink

from .conftest import PREFIX, _counter, run

pytestmark = pytest.mark.kernel


def hook(netns: str, ifname: str) -> dict[str, Any] | None:
    out = subprocess.run(["ip", "-j", "-d", "-n", netns, "link", "show", ifname],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)[0].get("xdp")


def test_probe_node_in_a_namespace(netns_pair) -> None:
    with Netlink(netns_pair.ns) as nl:
        inv = probe_node(nl)
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
        first = probe_node(nl)
        nl.attach(netns_pair.ns_if, prog.prog_fd, "native")
        try:
            calls = []
            real_attach = nl.attach
            nl.attach = lambda *a, **k: calls.append(a) or real_attach(*a, **k)  # type: ignore[method-assign]
            again = probe_node(nl, previous=first)
            assert calls == []
            veth = again.interface(netns_pair.ns_if)
            assert veth.modes == ("native", "generic")  # from the earlier probe
            assert [(a.mode, a.prog_id) for a in veth.attached] == [("native", prog.prog_id)]
        finally:
            nl.detach(netns_pair.ns_if, "native", expected_prog_fd=prog.prog_fd)


def test_probe_false_reads_only(netns_pair) -> None:
    with Netlink(netns_pair.ns) as nl:
        inv = probe_node(nl, probe=False)
    veth = inv.interface(netns_pair.ns_if)
    assert veth.modes == () and set(veth.unknown_modes) == {"offload", "native", "generic"}


def test_select_limits_what_is_probed(netns_pair) -> None:
    with Netlink(netns_pair.ns) as nl:
        calls = []
        real_attach = nl.attach
        nl.attach = lambda *a, **k: calls.append(a[0]) or real_attach(*a, **k)  # type: ignore[method-assign]
        inv = probe_node(nl, select=lambda i: i.name == "lo")
    assert set(calls) == {"lo"}
    assert inv.interface("lo").modes == ("generic",)
    assert inv.interface(netns_pair.ns_if).modes == () and len(inv.interface(netns_pair.ns_if).unknown_modes) == 3


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


def test_unselected_interfaces_see_no_xdp_attach(pod_node) -> None:
    """The agent's default selection on a node with pods: the NIC is probed (the kernel
    notifies its XDP attaches); the pods' veths, the CNI bridge and lo are listed but the
    kernel never reports an XDP attach or any other change on them."""
    attaches: list[str] = []
    with Netlink(pod_node) as nl:
        real_attach = nl.attach
        nl.attach = lambda *a, **k: attaches.append(a[0]) or real_attach(*a, **k)  # type: ignore[method-assign]
        with LinkMonitor(pod_node, "docker0") as mon:
            inv = probe_node(nl, select=interface_selector())
    # The recording works: eth0's generic and native probes, attach and detach, were notified.
    nic = mon.about("eth0")
    assert any(" xdpgeneric/id:" in line for line in nic) and any(" xdp/id:" in line for line in nic), nic
    assert inv.interface("eth0").modes == ("native", "generic") and inv.interface("eth0").probed
    for name in ("vethab12cd34", "cali0123abcd", "cni0", "lo"):
        assert mon.about(name) == [], f"{name} is not selected, yet the kernel reported: {mon.about(name)}"
        listed = inv.interface(name)
        assert listed is not None and not listed.probed
        assert listed.unknown_modes == ("offload", "native", "generic")
        assert {p.detail for p in listed.probes} == {NOT_SELECTED}
    assert set(attaches) == {"eth0"}                   # the agent's side agrees
    assert inv.interface("vethab12cd34").driver == "veth" and inv.interface("cni0").driver == "bridge"
    for name in ("eth0", "vethab12cd34", "cali0123abcd", "cni0", "lo"):
        assert hook(pod_node, name) is None


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


def test_status_fits_the_xdpnode_schema(netns_pair) -> None:
    schema = pytest.importorskip("kube_xdp_api.schema")
    with Netlink(netns_pair.ns) as nl:
        inv = probe_node(nl)
    status = inv.to_status()
    assert _undeclared(schema.node_status_schema(), status) == []
    assert status["interfaceCount"] == 2
    by_name = {i["name"]: i for i in status["interfaces"]}
    assert by_name[netns_pair.ns_if] == {"name": netns_pair.ns_if, "driver": "veth",
                                         "modes": ["native", "generic"], "attached": []}
    extended = inv.to_status(extended=True)
    assert {i["name"]: i["unknownModes"] for i in extended["interfaces"]} == {"lo": [], netns_pair.ns_if: []}
    veth = next(i for i in extended["interfaces"] if i["name"] == netns_pair.ns_if)
    assert veth["kind"] == "veth" and [u["mode"] for u in veth["unsupported"]] == ["offload"]
    assert extended["modeSummary"] == "native=1,generic=2" == inv.mode_summary()


def test_probe_results_are_what_the_kernel_says() -> None:
    """The dataclass helpers agree with the probes they summarise."""
    probes = (inventory.ModeProbe("generic", SUPPORTED), inventory.ModeProbe("native", UNKNOWN, "busy"),
              inventory.ModeProbe("offload", UNSUPPORTED, "no", errno.EINVAL))
    iface = inventory.InterfaceInventory("eth0", 2, "virtio_net", None, probes)
    assert iface.modes == ("generic",) and iface.unknown_modes == ("native",)
