"""Putting a program on an interface's XDP hook, and taking it off: the ONE place that
decides how (a pinned bpf_link, or netlink where links cannot be used) and in which mode.

Every caller goes through `place` and `remove`: the executor (attach, update, takeover,
drift repair, offload), and the inventory's opt-in mode probe (`pin=False`). Nothing
else calls `Netlink.attach/detach` or the link syscalls to change a hook.

`place(node, program=, interface=, modes=, prog_fd_for=, replace=)` tries, in this order
(the idea of Cilium's loader, pkg/datapath/loader/xdp.go):

1. Our link: the link pinned for (program, interface) (bpffs `<program>/links/<iface>`).
   - alive on this interface in a mode listed in `modes`: BPF_LINK_UPDATE to the program
     for that mode, with the link's current program as the expected one (BPF_F_REPLACE):
     ATOMIC, the hook is never empty; nothing is written when it already holds it.
     Placing never moves an attachment to another mode: that costs a gap, and is the
     caller's decision (`remove`, then `place`);
   - alive in a mode NOT listed: detached (BPF_LINK_DETACH) and unpinned, then placed
     as below (a gap: the caller asked for other modes);
   - defunct (its interface was removed: ifindex 0) or sitting on another device (the
     interface was renamed, or moved to another namespace): detached and its pin dropped.
2. `replace` (a program id the caller may replace: its own older version attached through
   netlink, another XdpProgram's program it outranks, a foreign program under
   spec.takeOver or drift repair), if the hook holds it in mode R:
   - R not in `modes`: HookBusy (a mode change cannot be atomic);
   - held by another kube-xdp program's pinned link: BPF_LINK_UPDATE of that link with
     `replace` expected, then its pin renamed to ours: ATOMIC, and the kernel keeps
     enforcing ownership;
   - held by a link kube-xdp did not pin (another tool's): HookBusy with its link id; the
     kernel refuses to replace it, and so does kube-xdp;
   - attached through netlink: netlink REPLACE with `replace` as the expected program:
     ATOMIC. The result STAYS attached through netlink (`attached_by='netlink'`,
     `netlink_cause='replaced'`): a link cannot replace a netlink-attached program
     (BPF_LINK_CREATE on an occupied slot: EBUSY), so turning it into a link means a
     detach and a link create: a gap in which packets meet no program. Measured on veth
     at ~1.8 Mpps (tests/kernel/test_attach.py::test_netlink_to_link_conversion_gap): see
     docs/api.md "Attached by". With `convert=True` the caller asks for that conversion
     anyway (then `netlink_cause` is None and a `converted` step records it).
   - not on the hook any more: placed as below.
3. In each mode of `modes`, in order:
   - `prog_fd_for(mode)`: the program for that mode (offload: one built for the device).
     ProgramNotOffloadable, or AttachError with reason OffloadUnsupported, refuses the
     mode (next mode);
   - the program already on the hook in that mode (attached through netlink: an older
     agent, a fallback, or the other way round): adopted, nothing written (unless
     `convert`);
   - the hook held by anything else (in that mode, or the other of native/generic):
     HookBusy (never another mode: the caller reports a Conflict);
   - empty: BPF_LINK_CREATE in that mode (in the interface's namespace), then pinned:
     * EINVAL / EOPNOTSUPP: the kernel refuses a link for this mode here (a kernel
       before 5.9, or a mode links cannot carry, or the driver refuses the mode: a link
       cannot tell these apart), so netlink attach (UPDATE_IF_NOEXIST) in that mode:
       success -> `attached_by='netlink'`, `netlink_cause='links-refused'` with the link's
       errno; refused with EINVAL/EOPNOTSUPP -> the DRIVER refuses the mode: next mode
       (reason DriverModeUnsupported, or OffloadUnsupported in offload);
     * EBUSY on an empty hook: a released link still being torn down: retried with
       backoff (~0.3 s in all); EBUSY/EEXIST with a program there: HookBusy;
     * ENODEV: InterfaceNotFound; anything else: AttachError(AttachFailed) with errno.
   - every mode refused: NoModeAttached (an AttachError; reason the first refusal's,
     `refused` lists each).

Every refusal is classified by errno, never by message text. What is reported is read
back from netlink afterwards (`prog_id`, `state`): never assumed.

Atomicity of each path: link update, link takeover (update + pin rename) and netlink
REPLACE are atomic. A first attach has nothing to be atomic with. A mode change, a
removed link, and a `convert` leave the hook empty for a moment (a gap).

`remove(node, program=, interface=, netlink_prog_fd=, link=True)`: our pinned link ->
BPF_LINK_DETACH (the hook is free when it returns, even while another fd holds the link),
unpin, close; else (or with `link=False`) the netlink-attached program `netlink_prog_fd`
(only where the hook still holds it: netlink detach with it as the expected program).
Idempotent.

`link_records(node)`: our pinned links, each checked against this namespace's interfaces
(attached here in mode M / defunct / elsewhere): what restart adoption reads.
"""

from __future__ import annotations

import dataclasses
import errno as errno_mod
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kube_xdp_api import reasons

from .bpfsys import Fd
from .errors import (
    AttachError,
    BpfSyscallError,
    HookBusy,
    InterfaceNotFound,
    KernelError,
    PinError,
    ProgramNotOffloadable,
)
from .netlink import MODES, Interface, XdpState

if TYPE_CHECKING:
    from .bpffs import PinnedLink, PinStore
    from .link import XdpLinks
    from .netlink import Netlink

log = logging.getLogger(__name__)

LINK = "link"
NETLINK = "netlink"

# Why a placement is attached through netlink (Placement.netlink_cause).
LINKS_REFUSED = "links-refused"   # BPF_LINK_CREATE refused for this mode (EINVAL/EOPNOTSUPP), netlink took it
REPLACED = "replaced"             # an atomic netlink REPLACE of a netlink-attached program (a link cannot)
ADOPTED = "adopted"               # the program was already there, attached through netlink

# errno classes (attach.py decides on these, never on text)
LINK_UNUSABLE = frozenset({errno_mod.EINVAL, errno_mod.EOPNOTSUPP})
HOOK_OCCUPIED = frozenset({errno_mod.EBUSY, errno_mod.EEXIST})
MODE_REFUSALS = frozenset({reasons.DRIVER_MODE_UNSUPPORTED, reasons.OFFLOAD_UNSUPPORTED,
                           reasons.PROGRAM_NOT_OFFLOADABLE})

BUSY_RETRIES = 5
BUSY_BACKOFF_S = 0.02

# Step actions (Placement.steps / Removal.steps): what was done, in order, for logs.
KEPT = "kept"                          # the hook already held the program: nothing written
LINK_UPDATED = "link-updated"          # BPF_LINK_UPDATE of our link (atomic)
LINK_CREATED = "link-created"          # BPF_LINK_CREATE, then pinned
LINK_REFUSED = "link-refused"          # BPF_LINK_CREATE refused for the mode: netlink tried
LINK_DETACHED = "link-detached"        # our link detached and unpinned (mode not allowed, removal)
DEFUNCT_DROPPED = "defunct-dropped"    # our link's interface is gone: detached, pin dropped
STALE_DROPPED = "stale-dropped"        # our link sits on another device now: detached, pin dropped
LINK_TAKEN = "link-taken-over"         # another kube-xdp program's link updated, its pin renamed to ours
NETLINK_ATTACHED = "netlink-attached"  # netlink attach (UPDATE_IF_NOEXIST)
NETLINK_REPLACED = "netlink-replaced"  # netlink REPLACE with the expected program (atomic)
NETLINK_DETACHED = "netlink-detached"  # netlink detach with the expected program
CONVERTED = "converted"                # a netlink attachment turned into a link (a gap)
MODE_REFUSED = "mode-refused"          # a mode refused (see Placement.refused)
RELEASE_WAIT = "release-wait"          # EBUSY on an empty hook: waited for a released link
REPLACE_GONE = "replace-gone"          # the program to replace was no longer on the hook


@dataclass(frozen=True)
class Node:
    """One node's kernel handles: netlink and links in its network namespace, pins in its
    bpffs (None only for `place(pin=False)`: the inventory's probe has no bpffs). Real
    (HostKernel) or fake (tests/fakes): the same surface."""

    netlink: Netlink
    links: XdpLinks
    pins: PinStore | None

    @property
    def netns(self) -> str | None:
        return self.netlink.netns


@dataclass(frozen=True)
class Refusal:
    """A mode tried and refused: `reason` from kube_xdp_api.reasons, the errno, and a
    sentence for people (the kernel's extended ack when it sent one)."""

    mode: str
    reason: str
    errno: int | None
    message: str

    def __str__(self) -> str:
        return f"{self.mode}: {self.message}"


@dataclass(frozen=True)
class Step:
    """One thing `place`/`remove` did, and why (for logs; no code decides from `detail`)."""

    action: str
    detail: str
    errno: int | None = None


@dataclass(frozen=True)
class Placement:
    """What is on the interface after `place`, read back from netlink.

    `attached_by`: 'link' (our pinned link `link_id`: the kernel refuses others' netlink
    detach/replace) or 'netlink' (`netlink_cause` says why: 'links-refused' with
    `link_errno`, 'replaced' (an atomic takeover kept on netlink), 'adopted'). `prog_id`
    and `state` are netlink's read-back; `changed` False when nothing was written;
    `replaced` the program id this placement took off the hook (an update or a
    takeover); `refused` the modes tried before `mode`, in order; `steps` what was done.
    `held`: with pin=False only, the unpinned link's fd (closing it detaches the link:
    `remove_held`).
    """

    interface: str
    mode: str
    attached_by: str
    prog_id: int
    state: XdpState
    link_id: int | None = None
    changed: bool = True
    replaced: int | None = None
    netlink_cause: str | None = None
    link_errno: int | None = None
    refused: tuple[Refusal, ...] = ()
    steps: tuple[Step, ...] = ()
    held: Fd | None = None

    @property
    def reason(self) -> str | None:
        """Why `mode` is not the first mode tried (the first refusal's reason), else None."""
        return self.refused[0].reason if self.refused else None


@dataclass(frozen=True)
class Removal:
    """What `remove` took off: `detached_by` 'link' / 'netlink' / None (nothing was there)."""

    interface: str
    detached_by: str | None
    prog_id: int | None = None
    mode: str | None = None
    link_id: int | None = None
    state: XdpState | None = None          # the hook read back (None: the interface is gone)
    steps: tuple[Step, ...] = ()


@dataclass(frozen=True)
class LinkRecord:
    """One of our pinned links, checked against the namespace's interfaces.

    `where`: 'attached' (on the interface it is named after, in `mode`), 'defunct' (its
    device is gone: ifindex 0), 'elsewhere' (on another device: the interface was renamed
    or moved to another namespace, or re-created and the link is on the old one)."""

    program: str
    interface: str
    link_id: int
    prog_id: int
    ifindex: int
    where: str
    mode: str | None = None

    @property
    def alive(self) -> bool:
        return self.where == "attached"


class NoModeAttached(AttachError):
    """Every allowed mode was refused. `reason` is the first refusal's; `refused` lists all."""

    def __init__(self, message: str, *, refused: tuple[Refusal, ...], **context: Any) -> None:
        first = refused[0] if refused else None
        super().__init__(message, reason=first.reason if first else reasons.ATTACH_FAILED,
                         errno=first.errno if first else None, **context)
        self.refused = refused


# --- reading ------------------------------------------------------------------------------


def _slot_mode(state: XdpState, prog_id: int) -> str | None:
    """The mode in which `prog_id` sits on the hook, or None."""
    return next((m for m in MODES if state.prog_id_for(m) == prog_id), None)


def _occupant(state: XdpState, mode: str) -> tuple[int, str] | None:
    """The program that keeps `mode` from being used: the one in that mode, or for
    native/generic the one in the other of the two (the kernel allows one of them)."""
    slots = ("offload",) if mode == "offload" else ("native", "generic")
    for slot in slots:
        prog = state.prog_id_for(slot)
        if prog:
            return prog, slot
    return None


def link_record(link: PinnedLink, iface: Interface | None) -> LinkRecord:
    """Where a pinned link is, given the interface of its name in the node's namespace
    (None: no such interface)."""
    where, mode = "elsewhere", None
    if link.defunct:
        where = "defunct"
    elif iface is not None and iface.index == link.ifindex:
        mode = _slot_mode(iface.xdp, link.prog_id)
        if mode is not None:
            where = "attached"
    return LinkRecord(link.program, link.interface, link.link_id, link.prog_id, link.ifindex, where, mode)


def link_records(node: Node, program: str | None = None,
                 interfaces: Sequence[Interface] | None = None) -> list[LinkRecord]:
    """Our pinned links (of `program`, or all), each placed against the namespace's
    interfaces (`interfaces`: an observation already read, else one link dump)."""
    by_name = {i.name: i for i in (interfaces if interfaces is not None else node.netlink.interfaces())}
    return [link_record(link, by_name.get(link.interface)) for link in node.pins.list_links(program)]


# --- placing ------------------------------------------------------------------------------


class _Placer:
    """One call of `place`: the node, what to put, and the steps taken so far."""

    def __init__(self, node: Node, program: str, interface: str, modes: tuple[str, ...],
                 prog_fd_for: Callable[[str], Fd], pin: bool, convert: bool) -> None:
        self.node, self.program, self.interface = node, program, interface
        self.modes, self.prog_fd_for, self.pin, self.convert = modes, prog_fd_for, pin, convert
        self.steps: list[Step] = []
        self.refused: list[Refusal] = []
        self.ctx: dict[str, Any] = {"program": program, "interface": interface, "netns": node.netns}

    def step(self, action: str, detail: str, errno: int | None = None) -> None:
        self.steps.append(Step(action, detail, errno))
        log.debug("%s %s on %s: %s", action, self.program, self.interface, detail)

    def iface(self) -> Interface:
        return self.node.netlink.interface(self.interface)

    def result(self, iface: Interface, mode: str, prog_id: int, attached_by: str, **fields: Any) -> Placement:
        """The placement as read back: `prog_id` must be on the hook in `mode`."""
        state = self.node.netlink.read_xdp(self.interface)
        got = state.prog_id_for(mode)
        if got != prog_id:
            raise AttachError(f"not confirmed: netlink reads program {got} in {mode} mode after placing "
                              f"program {prog_id} ({state.attached or 'nothing attached'})",
                              mode=mode, **self.ctx)
        return Placement(self.interface, mode, attached_by, got, state, refused=tuple(self.refused),
                         steps=tuple(self.steps), **fields)

    # -- our link ----------------------------------------------------------------------

    def our_link(self, iface: Interface) -> LinkRecord | None:
        """Our pinned link when it is alive on this interface; a defunct or misplaced one
        is detached and its pin dropped first."""
        if not self.pin:
            return None
        pinned = self.node.pins.read_link(self.program, self.interface)
        if pinned is None:
            return None
        record = link_record(pinned, iface)
        if record.alive:
            return record
        action = DEFUNCT_DROPPED if record.where == "defunct" else STALE_DROPPED
        why = ("its interface was removed (the link is defunct)" if record.where == "defunct" else
               f"it sits on another device (ifindex {record.ifindex}): the interface was renamed, moved or re-created")
        drop_link(self.node, self.program, self.interface)
        self.step(action, f"link {record.link_id} pinned for {self.interface}: {why}; detached, pin dropped")
        return None

    def update_ours(self, iface: Interface, ours: LinkRecord) -> Placement:
        """BPF_LINK_UPDATE of our link to the program for its mode, the link's program expected."""
        assert ours.mode is not None
        with self.prog_fd_for(ours.mode) as new:
            want = self.node.links.prog_id(new.fd)
            if want == ours.prog_id:
                self.step(KEPT, f"link {ours.link_id} already holds program {want} in {ours.mode} mode")
                return self.result(iface, ours.mode, want, LINK, link_id=ours.link_id, changed=False)
            with self.node.pins.open_link(self.program, self.interface) as link, \
                    self.node.pins.open_prog_id(ours.prog_id) as old:
                try:
                    self.node.links.update(link.fd, new.fd, old_prog_fd=old.fd, interface=self.interface)
                except BpfSyscallError as exc:
                    raise self.update_error(exc, ours) from exc
            self.step(LINK_UPDATED, f"link {ours.link_id}: program {ours.prog_id} -> {want} in {ours.mode} mode")
            return self.result(iface, ours.mode, want, LINK, link_id=ours.link_id, replaced=ours.prog_id)

    def update_error(self, exc: BpfSyscallError, link: LinkRecord) -> KernelError:
        code = exc.errno
        if code == errno_mod.EPERM:
            return HookBusy(f"link {link.link_id} no longer holds program {link.prog_id} (updated meanwhile): "
                            "left as it is", link_id=link.link_id, errno=code, **self.ctx)
        if code == errno_mod.ENOLINK:
            return InterfaceNotFound(f"link {link.link_id} lost its interface while updating it", errno=code,
                                     **self.ctx)
        return AttachError(f"updating link {link.link_id} failed: {os.strerror(code or 0)}", errno=code,
                           mode=link.mode, **self.ctx)

    # -- replacing a program that is not (yet) ours -----------------------------------

    def replace(self, iface: Interface, prog_id: int) -> Placement | None:
        """Replace `prog_id` atomically where it sits; None when it is no longer there."""
        mode = _slot_mode(iface.xdp, prog_id)
        if mode is None:
            self.step(REPLACE_GONE, f"program {prog_id} to replace is no longer on the hook")
            return None
        if mode not in self.modes:
            raise HookBusy(f"replacing program {prog_id} atomically needs {mode} mode, which is not allowed "
                           f"({', '.join(self.modes)}); a mode change cannot be atomic",
                           prog_id=prog_id, attached_mode=mode, **self.ctx)
        rival = self.rival_link(iface, prog_id)
        if rival is not None:
            return self.take_link(iface, rival, mode)
        with self.prog_fd_for(mode) as new, self.node.pins.open_prog_id(prog_id) as old:
            want = self.node.links.prog_id(new.fd)
            try:
                self.node.netlink.attach(self.interface, new.fd, mode, expected_prog_fd=old.fd)
            except HookBusy as exc:
                raise self.busy(exc) from exc
            except AttachError as exc:
                if exc.errno in HOOK_OCCUPIED:      # the hook went empty meanwhile: place it afresh
                    self.step(REPLACE_GONE, f"program {prog_id} left the hook before the replace", exc.errno)
                    return None
                raise
            self.step(NETLINK_REPLACED, f"program {prog_id} -> {want} in {mode} mode (atomic)")
            if self.convert:
                return self.to_link(iface, mode, new, want, replaced=prog_id)
            return self.result(iface, mode, want, NETLINK, netlink_cause=REPLACED, replaced=prog_id)

    def rival_link(self, iface: Interface, prog_id: int) -> PinnedLink | None:
        """Another kube-xdp program's pinned link holding `prog_id` on this interface."""
        for link in self.node.pins.list_links():
            if link.program != self.program and link.interface == self.interface and link.prog_id == prog_id \
                    and link.ifindex == iface.index:
                return link
        return None

    def take_link(self, iface: Interface, rival: PinnedLink, mode: str) -> Placement:
        """Update another kube-xdp program's link to ours (its program expected), then
        rename its pin to ours: atomic, and the kernel still enforces the ownership."""
        with self.prog_fd_for(mode) as new, self.node.pins.open_prog_id(rival.prog_id) as old, \
                self.node.pins.open_link(rival.program, rival.interface) as link:
            want = self.node.links.prog_id(new.fd)
            try:
                self.node.links.update(link.fd, new.fd, old_prog_fd=old.fd, interface=self.interface)
            except BpfSyscallError as exc:
                raise self.update_error(exc, link_record(rival, iface)) from exc
        self.node.pins.move_link(rival.program, self.interface, self.program)
        self.step(LINK_TAKEN, f"link {rival.link_id} of {rival.program}: program {rival.prog_id} -> {want} in "
                              f"{mode} mode (atomic), its pin renamed to {self.program}'s")
        return self.result(iface, mode, want, LINK, link_id=rival.link_id, replaced=rival.prog_id)

    def busy(self, exc: HookBusy) -> HookBusy:
        """`exc`, naming the link that holds the hook when one does (netlink: EBUSY)."""
        if exc.errno != errno_mod.EBUSY or exc.prog_id is None or exc.link_id is not None:
            return exc
        iface = self.iface()
        holder = self.node.links.holding(iface.index, exc.prog_id)
        if holder is None:
            return exc
        return HookBusy(f"the XDP hook holds program {exc.prog_id} ({exc.attached_mode}) through bpf_link "
                        f"{holder.id}, not kube-xdp's: the kernel refuses to replace it",
                        prog_id=exc.prog_id, attached_mode=exc.attached_mode, link_id=holder.id,
                        errno=exc.errno, kernel_message=exc.kernel_message, **self.ctx)

    # -- a mode on an empty hook -------------------------------------------------------

    def try_mode(self, iface: Interface, mode: str) -> Placement | None:
        """Place in `mode`; None when the mode is refused (recorded in self.refused)."""
        try:
            new = self.prog_fd_for(mode)
        except (ProgramNotOffloadable, AttachError) as exc:
            if exc.reason not in MODE_REFUSALS:
                raise
            self.refuse(mode, exc.reason, exc.errno, _sentence(exc))
            return None
        with new:
            want = self.node.links.prog_id(new.fd)
            occupant = _occupant(iface.xdp, mode)
            if occupant is not None:
                return self.occupied(iface, mode, new, want, occupant)
            return self.create(iface, mode, new, want)

    def occupied(self, iface: Interface, mode: str, new: Fd, want: int, occupant: tuple[int, str]) -> Placement:
        prog, slot = occupant
        if prog == want and slot in self.modes:
            holder = self.node.links.holding(iface.index, prog)
            if holder is not None:
                self.step(KEPT, f"program {prog} is on the hook in {slot} mode through link {holder.id}, "
                                "which kube-xdp did not pin for this interface")
                return self.result(iface, slot, prog, LINK, link_id=holder.id, changed=False)
            self.step(KEPT, f"program {prog} already attached through netlink in {slot} mode")
            if self.convert and self.pin:
                return self.to_link(iface, slot, new, want, replaced=None)
            return self.result(iface, slot, prog, NETLINK, netlink_cause=ADOPTED, changed=False)
        if prog == want:
            raise HookBusy(f"program {prog}, the one to place, is attached through netlink in {slot} mode, which "
                           f"is not allowed ({', '.join(self.modes)}): a mode change is the caller's (remove, then "
                           "place)", prog_id=prog, attached_mode=slot, mode=mode, **self.ctx)
        holder = self.node.links.holding(iface.index, prog)
        raise HookBusy(f"the XDP hook holds program {prog} ({slot})"
                       + (f" through bpf_link {holder.id}" if holder else "") + ", which is not ours to replace",
                       prog_id=prog, attached_mode=slot, link_id=holder.id if holder else None, mode=mode,
                       **self.ctx)

    def create(self, iface: Interface, mode: str, new: Fd, want: int) -> Placement | None:
        for attempt in range(BUSY_RETRIES + 1):
            try:
                link = self.node.links.create(iface.index, new.fd, mode, interface=self.interface)
            except BpfSyscallError as exc:
                code = exc.errno
                if code in LINK_UNUSABLE:
                    self.step(LINK_REFUSED, f"BPF_LINK_CREATE in {mode} mode refused ({_errname(code)}): "
                                            "trying netlink", code)
                    return self.netlink_attach(iface, mode, new, want, code)
                if code == errno_mod.ENODEV:
                    raise InterfaceNotFound(f"interface {self.interface!r} vanished", errno=code, mode=mode,
                                            **self.ctx) from exc
                if code in HOOK_OCCUPIED:
                    state = self.node.netlink.read_xdp(self.interface)
                    occupant = _occupant(state, mode)
                    if occupant is None and code == errno_mod.EBUSY and attempt < BUSY_RETRIES:
                        self.step(RELEASE_WAIT, "EBUSY on an empty hook: a released link is being torn down", code)
                        time.sleep(BUSY_BACKOFF_S * 2**attempt)
                        continue
                    prog, slot = occupant or (None, None)
                    holder = self.node.links.holding(iface.index, prog) if prog else None
                    raise HookBusy(f"the XDP hook became busy: program {prog} ({slot})", prog_id=prog,
                                   attached_mode=slot, link_id=holder.id if holder else None, errno=code,
                                   mode=mode, **self.ctx) from exc
                raise AttachError(f"BPF_LINK_CREATE in {mode} mode failed: {os.strerror(code or 0)}",
                                  errno=code, mode=mode, **self.ctx) from exc
            return self.pin_new(iface, mode, link, want)
        raise AssertionError("unreachable")

    def pin_new(self, iface: Interface, mode: str, link: Fd, want: int) -> Placement:
        """Pin a link just made (or, with pin=False, hand its fd to the caller)."""
        try:
            link_id = self.node.links.info(link.fd).id
            if not self.pin:
                self.step(LINK_CREATED, f"link {link_id} in {mode} mode, not pinned: held by the caller's fd")
                return self.result(iface, mode, want, LINK, link_id=link_id, held=link)
            try:
                self.node.pins.pin_link(self.program, self.interface, link.fd)
            except PinError:
                self.node.links.detach(link.fd, interface=self.interface)   # never a link nothing owns
                raise
        except BaseException:
            link.close()
            raise
        link.close()
        self.step(LINK_CREATED, f"link {link_id} in {mode} mode, pinned")
        return self.result(iface, mode, want, LINK, link_id=link_id)

    def netlink_attach(self, iface: Interface, mode: str, new: Fd, want: int, link_errno: int) -> Placement | None:
        try:
            self.node.netlink.attach(self.interface, new.fd, mode)
        except HookBusy as exc:
            raise self.busy(exc) from exc
        except AttachError as exc:
            if exc.errno not in LINK_UNUSABLE:
                raise
            reason = reasons.OFFLOAD_UNSUPPORTED if mode == "offload" else reasons.DRIVER_MODE_UNSUPPORTED
            self.refuse(mode, reason, exc.errno, _sentence(exc))
            return None
        self.step(NETLINK_ATTACHED, f"program {want} in {mode} mode through netlink (links refused here: "
                                    f"{_errname(link_errno)})")
        return self.result(iface, mode, want, NETLINK, netlink_cause=LINKS_REFUSED, link_errno=link_errno)

    def to_link(self, iface: Interface, mode: str, new: Fd, want: int, *, replaced: int | None) -> Placement:
        """Turn a netlink attachment of `want` into a pinned link: a netlink detach, then a
        link create: the hook is EMPTY in between (a gap; see the module docstring)."""
        self.node.netlink.detach(self.interface, mode, expected_prog_fd=new.fd)
        self.step(NETLINK_DETACHED, f"program {want} detached from netlink to attach it by link (a gap)")
        placed = self.create(self.iface(), mode, new, want)
        if placed is None:
            raise NoModeAttached(f"re-attaching program {want} in {mode} mode after the conversion failed",
                                 refused=tuple(self.refused), **self.ctx)
        self.step(CONVERTED, f"program {want} now attached by {placed.attached_by} in {mode} mode")
        return dataclasses.replace(placed, replaced=replaced, steps=tuple(self.steps))

    def refuse(self, mode: str, reason: str, code: int | None, message: str) -> None:
        self.refused.append(Refusal(mode, reason, code, message))
        self.step(MODE_REFUSED, f"{mode}: {message}", code)


def place(node: Node, *, program: str, interface: str, modes: Sequence[str],
          prog_fd_for: Callable[[str], Fd], replace: int | None = None, pin: bool = True,
          convert: bool = False) -> Placement:
    """Put `program`'s program for the first acceptable mode of `modes` on `interface`.

    Inputs: `node` (netlink, links, pins of one node); `program` (the XdpProgram: its link
    is pinned as (program, interface)); `modes` (preferred first, then the allowed
    fallbacks; unique); `prog_fd_for(mode)` returns a NEW fd of the program to attach in
    that mode (place closes it; offload: the program built for this interface's device;
    raising ProgramNotOffloadable or AttachError(OffloadUnsupported) refuses the mode);
    `replace`: the id of a program this placement may replace (see the module docstring);
    `pin=False`: do not read or write pins (the inventory's probe): a link made is returned
    in `Placement.held`, and detaches when that fd is closed; `convert=True`: turn a
    netlink attachment of the wanted program (adopted, or just REPLACEd) into a link (a
    gap).

    `place` never loads or unloads a program: one built for a mode that was then refused
    (a device-bound offload build) is the caller's to release; `Placement.refused` /
    `NoModeAttached.refused` say which modes were refused, and why.

    Returns a Placement (read back from netlink). Raises InterfaceNotFound, HookBusy
    (the hook holds a program this placement may not replace: untouched), NoModeAttached
    (every mode refused: nothing attached), PinError (the link could not be pinned: it
    was detached), AttachError (an unexpected errno, or the read-back disagrees). Errors
    of `prog_fd_for` other than a mode refusal go through unchanged.
    """
    modes = tuple(modes)
    if not modes or len(set(modes)) != len(modes) or any(m not in MODES for m in modes):
        raise ValueError(f"modes must be distinct modes of {MODES}, preferred first: got {modes}")
    if node.pins is None and (pin or replace is not None or convert):
        raise ValueError("a node without a pin store can only place(pin=False) on an empty hook")
    placer = _Placer(node, program, interface, modes, prog_fd_for, pin, convert)
    iface = placer.iface()
    ours = placer.our_link(iface)
    if ours is not None:
        if ours.mode in modes:
            return placer.update_ours(iface, ours)
        drop_link(node, program, interface)
        placer.step(LINK_DETACHED, f"link {ours.link_id} in {ours.mode} mode, which is no longer allowed "
                                   f"({', '.join(modes)}): detached, pin dropped (a gap)")
        iface = placer.iface()
    if replace is not None:
        placed = placer.replace(iface, replace)
        if placed is not None:
            return placed
        iface = placer.iface()
    for mode in modes:
        placed = placer.try_mode(iface, mode)
        if placed is not None:
            return placed
    raise NoModeAttached(f"no allowed mode attached on {interface}: " + "; ".join(map(str, placer.refused)),
                         refused=tuple(placer.refused), **placer.ctx)


# --- removing -----------------------------------------------------------------------------


def drop_link(node: Node, program: str, interface: str) -> bool:
    """Detach our link pinned for (program, interface) (BPF_LINK_DETACH: the hook is free
    on return, whatever other fd holds the link), then unpin it. False when none."""
    try:
        fd = node.pins.open_link(program, interface)
    except PinError as exc:
        if exc.errno == errno_mod.ENOENT:
            return False
        raise
    with fd:
        node.links.detach(fd.fd, interface=interface)
        node.pins.unpin_link(program, interface)
    return True


def remove(node: Node, *, program: str, interface: str, netlink_prog_fd: int | None = None,
           link: bool = True, mode: str | None = None) -> Removal:
    """Take `program` off `interface` (see the module docstring). Raises HookBusy only if
    asked to detach a netlink program the hook does not hold while another program holds
    it in its mode (never touched); InterfaceNotFound never (a removed interface dropped
    its hook). `link=False`: leave our link alone and detach only the netlink-attached
    program `netlink_prog_fd` in `mode` (a second slot of the program beside the one its
    link holds: the same program may be in both)."""
    steps: list[Step] = []
    pinned = node.pins.read_link(program, interface) if link else None
    if pinned is not None:
        drop_link(node, program, interface)
        steps.append(Step(LINK_DETACHED, f"link {pinned.link_id} (program {pinned.prog_id}): detached, unpinned"))
        state = _read_or_none(node, interface)
        return Removal(interface, LINK, pinned.prog_id, None, pinned.link_id, state, tuple(steps))
    if netlink_prog_fd is None:
        return Removal(interface, None, state=_read_or_none(node, interface))
    state = _read_or_none(node, interface)
    if state is None:
        return Removal(interface, None)
    prog = node.links.prog_id(netlink_prog_fd)
    mode = mode if mode is not None and state.prog_id_for(mode) == prog else _slot_mode(state, prog)
    if mode is None:
        return Removal(interface, None, prog, state=state)
    try:
        state = node.netlink.detach(interface, mode, expected_prog_fd=netlink_prog_fd)
    except InterfaceNotFound:
        return Removal(interface, None, prog)
    steps.append(Step(NETLINK_DETACHED, f"program {prog} in {mode} mode"))
    return Removal(interface, NETLINK, prog, mode, None, state, tuple(steps))


def remove_held(node: Node, placement: Placement, *, prog_fd: int) -> None:
    """Take a `pin=False` placement (the inventory's probe) off again: its unpinned link
    (BPF_LINK_DETACH, then the fd closed), or, attached through netlink, the program
    `prog_fd` (netlink detach with it expected)."""
    if placement.held is not None:
        with placement.held:
            node.links.detach(placement.held.fd, interface=placement.interface)
        return
    if placement.attached_by == NETLINK and placement.changed:
        node.netlink.detach(placement.interface, placement.mode, expected_prog_fd=prog_fd)


def _read_or_none(node: Node, interface: str) -> XdpState | None:
    try:
        return node.netlink.read_xdp(interface)
    except InterfaceNotFound:
        return None


def _errname(code: int | None) -> str:
    if code is None:
        return "?"
    return "EOPNOTSUPP" if code == errno_mod.EOPNOTSUPP else errno_mod.errorcode.get(code, str(code))


def _sentence(exc: KernelError) -> str:
    """A refusal for people: the kernel's extended ack when it sent one, else the message
    and errno."""
    kmsg = getattr(exc, "kernel_message", None)
    text = exc.message
    if kmsg and kmsg not in text:
        text += f": {kmsg}"
    elif exc.errno and not kmsg:
        text += f" ({os.strerror(exc.errno)})"
    output = getattr(exc, "output", "")
    return text + (f": {output}" if output else "")
