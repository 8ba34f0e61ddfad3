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
- A hook held by a bpf_link (link.py) refuses every netlink change in the link's mode:
  attach, REPLACE and detach all fail with EBUSY ("Can't replace active BPF XDP link"),
  whatever the expected fd -> HookBusy naming the program. Only attach.py changes hooks:
  these two methods are its netlink path.
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

Reading links (`interfaces()`, the agent's most frequent read: every resync and every
XdpNode refresh; `interface(name)` and every attach's read-back) does not go through
pyroute2: pyroute2 decodes every attribute of every link in Python (~0.4 ms a link), of
which the agent needs five. It is RTM_GETLINK (a dump, or one link by IFLA_IFNAME) on a
plain rtnetlink socket of the same namespace, with RTEXT_FILTER_SKIP_STATS, decoded here
(`decode_link`: name, index, address, operstate, IFLA_INFO_KIND, IFLA_XDP; unknown
attributes skipped): one decoder of IFLA_XDP for every read (tests/kernel/test_netlink.py
checks it against iproute2's). A dump the kernel marks NLM_F_DUMP_INTR (links changed
meanwhile) is read again, up to DUMP_RETRIES times. Changes (attach, detach) go through
pyroute2.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import itertools
import logging
import os
import re
import socket
import struct
import time
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

# IFLA_XDP_ATTACHED (XDP_ATTACHED_*, linux/if_link.h) -> mode; None: nothing attached.
_ATTACHED = {None: None, 0: None, 1: "native", 2: "generic", 3: "offload", 4: "multi"}

BUSY_RETRIES = 5
BUSY_BACKOFF_S = 0.02

NETNS_DIR = "/run/netns"
_NETNS_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_IFNAME_RE = re.compile(r"[^/\s:\x00]{1,15}")   # the kernel's dev_valid_name, and no NUL

# rtnetlink (linux/netlink.h, linux/rtnetlink.h, linux/if_link.h): what the link dump uses.
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP, NLM_F_DUMP_INTR = 0x1, 0x300, 0x10
RTM_NEWLINK, RTM_GETLINK = 16, 18
IFLA_ADDRESS, IFLA_IFNAME, IFLA_OPERSTATE, IFLA_LINKINFO, IFLA_EXT_MASK, IFLA_XDP = 1, 3, 16, 18, 29, 43
IFLA_INFO_KIND = 1
IFLA_XDP_ATTACHED, IFLA_XDP_PROG_ID = 2, 4
IFLA_XDP_DRV_PROG_ID, IFLA_XDP_SKB_PROG_ID, IFLA_XDP_HW_PROG_ID = 5, 6, 7
RTEXT_FILTER_SKIP_STATS = 1 << 3
NLA_TYPE_MASK = 0x3FFF            # without NLA_F_NESTED / NLA_F_NET_BYTEORDER
OPER_STATES = ("unknown", "notpresent", "down", "lowerlayerdown", "testing", "dormant", "up")  # IF_OPER_*
_NLMSGHDR = struct.Struct("=IHHII")          # len, type, flags, seq, pid
_IFINFOMSG = struct.Struct("=BxHiII")        # family, (pad), type, index, flags, change
_RTATTR = struct.Struct("=HH")               # len, type
_U32 = struct.Struct("=I")
_I32 = struct.Struct("=i")
DUMP_RETRIES = 3
DUMP_TIMEOUT_S = 10.0
DUMP_RECV_BYTES = 1 << 16        # the kernel sends dump batches of at most 32 KiB

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


class DumpError(Exception):
    """The kernel answered a dump with an error (`errno`), or with bytes that do not parse."""

    def __init__(self, message: str, errno_: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno_


@dataclass(frozen=True)
class LinkInfo:
    """One RTM_NEWLINK message, decoded: what `Interface` holds except the driver (ethtool)."""

    index: int
    name: str
    mac: str | None
    oper_state: str
    kind: str | None
    xdp: XdpState


def rtattrs(buf: bytes | memoryview, start: int = 0, end: int | None = None) -> dict[int, memoryview]:
    """type (flags masked) -> payload of the netlink attributes in buf[start:end]; the
    last of a repeated type wins. A length running past the end is a DumpError."""
    view = memoryview(buf)
    end = len(view) if end is None else end
    out: dict[int, memoryview] = {}
    pos = start
    while pos + _RTATTR.size <= end:
        length, kind = _RTATTR.unpack_from(view, pos)
        if length < _RTATTR.size or pos + length > end:
            raise DumpError(f"malformed netlink attribute at byte {pos}: length {length}, {end - pos} bytes left")
        out[kind & NLA_TYPE_MASK] = view[pos + _RTATTR.size:pos + length]
        pos += (length + 3) & ~3
    return out


def _string(value: memoryview | None) -> str | None:
    return bytes(value).split(b"\0", 1)[0].decode("utf-8", "replace") if value is not None else None


def _u32(value: memoryview | None) -> int | None:
    return _U32.unpack_from(value)[0] if value is not None and len(value) >= 4 else None


def xdp_state_from_attrs(xdp: memoryview | None) -> XdpState:
    """Decode the payload of IFLA_XDP (None: the link has none, nothing attached)."""
    attrs = rtattrs(xdp) if xdp is not None else {}
    raw = attrs.get(IFLA_XDP_ATTACHED)
    code = raw[0] if raw is not None and len(raw) else None
    attached = _ATTACHED.get(code, f"unknown({code})")

    def prog(kind: int) -> int | None:
        return _u32(attrs.get(kind)) or None

    return XdpState(attached=attached, prog_id=prog(IFLA_XDP_PROG_ID), drv_prog_id=prog(IFLA_XDP_DRV_PROG_ID),
                    skb_prog_id=prog(IFLA_XDP_SKB_PROG_ID), hw_prog_id=prog(IFLA_XDP_HW_PROG_ID))


def decode_link(payload: bytes | memoryview) -> LinkInfo:
    """An RTM_NEWLINK message after its nlmsghdr: ifinfomsg, then attributes."""
    if len(payload) < _IFINFOMSG.size:
        raise DumpError(f"RTM_NEWLINK of {len(payload)} bytes: shorter than ifinfomsg")
    _family, _type, index, _flags, _change = _IFINFOMSG.unpack_from(payload)
    attrs = rtattrs(payload, _IFINFOMSG.size)
    name = _string(attrs.get(IFLA_IFNAME))
    if not name:
        raise DumpError(f"RTM_NEWLINK of ifindex {index} without IFLA_IFNAME")
    address = attrs.get(IFLA_ADDRESS)
    oper = attrs.get(IFLA_OPERSTATE)
    code = oper[0] if oper is not None and len(oper) else 0
    info = attrs.get(IFLA_LINKINFO)
    kind = _string(rtattrs(info).get(IFLA_INFO_KIND)) if info is not None else None
    return LinkInfo(index=index, name=name,
                    mac=":".join(f"{b:02x}" for b in bytes(address)) if address is not None and len(address) else None,
                    oper_state=OPER_STATES[code] if code < len(OPER_STATES) else "unknown",
                    kind=kind or None, xdp=xdp_state_from_attrs(attrs.get(IFLA_XDP)))


def _rtattr(kind: int, value: bytes) -> bytes:
    return _RTATTR.pack(_RTATTR.size + len(value), kind) + value + b"\0" * (-len(value) % 4)


def _getlink(seq: int, flags: int, *attrs: bytes) -> bytes:
    body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + b"".join(attrs) + \
        _rtattr(IFLA_EXT_MASK, _U32.pack(RTEXT_FILTER_SKIP_STATS))
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), RTM_GETLINK, flags, seq, 0) + body


def link_dump_request(seq: int) -> bytes:
    """RTM_GETLINK, NLM_F_DUMP, every family, statistics left out by the kernel."""
    return _getlink(seq, NLM_F_REQUEST | NLM_F_DUMP)


def link_get_request(seq: int, name: str) -> bytes:
    """RTM_GETLINK of the one link named `name` (IFLA_IFNAME), statistics left out."""
    return _getlink(seq, NLM_F_REQUEST, _rtattr(IFLA_IFNAME, name.encode() + b"\0"))


@dataclass
class DumpPart:
    """The messages of one recv() that answer dump `seq` (others, left over from an
    abandoned dump, are skipped)."""

    payloads: list[tuple[int, memoryview]]     # (message type, payload after nlmsghdr)
    done: bool                                 # NLMSG_DONE seen: the dump is complete
    interrupted: bool                          # NLM_F_DUMP_INTR on a message: inconsistent, read again


def split_dump(data: bytes | memoryview, seq: int) -> DumpPart:
    """Split one recv() of a dump into its messages. NLMSG_ERROR (or an NLMSG_DONE
    carrying an error) is a DumpError with the kernel's errno."""
    view = memoryview(data)
    part = DumpPart([], False, False)
    pos = 0
    while pos + _NLMSGHDR.size <= len(view):
        length, kind, flags, mseq, _pid = _NLMSGHDR.unpack_from(view, pos)
        if length < _NLMSGHDR.size or pos + length > len(view):
            raise DumpError(f"malformed netlink message at byte {pos}: length {length}, {len(view) - pos} bytes left")
        payload = view[pos + _NLMSGHDR.size:pos + length]
        pos += (length + 3) & ~3
        if mseq != seq:
            continue
        if flags & NLM_F_DUMP_INTR:
            part.interrupted = True
        if kind == NLMSG_ERROR:
            code = _I32.unpack_from(payload)[0] if len(payload) >= 4 else -errno.EPROTO
            if code == 0:          # an ACK: not part of a dump answer, nothing to report
                continue
            raise DumpError(f"the kernel refused the request: {os.strerror(-code)}", -code)
        if kind == NLMSG_DONE:
            code = _I32.unpack_from(payload)[0] if len(payload) >= 4 else 0
            if code < 0:
                raise DumpError(f"the dump failed: {os.strerror(-code)}", -code)
            part.done = True
            break
        part.payloads.append((kind, payload))
    return part


def _prog_id_of(fd: int) -> int:
    return bpfsys.prog_info(fd).id


def _extack(exc: NetlinkError) -> str | None:
    text = exc.args[1] if len(exc.args) > 1 else None
    return str(text) if text and text != os.strerror(exc.code) else None


RT_TABLE_MAIN = 254
RTN_UNICAST = 1


def _default_oif(route: Any) -> int | None:
    """The output interface index of a unicast default route of the main table (a
    multipath route: its first hop's), else None (pyroute2 route message)."""
    if route["dst_len"] != 0 or route.get("table") != RT_TABLE_MAIN or route["type"] != RTN_UNICAST:
        return None
    oif = route.get("oif")
    if oif is None:
        hops = route.get("multipath") or []
        oif = hops[0].get("oif") if hops else None
    return oif


def best_default_oif(routes: Any) -> int | None:
    """The output interface index of the lowest-metric default route among `routes` (the
    first one on a tie), else None."""
    best: tuple[int, int] | None = None
    for route in routes:
        oif = _default_oif(route)
        if oif is None:
            continue
        metric = route.get("priority") or 0
        if best is None or metric < best[0]:
            best = (metric, oif)
    return best[1] if best else None


class Netlink:
    """rtnetlink in one namespace. Use as a context manager, or call close().

    One thread at a time (the agent's worker thread does all its kernel work): reads share
    one plain rtnetlink socket, and an answer is matched to its request by sequence number
    only."""

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
        self._dump_sock: socket.socket | None = None
        self._seq = itertools.count(1)

    def close(self) -> None:
        self._ipr.close()
        for sock in (self._ioctl_sock, self._dump_sock):
            if sock is not None:
                sock.close()
        self._ioctl_sock = self._dump_sock = None

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reading ----------------------------------------------------------------------

    def _ctx(self, **context: Any) -> dict[str, Any]:
        return {"netns": self.netns, **context}

    def _socket_here(self, family: int, kind: int, proto: int = 0) -> socket.socket:
        """A socket of this namespace (created there, used from here)."""
        if self.netns is None:
            return socket.socket(family, kind, proto)
        from pyroute2.netns import create_socket

        return create_socket(self.netns, family, kind, proto, flags=0)

    def _link_dump(self) -> list[LinkInfo]:
        """Every link of the namespace, from one consistent RTM_GETLINK dump."""
        try:
            sock = self._rtnl()
            for _attempt in range(DUMP_RETRIES + 1):
                seq = next(self._seq) & 0xFFFFFFFF
                sock.send(link_dump_request(seq))
                links: list[LinkInfo] = []
                interrupted = False
                while True:
                    part = self._receive(sock, seq)
                    links += [decode_link(p) for kind, p in part.payloads if kind == RTM_NEWLINK]
                    interrupted |= part.interrupted
                    if part.done:
                        break
                if not interrupted:
                    return links
                log.debug("link dump interrupted (links changed meanwhile); reading it again")
            raise DumpError(f"the link dump was interrupted {DUMP_RETRIES + 1} times in a row (links keep changing)",
                            errno.EINTR)
        except (DumpError, OSError) as exc:
            self._drop_dump_socket()       # a half-read answer must not be taken for the next one's
            raise KernelError(f"listing interfaces failed: {exc}", errno=exc.errno, **self._ctx()) from exc

    def _rtnl(self) -> socket.socket:
        """The plain rtnetlink socket of the namespace that the reads go through."""
        if self._dump_sock is None:
            self._dump_sock = self._socket_here(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
            self._dump_sock.settimeout(DUMP_TIMEOUT_S)
        return self._dump_sock

    @staticmethod
    def _receive(sock: socket.socket, seq: int) -> DumpPart:
        """One recv() of the answer to request `seq`, split into its messages."""
        data, _, flags, _ = sock.recvmsg(DUMP_RECV_BYTES)
        if flags & socket.MSG_TRUNC:
            raise DumpError(f"a netlink answer did not fit in {DUMP_RECV_BYTES} bytes")
        return split_dump(data, seq)

    def _drop_dump_socket(self) -> None:
        if self._dump_sock is not None:
            self._dump_sock.close()
            self._dump_sock = None

    def _link(self, name: str) -> LinkInfo:
        """The link named `name`, read with RTM_GETLINK (InterfaceNotFound when there is none)."""
        if not isinstance(name, str) or not _IFNAME_RE.fullmatch(name) or name in (".", "..") \
                or len(name.encode()) > 15:
            raise InterfaceNotFound(f"{name!r} is not an interface name", interface=str(name), netns=self.netns)
        try:
            sock = self._rtnl()
            seq = next(self._seq) & 0xFFFFFFFF
            sock.send(link_get_request(seq, name))
            while True:
                for kind, payload in self._receive(sock, seq).payloads:
                    if kind == RTM_NEWLINK:
                        return decode_link(payload)
        except (DumpError, OSError) as exc:
            if isinstance(exc, DumpError) and exc.errno in (errno.ENODEV, errno.ENOENT):
                # the kernel's error answer was the whole answer: the socket stays in step
                raise InterfaceNotFound(f"no interface {name!r}", interface=name, netns=self.netns) from exc
            self._drop_dump_socket()       # a half-read answer must not be taken for the next one's
            raise KernelError(f"reading interface {name!r} failed: {exc}", errno=exc.errno,
                              **self._ctx(interface=name)) from exc

    def _driver(self, name: str) -> str | None:
        """The ethtool driver name (ETHTOOL_GDRVINFO), None when the device has none."""
        if self._ioctl_sock is None:
            self._ioctl_sock = self._socket_here(socket.AF_INET, socket.SOCK_DGRAM)
        drvinfo = ctypes.create_string_buffer(struct.pack("I", _ETHTOOL_GDRVINFO), _DRVINFO_SIZE)
        ifreq = struct.pack("16sP", name.encode(), ctypes.addressof(drvinfo)) + b"\0" * 16
        try:
            fcntl.ioctl(self._ioctl_sock.fileno(), _SIOCETHTOOL, ifreq)
        except OSError:
            return None
        driver = drvinfo.raw[4:36].split(b"\0", 1)[0].decode("ascii", "replace")
        return driver or None

    def _interface(self, link: LinkInfo) -> Interface:
        return Interface(name=link.name, index=link.index, mac=link.mac, oper_state=link.oper_state,
                         kind=link.kind, driver=self._driver(link.name), xdp=link.xdp)

    def interfaces(self) -> list[Interface]:
        """Every interface of the namespace, by index (one link dump)."""
        return sorted((self._interface(link) for link in self._link_dump()), key=lambda i: i.index)

    def interface(self, name: str) -> Interface:
        return self._interface(self._link(name))

    def read_xdp(self, name: str) -> XdpState:
        return self._link(name).xdp

    def xdp_features(self) -> dict[int, Any] | None:
        """ifindex -> netdev.DeviceFeatures of every interface of the namespace, read from
        the netdev generic-netlink family (nothing is attached); None when the kernel has
        no such family (before 6.3). See netdev.py."""
        from .netdev import Netdev

        return Netdev(self.netns).xdp_features()

    def default_route_interface(self) -> str | None:
        """The interface of the default route (main table; IPv4 first, then IPv6), by lowest metric.

        pyroute2's get_default_routes decodes only the routes without RTA_DST (a dump of
        every route, the local table's included, decoded in full cost ~3x as much)."""
        for family in (socket.AF_INET, socket.AF_INET6):
            try:
                routes = self._ipr.get_default_routes(family=family, table=RT_TABLE_MAIN)
            except NetlinkError as exc:
                raise KernelError(
                    "reading routes failed", errno=exc.code, **self._ctx()
                ) from exc
            oif = best_default_oif(routes)
            if oif is not None:
                links = self._ipr.link("get", index=oif)
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
        index = self._link(name).index
        ctx = self._ctx(interface=name, mode=mode)
        try:
            wanted_id = _prog_id_of(prog_fd)
        except BpfSyscallError as exc:
            raise AttachError(f"fd {prog_fd} is not a BPF program", errno=exc.errno, **ctx) from exc
        flags = (XDP_FLAGS_UPDATE_IF_NOEXIST if expected_prog_fd is None else XDP_FLAGS_REPLACE) | mode_flag
        for attempt in range(BUSY_RETRIES + 1):
            try:
                self._set_xdp(index, prog_fd, flags, expected_prog_fd)
                break
            except NetlinkError as exc:
                error = self._attach_refused(exc, name, mode, ctx, replacing=expected_prog_fd is not None,
                                             may_retry=attempt < BUSY_RETRIES)
                if error is None:
                    time.sleep(BUSY_BACKOFF_S * 2**attempt)  # hook still being released
                    continue
                raise error from exc
        state = self.read_xdp(name)
        if state.prog_id_for(mode) != wanted_id:
            raise AttachError(
                f"attach not confirmed: read back {state.prog_id_for(mode)} in {mode} mode, "
                f"expected program {wanted_id}",
                **ctx,
            )
        return state

    def _attach_refused(self, exc: NetlinkError, name: str, mode: str, ctx: dict[str, Any], *, replacing: bool,
                        may_retry: bool) -> KernelError | None:
        """What the kernel's refusal of an attach means, by errno (see the module
        docstring); None: EBUSY on an empty hook with retries left (a program still being
        released): the caller tries again."""
        code, kmsg = exc.code, _extack(exc)
        if code == errno.ENODEV:
            return InterfaceNotFound(f"interface {name!r} vanished", **ctx)
        if code in (errno.EBUSY, errno.EEXIST):
            return self._hook_busy(name, code, kmsg, ctx, replacing=replacing, may_retry=may_retry)
        if code in (errno.EOPNOTSUPP, errno.EINVAL):
            return AttachError(
                f"the driver refused XDP in {mode} mode" + (f": {kmsg}" if kmsg else ""),
                reason="DriverModeUnsupported", errno=code, kernel_message=kmsg, **ctx,
            )
        return AttachError(f"attach failed: {kmsg or os.strerror(code)}", errno=code, kernel_message=kmsg, **ctx)

    def _hook_busy(self, name: str, code: int, kmsg: str | None, ctx: dict[str, Any], *, replacing: bool,
                   may_retry: bool) -> KernelError | None:
        """EBUSY/EEXIST, judged from the hook read back: the program that holds it
        (HookBusy naming it), or an empty hook: a release still under way (None: retry),
        the program to replace gone (AttachError), or busy with nothing to show (HookBusy)."""
        occupant, occ_mode = self.read_xdp(name).occupant
        if occupant is not None:
            return HookBusy(
                f"the XDP hook holds program {occupant} ({occ_mode}), which is not ours to replace",
                prog_id=occupant, attached_mode=occ_mode, errno=code, kernel_message=kmsg, **ctx,
            )
        if code == errno.EBUSY and may_retry:
            return None
        if replacing:
            return AttachError(
                "the program to replace is no longer on the hook (it is empty)",
                errno=code, kernel_message=kmsg, **ctx,
            )
        return HookBusy(
            "the XDP hook stayed busy although no program shows on it",
            errno=code, kernel_message=kmsg, **ctx,
        )

    def detach(self, name: str, mode: str, *, expected_prog_fd: int) -> XdpState:
        """Remove the program in `mode` only if it is `expected_prog_fd`'s; idempotent.

        Returns the state read back afterwards.
        """
        mode_flag = _check_mode(mode)
        index = self._link(name).index
        ctx = self._ctx(interface=name, mode=mode)
        try:
            self._set_xdp(index, -1, XDP_FLAGS_REPLACE | mode_flag, expected_prog_fd)
        except NetlinkError as exc:
            code, kmsg = exc.code, _extack(exc)
            if code == errno.ENODEV:
                raise InterfaceNotFound(f"interface {name!r} vanished", **ctx) from exc
            if code == errno.EBUSY:
                state = self.read_xdp(name)
                held = state.prog_id_for(mode)
                raise HookBusy(
                    f"the XDP hook holds program {held} ({mode}) through a bpf_link: the kernel refuses a "
                    "netlink detach (link.py: BPF_LINK_DETACH)",
                    prog_id=held, attached_mode=mode, errno=code, kernel_message=kmsg, **ctx,
                ) from exc
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
