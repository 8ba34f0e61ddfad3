"""The XDP hook through netlink on a real veth in a real namespace.

Every attach is also read back with iproute2 (`ip -j -d link show`), an independent
reader of IFLA_XDP, so a wrong decoding in our layer cannot pass unnoticed.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from kube_xdp_agent.kernel import (
    AttachError,
    Compiler,
    CompileRequest,
    HookBusy,
    InterfaceNotFound,
    KernelError,
    LoadedProgram,
    Netlink,
    NetnsNotFound,
    bpfsys,
)

pytestmark = pytest.mark.kernel

IPROUTE_MODES = {1: "native", 2: "generic", 3: "offload"}  # XDP_ATTACHED_* in `ip -j` output


def iproute_xdp(netns: str, ifname: str) -> tuple[str | None, int | None]:
    """(mode, prog id) as iproute2 reports them."""
    out = subprocess.run(
        ["ip", "-j", "-d", "-n", netns, "link", "show", ifname], check=True, capture_output=True, text=True
    ).stdout
    xdp = json.loads(out)[0].get("xdp")
    if not xdp:
        return None, None
    return IPROUTE_MODES.get(xdp["mode"], f"mode{xdp['mode']}"), xdp.get("prog", {}).get("id")


@pytest.fixture
def nl(netns_pair) -> Iterator[Netlink]:
    with Netlink(netns_pair.ns) as handle:
        yield handle


def test_interfaces_of_the_namespace(nl: Netlink, netns_pair) -> None:
    by_name = {i.name: i for i in nl.interfaces()}
    assert set(by_name) == {"lo", netns_pair.ns_if}
    veth = nl.interface(netns_pair.ns_if)
    assert veth == by_name[netns_pair.ns_if]
    assert veth.kind == "veth" and veth.driver == "veth"
    assert veth.oper_state == "up"
    ip_link = json.loads(
        subprocess.run(["ip", "-j", "-n", netns_pair.ns, "link", "show", netns_pair.ns_if],
                       check=True, capture_output=True, text=True).stdout
    )[0]
    assert veth.mac == ip_link["address"] and veth.index == ip_link["ifindex"]
    assert veth.xdp.attached is None and veth.xdp.prog_id is None
    assert by_name["lo"].kind is None and by_name["lo"].driver is None


@pytest.mark.parametrize("mode", ["native", "generic"])
def test_attach_reads_back_mode_and_prog_id(nl: Netlink, netns_pair, pass_progs, mode: str) -> None:
    prog = pass_progs[0]
    state = nl.attach(netns_pair.ns_if, prog.prog_fd, mode)
    assert state.attached == mode
    assert state.prog_id == prog.prog_id == state.prog_id_for(mode)
    other = "generic" if mode == "native" else "native"
    assert state.prog_id_for(other) is None and state.hw_prog_id is None
    assert nl.read_xdp(netns_pair.ns_if) == state
    assert iproute_xdp(netns_pair.ns, netns_pair.ns_if) == (mode, prog.prog_id)


def test_attach_on_occupied_hook_is_hook_busy(nl: Netlink, netns_pair, pass_progs) -> None:
    first, second, _ = pass_progs
    nl.attach(netns_pair.ns_if, first.prog_fd, "native")
    with pytest.raises(HookBusy) as exc_info:
        nl.attach(netns_pair.ns_if, second.prog_fd, "native")
    err = exc_info.value
    assert err.prog_id == first.prog_id and err.attached_mode == "native"
    assert err.errno == errno.EBUSY and err.reason == "HookBusy"
    assert err.interface == netns_pair.ns_if and err.netns == netns_pair.ns
    assert iproute_xdp(netns_pair.ns, netns_pair.ns_if) == ("native", first.prog_id)  # untouched


def test_other_mode_active_is_hook_busy(nl: Netlink, netns_pair, pass_progs) -> None:
    first, second, _ = pass_progs
    nl.attach(netns_pair.ns_if, first.prog_fd, "native")
    with pytest.raises(HookBusy) as exc_info:
        nl.attach(netns_pair.ns_if, second.prog_fd, "generic")
    assert exc_info.value.prog_id == first.prog_id and exc_info.value.errno == errno.EEXIST
    assert iproute_xdp(netns_pair.ns, netns_pair.ns_if) == ("native", first.prog_id)


def test_atomic_replace(nl: Netlink, netns_pair, pass_progs) -> None:
    first, second, _ = pass_progs
    nl.attach(netns_pair.ns_if, first.prog_fd, "native")
    state = nl.attach(netns_pair.ns_if, second.prog_fd, "native", expected_prog_fd=first.prog_fd)
    assert (state.attached, state.prog_id) == ("native", second.prog_id)
    assert iproute_xdp(netns_pair.ns, netns_pair.ns_if) == ("native", second.prog_id)
    # Replacing a program by itself is a no-op the kernel accepts.
    same = nl.attach(netns_pair.ns_if, second.prog_fd, "native", expected_prog_fd=second.prog_fd)
    assert same.prog_id == second.prog_id


def test_replace_with_wrong_expected_fd(nl: Netlink, netns_pair, pass_progs) -> None:
    first, second, third = pass_progs
    nl.attach(netns_pair.ns_if, first.prog_fd, "native")
    with pytest.raises(HookBusy) as exc_info:
        nl.attach(netns_pair.ns_if, third.prog_fd, "native", expected_prog_fd=second.prog_fd)
    assert exc_info.value.prog_id == first.prog_id and exc_info.value.errno == errno.EEXIST
    assert iproute_xdp(netns_pair.ns, netns_pair.ns_if) == ("native", first.prog_id)


def test_replace_on_empty_hook(nl: Netlink, netns_pair, pass_progs) -> None:
    first, second, _ = pass_progs
    with pytest.raises(AttachError) as exc_info:
        nl.attach(netns_pair.ns_if, second.prog_fd, "native", expected_prog_fd=first.prog_fd)
    assert exc_info.value.reason == "AttachFailed" and exc_info.value.errno == errno.EEXIST
    assert iproute_xdp(netns_pair.ns, netns_pair.ns_if) == (None, None)


def test_detach_wrong_expected_leaves_foreign(nl: Netlink, netns_pair, pass_progs) -> None:
    first, second, _ = pass_progs
    nl.attach(netns_pair.ns_if, first.prog_fd, "native")
    with pytest.raises(HookBusy) as exc_info:
        nl.detach(netns_pair.ns_if, "native", expected_prog_fd=second.prog_fd)
    assert exc_info.value.prog_id == first.prog_id
    assert iproute_xdp(netns_pair.ns, netns_pair.ns_if) == ("native", first.prog_id)
    state = nl.detach(netns_pair.ns_if, "native", expected_prog_fd=first.prog_fd)
    assert state.attached is None
    assert iproute_xdp(netns_pair.ns, netns_pair.ns_if) == (None, None)


def test_detach_is_idempotent(nl: Netlink, netns_pair, pass_progs) -> None:
    first = pass_progs[0]
    assert nl.detach(netns_pair.ns_if, "native", expected_prog_fd=first.prog_fd).attached is None
    # Our program in generic: detaching "native" finds nothing of ours there.
    nl.attach(netns_pair.ns_if, first.prog_fd, "generic")
    assert nl.detach(netns_pair.ns_if, "native", expected_prog_fd=first.prog_fd).attached == "generic"
    assert nl.detach(netns_pair.ns_if, "generic", expected_prog_fd=first.prog_fd).attached is None
    assert nl.detach(netns_pair.ns_if, "generic", expected_prog_fd=first.prog_fd).attached is None


def test_unsupported_modes(nl: Netlink, netns_pair, pass_progs) -> None:
    prog = pass_progs[0]
    with pytest.raises(AttachError) as exc_info:
        nl.attach(netns_pair.ns_if, prog.prog_fd, "offload")  # veth has no offload
    assert exc_info.value.reason == "DriverModeUnsupported" and exc_info.value.errno == errno.EINVAL
    with pytest.raises(AttachError) as exc_info:
        nl.attach("lo", prog.prog_fd, "native")  # loopback has no native XDP
    err = exc_info.value
    assert err.reason == "DriverModeUnsupported" and err.errno == errno.EOPNOTSUPP and err.mode == "native"
    assert err.kernel_message  # the kernel's extended ack, for humans
    # Generic works everywhere.
    assert nl.attach("lo", prog.prog_fd, "generic").attached == "generic"
    nl.detach("lo", "generic", expected_prog_fd=prog.prog_fd)


def test_unknown_interface_and_netns(nl: Netlink, netns_pair, pass_progs) -> None:
    with pytest.raises(InterfaceNotFound) as exc_info:
        nl.interface("nope0")
    assert exc_info.value.reason == "InterfaceNotFound"
    with pytest.raises(InterfaceNotFound):
        nl.attach("nope0", pass_progs[0].prog_fd, "generic")
    with pytest.raises(InterfaceNotFound):
        nl.read_xdp("../x")
    missing = netns_pair.ns + "-missing"
    with pytest.raises(NetnsNotFound) as ns_info:
        Netlink(missing)
    assert ns_info.value.reason == "InterfaceNotFound"
    assert subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.count(missing) == 0


def test_default_route_interface(nl: Netlink, netns_pair) -> None:
    assert nl.default_route_interface() == netns_pair.ns_if
    subprocess.run(["ip", "-n", netns_pair.ns, "route", "del", "default"], check=True)
    assert nl.default_route_interface() is None
    with Netlink(netns_pair.src) as src:
        assert src.default_route_interface() is None


def test_default_route_interface_lowest_metric_main_table_and_ipv6(nl: Netlink, netns_pair) -> None:
    """Only the main table's unicast default routes count, the lowest metric first; with
    no IPv4 default route, the IPv6 one."""
    ns = netns_pair.ns
    for cmd in (["link", "add", "vx0", "type", "veth", "peer", "name", "vx1"], ["link", "set", "vx1", "up"],
                ["link", "set", "vx0", "up"], ["addr", "add", "198.18.7.1/30", "dev", "vx0"],
                ["route", "del", "default"],
                ["route", "add", "default", "dev", "vx0", "metric", "50"],
                ["route", "add", "default", "via", netns_pair.src_addr, "dev", netns_pair.ns_if, "metric", "10"],
                ["route", "add", "default", "dev", "vx0", "table", "100"]):
        subprocess.run(["ip", "-n", ns, *cmd], check=True)
    assert nl.default_route_interface() == netns_pair.ns_if
    subprocess.run(["ip", "-n", ns, "route", "del", "default", "metric", "10"], check=True)
    assert nl.default_route_interface() == "vx0"
    subprocess.run(["ip", "-n", ns, "route", "del", "default", "metric", "50"], check=True)
    assert nl.default_route_interface() is None          # table 100's does not count
    subprocess.run(["ip", "-n", ns, "-6", "route", "add", "default", "dev", "vx0"], check=True)
    assert nl.default_route_interface() == "vx0"


def _ip_links(netns: str) -> dict[str, dict]:
    out = subprocess.run(["ip", "-j", "-d", "-n", netns, "link", "show"], check=True, capture_output=True,
                         text=True).stdout
    return {link["ifname"]: link for link in json.loads(out)}


@pytest.mark.parametrize("mode", ["native", "generic"])
def test_links_read_by_dump_and_by_name_decode_as_iproute2_does(nl: Netlink, netns_pair, pass_progs, mode: str) -> None:
    """interfaces() (one RTM_GETLINK dump) equals interface(name) (one RTM_GETLINK by
    IFLA_IFNAME) for every link: veths with a program attached in each mode, one without, a
    bridge that is down; and indexes, addresses, kinds, states and XDP agree with iproute2's
    decoding of the same links."""
    ns = netns_pair.ns
    for cmd in (["link", "add", "vx0", "type", "veth", "peer", "name", "vx1"], ["link", "set", "vx0", "up"],
                ["link", "set", "vx1", "up"], ["link", "add", "br0", "type", "bridge"]):
        subprocess.run(["ip", "-n", ns, *cmd], check=True)
    nl.attach(netns_pair.ns_if, pass_progs[0].prog_fd, mode)
    nl.attach("vx0", pass_progs[1].prog_fd, "generic")
    dumped = nl.interfaces()
    assert dumped == sorted((nl.interface(i.name) for i in dumped), key=lambda i: i.index)
    by_name = {i.name: i for i in dumped}
    ip = _ip_links(ns)
    assert set(by_name) == set(ip) == {"lo", netns_pair.ns_if, "vx0", "vx1", "br0"}
    for name, link in ip.items():
        mine = by_name[name]
        assert (mine.index, mine.mac) == (link["ifindex"], link["address"])
        assert mine.kind == (link.get("linkinfo") or {}).get("info_kind")
        assert mine.oper_state == link["operstate"].lower()
        assert (mine.xdp.occupant[1], mine.xdp.occupant[0]) == iproute_xdp(ns, name)
    assert by_name[netns_pair.ns_if].xdp.prog_id_for(mode) == pass_progs[0].prog_id
    assert by_name["vx0"].xdp.skb_prog_id == pass_progs[1].prog_id and by_name["vx1"].xdp.attached is None
    assert by_name["br0"].oper_state == "down" and by_name["br0"].xdp.attached is None


def test_the_link_dump_of_a_namespace_with_many_links(nl: Netlink, netns_pair) -> None:
    """Hundreds of links: an answer of several batches (the kernel sends at most 32 KiB
    at a time), every link once, as iproute2 lists them and as each reads by name."""
    batch = "\n".join(f"link add kxa{i} type veth peer name kxb{i}" for i in range(200))
    subprocess.run(["ip", "-n", netns_pair.ns, "-batch", "-"], input=batch, check=True, text=True)
    dumped = nl.interfaces()
    assert len(dumped) == 402 and len({i.name for i in dumped}) == 402
    assert {i.name: i.index for i in dumped} == {name: link["ifindex"] for name, link in _ip_links(netns_pair.ns).items()}
    assert dumped == sorted((nl.interface(i.name) for i in dumped), key=lambda i: i.index)


def test_a_dump_interrupted_by_link_changes_is_read_again(nl: Netlink, netns_pair, monkeypatch) -> None:
    """Links created while the dump runs: the kernel flags the answer NLM_F_DUMP_INTR and
    the dump is read again (here: made to look interrupted twice, then consistent)."""
    from kube_xdp_agent.kernel import netlink as netlink_mod

    real, calls = netlink_mod.split_dump, []

    def flaky(data, seq):
        part = real(data, seq)
        calls.append(seq)
        if len(set(calls)) <= 2:
            part.interrupted = True
        return part

    monkeypatch.setattr(netlink_mod, "split_dump", flaky)
    assert {i.name for i in nl.interfaces()} == {"lo", netns_pair.ns_if}
    assert len(set(calls)) == 3
    calls.clear()
    monkeypatch.setattr(netlink_mod, "split_dump", lambda data, seq: dataclasses.replace(real(data, seq),
                                                                                          interrupted=True))
    with pytest.raises(KernelError) as info:
        nl.interfaces()
    assert "interrupted" in str(info.value)
    monkeypatch.setattr(netlink_mod, "split_dump", real)
    assert {i.name for i in nl.interfaces()} == {"lo", netns_pair.ns_if}    # a new socket, a clean answer


def test_attached_program_outlives_loader(nl: Netlink, netns_pair, counter_request: CompileRequest) -> None:
    own = Compiler()
    defines = {**counter_request.defines, "DROP_PORT": "1"}
    loaded = own.load(CompileRequest(counter_request.source, "xdp_count", defines))
    nl.attach(netns_pair.ns_if, loaded.prog_fd, "native")
    own.close()  # the loader's fds are gone; the hook holds the program
    assert loaded.closed
    state = nl.read_xdp(netns_pair.ns_if)
    assert state.prog_id == loaded.prog_id
    with bpfsys.prog_fd_by_id(loaded.prog_id) as fd:
        assert nl.detach(netns_pair.ns_if, "native", expected_prog_fd=fd.fd).attached is None
    with pytest.raises(bpfsys.BpfSyscallError):  # the hook was the last holder
        bpfsys.prog_fd_by_id(loaded.prog_id).close()


SEND_UDP = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range({n}):
    s.sendto(b"kube-xdp", ("{dst}", {port}))
"""


def _counter_value(prog: LoadedProgram) -> int:
    with bpfsys.BpfMap.open_id(prog.maps["counter"].id) as m:
        return int.from_bytes(m.lookup(b"\0" * 4), "little")  # type: ignore[arg-type]


def _udp_hits(prog: LoadedProgram) -> int:
    with bpfsys.BpfMap.open_id(prog.maps["udp_hits"].id) as m:
        return sum(int.from_bytes(v, "little") for v in m.lookup(b"\0" * 4))  # type: ignore[union-attr]


def _port_count(prog: LoadedProgram, port: int) -> int:
    with bpfsys.BpfMap.open_id(prog.maps["by_port"].id) as m:
        value = m.lookup(port.to_bytes(2, "little"))
        return 0 if value is None else int.from_bytes(value, "little")  # type: ignore[arg-type]


def _wait_for(check: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


@pytest.mark.parametrize("mode", ["native", "generic"])
def test_real_packets_are_counted(
    nl: Netlink, netns_pair, counter_prog: LoadedProgram, python_in_netns, mode: str
) -> None:
    nl.attach(netns_pair.ns_if, counter_prog.prog_fd, mode)
    hits_before, all_before = _udp_hits(counter_prog), _counter_value(counter_prog)
    dropped_before = _port_count(counter_prog, 7777)
    python_in_netns(netns_pair.src, SEND_UDP.format(n=5, dst=netns_pair.ns_addr, port=9999))
    python_in_netns(netns_pair.src, SEND_UDP.format(n=3, dst=netns_pair.ns_addr, port=7777))
    assert _wait_for(lambda: _udp_hits(counter_prog) - hits_before == 5 and
                     _port_count(counter_prog, 7777) - dropped_before == 3)
    assert _counter_value(counter_prog) - all_before >= 8  # plus ARP
