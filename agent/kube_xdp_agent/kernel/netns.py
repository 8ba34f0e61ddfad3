"""Run a function inside a named network namespace, on a thread of its own.

Some kernel calls resolve an interface index in the network namespace of the CALLING
THREAD, not in the namespace of a socket: BPF_PROG_LOAD with `prog_ifindex` (a program
bound to a device for offload), bcc's `device=`, and BPF_LINK_CREATE's `target_ifindex`
(an XDP link). The agent of a rig node works on a named namespace from the host's; such a
call made from its own threads would find the HOST's interface with that index (seen
here: a link create with a node's ifindex 2 reached the host's ifindex 2 and failed with
EOPNOTSUPP; on another host it could have attached there). `in_netns` runs the call on a
short-lived thread that entered the namespace (setns(2) with CLONE_NEWNET is per
thread), so nothing else in the process changes namespace.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from . import bpfsys
from .errors import KernelError, NetnsNotFound

NETNS_DIR = "/run/netns"
_CLONE_NEWNET = 0x40000000
T = TypeVar("T")


def in_netns(netns: str | None, fn: Callable[[], T]) -> T:
    """Run `fn()` in a thread that entered the named network namespace (None: here).

    Only that thread changes namespace; it ends when `fn` returns. What `fn` returns or
    raises reaches the caller. NetnsNotFound when the namespace does not exist.
    """
    if netns is None:
        return fn()
    path = os.path.join(NETNS_DIR, netns)
    if "/" in netns or netns in (".", "..") or not os.path.exists(path):
        raise NetnsNotFound(f"network namespace {netns!r} does not exist", netns=netns)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if bpfsys._libc().setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise KernelError(f"entering network namespace {netns!r} failed: {os.strerror(err)}",
                                      netns=netns, errno=err)
            finally:
                os.close(fd)
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"netns-{netns}", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]
