"""Run planned actions against the kernel layer: the one place the agent changes the
node. Each action yields a result; a failing action never stops the others (one bad
interface must not leave the rest half-configured), and nothing is reported that was not
read back from netlink."""

from __future__ import annotations

import dataclasses
import logging

from kube_xdp_api import reasons

from .kernel.errors import AttachError, HookBusy, InterfaceNotFound, KernelError
from .plan import Action, Attach, Conflict, Detach, Keep, Reattach, Repin, Replace, Takeover, Unpin

log = logging.getLogger("kube_xdp_agent.execute")

# An attach in offload mode refused by the device itself (not a busy hook, not a vanished one).
DEVICE_REFUSALS = frozenset({reasons.DRIVER_MODE_UNSUPPORTED, reasons.OFFLOAD_UNSUPPORTED,
                             reasons.PROGRAM_NOT_OFFLOADABLE})


@dataclasses.dataclass
class IfaceResult:
    interface: str
    ok: bool
    mode: str | None = None
    prog_id: int | None = None
    reason: str | None = None           # failure, or why the preferred mode was not used
    message: str = ""
    changed: bool = False               # the hook was written
    replaced: tuple | None = None       # (prog id, owner or None, why) of a program taken over
    swapped: bool = False               # an older version of this program replaced in place (same
                                        # mode, atomic): an update, not a new choice of mode
    moved: bool = False                 # this program detached and attached again by policy (Reattach)


@dataclasses.dataclass
class Outcome:
    interfaces: list[IfaceResult]
    detached: list[str]
    unpinned: list[str]
    errors: list[tuple[str, str]]        # (reason, message) of failures outside interfaces
    repinned: list[str] = dataclasses.field(default_factory=list)


class Executor:
    def __init__(self, netlink, pins, *, program: str, want: str | None = None, want_id: int | None = None,
                 offload_build=None, offload_refused=None):
        self.netlink = netlink
        self.pins = pins
        self.program = program
        self.want = want            # digest12 of the program to put on hooks
        self.want_id = want_id      # its prog id (from its pin)
        # iface -> (digest12, prog id) of the program built and pinned for offload on it;
        # raises ProgramNotOffloadable / AttachError(OffloadUnsupported) when it cannot be.
        self.offload_build = offload_build
        # (iface, error): the device refused to attach the program built for it (told so
        # the caller need not build it again for nothing).
        self.offload_refused = offload_refused

    def run(self, actions: list[Action]) -> Outcome:
        out = Outcome([], [], [], [])
        failed_detach: set[str] = set()
        for action in actions:
            try:
                if isinstance(action, Keep):
                    out.interfaces.append(IfaceResult(action.interface, True, action.mode, action.prog_id))
                elif isinstance(action, Attach):
                    out.interfaces.append(self._attach(action.interface, action.modes))
                elif isinstance(action, Replace):
                    out.interfaces.append(self._replace(action))
                elif isinstance(action, Reattach):
                    self._detach(action.interface, action.old_digest, action.old_mode)
                    res = self._attach(action.interface, action.modes)
                    res.moved = True
                    out.interfaces.append(res)
                elif isinstance(action, Detach):
                    self._detach(action.interface, action.digest, action.mode)
                    out.detached.append(action.interface)
                elif isinstance(action, Conflict):
                    who = f"XdpProgram {action.owner}" if action.owner else "a program not managed by kube-xdp"
                    why = f": {action.detail}" if action.detail else (
                        "" if action.owner else " (spec.takeOver: true would replace it)")
                    out.interfaces.append(IfaceResult(
                        action.interface, False, reason=reasons.CONFLICT,
                        message=f"{action.interface} already runs XDP program id {action.prog_id}"
                                f" ({action.mode or 'unknown'} mode) of {who}; left untouched{why}"))
                elif isinstance(action, Takeover):
                    out.interfaces.append(self._takeover(action))
                elif isinstance(action, Repin):
                    self.pins.repin(action.program, action.digest, action.prog_id)
                    out.repinned.append(f"{action.program}/{action.digest}")
                elif isinstance(action, Unpin):
                    if action.digest is None and failed_detach:
                        continue          # keep pins while a hook may still hold the program
                    if self.pins.unpin(action.program, action.digest):
                        out.unpinned.append(f"{action.program}/{action.digest or '*'}")
            except KernelError as e:
                name = getattr(action, "interface", None)
                log.warning("%s on %s failed: %s", type(action).__name__, name or action, e)
                if isinstance(action, Detach):
                    failed_detach.add(action.interface)
                if name is not None and not isinstance(action, Detach):
                    out.interfaces.append(IfaceResult(name, False, reason=e.reason, message=str(e)))
                else:
                    out.errors.append((e.reason, str(e)))
        return out

    # -- steps -----------------------------------------------------------------------
    def _attach(self, iface: str, modes: tuple[str, ...]) -> IfaceResult:
        """Attach in the first of `modes` the kernel accepts; offload uses the program built
        for the interface's device, the other modes the host program. Each refusal is kept
        (mode, the kernel's words) and reported when a later mode is used."""
        assert self.want is not None
        refused: list[str] = []
        first_reason = None
        for mode in modes:
            built = False
            try:
                if mode == "offload" and self.offload_build is not None:
                    digest, want_id = self.offload_build(iface)
                    built = True
                else:
                    digest, want_id = self.want, self.want_id
                with self.pins.open_prog_fd(self.program, digest) as fd:
                    state = self.netlink.attach(iface, fd.fd, mode)
            except HookBusy as e:
                return IfaceResult(iface, False, reason=reasons.CONFLICT, message=str(e))
            except (AttachError, KernelError) as e:
                if not isinstance(e, AttachError) and e.reason != reasons.PROGRAM_NOT_OFFLOADABLE:
                    raise
                if built and self.offload_refused is not None and e.reason in DEVICE_REFUSALS:
                    self.offload_refused(iface, e)
                reason = e.reason
                if mode == "offload" and reason not in (reasons.PROGRAM_NOT_OFFLOADABLE, reasons.OFFLOAD_UNSUPPORTED):
                    reason = reasons.OFFLOAD_UNSUPPORTED
                first_reason = first_reason or reason
                refused.append(f"{mode}: {getattr(e, 'kernel_message', None) or e}")
                continue
            return self._verified(iface, state, mode, changed=True, want_id=want_id,
                                  fallback=(first_reason, "; ".join(refused)) if refused else None)
        return IfaceResult(iface, False, reason=first_reason or reasons.ATTACH_FAILED,
                           message=f"no allowed mode attached on {iface}: " + "; ".join(refused))

    def _replace(self, action: Replace) -> IfaceResult:
        assert self.want is not None
        with self.pins.open_prog_fd(self.program, self.want) as new, \
                self.pins.open_prog_fd(self.program, action.old_digest) as old:
            state = self.netlink.attach(action.interface, new.fd, action.mode, expected_prog_fd=old.fd)
        res = self._verified(action.interface, state, action.mode, changed=True)
        res.swapped = res.ok
        return res

    def _takeover(self, action: Takeover) -> IfaceResult:
        """Atomic REPLACE of a program that is not ours: if the hook no longer holds
        `action.prog_id`, the kernel refuses (HookBusy / AttachFailed) and nothing changes.
        In offload mode the replacement is the program built for the interface's device
        (the kernel refuses a host program there); when it cannot be built, the hook is
        left as it is: a Conflict saying why (a mode change could not be atomic)."""
        assert self.want is not None
        digest, want_id = self.want, self.want_id
        if action.mode == "offload" and self.offload_build is not None:
            try:
                digest, want_id = self.offload_build(action.interface)
            except KernelError as e:
                if not isinstance(e, AttachError) and e.reason != reasons.PROGRAM_NOT_OFFLOADABLE:
                    raise
                who = f"XdpProgram {action.owner}" if action.owner else "a program not managed by kube-xdp"
                return IfaceResult(
                    action.interface, False, reason=reasons.CONFLICT,
                    message=f"{action.interface} runs XDP program id {action.prog_id} (offload mode) of {who}; "
                            f"left untouched: taking it over atomically needs this program offloaded to the "
                            f"device, which failed ({e.reason}): {e}")
        with self.pins.open_prog_fd(self.program, digest) as new, self.pins.open_prog_id(action.prog_id) as old:
            state = self.netlink.attach(action.interface, new.fd, action.mode, expected_prog_fd=old.fd)
        res = self._verified(action.interface, state, action.mode, changed=True, want_id=want_id)
        if res.ok:
            res.replaced = (action.prog_id, action.owner, action.why)
        return res

    def _detach(self, iface: str, digest: str, mode: str) -> None:
        with self.pins.open_prog_fd(self.program, digest) as fd:
            self.netlink.detach(iface, mode, expected_prog_fd=fd.fd)

    def _verified(self, iface, state, mode, *, changed, fallback=None, want_id=None) -> IfaceResult:
        """The result as read back from netlink: the wanted program in `mode`, or a failure."""
        want_id = want_id if want_id is not None else self.want_id
        got = state.prog_id_for(mode)
        if got != want_id:
            return IfaceResult(iface, False, reason=reasons.ATTACH_FAILED,
                               message=f"after attaching in {mode} mode netlink reports program {got} "
                                       f"({state.attached or 'none'}), expected {want_id}")
        res = IfaceResult(iface, True, mode, got, changed=changed)
        if fallback:
            res.reason, res.message = fallback[0], fallback_message(mode, fallback[1])
        return res


def fallback_message(mode: str, refusals: str) -> str:
    """An interface's status message when a later mode was used: the mode, then each
    refused mode with the kernel's words ("P: ...; Q: ..."), in the order tried."""
    return f"attached in {mode} mode; refused: {refusals}"


def fell_back_from(message: str, mode: str, preferred: str) -> bool:
    """Whether `message` (fallback_message) says `mode` was reached by trying `preferred` first."""
    return message.startswith(fallback_message(mode, f"{preferred}: "))


def interface_missing(exc: Exception) -> bool:
    return isinstance(exc, InterfaceNotFound)
