"""XDP offload on netdevsim, through the agent's real kernel layer (runs in the lab guest).

netdevsim implements the kernel's offload path for real: programs and maps bound to the
device (its offload verifier callbacks, maps of at most 2 entries without flags), HW-mode
attach, and debugfs knobs that make the device refuse (bpf_xdpoffload_accept,
bpf_xdpdrv_accept, bpf_map_accept). It does not run offloaded programs on packets, so
what is checked is the control path: load, attach, read back, maps from user space, pins,
refusals and fallback.
"""

from __future__ import annotations

import errno
import json
import os
import struct
import subprocess
import tempfile
import time

import pytest

from kube_xdp_agent.kernel import CompileRequest, Netlink, PinStore, bpfsys
from kube_xdp_agent.kernel.offload import NoModeAttached, attach_with_fallback

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


def detach_all(nl: Netlink, ifname: str, *placements) -> None:
    for p in placements:
        nl.detach(ifname, p.mode, expected_prog_fd=p.program.prog_fd)


# (1) offload preferred on a NIC that offloads -> offload, read back, maps usable -------------


def test_offload_preferred_attaches_offloaded(nsim, compiler, measure) -> None:
    req = CompileRequest(OFFLOADABLE_SRC, "xdp_hits")
    with Netlink() as nl:
        t0 = time.monotonic()
        placed = attach_with_fallback(compiler, nl, nsim.ifname, req, BEST)
        measure("first_offload_compile_load_attach_s (bcc cold)", round(time.monotonic() - t0, 2))
        try:
            assert placed.mode == "offload" and placed.reason is None and placed.message == ""
            assert placed.state.attached == "offload"
            assert placed.state.hw_prog_id == placed.program.prog_id
            assert placed.state.drv_prog_id is None and placed.state.skb_prog_id is None
            assert nl.read_xdp(nsim.ifname) == placed.state
            # iproute2's independent reading: mode 3 = XDP_ATTACHED_HW, with the hw program id.
            xdp = iproute_xdp(nsim.ifname)
            assert xdp["mode"] == 3 and xdp["prog"]["id"] == placed.program.prog_id
            # netdevsim's own view: the program it holds.
            assert int(nsim.knob("bpf_offloaded_id")) == placed.program.prog_id
            # The map lives on the device; user space reads and writes it through the kernel.
            hits = placed.program.maps["hits"]
            with bpfsys.BpfMap(bpfsys.Fd(os.dup(hits.fd))) as m:
                assert not m.info.percpu
                m.update(struct.pack("I", 1), struct.pack("Q", 41))
                assert struct.unpack("Q", m.lookup(struct.pack("I", 1)))[0] == 41
                assert struct.unpack("Q", m.lookup(struct.pack("I", 0)))[0] == 0
        finally:
            detach_all(nl, nsim.ifname, placed)
        assert nl.read_xdp(nsim.ifname).attached is None


def test_offloaded_program_and_maps_pin_and_reopen(nsim, compiler) -> None:
    req = CompileRequest(OFFLOADABLE_SRC, "xdp_hits")
    bpffs = tempfile.mkdtemp(prefix="kxlab-bpffs-")
    subprocess.run(["mount", "-t", "bpf", "bpf", bpffs], check=True)
    try:
        with Netlink() as nl:
            placed = attach_with_fallback(compiler, nl, nsim.ifname, req, ("offload",))
            try:
                pins = PinStore(bpffs)
                pinned = pins.pin_program("lab", placed.program.digest12, placed.program)
                assert pinned.prog_id == placed.program.prog_id
                with pins.open_map("lab", placed.program.digest12, "hits") as m:
                    m.update(struct.pack("I", 0), struct.pack("Q", 7))
                with pins.open_map("lab", placed.program.digest12, "hits") as m:
                    assert struct.unpack("Q", m.lookup(struct.pack("I", 0)))[0] == 7
                # The pinned program is the one on the hook, and can detach it by fd.
                with pins.open_prog_fd("lab", placed.program.digest12) as fd:
                    assert bpfsys.prog_info(fd.fd).id == nl.read_xdp(nsim.ifname).hw_prog_id
                    nl.detach(nsim.ifname, "offload", expected_prog_fd=fd.fd)
            finally:
                if nl.read_xdp(nsim.ifname).hw_prog_id:
                    detach_all(nl, nsim.ifname, placed)
            assert pins.unpin("lab")
    finally:
        subprocess.run(["umount", bpffs], check=False)
        os.rmdir(bpffs)


def test_native_and_offloaded_side_by_side(nsim, compiler) -> None:
    """The kernel holds a native and an offloaded program on one interface at once
    ('xdpmulti'); the layer reads both back. (The spec allows one mode per program and
    interface; this pins down what the kernel does if two programs share a NIC.)"""
    with Netlink() as nl:
        off = attach_with_fallback(compiler, nl, nsim.ifname, CompileRequest(OFFLOADABLE_SRC, "xdp_hits"),
                                   ("offload",))
        try:
            drv = attach_with_fallback(compiler, nl, nsim.ifname, CompileRequest(PERCPU_SRC, "xdp_pcpu"),
                                       ("native",))
            try:
                state = nl.read_xdp(nsim.ifname)
                assert state.attached == "multi" and state.prog_id is None
                assert state.hw_prog_id == off.program.prog_id
                assert state.drv_prog_id == drv.program.prog_id
            finally:
                detach_all(nl, nsim.ifname, drv)
        finally:
            detach_all(nl, nsim.ifname, off)


# (2) a per-CPU map with offload preferred -> native, ProgramNotOffloadable ------------------


def test_per_cpu_program_falls_back_to_native(nsim, compiler) -> None:
    req = CompileRequest(PERCPU_SRC, "xdp_pcpu")
    with Netlink() as nl:
        placed = attach_with_fallback(compiler, nl, nsim.ifname, req, BEST)
        try:
            assert placed.mode == "native" and placed.state.attached == "native"
            assert placed.reason == "ProgramNotOffloadable"
            assert "hits" in placed.message and "per-CPU" in placed.message
            assert iproute_xdp(nsim.ifname)["mode"] == 1
            # No program was ever bound to the device.
            assert int(nsim.knob("bpf_offloaded_id")) == 0
        finally:
            detach_all(nl, nsim.ifname, placed)


def test_map_the_device_cannot_hold_falls_back(nsim, compiler) -> None:
    """64 entries pass the offload rules, but netdevsim holds 2: the device refuses the map
    at creation and the program is recognised as not offloadable (the device itself can)."""
    req = CompileRequest(BIG_MAP_SRC, "xdp_big")
    with Netlink() as nl:
        placed = attach_with_fallback(compiler, nl, nsim.ifname, req, BEST)
        try:
            assert placed.mode == "native" and placed.reason == "ProgramNotOffloadable"
            assert "could not open bpf map" in placed.message  # bcc's text, with the errno
        finally:
            detach_all(nl, nsim.ifname, placed)


# (3) offload required with an unoffloadable program -> nothing attached, a clear error -------


def test_offload_required_with_unoffloadable_program(nsim, compiler) -> None:
    with Netlink() as nl:
        with pytest.raises(NoModeAttached) as info:
            attach_with_fallback(compiler, nl, nsim.ifname, CompileRequest(PERCPU_SRC, "xdp_pcpu"), ("offload",))
        assert nl.read_xdp(nsim.ifname).attached is None
    err = info.value
    assert err.reason == "ProgramNotOffloadable"
    assert nsim.ifname in str(err) and "per-CPU" in str(err) and "only array and hash" in str(err)
    assert iproute_xdp(nsim.ifname) is None


# (4) the device refuses offload (debugfs) -> the kernel's refusal, fallback per policy -------


def test_device_refusing_offload_falls_back_with_the_kernel_message(nsim, compiler) -> None:
    assert nsim.knob("bpf_xdpoffload_accept", "N") == "N"
    req = CompileRequest(OFFLOADABLE_SRC, "xdp_hits")
    with Netlink() as nl:
        placed = attach_with_fallback(compiler, nl, nsim.ifname, req, BEST)
        try:
            assert placed.mode == "native"
            refusal = placed.refused[0]
            assert refusal.mode == "offload" and refusal.reason == "OffloadUnsupported"
            assert refusal.errno == errno.EOPNOTSUPP
            assert refusal.kernel_message.endswith("XDP offload disabled in DebugFS")  # "netdevsim: ..."
            assert "XDP offload disabled in DebugFS" in placed.message
            # The device-bound copy was released: only the native program is on the hook.
            assert placed.program.prog_id == placed.state.drv_prog_id
        finally:
            detach_all(nl, nsim.ifname, placed)
        # Offload required: the same refusal, nothing attached.
        with pytest.raises(NoModeAttached) as info:
            attach_with_fallback(compiler, nl, nsim.ifname, req, ("offload",))
        assert info.value.reason == "OffloadUnsupported" and info.value.errno == errno.EOPNOTSUPP
        assert "XDP offload disabled in DebugFS" in str(info.value)
        assert nl.read_xdp(nsim.ifname).attached is None


def test_offload_and_native_refused_fall_back_to_generic(nsim, compiler) -> None:
    nsim.knob("bpf_xdpoffload_accept", "N")
    nsim.knob("bpf_xdpdrv_accept", "N")
    req = CompileRequest(OFFLOADABLE_SRC, "xdp_hits")
    with Netlink() as nl:
        placed = attach_with_fallback(compiler, nl, nsim.ifname, req, BEST)
        try:
            assert placed.mode == "generic" and iproute_xdp(nsim.ifname)["mode"] == 2
            assert [(r.mode, r.reason) for r in placed.refused] == [
                ("offload", "OffloadUnsupported"), ("native", "DriverModeUnsupported")]
            assert "driver XDP disabled in DebugFS" in placed.message
        finally:
            detach_all(nl, nsim.ifname, placed)


def test_device_refusing_maps(nsim, compiler) -> None:
    """bpf_map_accept=N: the device refuses every map (EOPNOTSUPP) but still takes
    programs: the program is not offloadable here, the device is."""
    nsim.knob("bpf_map_accept", "N")
    with Netlink() as nl:
        placed = attach_with_fallback(compiler, nl, nsim.ifname, CompileRequest(OFFLOADABLE_SRC, "xdp_hits"),
                                      ("offload", "native"))
        try:
            assert placed.mode == "native" and placed.reason == "ProgramNotOffloadable"
        finally:
            detach_all(nl, nsim.ifname, placed)


# Offload for an interface in a named namespace (the rig's simulated nodes) -----------------


def test_offload_in_a_named_namespace(nsim_in_netns, compiler, measure) -> None:
    netns, port = nsim_in_netns
    req = CompileRequest(OFFLOADABLE_SRC.replace("xdp_hits", "xdp_nshits"), "xdp_nshits")
    with Netlink(netns) as nl:
        t0 = time.monotonic()
        placed = attach_with_fallback(compiler, nl, port.ifname, req, BEST)
        measure("offload_compile_load_attach_s (bcc warm)", round(time.monotonic() - t0, 2))
        measure("offload_compile_load_ms (bcc warm)", placed.program.duration_ms)
        try:
            assert placed.mode == "offload" and placed.state.hw_prog_id == placed.program.prog_id
            assert iproute_xdp(port.ifname, netns)["mode"] == 3
        finally:
            detach_all(nl, port.ifname, placed)


def test_device_recreated_with_the_same_name_gets_a_fresh_load(compiler) -> None:
    """The compiler caches by device NAME: after the NIC is removed and a new one takes its
    name, the cached program is orphaned (ENODEV) and must be loaded again, not reused."""
    from .conftest import del_nsim, make_nsim

    req = CompileRequest(OFFLOADABLE_SRC.replace("xdp_hits", "xdp_again"), "xdp_again")
    first = make_nsim()
    try:
        with Netlink() as nl:
            placed = attach_with_fallback(compiler, nl, first.ifname, req, ("offload",))
            old_id = placed.program.prog_id
            detach_all(nl, first.ifname, placed)
    finally:
        del_nsim(first)
    second = make_nsim()
    try:
        assert second.ifname == first.ifname  # same name, a different device
        with Netlink() as nl:
            again = attach_with_fallback(compiler, nl, second.ifname, req, ("offload",))
            try:
                assert again.mode == "offload" and again.program.prog_id != old_id
                assert not again.program.cache_hit
                assert nl.read_xdp(second.ifname).hw_prog_id == again.program.prog_id
            finally:
                detach_all(nl, second.ifname, again)
    finally:
        del_nsim(second)
