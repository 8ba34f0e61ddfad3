"""Interfaces, routes and the XDP hook through rtnetlink (pyroute2), in one network namespace.

`Netlink(netns)` opens an rtnetlink socket in a namespace made with `ip netns add`
(None = the caller's). pyroute2 0.9.7 does this with `IPRoute(netns=name)`: a forked
child enters the namespace, opens the socket and passes its fd back. pyroute2's
default `flags=os.O_CREAT` would CREATE a missing namespace; this module passes
`flags=0` and checks /run/netns/<name> first (NetnsNotFound). The program fds given to
attach/detach are resolved by the kernel in the calling process, whatever the socket's
namespace, so a program loaded here can be attached in any namespace.

XDP hook semantics (verified on the dev kernel, see tests/kernel/test_netlink.py):
- attach without `expected_prog_fd` uses XDP_FLAGS_UPDATE_IF_NOEXIST: it never
  replaces anything. A program in the same mode -> EBUSY; a program in the other of
  native/generic -> EEXIST. Both -> HookBusy naming the program read back on the hook.
- attach with `expected_prog_fd` uses XDP_FLAGS_REPLACE + IFLA_XDP_EXPECTED_FD: the swap
  is atomic (the hook is never empty). A different program on the hook -> EEXIST ->
  HookBusy; an empty hook -> EEXIST -> AttachError(AttachFailed): the expected program
  is gone, the caller must decide to attach fresh.
- A mode change (native <-> generic) cannot be atomic: the kernel refuses two modes at
  once, so the caller detaches then attaches.
- detach = REPLACE with fd -1 and the expected fd: it removes only that program. A
  different program in that mode -> HookBusy, left in place; nothing in that mode ->
  nothing to do (idempotent), the state is returned.
- EOPNOTSUPP / EINVAL for a mode (no native XDP in the driver, offload on a device that
  cannot) -> AttachError(reason DriverModeUnsupported): the caller may fall back.
- After every change the link is READ BACK; the returned XdpState is what the kernel
  reports. An attach whose read-back does not show the program in the asked mode
  raises AttachError.
- EBUSY while the read-back shows the hook EMPTY means the kernel has not finished
  releasing a previous program (e.g. a bpf_link whose last fd was closed is released
  from deferred fput): retried up to BUSY_RETRIES times with exponential backoff from
  BUSY_BACKOFF_S (~0.3 s in all), then HookBusy.

Errors are mapped on `NetlinkError.code` (errno), never on the message; the kernel's
extended-ack text (ext_ack=True) is kept in the exception for humans.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import re
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from . import bpfsys
from .errors import AttachError, BpfSyscallError, HookBusy, InterfaceNotFound, KernelError, NetnsNotFound

log = logging.getLogger(__name__)

# linux/if_link.h
XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_HW_MODE = 1 << 3
XDP_FLAGS_REPLACE = 1 << 4

MODES = ("native", "generic", "offload")
MODE_FLAGS = {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE, "offload": XDP_FLAGS_HW_MODE}

# IFLA_XDP_ATTACHED, as pyroute2 decodes it (names) or as raw numbers (XDP_ATTACHED_*).
_ATTACHED = {
    None: None,
    "none": None,
    0: None,
    "xdp": "native",
    1: "native",
    "xdpgeneric": "generic",
    2: "generic",
    "xdpoffload": "offload",
    3: "offload",
    "xdpmulti": "multi",
    4: "multi",
}

BUSY_RETRIES = 5
BUSY_BACKOFF_S = 0.02

NETNS_DIR = "/run/netns"
_NETNS_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_IFNAME_RE = re.compile(r"[^/\s:]{1,15}")

# ethtool ETHTOOL_GDRVINFO through the SIOCETHTOOL ioctl (linux/ethtool.h, sockios.h).
_SIOCETHTOOL = 0x8946
_ETHTOOL_GDRVINFO = 0x3
_DRVINFO_SIZE = 196  # struct ethtool_drvinfo


@dataclass(frozen=True)
class XdpState:
    """The XDP hook of one interface, as read back from IFLA_XDP.

    `attached`: None, 'native', 'generic', 'offload' or 'multi' (native+offload).
    `prog_id`: the program when exactly one mode is attached, else None.
    """

    attached: str | None = None
    prog_id: int | None = None
    drv_prog_id: int | None = None
    skb_prog_id: int | None = None
    hw_prog_id: int | None = None

    def prog_id_for(self, mode: str) -> int | None:
        """The program attached in `mode` ('native', 'generic' or 'offload'), or None."""
        _check_mode(mode)
        return {"native": self.drv_prog_id, "generic": self.skb_prog_id, "offload": self.hw_prog_id}[mode]

    @property
    def occupant(self) -> tuple[int | None, str | None]:
        """(prog id, mode) of a program on the hook, native/generic first; (None, None) when empty."""
        for mode in ("native", "generic", "offload"):
            prog = self.prog_id_for(mode)
            if prog:
                return prog, mode
        return None, None


@dataclass(frozen=True)
class Interface:
    name: str
    index: int
    mac: str | None
    oper_state: str  # 'up', 'down', 'unknown', 'lowerlayerdown', ... (IFLA_OPERSTATE, lower case)
    kind: str | None  # IFLA_INFO_KIND ('veth', 'bridge', ...); None for physical NICs
    driver: str | None  # ethtool driver name ('veth', 'virtio_net', ...); None when not reported
    xdp: XdpState


def _check_mode(mode: str) -> int:
    try:
        return MODE_FLAGS[mode]
    except KeyError:
        raise ValueError(f"unknown XDP mode {mode!r}: one of {', '.join(MODES)}") from None


def xdp_state_from_link(link: object) -> XdpState:
    """Decode IFLA_XDP of a pyroute2 link message."""
    raw = link.get(("xdp", "xdp_attached"))  # type: ignore[attr-defined]
    attached = _ATTACHED.get(raw, f"unknown({raw})")

    def prog(attr: str) -> int | None:
        value = link.get(("xdp", attr))  # type: ignore[attr-defined]
        return int(value) if value else None

    return XdpState(
        attached=attached,
        prog_id=prog("xdp_prog_id"),
        drv_prog_id=prog("xdp_drv_prog_id"),
        skb_prog_id=prog("xdp_skb_prog_id"),
        hw_prog_id=prog("xdp_hw_prog_id"),
    )


def _prog_id_of(fd: int) -> int:
    return bpfsys.prog_info(fd).id


def _extack(exc: NetlinkError) -> str | None:
    text = exc.args[1] if len(exc.args) > 1 else None
    return str(text) if text and text != os.strerror(exc.code) else None


class Netlink:
    """rtnetlink in one namespace. Use as a context manager, or call close()."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        if netns is not None:
            if not _NETNS_RE.fullmatch(netns) or netns in (".", ".."):
                raise NetnsNotFound(f"invalid network namespace name {netns!r}", netns=netns)
            if not os.path.exists(os.path.join(NETNS_DIR, netns)):
                raise NetnsNotFound(f"network namespace {netns!r} does not exist", netns=netns)
        try:
            if netns is None:
                self._ipr = IPRoute(ext_ack=True)
            else:
                self._ipr = IPRoute(netns=netns, flags=0, ext_ack=True)
        except FileNotFoundError as exc:
            raise NetnsNotFound(f"network namespace {netns!r} does not exist", netns=netns) from exc
        self._ioctl_sock: socket.socket | None = None

    def close(self) -> None:
        self._ipr.close()
        if self._ioctl_sock is not None:
            self._ioctl_sock.close()
            self._ioctl_sock = None

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reading ----------------------------------------------------------------------

    def _ctx(self, **context: Any) -> dict[str, Any]:
        return {"netns": self.netns, **context}

    def _links(self) -> Iterator[object]:
        try:
            yield from self._ipr.link("dump")
        except NetlinkError as exc:
            raise KernelError(
                "listing interfaces failed", errno=exc.code, **self._ctx()
            ) from exc

    def _link(self, name: str) -> object:
        if not isinstance(name, str) or not _IFNAME_RE.fullmatch(name):
            raise InterfaceNotFound(f"{name!r} is not an interface name", interface=str(name), netns=self.netns)
        try:
            links = self._ipr.link("get", ifname=name)
        except NetlinkError as exc:
            if exc.code in (errno.ENODEV, errno.ENOENT):
                raise InterfaceNotFound(
                    f"no interface {name!r}", interface=name, netns=self.netns
                ) from exc
            raise KernelError(
                f"reading interface {name!r} failed", errno=exc.code, **self._ctx(interface=name)
            ) from exc
        if not links:
            raise InterfaceNotFound(f"no interface {name!r}", interface=name, netns=self.netns)
        return links[0]

    def _driver(self, name: str) -> str | None:
        """The ethtool driver name (ETHTOOL_GDRVINFO), None when the device has none."""
        if self._ioctl_sock is None:
            if self.netns is None:
                self._ioctl_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            else:
                from pyroute2.netns import create_socket

                self._ioctl_sock = create_socket(self.netns, socket.AF_INET, socket.SOCK_DGRAM, flags=0)
        drvinfo = ctypes.create_string_buffer(struct.pack("I", _ETHTOOL_GDRVINFO), _DRVINFO_SIZE)
        ifreq = struct.pack("16sP", name.encode(), ctypes.addressof(drvinfo)) + b"\0" * 16
        try:
            fcntl.ioctl(self._ioctl_sock.fileno(), _SIOCETHTOOL, ifreq)
        except OSError:
            return None
        driver = drvinfo.raw[4:36].split(b"\0", 1)[0].decode("ascii", "replace")
        return driver or None

    def _interface(self, link: object) -> Interface:
        name = link.get("ifname")  # type: ignore[attr-defined]
        return Interface(
            name=name,
            index=link["index"],  # type: ignore[index]
            mac=link.get("address"),  # type: ignore[attr-defined]
            oper_state=str(link.get("operstate") or "unknown").lower(),  # type: ignore[attr-defined]
            kind=link.get(("linkinfo", "kind")),  # type: ignore[attr-defined]
            driver=self._driver(name),
            xdp=xdp_state_from_link(link),
        )

    def interfaces(self) -> list[Interface]:
        """Every interface of the namespace, by index."""
        return sorted((self._interface(link) for link in self._links()), key=lambda i: i.index)

    def interface(self, name: str) -> Interface:
        return self._interface(self._link(name))

    def read_xdp(self, name: str) -> XdpState:
        return xdp_state_from_link(self._link(name))

    def default_route_interface(self) -> str | None:
        """The interface of the default route (main table; IPv4 first, then IPv6), by lowest metric."""
        for family in (socket.AF_INET, socket.AF_INET6):
            try:
                routes = self._ipr.route("dump", family=family, table=254, dst_len=0)
            except NetlinkError as exc:
                raise KernelError(
                    "reading routes failed", errno=exc.code, **self._ctx()
                ) from exc
            best: tuple[int, int] | None = None
            for route in routes:
                if route["dst_len"] != 0 or route.get("table") != 254 or route["type"] != 1:  # RTN_UNICAST
                    continue
                oif = route.get("oif")
                if oif is None:
                    hops = route.get("multipath") or []
                    oif = hops[0].get("oif") if hops else None
                if oif is None:
                    continue
                metric = route.get("priority") or 0
                if best is None or metric < best[0]:
                    best = (metric, oif)
            if best is not None:
                links = self._ipr.link("get", index=best[1])
                return links[0].get("ifname") if links else None
        return None

    # --- the XDP hook -------------------------------------------------------------------

    def _set_xdp(self, index: int, fd: int, flags: int, expected_fd: int | None) -> None:
        attrs: list[tuple[str, int]] = [("IFLA_XDP_FD", fd), ("IFLA_XDP_FLAGS", flags)]
        if expected_fd is not None:
            attrs.append(("IFLA_XDP_EXPECTED_FD", expected_fd))
        # The nested form: `xdp_flags=` as a keyword is silently dropped by pyroute2.
        self._ipr.link("set", index=index, xdp={"attrs": attrs})

    def attach(self, name: str, prog_fd: int, mode: str, *, expected_prog_fd: int | None = None) -> XdpState:
        """Attach `prog_fd` in `mode`; with `expected_prog_fd`, atomically replace that program.

        Returns the state read back, which shows the program in `mode`.
        """
        mode_flag = _check_mode(mode)
        link = self._link(name)
        index = link["index"]  # type: ignore[index]
        ctx = self._ctx(interface=name, mode=mode)
        try:
            wanted_id = _prog_id_of(prog_fd)
        except BpfSyscallError as exc:
            raise AttachError(f"fd {prog_fd} is not a BPF program", errno=exc.errno, **ctx) from exc
        if expected_prog_fd is None:
            flags = XDP_FLAGS_UPDATE_IF_NOEXIST | mode_flag
        else:
            flags = XDP_FLAGS_REPLACE | mode_flag
        for attempt in range(BUSY_RETRIES + 1):
            try:
                self._set_xdp(index, prog_fd, flags, expected_prog_fd)
                break
            except NetlinkError as exc:
                code, kmsg = exc.code, _extack(exc)
                if code == errno.ENODEV:
                    raise InterfaceNotFound(f"interface {name!r} vanished", **ctx) from exc
                if code in (errno.EBUSY, errno.EEXIST):
                    state = self.read_xdp(name)
                    occupant, occ_mode = state.occupant
                    if occupant is None and code == errno.EBUSY and attempt < BUSY_RETRIES:
                        time.sleep(BUSY_BACKOFF_S * 2**attempt)  # hook still being released
                        continue
                    if occupant is None:
                        if expected_prog_fd is not None:
                            raise AttachError(
                                "the program to replace is no longer on the hook (it is empty)",
                                errno=code, kernel_message=kmsg, **ctx,
                            ) from exc
                        raise HookBusy(
                            "the XDP hook stayed busy although no program shows on it",
                            errno=code, kernel_message=kmsg, **ctx,
                        ) from exc
                    raise HookBusy(
                        f"the XDP hook holds program {occupant} ({occ_mode}), which is not ours to replace",
                        prog_id=occupant, attached_mode=occ_mode, errno=code, kernel_message=kmsg,
                        **ctx,
                    ) from exc
                if code in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise AttachError(
                        f"the driver refused XDP in {mode} mode" + (f": {kmsg}" if kmsg else ""),
                        reason="DriverModeUnsupported", errno=code, kernel_message=kmsg,
                        **ctx,
                    ) from exc
                raise AttachError(
                    f"attach failed: {kmsg or os.strerror(code)}", errno=code, kernel_message=kmsg,
                    **ctx,
                ) from exc
        state = self.read_xdp(name)
        if state.prog_id_for(mode) != wanted_id:
            raise AttachError(
                f"attach not confirmed: read back {state.prog_id_for(mode)} in {mode} mode, "
                f"expected program {wanted_id}",
                **ctx,
            )
        return state

    def detach(self, name: str, mode: str, *, expected_prog_fd: int) -> XdpState:
        """Remove the program in `mode` only if it is `expected_prog_fd`'s; idempotent.

        Returns the state read back afterwards.
        """
        mode_flag = _check_mode(mode)
        link = self._link(name)
        ctx = self._ctx(interface=name, mode=mode)
        try:
            self._set_xdp(link["index"], -1, XDP_FLAGS_REPLACE | mode_flag, expected_prog_fd)  # type: ignore[index]
        except NetlinkError as exc:
            code, kmsg = exc.code, _extack(exc)
            if code == errno.ENODEV:
                raise InterfaceNotFound(f"interface {name!r} vanished", **ctx) from exc
            if code != errno.EEXIST:
                raise AttachError(
                    f"detach failed: {kmsg or os.strerror(code)}", reason="DetachFailed", errno=code,
                    kernel_message=kmsg, **ctx,
                ) from exc
            state = self.read_xdp(name)
            foreign = state.prog_id_for(mode)
            if foreign is not None:
                raise HookBusy(
                    f"the XDP hook holds program {foreign} ({mode}), not ours: left in place",
                    prog_id=foreign, attached_mode=mode, errno=code, kernel_message=kmsg,
                    **ctx,
                ) from exc
            return state  # nothing in that mode: already detached
        return self.read_xdp(name)
