"""The node's XDP capabilities, probed on the kernel: what the agent writes in XdpNode.status.

`probe_node(netlink)` returns a `NodeInventory`: kernel release, BTF present
(/sys/kernel/btf/vmlinux), bcc version, where bcc finds kernel headers (or that it
finds none), and per interface its driver (ethtool) and the XDP modes it supports.

Modes are PROBED, never guessed from a driver list: a trivial program (`return
XDP_PASS`, loaded once with bpf(2), no compiler needed) is attached in each mode and
detached again, on interfaces whose XDP hook is EMPTY only. An interface that already
holds a program (ours or anyone's) is never touched: its modes are reported unknown,
and what is attached there is reported as read back. Offload is probed by loading the
trivial program bound to the interface (in the interface's namespace) and attaching it
in HW mode.

Costs and traps:
- Attaching native XDP makes some drivers reconfigure their rings (a short link reset on
  e.g. ixgbe, i40e, mlx5). Probe once per interface (pass `previous=` to reuse results
  for interfaces whose name, index and driver did not change) and never on a hook in use.
- Every probe attach uses UPDATE_IF_NOEXIST: if another agent or tool attaches between
  our read and our attach, we get HookBusy and report the mode unknown.
- The probe program is attached for microseconds: XDP_PASS does not change traffic.

Which interfaces are probed (`interface_selector`, the agent's --inventory-interfaces):
on a real node most interfaces are pods' veths and overlay devices, created all the time;
switching each one to XDP for a moment, on an interface carrying a pod's traffic, is
intrusive and tells nothing worth knowing. By default names starting like the usual
container and overlay devices (`DEFAULT_SKIPPED_PREFIXES`) are skipped; loopback is never
probed. The selection is by NAME, never by link kind: the rig's simulated NICs are veths
named eth0, eth1, hp0... and must be probed. An interface not selected is still listed,
with its driver, its modes unknown and `probed=False`.

Works in a named network namespace through `Netlink(netns)` (the rig's simulated nodes);
the offload load runs in a thread that entered that namespace (offload.in_netns).
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .kernel import bpfsys
from .kernel.errors import AttachError, BpfSyscallError, HookBusy, InterfaceNotFound, KernelError
from .kernel.netlink import MODES, Interface, Netlink
from .kernel.offload import OFFLOAD_UNSUPPORTED, in_netns, load_pass_program

log = logging.getLogger(__name__)

BTF_PATH = "/sys/kernel/btf/vmlinux"
KHEADERS_PATH = "/sys/kernel/kheaders.tar.xz"
PROBE_ORDER = ("generic", "native", "offload")  # cheapest and least disruptive first
SUPPORTED, UNSUPPORTED, UNKNOWN = "supported", "unsupported", "unknown"

# Name prefixes of container and overlay interfaces (pods' veths, CNI bridges and tunnels):
# not probed by default.
DEFAULT_SKIPPED_PREFIXES = ("veth", "cali", "lxc", "cilium_", "flannel", "cni", "docker", "vxlan", "tunl",
                            "kube-", "genev", "weave", "br-", "virbr")
# The default --inventory-interfaces: any name but those.
DEFAULT_PROBE_PATTERN = "(?!(?:" + "|".join(re.escape(p) for p in DEFAULT_SKIPPED_PREFIXES) + ")).+"
LOOPBACK_IFINDEX = 1     # the kernel's loopback device has this index in every namespace
NOT_SELECTED = "not probed: the name does not match the agent's --inventory-interfaces"


@dataclass(frozen=True)
class ModeProbe:
    """The result of probing one mode on one interface."""

    mode: str
    result: str  # 'supported' | 'unsupported' | 'unknown'
    detail: str = ""  # the kernel's message (unsupported) or why not probed (unknown)
    errno: int | None = None


@dataclass(frozen=True)
class AttachedProgram:
    mode: str
    prog_id: int


@dataclass(frozen=True)
class InterfaceInventory:
    name: str
    index: int
    driver: str | None
    kind: str | None  # IFLA_INFO_KIND ('veth', ...); None for physical NICs and lo
    probes: tuple[ModeProbe, ...]
    attached: tuple[AttachedProgram, ...] = ()
    probed: bool = True  # False: not selected for probing (interface_selector); modes unknown

    @property
    def modes(self) -> tuple[str, ...]:
        """Supported modes, in the API's order (offload, native, generic)."""
        ok = {p.mode for p in self.probes if p.result == SUPPORTED}
        return tuple(m for m in ("offload", "native", "generic") if m in ok)

    @property
    def unknown_modes(self) -> tuple[str, ...]:
        bad = {p.mode for p in self.probes if p.result == UNKNOWN}
        return tuple(m for m in ("offload", "native", "generic") if m in bad)

    def probe(self, mode: str) -> ModeProbe | None:
        return next((p for p in self.probes if p.mode == mode), None)


@dataclass(frozen=True)
class HeadersInfo:
    found: bool
    path: str | None = None  # the directory (or kheaders archive) bcc will use


@dataclass(frozen=True)
class NodeInventory:
    kernel_release: str
    btf: bool
    bcc_version: str | None  # None when bcc cannot be imported
    headers: HeadersInfo
    interfaces: tuple[InterfaceInventory, ...] = field(default_factory=tuple)

    def interface(self, name: str) -> InterfaceInventory | None:
        return next((i for i in self.interfaces if i.name == name), None)

    def mode_summary(self) -> str:
        """How many interfaces support each mode, e.g. "offload=1,native=3,generic=4"
        (order offload, native, generic; modes no interface supports are left out; "none")."""
        counts = {m: sum(m in i.modes for i in self.interfaces) for m in ("offload", "native", "generic")}
        return ",".join(f"{m}={n}" for m, n in counts.items() if n) or "none"

    def to_status(self, *, extended: bool = False) -> dict[str, Any]:
        """The XdpNode status fields this inventory fills (api schema.node_status_schema).

        Only fields the schema declares; a value not known (no bcc version) is left out
        rather than written as an empty string. `extended=True` adds per interface `kind`, `unknownModes` (modes
        not probed: the hook was in use, or the interface was not selected for probing)
        and `unsupported`; and `probed: false` for an interface not selected, once the
        XdpNode schema declares `probed` (an undeclared field would be pruned by the API
        server, and the stored status would never equal the agent's: a write every
        refresh).
        """
        status: dict[str, Any] = {
            "kernelRelease": self.kernel_release,
            "btf": self.btf,
            "headers": {"found": self.headers.found},
            "interfaceCount": len(self.interfaces),
            "interfaces": [],
        }
        if self.bcc_version:
            status["bccVersion"] = self.bcc_version
        if self.headers.path:
            status["headers"]["path"] = self.headers.path
        for iface in self.interfaces:
            item: dict[str, Any] = {
                "name": iface.name,
                "modes": list(iface.modes),
                "attached": [{"mode": a.mode, "progId": a.prog_id} for a in iface.attached],
            }
            if iface.driver:
                item["driver"] = iface.driver
            if extended:
                if iface.kind:
                    item["kind"] = iface.kind
                item["unknownModes"] = list(iface.unknown_modes)
                item["unsupported"] = [
                    {"mode": p.mode, "message": (p.detail or "refused")[:1024]}
                    for p in iface.probes if p.result == UNSUPPORTED
                ]
                if not iface.probed and "probed" in _declared_interface_fields():
                    item["probed"] = False
            status["interfaces"].append(item)
        if extended:
            status["modeSummary"] = self.mode_summary()
        return status


@functools.cache
def _declared_interface_fields() -> frozenset[str]:
    """The fields the XdpNode schema declares for an interface (kube_xdp_api.schema)."""
    from kube_xdp_api.schema import node_status_schema

    return frozenset(node_status_schema()["properties"]["interfaces"]["items"]["properties"])


# --- which interfaces are probed -------------------------------------------------------------


def is_loopback(iface: Interface) -> bool:
    return iface.index == LOOPBACK_IFINDEX or iface.name == "lo"


def interface_selector(pattern: str = DEFAULT_PROBE_PATTERN) -> Callable[[Interface], bool]:
    """iface -> probe it? True when the WHOLE name matches `pattern` (a Python regular
    expression) and the interface is not loopback. Raises ValueError, naming the pattern
    and the regex error, when `pattern` does not compile. "" selects nothing (list only)."""
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid interface regular expression {pattern!r}: {exc}") from None

    def select(iface: Interface) -> bool:
        return not is_loopback(iface) and regex.fullmatch(iface.name) is not None

    select.pattern = pattern  # type: ignore[attr-defined]
    return select


# --- node facts ---------------------------------------------------------------------------


def kernel_release() -> str:
    return os.uname().release


def btf_present() -> bool:
    return os.path.exists(BTF_PATH)


def bcc_version() -> str | None:
    try:
        from .kernel.compile import bcc_version as _v

        return _v()
    except Exception as exc:  # ImportError, or libbcc failing to load
        log.info("bcc not available: %s", exc)
        return None


def find_headers(release: str | None = None, env: Mapping[str, str] | None = None) -> HeadersInfo:
    """Where bcc finds kernel headers, in bcc's own order: $BCC_KERNEL_SOURCE,
    /lib/modules/<release>/build, then the kernel's own /sys/kernel/kheaders.tar.xz."""
    release = release or kernel_release()
    env = os.environ if env is None else env
    source = env.get("BCC_KERNEL_SOURCE")
    if source and os.path.isdir(source):
        return HeadersInfo(True, source)
    build = f"/lib/modules/{release}/build"
    if os.path.isdir(os.path.join(build, "include")):
        return HeadersInfo(True, os.path.realpath(build))
    if os.path.exists(KHEADERS_PATH):
        return HeadersInfo(True, KHEADERS_PATH)
    return HeadersInfo(False, None)


# --- probing modes --------------------------------------------------------------------------


class _Prober:
    """One host-bound trivial program, shared by the native/generic probes of a node."""

    def __init__(self, netlink: Netlink) -> None:
        self.netlink = netlink
        self._host_fd: bpfsys.Fd | None = None

    def close(self) -> None:
        if self._host_fd is not None:
            self._host_fd.close()
            self._host_fd = None

    def host_fd(self) -> bpfsys.Fd:
        if self._host_fd is None:
            self._host_fd = load_pass_program()
        return self._host_fd

    def _attach_detach(self, name: str, fd: int, mode: str) -> ModeProbe:
        try:
            self.netlink.attach(name, fd, mode)
        except HookBusy as exc:
            return ModeProbe(mode, UNKNOWN, f"the hook became busy while probing: {exc.message}", exc.errno)
        except AttachError as exc:
            if exc.reason in ("DriverModeUnsupported", OFFLOAD_UNSUPPORTED):
                return ModeProbe(mode, UNSUPPORTED, exc.kernel_message or exc.message, exc.errno)
            return ModeProbe(mode, UNKNOWN, f"attach failed: {exc.kernel_message or exc.message}", exc.errno)
        try:
            self.netlink.detach(name, mode, expected_prog_fd=fd)
        except KernelError as exc:  # never leave the probe attached silently
            log.error("probe program left attached on %s (%s): %s", name, mode, exc)
            return ModeProbe(mode, SUPPORTED, f"attached, but detaching the probe failed: {exc}", exc.errno)
        return ModeProbe(mode, SUPPORTED)

    def probe(self, iface: Interface, mode: str) -> ModeProbe:
        if mode == "offload":
            try:
                dev_fd = in_netns(self.netlink.netns, lambda: load_pass_program(iface.index))
            except BpfSyscallError as exc:
                return ModeProbe(mode, UNSUPPORTED, f"loading a program bound to {iface.name} fails: "
                                 f"{os.strerror(exc.errno or 0)}", exc.errno)
            with dev_fd:
                return self._attach_detach(iface.name, dev_fd.fd, mode)
        try:
            fd = self.host_fd()
        except BpfSyscallError as exc:
            return ModeProbe(mode, UNKNOWN, f"loading the probe program failed: {exc.message}", exc.errno)
        return self._attach_detach(iface.name, fd.fd, mode)


def _attached(iface: Interface) -> tuple[AttachedProgram, ...]:
    out = []
    for mode in ("offload", "native", "generic"):
        prog = iface.xdp.prog_id_for(mode)
        if prog:
            out.append(AttachedProgram(mode, prog))
    return tuple(out)


def probe_interface(netlink: Netlink, name: str, *, modes: Iterable[str] = PROBE_ORDER,
                    _prober: _Prober | None = None) -> InterfaceInventory:
    """Probe `modes` on one interface (only if its hook is empty; else all unknown)."""
    prober = _prober or _Prober(netlink)
    try:
        iface = netlink.interface(name)
        probes: list[ModeProbe] = []
        for mode in modes:
            if mode not in MODES:
                raise ValueError(f"unknown XDP mode {mode!r}")
            current = netlink.read_xdp(name)  # re-read: a probe must never meet a program
            occupant, occ_mode = current.occupant
            if occupant is not None or current.attached is not None:
                probes.append(ModeProbe(mode, UNKNOWN, f"not probed: the hook holds program {occupant} "
                                                       f"({occ_mode or current.attached})"))
                continue
            probes.append(prober.probe(iface, mode))
        return InterfaceInventory(iface.name, iface.index, iface.driver, iface.kind, tuple(probes),
                                  _attached(netlink.interface(name)))
    finally:
        if _prober is None:
            prober.close()


def probe_node(netlink: Netlink, *, probe: bool = True, previous: NodeInventory | None = None,
               modes: Iterable[str] = PROBE_ORDER, env: Mapping[str, str] | None = None,
               select: Callable[[Interface], bool] | None = None) -> NodeInventory:
    """The node's inventory, interfaces from `netlink`'s namespace.

    `previous`: reuse its probe results for interfaces with the same name, index and
    driver (only `attached` is read again), so a periodic refresh attaches nothing
    on interfaces already probed. `probe=False` reads without attaching (modes unknown).
    `select`: probe only the interfaces it accepts (the agent passes
    `interface_selector(--inventory-interfaces)`: a node with hundreds of pod veths need
    not have each one switched to XDP for a moment); the others are listed with their
    modes unknown and `probed=False`, and nothing is attached or loaded for them. None
    probes every interface.
    """
    release = kernel_release()
    old = {i.name: i for i in previous.interfaces} if previous else {}
    modes = tuple(modes)
    prober = _Prober(netlink)
    interfaces: list[InterfaceInventory] = []
    try:
        for iface in netlink.interfaces():
            before = old.get(iface.name)
            if before and before.index == iface.index and before.driver == iface.driver \
                    and not before.unknown_modes:
                interfaces.append(InterfaceInventory(iface.name, iface.index, iface.driver, iface.kind,
                                                     before.probes, _attached(iface)))
                continue
            if not probe or (select is not None and not select(iface)):
                why = "not probed" if not probe else NOT_SELECTED
                interfaces.append(InterfaceInventory(
                    iface.name, iface.index, iface.driver, iface.kind,
                    tuple(ModeProbe(m, UNKNOWN, why) for m in modes), _attached(iface), probed=False))
                continue
            try:
                interfaces.append(probe_interface(netlink, iface.name, modes=modes, _prober=prober))
            except InterfaceNotFound:
                continue  # went away while we probed
    finally:
        prober.close()
    return NodeInventory(
        kernel_release=release,
        btf=btf_present(),
        bcc_version=bcc_version(),
        headers=find_headers(release, env),
        interfaces=tuple(interfaces),
    )
