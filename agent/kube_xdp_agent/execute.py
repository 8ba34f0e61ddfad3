"""Run decided actions against the kernel: the one place the agent changes the node.

Every change of a hook goes through the one attach function, kernel/attach.py (`place`:
our link updated in place, a link created and pinned in the first mode the kernel takes,
netlink only where links are refused, atomic replaces; `remove`: our link detached and
unpinned, or a netlink-attached program detached). This module adds no mode fallback and
no attach logic of its own; it maps each action to those calls and their outcome to a
structured result (`IfaceResult`) that becomes the interface's record.

Each action yields a result; a failing action never stops the others (one bad interface
must not leave the rest half-configured), and nothing is reported that was not read back
from netlink (attach.Placement is read back).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

from kube_xdp_api import reasons

from .decide import Action, Attach, Conflict, Detach, Keep, Reattach, Repin, RepinLink, Replace, Takeover, Unpin
from .kernel import attach
from .kernel.bpfsys import Fd
from .kernel.errors import HookBusy, InterfaceNotFound, KernelError
from .record import LINK, NETLINK, MODE_REFUSALS, Refused

log = logging.getLogger("kube_xdp_agent.execute")


@dataclasses.dataclass
class IfaceResult:
    """What one interface holds after an action, as read back, or why not."""
    interface: str
    ok: bool
    mode: str | None = None
    prog_id: int | None = None
    digest: str | None = None           # the digest12 of the program on the hook (ours)
    attached_by: str | None = None      # 'link' | 'netlink'
    link_id: int | None = None
    refused: tuple[Refused, ...] = ()   # the modes tried before `mode` (when `tried`)
    reason: str | None = None           # failure (catalogued)
    message: str = ""
    tried: bool = False                 # modes were tried in order: `refused` is this result's own
    changed: bool = False               # the hook was written
    replaced: tuple | None = None       # (prog id, owner or None, why) of a program taken over
    moved: bool = False                 # this program detached and attached again by policy (Reattach)


@dataclasses.dataclass
class Outcome:
    interfaces: list[IfaceResult] = dataclasses.field(default_factory=list)
    detached: list[str] = dataclasses.field(default_factory=list)
    unpinned: list[str] = dataclasses.field(default_factory=list)
    repinned: list[str] = dataclasses.field(default_factory=list)
    errors: list[tuple[str, str]] = dataclasses.field(default_factory=list)   # (reason, message) outside interfaces
    failed_detach: set[str] = dataclasses.field(default_factory=set)


# iface -> digest12 of the program built (and pinned) for that interface's device; raises
# ProgramNotOffloadable / AttachError(OffloadUnsupported) when it cannot be.
DeviceBuild = Callable[[str], str]
# (iface, refusal): the device refused to attach the program built for it.
DeviceRefused = Callable[[str, Refused], None]
# (program, iface) -> an fd of our link held open while its pin is gone, or None.
HeldLink = Callable[[str, str], "Fd | None"]


def catalogued(reason: str | None, default: str) -> str:
    """`reason` when the catalogue has it (a kernel-layer error's own reason), else `default`."""
    return reason if reason in reasons.CATALOGUE else default


class Executor:
    def __init__(self, node: attach.Node, *, program: str, want: str | None = None, modes: tuple[str, ...] = (),
                 device_build: DeviceBuild | None = None, device_refused: DeviceRefused | None = None,
                 held_link: HeldLink | None = None):
        self.node = node
        self.program = program
        self.want = want                   # digest12 of the host program to put on hooks
        self.modes = modes                 # the policy: preferred mode first (a replace that finds the
                                           # hook emptied meanwhile attaches afresh, in this order)
        self.device_build = device_build
        self.device_refused = device_refused
        self.held_link = held_link

    def run(self, actions: list[Action]) -> Outcome:
        out = Outcome()
        for action in actions:
            step = _STEPS[type(action)]
            try:
                step(self, action, out)
            except KernelError as e:
                self._failed(action, e, out)
        return out

    def _failed(self, action: Action, e: KernelError, out: Outcome) -> None:
        name = getattr(action, "interface", None)
        log.warning("%s of %s on %s failed: %s", type(action).__name__, self.program, name or "-", e)
        if isinstance(action, Detach):
            out.failed_detach.add(action.interface)
        if name is not None and not isinstance(action, (Detach, RepinLink)):
            out.interfaces.append(IfaceResult(name, False, reason=catalogued(e.reason, reasons.ATTACH_FAILED),
                                              message=str(e)))
        else:
            out.errors.append((catalogued(e.reason, reasons.DETACH_FAILED if isinstance(action, Detach)
                                          else reasons.PIN_FAILED), str(e)))

    # -- the steps, one per action ------------------------------------------------------
    def _keep(self, a: Keep, out: Outcome) -> None:
        out.interfaces.append(IfaceResult(a.interface, True, a.mode, a.prog_id, a.digest,
                                          LINK if a.link_id else NETLINK, a.link_id))

    def _attach(self, a: Attach, out: Outcome) -> None:
        out.interfaces.append(self._place(a.interface, a.modes))

    def _replace(self, a: Replace, out: Outcome) -> None:
        out.interfaces.append(self._place(a.interface, self.modes, replace=a.prog_id))

    def _reattach(self, a: Reattach, out: Outcome) -> None:
        self._remove(a.interface, a.prog_id, a.mode, by_link=a.by_link)
        res = self._place(a.interface, a.modes)
        res.moved = True
        out.interfaces.append(res)

    def _detach(self, a: Detach, out: Outcome) -> None:
        if self._remove(a.interface, a.prog_id, a.mode, by_link=a.by_link).detached_by is not None:
            out.detached.append(a.interface)

    def _conflict(self, a: Conflict, out: Outcome) -> None:
        who = f"XdpProgram {a.owner}" if a.owner else "a program not managed by kube-xdp"
        why = f": {a.detail}" if a.detail else ("" if a.owner else " (spec.takeOver: true would replace it)")
        out.interfaces.append(IfaceResult(
            a.interface, False, reason=reasons.CONFLICT,
            message=f"{a.interface} already runs XDP program id {a.prog_id} ({a.mode or 'unknown'} mode) of {who}; "
                    f"left untouched{why}"))

    def _takeover(self, a: Takeover, out: Outcome) -> None:
        """Atomic replace of a program that is not ours, in its mode. In offload mode the
        replacement is the program built for the interface's device (the kernel refuses a
        host program there); when it cannot be built, the hook is left as it is: a
        Conflict saying why (a mode change could not be atomic)."""
        if a.mode == "offload" and self.device_build is not None:
            try:
                self.device_build(a.interface)
            except KernelError as e:
                if e.reason not in MODE_REFUSALS:
                    raise
                who = f"XdpProgram {a.owner}" if a.owner else "a program not managed by kube-xdp"
                out.interfaces.append(IfaceResult(
                    a.interface, False, reason=reasons.CONFLICT,
                    message=f"{a.interface} runs XDP program id {a.prog_id} (offload mode) of {who}; left untouched: "
                            f"taking it over atomically needs this program offloaded to the device, which failed "
                            f"({e.reason}): {e}"))
                return
        res = self._place(a.interface, self.modes, replace=a.prog_id)
        if res.ok and res.changed:
            res.replaced = (a.prog_id, a.owner, a.why)
        out.interfaces.append(res)

    def _repin(self, a: Repin, out: Outcome) -> None:
        self.node.pins.repin(a.program, a.digest, a.prog_id)
        out.repinned.append(f"{a.program}/{a.digest}")

    def _repin_link(self, a: RepinLink, out: Outcome) -> None:
        fd = self.held_link(a.program, a.interface) if self.held_link else None
        if fd is None:
            return                          # released meanwhile: the next observation says so
        self.node.pins.pin_link(a.program, a.interface, fd.fd)
        out.repinned.append(f"{a.program}/links/{a.interface}")

    def _unpin(self, a: Unpin, out: Outcome) -> None:
        if a.digest is None and out.failed_detach:
            return                          # keep pins while a hook may still hold the program
        if self.node.pins.unpin(a.program, a.digest):
            out.unpinned.append(f"{a.program}/{a.digest or '*'}")

    # -- through the attach function ----------------------------------------------------
    def _place(self, iface: str, modes: tuple[str, ...], *, replace: int | None = None) -> IfaceResult:
        """attach.place, and its outcome as a result (a refusal of every mode, a busy hook
        or a vanished interface as a failed one)."""
        chosen: dict[str, str] = {}

        def prog_fd_for(mode: str) -> Fd:
            assert self.want is not None
            digest = self.device_build(iface) if mode == "offload" and self.device_build is not None else self.want
            chosen[mode] = digest
            return self.node.pins.open_prog_fd(self.program, digest)

        try:
            placed = attach.place(self.node, program=self.program, interface=iface, modes=modes,
                                  prog_fd_for=prog_fd_for, replace=replace)
        except attach.NoModeAttached as e:
            self._device_refusals(iface, e.refused, chosen)
            return IfaceResult(iface, False, reason=catalogued(e.reason, reasons.ATTACH_FAILED), message=e.message,
                               refused=_refused(e.refused), tried=True)
        except HookBusy as e:
            return IfaceResult(iface, False, reason=reasons.CONFLICT, message=str(e))
        except InterfaceNotFound as e:
            return IfaceResult(iface, False, reason=reasons.INTERFACE_NOT_FOUND, message=str(e))
        self._device_refusals(iface, placed.refused, chosen)
        fresh = placed.changed and placed.replaced is None          # placed by trying modes in order
        log.info("%s on %s: %s", self.program, iface,
                 "; ".join(f"{s.action}: {s.detail}" for s in placed.steps) or "nothing to do")
        return IfaceResult(iface, True, placed.mode, placed.prog_id, chosen.get(placed.mode), placed.attached_by,
                           placed.link_id, refused=_refused(placed.refused), tried=fresh or replace is None,
                           changed=placed.changed)

    def _device_refusals(self, iface: str, refused, chosen: dict[str, str]) -> None:
        """Tell the caller when the device refused to attach the program built for it
        (the build succeeded, the attach did not): not built again for nothing."""
        if self.device_refused is None or "offload" not in chosen:
            return
        for r in refused:
            if r.mode == "offload" and r.reason in MODE_REFUSALS:
                self.device_refused(iface, Refused(r.mode, r.reason, r.errno, r.message))

    def _remove(self, iface: str, prog_id: int | None, mode: str | None, *, by_link: bool) -> attach.Removal:
        """This program off `iface`: its link, or the netlink-attached `prog_id` in `mode`
        (only where the hook still holds it: what took its place meanwhile is left alone)."""
        if prog_id is None or by_link:
            return attach.remove(self.node, program=self.program, interface=iface)
        with self.node.pins.open_prog_id(prog_id) as fd:
            return attach.remove(self.node, program=self.program, interface=iface, netlink_prog_fd=fd.fd, link=False,
                                 mode=mode)


def _refused(refusals) -> tuple[Refused, ...]:
    return tuple(Refused(r.mode, r.reason, r.errno, r.message) for r in refusals)


_STEPS: dict[type, Callable[[Executor, Action, Outcome], None]] = {
    Keep: Executor._keep, Attach: Executor._attach, Replace: Executor._replace, Reattach: Executor._reattach,
    Detach: Executor._detach, Conflict: Executor._conflict, Takeover: Executor._takeover, Repin: Executor._repin,
    RepinLink: Executor._repin_link, Unpin: Executor._unpin,
}
