"""The node's XDP capabilities: what the agent writes in XdpNode.status.

`probe_node(netlink)` returns a `NodeInventory`: kernel release, BTF present
(/sys/kernel/btf/vmlinux), bcc version, where bcc finds kernel headers (or that it
finds none), whether the kernel has the netdev family, and per interface its driver
(ethtool), its `xdp-features` and the XDP modes it supports.

Where the modes come from (`InterfaceInventory.source`, the status's `modesFrom`):
- `xdpFeatures` (the default, kernel 6.3+): READ from the kernel's netdev
  generic-netlink family (kernel/netdev.py), for every interface, without touching it:
  generic always, native when the driver reports `basic`, offload with `hw-offload`.
- `probe`: a trivial program (`return XDP_PASS`, loaded once with bpf(2), no compiler)
  attached in each mode and taken off again, on interfaces whose XDP hook is EMPTY only,
  through attach.place (pin=False: an unpinned link, or netlink where links are refused,
  classified by errno as every attach is). Only where the kernel has no netdev family
  (before 6.3), or when the operator opts in (`probe="always"`: the agent's
  --probe-xdp-modes, chart value agent.probeXdpModes): attaching native XDP makes many
  drivers reconfigure their rings, a short link reset on e.g. ixgbe, i40e, mlx5. Each
  interface is probed once: `previous` (the earlier inventory, or after a restart what
  the agent published in its XdpNode: `previous_from_status`) is reused for interfaces
  whose name, index and driver did not change. An interface that already holds a
  program is never probed: its modes are reported unknown.
- `none`: not known (not selected for probing, or the features could not be read).

Which interfaces are probed (`interface_selector`, the agent's --inventory-interfaces):
on a real node most interfaces are pods' veths and overlay devices, created all the time;
switching each one to XDP for a moment, on an interface carrying a pod's traffic, is
intrusive and tells nothing worth knowing. By default names starting like the usual
container and overlay devices (`DEFAULT_SKIPPED_PREFIXES`) are skipped; loopback is never
probed. The selection is by NAME, never by link kind: the rig's simulated NICs are veths
named eth0, eth1, hp0... The selection limits PROBING only: xdp-features are read for
every interface, since reading them touches nothing.

Works in a named network namespace through `Netlink(netns)` (the rig's simulated nodes):
the features are read, and the probes attached, in that namespace.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .kernel import bpfsys
from .kernel.attach import Node, NoModeAttached, place, remove_held
from .kernel.errors import AttachError, BpfSyscallError, HookBusy, InterfaceNotFound, KernelError
from .kernel.link import XdpLinks
from .kernel.netdev import DeviceFeatures, modes_of
from .kernel.netlink import MODES, Interface, Netlink
from .kernel.netns import in_netns
from .kernel.offload import OFFLOAD_UNSUPPORTED, load_pass_program

log = logging.getLogger(__name__)

BTF_PATH = "/sys/kernel/btf/vmlinux"
KHEADERS_PATH = "/sys/kernel/kheaders.tar.xz"
PROBE_ORDER = ("generic", "native", "offload")  # cheapest and least disruptive first
SUPPORTED, UNSUPPORTED, UNKNOWN = "supported", "unsupported", "unknown"
API_ORDER = ("offload", "native", "generic")
# Where an interface's modes come from (status: modesFrom).
FROM_FEATURES, FROM_PROBE, FROM_NONE = "xdpFeatures", "probe", "none"
# When to attach-probe (probe_node's `probe`): only where the netdev family is missing
# (the default), always (the operator's opt-in), never.
PROBE_AUTO, PROBE_ALWAYS, PROBE_NEVER = "auto", "always", "never"

# Name prefixes of container and overlay interfaces (pods' veths, CNI bridges and tunnels):
# not probed by default.
DEFAULT_SKIPPED_PREFIXES = ("veth", "cali", "lxc", "cilium_", "flannel", "cni", "docker", "vxlan", "tunl",
                            "kube-", "genev", "weave", "br-", "virbr")
# The default --inventory-interfaces: any name but those.
DEFAULT_PROBE_PATTERN = "(?!(?:" + "|".join(re.escape(p) for p in DEFAULT_SKIPPED_PREFIXES) + ")).+"
LOOPBACK_IFINDEX = 1     # the kernel's loopback device has this index in every namespace
NOT_SELECTED = "not probed: the name does not match the agent's --inventory-interfaces"
NOT_PROBED = "not probed: the xdp-features could not be read and probing is off"


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
    probes: tuple[ModeProbe, ...] = ()  # the attach probes (source 'probe'), or why none ('none')
    attached: tuple[AttachedProgram, ...] = ()
    probed: bool = True  # False: not selected for probing (interface_selector); with source 'none'
    features: tuple[str, ...] | None = None  # xdp-features (netdev family); None: not read
    source: str = FROM_PROBE  # where `modes` come from: xdpFeatures | probe | none

    @property
    def modes(self) -> tuple[str, ...]:
        """Supported modes, in the API's order (offload, native, generic)."""
        if self.source == FROM_FEATURES:
            return modes_of(self.features or ())
        ok = {p.mode for p in self.probes if p.result == SUPPORTED}
        return tuple(m for m in API_ORDER if m in ok)

    @property
    def unknown_modes(self) -> tuple[str, ...]:
        if self.source == FROM_FEATURES:
            return ()
        if self.source == FROM_NONE:
            return API_ORDER
        bad = {p.mode for p in self.probes if p.result == UNKNOWN}
        return tuple(m for m in API_ORDER if m in bad)

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
    netdev_family: bool | None = None  # the kernel reports xdp-features; None: not asked

    def interface(self, name: str) -> InterfaceInventory | None:
        return next((i for i in self.interfaces if i.name == name), None)

    def mode_summary(self) -> str:
        """How many interfaces support each mode, e.g. "offload=1,native=3,generic=4"
        (order offload, native, generic; modes no interface supports are left out; "none")."""
        counts = {m: sum(m in i.modes for i in self.interfaces) for m in API_ORDER}
        return ",".join(f"{m}={n}" for m, n in counts.items() if n) or "none"

    def to_status(self) -> dict[str, Any]:
        """The XdpNode status fields this inventory fills (api schema.node_status_schema).

        A value not known (no bcc version, no driver) is left out rather than written as
        an empty string. Per interface: `modes` and where they come from (`modesFrom`),
        `xdpFeatures` when read, `unknownModes`, `unsupported` (probed and refused, with
        the kernel's words), `probed` (true: attach-probed; false: not selected for
        probing) when it applies, and `ifindex` (what a restart compares before reusing
        a probe).
        """
        status: dict[str, Any] = {
            "kernelRelease": self.kernel_release,
            "btf": self.btf,
            "headers": {"found": self.headers.found},
            "interfaceCount": len(self.interfaces),
            "interfaces": [],
            "modeSummary": self.mode_summary(),
        }
        if self.bcc_version:
            status["bccVersion"] = self.bcc_version
        if self.headers.path:
            status["headers"]["path"] = self.headers.path
        if self.netdev_family is not None:
            status["netdevFamily"] = self.netdev_family
        for iface in self.interfaces:
            item: dict[str, Any] = {
                "name": iface.name,
                "ifindex": iface.index,
                "modes": list(iface.modes),
                "modesFrom": iface.source,
                "attached": [{"mode": a.mode, "progId": a.prog_id} for a in iface.attached],
                "unknownModes": list(iface.unknown_modes),
                "unsupported": [
                    {"mode": p.mode, "message": (p.detail or "refused")[:1024]}
                    for p in iface.probes if p.result == UNSUPPORTED
                ],
            }
            if iface.driver:
                item["driver"] = iface.driver
            if iface.kind:
                item["kind"] = iface.kind
            if iface.features is not None:
                item["xdpFeatures"] = list(iface.features)
            if iface.source == FROM_PROBE:
                item["probed"] = True
            elif not iface.probed:
                item["probed"] = False
            status["interfaces"].append(item)
        return status


def previous_from_status(status: Mapping[str, Any] | None) -> NodeInventory | None:
    """The attach probes an agent published in its XdpNode (`to_status`), as an inventory
    `probe_node(previous=...)` reuses: after a restart, interfaces probed before (same
    name, index, driver) are not probed again. Only probed interfaces are taken."""
    if not status or not status.get("interfaces"):
        return None
    interfaces = []
    for item in status["interfaces"]:
        if item.get("modesFrom") != FROM_PROBE or not isinstance(item.get("ifindex"), int):
            continue
        refused = {u.get("mode"): u.get("message", "") for u in item.get("unsupported") or []}
        unknown, supported = set(item.get("unknownModes") or []), set(item.get("modes") or [])
        probes = []
        for mode in PROBE_ORDER:
            if mode in supported:
                probes.append(ModeProbe(mode, SUPPORTED))
            elif mode in refused:
                probes.append(ModeProbe(mode, UNSUPPORTED, refused[mode]))
            elif mode not in unknown:
                continue
            else:
                probes.append(ModeProbe(mode, UNKNOWN))
        interfaces.append(InterfaceInventory(item["name"], item["ifindex"], item.get("driver"), item.get("kind"),
                                             tuple(probes), source=FROM_PROBE))
    if not interfaces:
        return None
    return NodeInventory(kernel_release=status.get("kernelRelease", ""), btf=bool(status.get("btf")),
                         bcc_version=status.get("bccVersion"), headers=HeadersInfo(False),
                         interfaces=tuple(interfaces))


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
    """Attach probes through attach.place (pin=False), one host-bound trivial program shared
    by the native/generic probes of a node; offload loads one bound to the interface."""

    def __init__(self, netlink: Netlink) -> None:
        self.netlink = netlink
        self.node = Node(netlink, XdpLinks(netlink.netns), None)
        self._host_fd: bpfsys.Fd | None = None

    def close(self) -> None:
        if self._host_fd is not None:
            self._host_fd.close()
            self._host_fd = None

    def host_fd(self) -> bpfsys.Fd:
        if self._host_fd is None:
            self._host_fd = load_pass_program()
        return self._host_fd

    def _program(self, iface: Interface, mode: str) -> bpfsys.Fd:
        """The probe program for `mode` (owned by the caller); a device that refuses a bound
        program refuses offload (AttachError OffloadUnsupported, with the errno)."""
        if mode != "offload":
            return self.host_fd()
        try:
            return in_netns(self.netlink.netns, lambda: load_pass_program(iface.index))
        except BpfSyscallError as exc:
            raise AttachError(f"loading a program bound to {iface.name} fails: {os.strerror(exc.errno or 0)}",
                              reason=OFFLOAD_UNSUPPORTED, errno=exc.errno, interface=iface.name,
                              mode=mode) from exc

    def probe(self, iface: Interface, mode: str) -> ModeProbe:
        try:
            prog = self._program(iface, mode)
        except AttachError as exc:
            return ModeProbe(mode, UNSUPPORTED, exc.message, exc.errno)
        except BpfSyscallError as exc:
            return ModeProbe(mode, UNKNOWN, f"loading the probe program failed: {exc.message}", exc.errno)
        try:
            return self._attach_detach(iface, mode, prog)
        finally:
            if prog is not self._host_fd:
                prog.close()

    def _attach_detach(self, iface: Interface, mode: str, prog: bpfsys.Fd) -> ModeProbe:
        prog_id = self.node.links.prog_id(prog.fd)
        try:
            placed = place(self.node, program="inventory-probe", interface=iface.name, modes=(mode,),
                           prog_fd_for=lambda _mode: self.node.links.open_prog(prog_id), pin=False)
        except NoModeAttached as exc:
            refusal = exc.refused[0]
            return ModeProbe(mode, UNSUPPORTED, refusal.message, refusal.errno)
        except HookBusy as exc:
            return ModeProbe(mode, UNKNOWN, f"the hook became busy while probing: {exc.message}", exc.errno)
        except AttachError as exc:
            return ModeProbe(mode, UNKNOWN, f"attach failed: {exc.kernel_message or exc.message}", exc.errno)
        try:
            remove_held(self.node, placed, prog_fd=prog.fd)
        except KernelError as exc:  # never leave the probe attached silently
            log.error("probe program left attached on %s (%s): %s", iface.name, mode, exc)
            return ModeProbe(mode, SUPPORTED, f"attached, but detaching the probe failed: {exc}", exc.errno)
        return ModeProbe(mode, SUPPORTED)


def _attached(iface: Interface) -> tuple[AttachedProgram, ...]:
    out = []
    for mode in API_ORDER:
        prog = iface.xdp.prog_id_for(mode)
        if prog:
            out.append(AttachedProgram(mode, prog))
    return tuple(out)


def probe_interface(netlink: Netlink, name: str, *, modes: Iterable[str] = PROBE_ORDER,
                    features: DeviceFeatures | None = None, _prober: _Prober | None = None) -> InterfaceInventory:
    """Attach-probe `modes` on one interface (only while its hook is empty; else unknown)."""
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
                                  _attached(netlink.interface(name)),
                                  features=features.features if features else None, source=FROM_PROBE)
    finally:
        if _prober is None:
            prober.close()


def read_features(netlink: Netlink) -> tuple[dict[int, DeviceFeatures] | None, bool | None]:
    """(ifindex -> xdp-features, whether the kernel has the netdev family). A failed read
    (not a missing family) is logged and gives ({}, None): modes unknown, nothing probed
    by default (a read error is no reason to reconfigure NICs)."""
    try:
        features = netlink.xdp_features()
    except KernelError as exc:
        log.warning("reading xdp-features failed, interfaces' modes unknown: %s", exc)
        return {}, None
    return features, features is not None


def _interface_inventory(netlink: Netlink, iface: Interface, *, dev: DeviceFeatures | None,
                         before: InterfaceInventory | None, attach_probe: bool,
                         select: Callable[[Interface], bool] | None, modes: tuple[str, ...],
                         prober: _Prober) -> InterfaceInventory | None:
    """One interface's inventory (see probe_node); None when it went away while probed."""
    listed, source = (dev.features, FROM_FEATURES) if dev is not None else (None, FROM_NONE)
    if not attach_probe:
        return InterfaceInventory(iface.name, iface.index, iface.driver, iface.kind,
                                  () if dev is not None else tuple(ModeProbe(m, UNKNOWN, NOT_PROBED) for m in modes),
                                  _attached(iface), features=listed, source=source)
    if before and before.source == FROM_PROBE and before.index == iface.index \
            and before.driver == iface.driver and not before.unknown_modes:
        return InterfaceInventory(iface.name, iface.index, iface.driver, iface.kind, before.probes, _attached(iface),
                                  features=listed)
    if select is not None and not select(iface):
        return InterfaceInventory(iface.name, iface.index, iface.driver, iface.kind,
                                  tuple(ModeProbe(m, UNKNOWN, NOT_SELECTED) for m in modes), _attached(iface),
                                  probed=False, features=listed, source=source)
    try:
        return probe_interface(netlink, iface.name, modes=modes, features=dev, _prober=prober)
    except InterfaceNotFound:
        return None  # went away while we probed


def probe_node(netlink: Netlink, *, probe: str = PROBE_AUTO, previous: NodeInventory | None = None,
               modes: Iterable[str] = PROBE_ORDER, env: Mapping[str, str] | None = None,
               select: Callable[[Interface], bool] | None = None,
               features: Callable[[Netlink], tuple[dict[int, DeviceFeatures] | None, bool | None]] = read_features,
               ) -> NodeInventory:
    """The node's inventory, interfaces from `netlink`'s namespace.

    xdp-features are read for every interface (netdev family). `probe`: 'auto' attach-probes
    only when the kernel has no netdev family; 'always' (the operator's opt-in) probes
    anyway, the probe's modes then win; 'never' attaches nothing. `select`: which
    interfaces may be probed (the agent passes `interface_selector(--inventory-interfaces)`);
    None: every one. `previous`: reuse its probe results for interfaces with the same
    name, index and driver and no mode left unknown (only `attached` is read again), so a
    periodic refresh, or a restart given `previous_from_status`, attaches nothing on
    interfaces already probed.
    """
    if probe not in (PROBE_AUTO, PROBE_ALWAYS, PROBE_NEVER):
        raise ValueError(f"probe must be one of auto, always, never: got {probe!r}")
    release = kernel_release()
    old = {i.name: i for i in previous.interfaces} if previous else {}
    modes = tuple(modes)
    by_index, family = features(netlink)
    attach_probe = probe == PROBE_ALWAYS or (probe == PROBE_AUTO and by_index is None)
    prober = _Prober(netlink)
    interfaces: list[InterfaceInventory] = []
    try:
        for iface in netlink.interfaces():
            found = _interface_inventory(netlink, iface, dev=(by_index or {}).get(iface.index),
                                         before=old.get(iface.name), attach_probe=attach_probe, select=select,
                                         modes=modes, prober=prober)
            if found is not None:
                interfaces.append(found)
    finally:
        prober.close()
    return NodeInventory(
        kernel_release=release,
        btf=btf_present(),
        bcc_version=bcc_version(),
        headers=find_headers(release, env),
        interfaces=tuple(interfaces),
        netdev_family=family,
    )
