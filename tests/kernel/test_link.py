"""bpf_link for XDP on the real kernel (kernel/link.py, bpfsys's link commands): the facts
link.py's docstring states, each checked here, and each behaviour the fake kernel
(tests/fakes/kernel.py) mirrors.

Every hook state is also read with iproute2 (`ip -j -d link show`), an independent reader.
"""

from __future__ import annotations

import errno
import os
import subprocess
import time
from collections.abc import Iterator

import pytest

from kube_xdp_agent.kernel import HookBusy, LoadedProgram, Netlink, XdpLinks, bpfsys
from kube_xdp_agent.kernel.errors import BpfSyscallError
from kube_xdp_agent.kernel.netns import in_netns
from kube_xdp_agent.kernel.offload import PASS_INSNS, load_pass_program

from .conftest import run
from .test_netlink import iproute_xdp

pytestmark = pytest.mark.kernel


@pytest.fixture
def nl(netns_pair) -> Iterator[Netlink]:
    with Netlink(netns_pair.ns) as handle:
        yield handle


@pytest.fixture
def links(netns_pair) -> XdpLinks:
    return XdpLinks(netns_pair.ns)


def errno_of(fn) -> int | None:
    try:
        result = fn()
    except BpfSyscallError as exc:
        return exc.errno
    if isinstance(result, bpfsys.Fd):
        result.close()
    return None


def test_link_holds_the_hook_and_reads_back(nl, links, netns_pair, pass_progs) -> None:
    """A bcc-loaded program (expected_attach_type 0) attaches by link; the link info's
    ifindex (offset 16 of struct bpf_link_info) is the interface's."""
    prog = pass_progs[0]
    iface = nl.interface(netns_pair.ns_if)
    with links.create(iface.index, prog.prog_fd, "native", interface=iface.name) as link:
        info = links.info(link.fd)
        assert info.type == bpfsys.BPF_LINK_TYPE_XDP and info.prog_id == prog.prog_id
        assert info.ifindex == iface.index and info.id > 0
        assert nl.read_xdp(iface.name).drv_prog_id == prog.prog_id
        assert iproute_xdp(netns_pair.ns, iface.name) == ("native", prog.prog_id)
        assert links.holding(iface.index, prog.prog_id) == info
        assert any(i.id == info.id for i in links.xdp_links())
        links.detach(link.fd)
    assert iproute_xdp(netns_pair.ns, iface.name) == (None, None)


def test_netlink_cannot_touch_a_link(nl, links, netns_pair, pass_progs) -> None:
    """While a link holds the hook, netlink attach, REPLACE (even with the right expected
    program) and detach in its mode are refused with EBUSY; so is `ip link set xdp off`."""
    first, second = pass_progs[0], pass_progs[1]
    iface = nl.interface(netns_pair.ns_if)
    with links.create(iface.index, first.prog_fd, "generic") as link:
        for call in (lambda: nl.attach(iface.name, second.prog_fd, "generic"),
                     lambda: nl.attach(iface.name, second.prog_fd, "generic", expected_prog_fd=first.prog_fd),
                     lambda: nl.detach(iface.name, "generic", expected_prog_fd=first.prog_fd)):
            with pytest.raises(HookBusy) as info:
                call()
            assert info.value.errno == errno.EBUSY and info.value.prog_id == first.prog_id
        refused = run("ip", "-n", netns_pair.ns, "link", "set", "dev", iface.name, "xdpgeneric", "off", check=False)
        assert refused.returncode != 0 and "BPF XDP link" in refused.stderr
        assert iproute_xdp(netns_pair.ns, iface.name) == ("generic", first.prog_id)
        links.detach(link.fd)


def test_link_create_on_an_occupied_hook(nl, links, netns_pair, pass_progs) -> None:
    """EBUSY when the mode's slot is held (by a netlink program, or by another link);
    EEXIST when the other of native/generic is."""
    first, second = pass_progs[0], pass_progs[1]
    iface = nl.interface(netns_pair.ns_if)
    nl.attach(iface.name, first.prog_fd, "native")
    try:
        assert errno_of(lambda: links.create(iface.index, second.prog_fd, "native")) == errno.EBUSY
        assert errno_of(lambda: links.create(iface.index, second.prog_fd, "generic")) == errno.EEXIST
    finally:
        nl.detach(iface.name, "native", expected_prog_fd=first.prog_fd)
    with links.create(iface.index, first.prog_fd, "native") as link:
        assert errno_of(lambda: links.create(iface.index, second.prog_fd, "native")) == errno.EBUSY
        assert errno_of(lambda: links.create(iface.index, second.prog_fd, "generic")) == errno.EEXIST
        links.detach(link.fd)


def test_link_create_in_a_mode_the_device_lacks(nl, links, netns_pair, pass_progs) -> None:
    """lo has no native XDP: EOPNOTSUPP; veth cannot offload: EINVAL (as netlink says)."""
    prog = pass_progs[0]
    lo, veth = nl.interface("lo"), nl.interface(netns_pair.ns_if)
    assert errno_of(lambda: links.create(lo.index, prog.prog_fd, "native")) == errno.EOPNOTSUPP
    assert errno_of(lambda: links.create(veth.index, prog.prog_fd, "offload")) == errno.EINVAL
    # Two mode flags at once, or an attach type the kernel does not know (what a kernel
    # before 5.9 says of BPF_XDP): EINVAL too.
    def create(attach_type: int, flags: int):
        return in_netns(netns_pair.ns, lambda: bpfsys.link_create(prog.prog_fd, veth.index, attach_type, flags))

    assert errno_of(lambda: create(bpfsys.BPF_XDP, 2 | 4)) == errno.EINVAL
    assert errno_of(lambda: create(200, 4)) == errno.EINVAL
    assert nl.read_xdp(veth.name).attached is None


def test_link_is_created_in_the_interfaces_namespace(nl, links, netns_pair, pass_progs) -> None:
    """BPF_LINK_CREATE resolves the ifindex in the CALLING THREAD's namespace: XdpLinks
    runs it inside the node's namespace; the host's interface with that index is never
    touched."""
    prog = pass_progs[0]
    iface = nl.interface(netns_pair.ns_if)
    with Netlink() as host:
        host_same_index = next((i for i in host.interfaces() if i.index == iface.index), None)
        before = host_same_index.xdp if host_same_index else None
    with links.create(iface.index, prog.prog_fd, "generic") as link:
        assert nl.read_xdp(iface.name).skb_prog_id == prog.prog_id
        if host_same_index is not None:
            with Netlink() as host:
                assert host.read_xdp(host_same_index.name) == before
        links.detach(link.fd)


def test_link_update_is_atomic_and_checks_the_old_program(nl, links, netns_pair, pass_progs) -> None:
    first, second, third = pass_progs
    iface = nl.interface(netns_pair.ns_if)
    with links.create(iface.index, first.prog_fd, "native") as link:
        links.update(link.fd, second.prog_fd, old_prog_fd=first.prog_fd)
        assert links.info(link.fd).prog_id == second.prog_id
        assert iproute_xdp(netns_pair.ns, iface.name) == ("native", second.prog_id)
        with pytest.raises(BpfSyscallError) as info:     # the link no longer holds `first`
            links.update(link.fd, third.prog_fd, old_prog_fd=first.prog_fd)
        assert info.value.errno == errno.EPERM and info.value.cmd == "BPF_LINK_UPDATE"
        assert iproute_xdp(netns_pair.ns, iface.name) == ("native", second.prog_id)
        links.update(link.fd, third.prog_fd)             # without BPF_F_REPLACE: whatever it holds
        assert nl.read_xdp(iface.name).drv_prog_id == third.prog_id
        links.detach(link.fd)


def test_expected_attach_type(nl, links, netns_pair, pass_progs) -> None:
    """bcc's programs (expected_attach_type 0) attach by link; so does one loaded with
    BPF_XDP (libbpf's way). BPF_LINK_UPDATE refuses to swap programs whose
    expected_attach_type differ (EINVAL); our probe program (0) swaps with bcc's."""
    iface = nl.interface(netns_pair.ns_if)
    with bpfsys.prog_load(PASS_INSNS, name="kx_eat_xdp", expected_attach_type=bpfsys.BPF_XDP) as eat_xdp, \
            load_pass_program() as eat_zero:
        with links.create(iface.index, eat_xdp.fd, "native") as link:
            assert nl.read_xdp(iface.name).drv_prog_id == bpfsys.prog_info(eat_xdp.fd).id
            with pytest.raises(BpfSyscallError) as info:
                links.update(link.fd, pass_progs[0].prog_fd)
            assert info.value.errno == errno.EINVAL
            links.detach(link.fd)
        with links.create(iface.index, pass_progs[0].prog_fd, "native") as link:
            links.update(link.fd, eat_zero.fd, old_prog_fd=pass_progs[0].prog_fd)
            assert nl.read_xdp(iface.name).drv_prog_id == bpfsys.prog_info(eat_zero.fd).id
            links.detach(link.fd)


def test_link_detach_with_another_fd_open(nl, links, netns_pair, pass_progs, bpffs) -> None:
    """BPF_LINK_DETACH frees the hook at once, though another fd and a pin still hold the
    link, which turns defunct (ifindex 0): an update of it is ENOLINK, a second detach
    is fine."""
    prog = pass_progs[0]
    iface = nl.interface(netns_pair.ns_if)
    path = os.path.join(bpffs, "link")
    with links.create(iface.index, prog.prog_fd, "native") as link:
        bpfsys.obj_pin(link.fd, path)
        with bpfsys.obj_get(path) as other, links.open_id(links.info(link.fd).id) as third:
            links.detach(other.fd)
            assert iproute_xdp(netns_pair.ns, iface.name) == (None, None)
            assert links.info(link.fd).ifindex == 0 and links.info(third.fd).prog_id == prog.prog_id
            with pytest.raises(BpfSyscallError) as info:
                links.update(link.fd, pass_progs[1].prog_fd)
            assert info.value.errno == errno.ENOLINK
            links.detach(third.fd)
    os.unlink(path)


def _wait_detached(nl: Netlink, name: str, timeout: float = 2.0) -> float:
    t0 = time.monotonic()
    while nl.read_xdp(name).attached is not None:
        assert time.monotonic() - t0 < timeout, "the hook was never released"
        time.sleep(0.001)
    return time.monotonic() - t0


def test_unpinning_the_last_reference_detaches(nl, links, netns_pair, pass_progs, bpffs) -> None:
    """A pinned link keeps the program attached after its fd is closed (the agent may
    exit); removing the pin, the last reference, detaches it: asynchronously (the
    kernel's deferred release), which is why attach.remove uses BPF_LINK_DETACH."""
    prog = pass_progs[0]
    iface = nl.interface(netns_pair.ns_if)
    path = os.path.join(bpffs, "link")
    with links.create(iface.index, prog.prog_fd, "generic") as link:
        bpfsys.obj_pin(link.fd, path)
    time.sleep(0.05)
    assert iproute_xdp(netns_pair.ns, iface.name) == ("generic", prog.prog_id)
    os.unlink(path)
    waited = _wait_detached(nl, iface.name)
    assert waited < 1.0


def test_removed_interface_leaves_a_defunct_link(links, netns_pair, pass_progs, bpffs) -> None:
    prog = pass_progs[0]
    run("ip", "-n", netns_pair.ns, "link", "add", "kxdummy0", "type", "veth", "peer", "name", "kxdummy1")
    with Netlink(netns_pair.ns) as nl:
        iface = nl.interface("kxdummy0")
    with links.create(iface.index, prog.prog_fd, "generic") as link:
        run("ip", "-n", netns_pair.ns, "link", "del", "kxdummy0")
        info = links.info(link.fd)
        assert info.ifindex == 0 and info.prog_id == prog.prog_id
        with pytest.raises(BpfSyscallError) as err:
            links.update(link.fd, pass_progs[1].prog_fd)
        assert err.value.errno == errno.ENOLINK
        links.detach(link.fd)     # harmless on a defunct link


def test_a_renamed_or_moved_interface_keeps_its_link(netns_pair, links, pass_progs) -> None:
    """Renaming a device, or moving it to another namespace, keeps its link attached: a
    pin named after an interface must be checked against that interface."""
    prog = pass_progs[0]
    other = f"{netns_pair.ns}-moved"
    run("ip", "-n", netns_pair.ns, "link", "add", "kxmove0", "type", "veth", "peer", "name", "kxmove1")
    run("ip", "netns", "add", other)
    try:
        with Netlink(netns_pair.ns) as nl:
            index = nl.interface("kxmove0").index
        with links.create(index, prog.prog_fd, "generic") as link:
            run("ip", "-n", netns_pair.ns, "link", "set", "kxmove0", "name", "kxrenamed")
            with Netlink(netns_pair.ns) as nl:
                assert nl.read_xdp("kxrenamed").skb_prog_id == prog.prog_id
            run("ip", "-n", netns_pair.ns, "link", "set", "kxrenamed", "netns", other)
            with Netlink(other) as moved:
                there = moved.interface("kxrenamed")
                assert there.xdp.skb_prog_id == prog.prog_id
                assert links.info(link.fd).ifindex == there.index != 0
            links.detach(link.fd)
    finally:
        run("ip", "netns", "del", other, check=False)


def test_link_ids_enumerate_links_of_every_namespace(links, netns_pair, pass_progs: tuple[LoadedProgram, ...]) -> None:
    prog = pass_progs[2]
    with Netlink(netns_pair.ns) as nl:
        iface = nl.interface(netns_pair.ns_if)
    with links.create(iface.index, prog.prog_fd, "generic") as link:
        mine = links.info(link.fd)
        listed = {i.id: i for i in XdpLinks(None).xdp_links()}     # any handle sees every link
        assert listed[mine.id] == mine
        links.detach(link.fd)
    assert mine.id not in {i.id for i in XdpLinks(None).xdp_links()}
