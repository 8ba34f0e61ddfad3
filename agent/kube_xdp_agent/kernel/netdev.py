"""Interfaces' XDP features from the kernel's `netdev` generic-netlink family: read, never
probed (nothing is attached, no NIC is reconfigured).

The family (include/uapi/linux/netdev.h, kernel 6.3 and later) answers NETDEV_CMD_DEV_GET
(1) with one message per device of the socket's network namespace: NETDEV_A_DEV_IFINDEX
(1, u32) and NETDEV_A_DEV_XDP_FEATURES (3, u64, a mask of enum netdev_xdp_act):

    basic 1, redirect 2, ndo-xmit 4, xsk-zerocopy 8, hw-offload 16, rx-sg 32, ndo-xmit-sg 64

(the names are the family's own, Documentation/netlink/specs/netdev.yaml). The modes they
imply for kube-xdp: generic always (the kernel runs generic XDP on any device); native
when the driver has `basic` (its own XDP: XDP_PASS/DROP/TX/ABORTED); offload when it has
`hw-offload`. Checked on this machine (tests/kernel/test_netdev.py): a veth reports basic,
redirect, rx-sg (and ndo-xmit, ndo-xmit-sg while native XDP runs on its peer); lo reports
nothing, and native XDP on lo is indeed refused (EOPNOTSUPP).

The family is resolved by name (CTRL_CMD_GETFAMILY to the generic-netlink controller);
a kernel without it answers ENOENT: `Netdev.xdp_features()` returns None, and the
inventory falls back to attach probing (inventory.py). The socket is opened in the
node's namespace as the rtnetlink reads are (netlink.Netlink): each device is listed with
its ifindex there. Messages are decoded with netlink.py's attribute reader (the same TLV
format as rtnetlink).
"""

from __future__ import annotations

import errno
import itertools
import socket
import struct
from dataclasses import dataclass
from typing import Any

from .errors import KernelError, NetnsNotFound
from .netlink import (
    NLM_F_DUMP,
    NLM_F_REQUEST,
    DumpError,
    _rtattr,
    rtattrs,
    split_dump,
)

NETLINK_GENERIC = 16
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID, CTRL_ATTR_FAMILY_NAME = 1, 2
NETDEV_FAMILY_NAME = "netdev"
NETDEV_CMD_DEV_GET = 1
NETDEV_A_DEV_IFINDEX, NETDEV_A_DEV_XDP_FEATURES = 1, 3

# enum netdev_xdp_act: bit -> the family's name for it
XDP_FEATURES = {
    1: "basic",
    2: "redirect",
    4: "ndo-xmit",
    8: "xsk-zerocopy",
    16: "hw-offload",
    32: "rx-sg",
    64: "ndo-xmit-sg",
}
FEATURE_NAMES = tuple(XDP_FEATURES.values())

_NLMSGHDR = struct.Struct("=IHHII")
_GENLMSGHDR = struct.Struct("=BBH")
RECV_BYTES = 1 << 16
TIMEOUT_S = 10.0


def features_of(mask: int) -> tuple[str, ...]:
    """The names of the bits set in an xdp-features mask, in the family's order (unknown
    bits, from a newer kernel, are left out)."""
    return tuple(name for bit, name in XDP_FEATURES.items() if mask & bit)


def modes_of(features: tuple[str, ...] | frozenset[str]) -> tuple[str, ...]:
    """The attach modes the features imply, in the API's order (offload, native, generic)."""
    modes = []
    if "hw-offload" in features:
        modes.append("offload")
    if "basic" in features:
        modes.append("native")
    modes.append("generic")
    return tuple(modes)


@dataclass(frozen=True)
class DeviceFeatures:
    ifindex: int
    mask: int                       # NETDEV_A_DEV_XDP_FEATURES as reported
    features: tuple[str, ...]       # its names (features_of)

    @property
    def modes(self) -> tuple[str, ...]:
        return modes_of(self.features)


def _genl_request(family: int, cmd: int, flags: int, seq: int, *attrs: bytes, version: int = 1) -> bytes:
    body = _GENLMSGHDR.pack(cmd, version, 0) + b"".join(attrs)
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), family, flags, seq, 0) + body


class Netdev:
    """The netdev family in one network namespace (None: the caller's)."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._seq = itertools.count(1)

    def _socket(self) -> socket.socket:
        if self.netns is None:
            return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
        from pyroute2.netns import create_socket

        try:
            return create_socket(self.netns, socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC, flags=0)
        except FileNotFoundError as exc:
            raise NetnsNotFound(f"network namespace {self.netns!r} does not exist", netns=self.netns) from exc

    def _ask(self, sock: socket.socket, request: bytes, seq: int) -> list[bytes]:
        """The payloads (after nlmsghdr) answering request `seq`, up to NLMSG_DONE for a dump
        or the first answer otherwise."""
        sock.send(request)
        dump = bool(_NLMSGHDR.unpack_from(request)[2] & NLM_F_DUMP == NLM_F_DUMP)
        out: list[bytes] = []
        while True:
            data = sock.recv(RECV_BYTES)
            part = split_dump(data, seq)
            if part.interrupted:
                raise DumpError("the device dump was interrupted (devices changed meanwhile)", errno.EINTR)
            out += [bytes(p) for _, p in part.payloads]
            if part.done or (not dump and out):
                return out

    def family_id(self, sock: socket.socket) -> int | None:
        """The netdev family's id, None when the kernel has no such family (before 6.3)."""
        seq = next(self._seq)
        request = _genl_request(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, NLM_F_REQUEST, seq,
                                _rtattr(CTRL_ATTR_FAMILY_NAME, NETDEV_FAMILY_NAME.encode() + b"\0"))
        try:
            answer = self._ask(sock, request, seq)
        except DumpError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise
        attrs = rtattrs(answer[0], _GENLMSGHDR.size)
        raw = attrs.get(CTRL_ATTR_FAMILY_ID)
        if raw is None or len(raw) < 2:
            raise DumpError("the generic-netlink controller answered without a family id")
        return struct.unpack_from("=H", raw)[0]

    def xdp_features(self) -> dict[int, DeviceFeatures] | None:
        """ifindex -> its XDP features, for every device of the namespace; None when the
        kernel has no netdev family. KernelError (with errno) when the read fails."""
        ctx: dict[str, Any] = {"netns": self.netns}
        try:
            with self._socket() as sock:
                sock.settimeout(TIMEOUT_S)
                family = self.family_id(sock)
                if family is None:
                    return None
                seq = next(self._seq)
                payloads = self._ask(sock, _genl_request(family, NETDEV_CMD_DEV_GET, NLM_F_REQUEST | NLM_F_DUMP,
                                                         seq), seq)
        except (DumpError, OSError) as exc:
            raise KernelError(f"reading xdp-features from the netdev family failed: {exc}",
                              errno=exc.errno, **ctx) from exc
        found: dict[int, DeviceFeatures] = {}
        for payload in payloads:
            attrs = rtattrs(payload, _GENLMSGHDR.size)
            index, mask = attrs.get(NETDEV_A_DEV_IFINDEX), attrs.get(NETDEV_A_DEV_XDP_FEATURES)
            if index is None or len(index) < 4:
                continue
            ifindex = struct.unpack_from("=I", index)[0]
            value = struct.unpack_from("=Q", mask)[0] if mask is not None and len(mask) >= 8 else 0
            found[ifindex] = DeviceFeatures(ifindex, value, features_of(value))
        return found
