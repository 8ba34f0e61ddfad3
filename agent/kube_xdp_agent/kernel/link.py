"""XDP attachments as bpf_links: create, update atomically, detach, read, find.

A bpf_link is a kernel object that holds a program on a hook. While a link holds an
interface's XDP hook the kernel refuses every netlink attach, replace or detach there
(EBUSY, "Can't replace active BPF XDP link"): another tool's `ip link set dev X xdp off`
or forced replace cannot take the hook. The link lives while an fd or a bpffs pin holds
it; kube-xdp pins one per (program, interface) (bpffs.PinStore.link_path) and the agent
closes its fds. attach.py decides when to use a link; this module is the syscalls, with
context on every error.

Facts, checked on this machine's kernel (6.18) by tests/kernel/test_link.py, and on the
offload lab's 6.1 by tests/offload/guest_offload.py:
- Minimum kernel: 5.9 (XDP links; BPF_LINK_CREATE itself is 5.7). Before that
  BPF_LINK_CREATE, or its attach type BPF_XDP, is refused with EINVAL: attach.place then
  attaches through netlink.
- expected_attach_type: NOT needed. bcc loads XDP programs with expected_attach_type 0,
  and BPF_LINK_CREATE (attach type BPF_XDP=37) accepts them; a program loaded with
  expected_attach_type BPF_XDP (libbpf's way) is accepted too. But BPF_LINK_UPDATE
  refuses to swap programs whose expected_attach_type differ (EINVAL): every program
  kube-xdp attaches (bcc's, and offload.load_pass_program's) is loaded with 0.
- The target ifindex is resolved in the network namespace of the CALLING THREAD:
  `XdpLinks(netns).create` runs in a thread inside that namespace (netns.in_netns).
  Link ids are global; a link's ifindex is its device's index in the device's own
  namespace (so the same ifindex appears in many namespaces).
- BPF_LINK_CREATE refusals (errno): EBUSY: the mode's slot is held (by a netlink program
  or another link); EEXIST: the other of native/generic is held; EOPNOTSUPP: the driver
  has no XDP in that mode (lo in native); EINVAL: a mode flag the device cannot take (HW
  on veth), more than one mode flag, or an unknown attach type (a kernel before 5.9);
  ENODEV: no such ifindex in the namespace.
- BPF_LINK_UPDATE: atomic (the hook is never empty); with BPF_F_REPLACE and an old
  program that is not the link's: EPERM; a program of another expected_attach_type or
  type: EINVAL; a defunct link (its device gone, or detached): ENOLINK.
- BPF_LINK_DETACH: detaches at once, whatever other fds or pins hold the link (those are
  left holding a defunct link: ifindex 0); idempotent on a defunct link.
- Releasing the last reference (closing the last fd of an unpinned link, unlinking the
  last pin) detaches too, but asynchronously (the kernel's deferred fput: ~12-15 ms
  measured here): a netlink attach right after sees EBUSY on an empty hook. So kube-xdp
  detaches with BPF_LINK_DETACH first, then unpins and closes.
- A device removed: its links turn defunct (ifindex 0), holding their program until
  unpinned. A device moved to another namespace or renamed KEEPS its link (and its
  program runs there): a pin named after an interface must be checked against the
  interface of that name in the agent's namespace (attach.link_record).
- Offload (HW) through a link: see tests/offload/guest_offload.py and attach.py's
  docstring for what the 6.1 lab kernel does.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from . import bpfsys
from .bpfsys import Fd, LinkInfo
from .errors import BpfSyscallError
from .netlink import _check_mode
from .netns import in_netns

MIN_KERNEL = "5.9"


class XdpLinks:
    """The bpf_link calls for XDP, for interfaces of one network namespace (None: the
    caller's). Errors are BpfSyscallError with the command, errno and context
    (interface, mode, netns, link id): attach.py classifies them by errno."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns

    def _ctx(self, **context: Any) -> dict[str, Any]:
        return {"netns": self.netns, **{k: v for k, v in context.items() if v is not None}}

    @staticmethod
    def _again(exc: BpfSyscallError, message: str, **context: Any) -> BpfSyscallError:
        return BpfSyscallError(f"{message}: {exc.message}", cmd=exc.cmd, errno=exc.errno, **context)

    def create(self, ifindex: int, prog_fd: int, mode: str, *, interface: str | None = None) -> Fd:
        """BPF_LINK_CREATE: attach `prog_fd` in `mode` on the interface with index
        `ifindex` in this namespace; the new link's fd (the caller pins or closes it)."""
        flags = _check_mode(mode)
        try:
            return in_netns(self.netns, lambda: bpfsys.link_create(prog_fd, ifindex, bpfsys.BPF_XDP, flags))
        except BpfSyscallError as exc:
            ctx = self._ctx(interface=interface or f"ifindex {ifindex}", mode=mode)
            raise self._again(exc, "creating the XDP link failed", **ctx) from exc

    def update(self, link_fd: int, new_prog_fd: int, *, old_prog_fd: int | None = None,
               interface: str | None = None) -> None:
        """BPF_LINK_UPDATE: swap the link's program, atomically; with `old_prog_fd` only if
        the link still holds that program (else EPERM)."""
        try:
            bpfsys.link_update(link_fd, new_prog_fd, old_prog_fd=old_prog_fd)
        except BpfSyscallError as exc:
            raise self._again(exc, "updating the XDP link failed", **self._ctx(interface=interface)) from exc

    def detach(self, link_fd: int, *, interface: str | None = None) -> None:
        """BPF_LINK_DETACH: the hook is free when this returns (idempotent)."""
        try:
            bpfsys.link_detach(link_fd)
        except BpfSyscallError as exc:
            raise self._again(exc, "detaching the XDP link failed", **self._ctx(interface=interface)) from exc

    def info(self, link_fd: int) -> LinkInfo:
        try:
            return bpfsys.link_info(link_fd)
        except BpfSyscallError as exc:
            raise self._again(exc, "reading the link failed", **self._ctx()) from exc

    def open_id(self, link_id: int) -> Fd:
        """A new fd of the link with that id (ENOENT when there is none)."""
        try:
            return bpfsys.link_fd_by_id(link_id)
        except BpfSyscallError as exc:
            raise self._again(exc, f"opening link {link_id} failed", **self._ctx()) from exc

    def prog_id(self, prog_fd: int) -> int:
        """The id of the program behind `prog_fd` (BPF_OBJ_GET_INFO_BY_FD)."""
        try:
            return bpfsys.prog_info(prog_fd).id
        except BpfSyscallError as exc:
            raise self._again(exc, f"fd {prog_fd} is not a BPF program", **self._ctx()) from exc

    def open_prog(self, prog_id: int) -> Fd:
        """A new fd of the program with that id (ENOENT when there is none)."""
        try:
            return bpfsys.prog_fd_by_id(prog_id)
        except BpfSyscallError as exc:
            raise self._again(exc, f"opening program {prog_id} failed", **self._ctx()) from exc

    def xdp_links(self) -> Iterator[LinkInfo]:
        """Every XDP link of the system (all namespaces: compare ifindex and prog id with
        this namespace's hooks before taking one for a local interface's)."""
        for link_id in bpfsys.link_ids():
            try:
                with bpfsys.link_fd_by_id(link_id) as fd:
                    info = bpfsys.link_info(fd.fd)
            except BpfSyscallError:
                continue  # released meanwhile
            if info.type == bpfsys.BPF_LINK_TYPE_XDP:
                yield info

    def holding(self, ifindex: int, prog_id: int) -> LinkInfo | None:
        """The XDP link that holds program `prog_id` on device `ifindex` (as this
        namespace's hook shows it), or None: the program is attached through netlink."""
        return next((i for i in self.xdp_links() if i.ifindex == ifindex and i.prog_id == prog_id), None)
