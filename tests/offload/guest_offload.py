"""XDP offload on netdevsim, through the agent's real kernel layer (runs in the lab guest).

netdevsim implements the kernel's offload path for real: programs and maps bound to the
device (its offload verifier callbacks, maps of at most 2 entries without flags), HW-mode
attach, and debugfs knobs that make the device refuse (bpf_xdpoffload_accept,
bpf_xdpdrv_accept, bpf_map_accept). It does not run offloaded programs on packets, so
what is checked is the control path: load, attach (attach.place, the one ordered-attempt
function, with the device-bound program for offload), read back, maps from user space,
pins, refusals and fallback; and the bpf_link facts of this 6.1 kernel (HW mode by link,
expected_attach_type).
"""

from __future__ import annotations

import errno
import json
import os
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from kube_xdp_agent.kernel import CompileRequest, LoadedProgram, Netlink, Node, PinStore, XdpLinks, bpfsys
from kube_xdp_agent.kernel.attach import NoModeAttached, Placement, place, remove
from kube_xdp_agent.kernel.errors import BpfSyscallError
from kube_xdp_agent.kernel.offload import PASS_INSNS, load_for_offload, load_pass_program

OFFLOADABLE_SRC = r"""
BPF_ARRAY(hits, u64, 2);   /* netdevsim: at most 2 entries, no flags */
int xdp_hits(struct xdp_md *ctx) {
    u32 key = 0;
    u64 *v = hits.lookup(&key);
    if (v)
        __sync_fetch_and_add(v, 1);
    return XDP_PASS;
}
"""
PERCPU_SRC = r"""
BPF_PERCPU_ARRAY(hits, u64, 2);
int xdp_pcpu(struct xdp_md *ctx) {
    u32 key = 0;
    u64 *v = hits.lookup(&key);
    if (v)
        *v += 1;
    return XDP_PASS;
}
"""
# Within the offload rules, but beyond what this device holds (netdevsim: <= 2 entries).
BIG_MAP_SRC = OFFLOADABLE_SRC.replace("hits, u64, 2", "hits, u64, 64").replace("xdp_hits", "xdp_big")

BEST = ("offload", "native", "generic")


def iproute_xdp(ifname: str, netns: str | None = None) -> dict | None:
    ns = ["-n", netns] if netns else []
    out = subprocess.run(["ip", "-j", "-d", *ns, "link", "show", ifname], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)[0].get("xdp")


@pytest.fixture
def bpffs() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="kxlab-bpffs-")
    subprocess.run(["mount", "-t", "bpf", "bpf", path], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", path], check=False)
        os.rmdir(path)


@dataclass
class Put:
    """A placement, and the loaded program it attached (for its maps)."""

    placed: Placement
    program: LoadedProgram


class Placer:
    """attach.place as the executor calls it: offload with the program loaded for the
    interface's device (offload.load_for_offload), the other modes with the host program."""

    def __init__(self, compiler, nl: Netlink, bpffs: str) -> None:
        self.compiler, self.nl = compiler, nl
        self.node = Node(nl, XdpLinks(nl.netns), PinStore(bpffs))

    def put(self, interface: str, req: CompileRequest, modes: tuple[str, ...], *, program: str = "lab") -> Put:
        used: dict[str, LoadedProgram] = {}

        def prog_fd_for(mode: str) -> bpfsys.Fd:
            prog = load_for_offload(self.compiler, self.nl, interface, req) if mode == "offload" \
                else self.compiler.load(req)
            used[mode] = prog
            return bpfsys.Fd(os.dup(prog.prog_fd))

        try:
            placed = place(self.node, program=program, interface=interface, modes=modes, prog_fd_for=prog_fd_for)
        except NoModeAttached:
            self._release_refused(used, None)
            raise
        self._release_refused(used, placed.mode)
        return Put(placed, used[placed.mode])

    def _release_refused(self, used: dict[str, LoadedProgram], mode: str | None) -> None:
        """A device-bound program built for offload but not attached is the caller's to
        release (place never unloads a program), as the agent's executor does: else the
        compiler's cache would offer it again, maps and all."""
        if "offload" in used and mode != "offload":
            self.compiler.release(used["offload"].key)

    def take_off(self, interface: str, *puts: Put, program: str = "lab") -> None:
        for put in puts:
            remove(self.node, program=program, interface=interface, netlink_prog_fd=put.program.prog_fd)


@pytest.fixture
def placer(compiler, bpffs) -> Iterator[Placer]:
    with Netlink() as nl:
        yield Placer(compiler, nl, bpffs)


# (1) offload preferred on a NIC that offloads -> offload, read back, maps usable -------------


def test_offload_preferred_attaches_offloaded(nsim, placer, measure) -> None:
    req = CompileRequest(OFFLOADABLE_SRC, "xdp_hits")
    nl = placer.nl
    t0 = time.monotonic()
    put = placer.put(nsim.ifname, req, BEST)
    measure("first_offload_compile_load_attach_s (bcc cold)", round(time.monotonic() - t0, 2))
    placed = put.placed
    try:
        assert placed.mode == "offload" and placed.reason is None and placed.refused == ()
        measure("offload_attached_by (6.1 netdevsim)", placed.attached_by)
        assert placed.state.attached == "offload"
        assert placed.state.hw_prog_id == put.program.prog_id == placed.prog_id
        assert placed.state.drv_prog_id is None and placed.state.skb_prog_id is None
        assert nl.read_xdp(nsim.ifname) == placed.state
        # iproute2's independent reading: mode 3 = XDP_ATTACHED_HW, with the hw program id.
        xdp = iproute_xdp(nsim.ifname)
        assert xdp["mode"] == 3 and xdp["prog"]["id"] == put.program.prog_id
        # netdevsim's own view: the program it holds.
        assert int(nsim.knob("bpf_offloaded_id")) == put.program.prog_id
        # The map lives on the device; user space reads and writes it through the kernel.
        hits = put.program.maps["hits"]
        with bpfsys.BpfMap(bpfsys.Fd(os.dup(hits.fd))) as m:
            assert not m.info.percpu
            m.update(struct.pack("I", 1), struct.pack("Q", 41))
            assert struct.unpack("Q", m.lookup(struct.pack("I", 1)))[0] == 41
            assert struct.unpack("Q", m.lookup(struct.pack("I", 0)))[0] == 0
    finally:
        placer.take_off(nsim.ifname, put)
    assert nl.read_xdp(nsim.ifname).attached is None


def test_hw_mode_by_bpf_link_on_this_kernel(nsim, placer, measure) -> None:
    """The bpf_link facts of the 6.1 lab kernel: a device-bound program in HW mode by link
    (BPF_LINK_CREATE flags XDP_FLAGS_HW_MODE), updated in place by BPF_LINK_UPDATE (another
    device-bound program), detached; a host program in HW mode is refused (EINVAL); bcc's
    expected_attach_type 0 and BPF_XDP both attach by link."""
    links, nl = XdpLinks(None), placer.nl
    index = nl.interface(nsim.ifname).index
    first = load_pass_program(index, name="kx_hw_a")
    second = load_pass_program(index, name="kx_hw_b")
    host = load_pass_program()
    try:
        with pytest.raises(BpfSyscallError) as refused:
            links.create(index, host.fd, "offload").close()
        measure("hw_link_host_program_errno", errno.errorcode[refused.value.errno])
        assert refused.value.errno == errno.EINVAL
        with links.create(index, first.fd, "offload") as link:
            assert nl.read_xdp(nsim.ifname).hw_prog_id == bpfsys.prog_info(first.fd).id
            assert iproute_xdp(nsim.ifname)["mode"] == 3
            links.update(link.fd, second.fd, old_prog_fd=first.fd)
            assert nl.read_xdp(nsim.ifname).hw_prog_id == bpfsys.prog_info(second.fd).id
            assert int(nsim.knob("bpf_offloaded_id")) == bpfsys.prog_info(second.fd).id
            refused_ip = subprocess.run(["ip", "link", "set", "dev", nsim.ifname, "xdpoffload", "off"],
                                        capture_output=True, text=True)
            assert refused_ip.returncode != 0, "netlink detach of a link-held hook must be refused"
            links.detach(link.fd)
        assert nl.read_xdp(nsim.ifname).attached is None
        measure("hw_link (6.1 netdevsim)", "attached, updated, detached by link")
        with bpfsys.prog_load(PASS_INSNS, name="kx_eat_xdp", expected_attach_type=bpfsys.BPF_XDP) as eat:
            with links.create(index, eat.fd, "native") as link:
                assert nl.read_xdp(nsim.ifname).drv_prog_id == bpfsys.prog_info(eat.fd).id
                links.detach(link.fd)
        with links.create(index, host.fd, "native") as link:        # expected_attach_type 0 (bcc's way)
            assert nl.read_xdp(nsim.ifname).drv_prog_id == bpfsys.prog_info(host.fd).id
            links.detach(link.fd)
    finally:
        for fd in (first, second, host):
            fd.close()


def test_offloaded_program_and_maps_pin_and_reopen(nsim, placer) -> None:
    req = CompileRequest(OFFLOADABLE_SRC, "xdp_hits")
    nl, pins = placer.nl, placer.node.pins
    put = placer.put(nsim.ifname, req, ("offload",))
    try:
        pinned = pins.pin_program("lab", put.program.digest12, put.program)
        assert pinned.prog_id == put.program.prog_id
        with pins.open_map("lab", put.program.digest12, "hits") as m:
            m.update(struct.pack("I", 0), struct.pack("Q", 7))
        with pins.open_map("lab", put.program.digest12, "hits") as m:
            assert struct.unpack("Q", m.lookup(struct.pack("I", 0)))[0] == 7
        with pins.open_prog_fd("lab", put.program.digest12) as fd:
            assert bpfsys.prog_info(fd.fd).id == nl.read_xdp(nsim.ifname).hw_prog_id
        if put.placed.attached_by == "link":              # the link pinned beside the program
            link = pins.read_link("lab", nsim.ifname)
            assert link.prog_id == put.program.prog_id and link.ifindex == nl.interface(nsim.ifname).index
    finally:
        placer.take_off(nsim.ifname, put)
    assert nl.read_xdp(nsim.ifname).hw_prog_id is None
    assert pins.unpin("lab")


def test_native_and_offloaded_side_by_side(nsim, placer) -> None:
    """The kernel holds a native and an offloaded program on one interface at once
    ('xdpmulti'); the layer reads both back. (The spec allows one mode per program and
    interface; this pins down what the kernel does if two programs share a NIC.)"""
    off = placer.put(nsim.ifname, CompileRequest(OFFLOADABLE_SRC, "xdp_hits"), ("offload",), program="off")
    try:
        drv = placer.put(nsim.ifname, CompileRequest(PERCPU_SRC, "xdp_pcpu"), ("native",), program="drv")
        try:
            state = placer.nl.read_xdp(nsim.ifname)
            assert state.attached == "multi" and state.prog_id is None
            assert state.hw_prog_id == off.program.prog_id
            assert state.drv_prog_id == drv.program.prog_id
        finally:
            placer.take_off(nsim.ifname, drv, program="drv")
    finally:
        placer.take_off(nsim.ifname, off, program="off")


# (2) a per-CPU map with offload preferred -> native, ProgramNotOffloadable ------------------


def test_per_cpu_program_falls_back_to_native(nsim, placer) -> None:
    req = CompileRequest(PERCPU_SRC, "xdp_pcpu")
    put = placer.put(nsim.ifname, req, BEST)
    placed = put.placed
    try:
        assert placed.mode == "native" and placed.state.attached == "native"
        assert placed.reason == "ProgramNotOffloadable"
        message = placed.refused[0].message
        assert "hits" in message and "per-CPU" in message
        assert iproute_xdp(nsim.ifname)["mode"] == 1
        # No program was ever bound to the device.
        assert int(nsim.knob("bpf_offloaded_id")) == 0
    finally:
        placer.take_off(nsim.ifname, put)


def test_map_the_device_cannot_hold_falls_back(nsim, placer) -> None:
    """64 entries pass the offload rules, but netdevsim holds 2: the device refuses the map
    at creation and the program is recognised as not offloadable (the device itself can)."""
    put = placer.put(nsim.ifname, CompileRequest(BIG_MAP_SRC, "xdp_big"), BEST)
    try:
        assert put.placed.mode == "native" and put.placed.reason == "ProgramNotOffloadable"
        assert "could not open bpf map" in put.placed.refused[0].message  # bcc's text, with the errno
    finally:
        placer.take_off(nsim.ifname, put)


# (3) offload required with an unoffloadable program -> nothing attached, a clear error -------


def test_offload_required_with_unoffloadable_program(nsim, placer) -> None:
    with pytest.raises(NoModeAttached) as info:
        placer.put(nsim.ifname, CompileRequest(PERCPU_SRC, "xdp_pcpu"), ("offload",))
    assert placer.nl.read_xdp(nsim.ifname).attached is None
    err = info.value
    assert err.reason == "ProgramNotOffloadable"
    assert nsim.ifname in str(err) and "per-CPU" in str(err) and "only array and hash" in str(err)
    assert iproute_xdp(nsim.ifname) is None and placer.node.pins.list_links() == []


# (4) the device refuses offload (debugfs) -> the kernel's refusal, fallback per policy -------


def test_device_refusing_offload_falls_back_with_the_kernel_message(nsim, placer) -> None:
    assert nsim.knob("bpf_xdpoffload_accept", "N") == "N"
    req = CompileRequest(OFFLOADABLE_SRC, "xdp_hits")
    put = placer.put(nsim.ifname, req, BEST)
    placed = put.placed
    try:
        assert placed.mode == "native"
        refusal = placed.refused[0]
        assert refusal.mode == "offload" and refusal.reason == "OffloadUnsupported"
        assert refusal.errno == errno.EOPNOTSUPP
        assert refusal.message.endswith("XDP offload disabled in DebugFS")  # the kernel's "netdevsim: ..."
        assert put.program.prog_id == placed.state.drv_prog_id        # the host program on the hook
    finally:
        placer.take_off(nsim.ifname, put)
    # Offload required: the same refusal, nothing attached.
    with pytest.raises(NoModeAttached) as info:
        placer.put(nsim.ifname, req, ("offload",))
    assert info.value.reason == "OffloadUnsupported" and info.value.errno == errno.EOPNOTSUPP
    assert "XDP offload disabled in DebugFS" in str(info.value)
    assert placer.nl.read_xdp(nsim.ifname).attached is None


def test_offload_and_native_refused_fall_back_to_generic(nsim, placer) -> None:
    nsim.knob("bpf_xdpoffload_accept", "N")
    nsim.knob("bpf_xdpdrv_accept", "N")
    put = placer.put(nsim.ifname, CompileRequest(OFFLOADABLE_SRC, "xdp_hits"), BEST)
    placed = put.placed
    try:
        assert placed.mode == "generic" and iproute_xdp(nsim.ifname)["mode"] == 2
        assert [(r.mode, r.reason) for r in placed.refused] == [
            ("offload", "OffloadUnsupported"), ("native", "DriverModeUnsupported")]
        assert "driver XDP disabled in DebugFS" in placed.refused[1].message
    finally:
        placer.take_off(nsim.ifname, put)


def test_device_refusing_maps(nsim, placer) -> None:
    """bpf_map_accept=N: the device refuses every map (EOPNOTSUPP) but still takes
    programs: the program is not offloadable here, the device is."""
    nsim.knob("bpf_map_accept", "N")
    put = placer.put(nsim.ifname, CompileRequest(OFFLOADABLE_SRC, "xdp_hits"), ("offload", "native"))
    try:
        assert put.placed.mode == "native" and put.placed.reason == "ProgramNotOffloadable"
    finally:
        placer.take_off(nsim.ifname, put)


# Offload for an interface in a named namespace (the rig's simulated nodes) -----------------


def test_offload_in_a_named_namespace(nsim_in_netns, compiler, bpffs, measure) -> None:
    netns, port = nsim_in_netns
    req = CompileRequest(OFFLOADABLE_SRC.replace("xdp_hits", "xdp_nshits"), "xdp_nshits")
    with Netlink(netns) as nl:
        placer = Placer(compiler, nl, bpffs)
        t0 = time.monotonic()
        put = placer.put(port.ifname, req, BEST)
        measure("offload_compile_load_attach_s (bcc warm)", round(time.monotonic() - t0, 2))
        measure("offload_compile_load_ms (bcc warm)", put.program.duration_ms)
        try:
            assert put.placed.mode == "offload" and put.placed.state.hw_prog_id == put.program.prog_id
            assert iproute_xdp(port.ifname, netns)["mode"] == 3
        finally:
            placer.take_off(port.ifname, put)


def test_device_recreated_with_the_same_name_gets_a_fresh_load(compiler, bpffs) -> None:
    """The compiler caches by device NAME: after the NIC is removed and a new one takes its
    name, the cached program is orphaned (ENODEV) and must be loaded again, not reused."""
    from .conftest import del_nsim, make_nsim

    req = CompileRequest(OFFLOADABLE_SRC.replace("xdp_hits", "xdp_again"), "xdp_again")
    first = make_nsim()
    try:
        with Netlink() as nl:
            placer = Placer(compiler, nl, bpffs)
            put = placer.put(first.ifname, req, ("offload",))
            old_id = put.program.prog_id
            placer.take_off(first.ifname, put)
    finally:
        del_nsim(first)
    second = make_nsim()
    try:
        assert second.ifname == first.ifname  # same name, a different device
        with Netlink() as nl:
            placer = Placer(compiler, nl, bpffs)
            again = placer.put(second.ifname, req, ("offload",))
            try:
                assert again.placed.mode == "offload" and again.program.prog_id != old_id
                assert not again.program.cache_hit
                assert nl.read_xdp(second.ifname).hw_prog_id == again.program.prog_id
            finally:
                placer.take_off(second.ifname, again)
    finally:
        del_nsim(second)
