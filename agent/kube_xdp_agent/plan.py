"""desired + observed -> actions (pure: no kernel, no API, no clock).

Observed is what the kernel shows: each interface's XDP hook (prog id and the mode read
back from netlink) and kube-xdp's pins (program -> digest -> prog id). A program on a
hook is *ours* only if its id is one of our pinned programs: the agent never detaches or
replaces anything else.

Per target interface (the program's wanted digest is `want`):
- our wanted program, in an allowed mode        -> Keep (adopted after a restart too),
  unless it is in a fallback mode the preferred modes were never tried against (the
  mode policy changed, e.g. generic-only back to native-first): then Reattach, trying
  the modes in order (a mode change cannot be atomic);
- our wanted program, in a mode no longer allowed-> Reattach (detach, attach: a gap);
- an older digest of the same program            -> Replace, atomically (REPLACE with the
  expected fd, same mode: no moment without a program), a fallback mode included (the
  fallback outcome still holds: the controller keeps the interface settled); if that mode
  is no longer allowed, Reattach;
- empty                                          -> Attach, trying the modes in order;
- another XdpProgram's program -> Takeover (atomic REPLACE with that program as the
  expected one, same mode) when this program outranks it (`Rank`: higher
  spec.priority; a tie goes to the older attachment on this node, then the lower name),
  else Conflict, untouched;
- a program not managed by kube-xdp (foreign) -> Conflict, untouched; except Takeover
  (atomic, same mode) when the spec allows it (`take_over`, spec.takeOver) or when this
  attachment last reported the interface ready with its own program (`held`): a foreign
  program that replaced ours behind our back is drift, repaired.
A takeover needing a mode the spec does not allow is a Conflict (a mode change cannot
be atomic). A takeover in offload mode replaces with the program built for the
interface's device (the kernel refuses a host program there); if it cannot be built the
executor reports a Conflict and leaves the hook. Interfaces carrying this program but no
longer targeted -> Detach.

A hook can hold a native/generic program and an offloaded one at once ('xdpmulti',
`Hook.offloaded`): an interface is planned on this program's slot when it has one (a
second slot of it there is detached: one mode per program and interface), else on the
occupant; cleanup, gc and re-pinning look at every slot.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping


@dataclasses.dataclass(frozen=True)
class Hook:
    """One interface's XDP hook as read back: the occupant (`prog_id`, `mode`; native or
    generic first), and `offloaded`, the program in the offload slot when another one sits
    in native or generic beside it (the kernel allows both at once: 'xdpmulti'). A program
    offloaded alone is the occupant."""
    interface: str
    prog_id: int | None
    mode: str | None          # 'native' | 'generic' | 'offload' | None, read back
    offloaded: int | None = None

    def slots(self) -> list[tuple[int, str]]:
        """Every (prog id, mode) on the hook: the occupant, then an offloaded one beside it."""
        out = [(self.prog_id, self.mode)] if self.prog_id and self.mode else []
        if self.offloaded and self.mode != "offload":
            out.append((self.offloaded, "offload"))
        return out


@dataclasses.dataclass(frozen=True)
class Observed:
    hooks: Mapping[str, Hook]                       # every interface of the node
    primary: str | None                             # default-route interface
    pins: Mapping[str, Mapping[str, int]]           # program -> digest12 -> prog id

    def owner(self, prog_id: int | None) -> tuple[str, str] | None:
        """(program, digest12) of one of our pinned programs, else None."""
        if prog_id:
            for program, digests in self.pins.items():
                for digest, pid in digests.items():
                    if pid == prog_id:
                        return program, digest
        return None


@dataclasses.dataclass(frozen=True)
class Keep:
    interface: str
    prog_id: int
    mode: str


@dataclasses.dataclass(frozen=True)
class Attach:
    interface: str
    modes: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Replace:
    interface: str
    old_digest: str
    mode: str


@dataclasses.dataclass(frozen=True)
class Reattach:
    interface: str
    old_digest: str
    old_mode: str
    modes: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Detach:
    interface: str
    digest: str
    mode: str


@dataclasses.dataclass(frozen=True)
class Conflict:
    interface: str
    prog_id: int
    mode: str | None
    owner: str | None          # another XdpProgram's name, or None for a foreign program
    detail: str = ""           # why it is not taken over (priority, mode)


@dataclasses.dataclass(frozen=True)
class Takeover:
    """Replace, atomically, a program that is not this program's: REPLACE with `prog_id`
    as the expected program, in its mode."""
    interface: str
    prog_id: int
    mode: str
    owner: str | None          # the XdpProgram it belongs to, None for a foreign program
    why: str                   # 'priority' | 'takeOver' | 'drift'


@dataclasses.dataclass(frozen=True)
class Rank:
    """Who wins an interface two XdpPrograms select: higher priority; a tie goes to the
    older attachment on this node (RFC 3339 creationTimestamp), then the lower name."""
    priority: int
    created: str
    name: str

    def outranks(self, other: "Rank") -> bool:
        return (-self.priority, self.created or "~", self.name) < (-other.priority, other.created or "~", other.name)


@dataclasses.dataclass(frozen=True)
class Repin:
    program: str
    digest: str
    prog_id: int


@dataclasses.dataclass(frozen=True)
class Unpin:
    program: str
    digest: str | None         # None: the whole program directory


Action = Keep | Attach | Replace | Reattach | Detach | Conflict | Takeover | Repin | Unpin


def plan_attach(*, program: str, want: str, targets: list[str], modes: tuple[str, ...],
                observed: Observed, rank: Rank | None = None, rivals: Mapping[str, Rank] | None = None,
                take_over: bool = False, held: frozenset[str] | set[str] = frozenset(),
                offloaded: Mapping[str, str] | None = None,
                settled: frozenset[str] | set[str] | None = None) -> list[Action]:
    """Actions that put digest `want` of `program` on exactly `targets`.

    `offloaded` maps an interface to the digest of the program built for offload on it
    (a device-bound object of its own): already in offload mode there -> Keep; an older
    offloaded version -> Reattach by policy (an offloaded program cannot be swapped for a
    host one in place).

    `rank` is this program's, `rivals` the other XdpPrograms' with an attachment on this
    node; `take_over` is spec.takeOver; `held` the interfaces this attachment last reported
    ready with its own program (its status); `settled` the interfaces whose current mode
    was the outcome of trying the modes in order (its status gives the fallback reason),
    None when unknown (every allowed mode is kept)."""
    want_id = observed.pins.get(program, {}).get(want)
    offloaded = offloaded or {}
    actions: list[Action] = []
    for name in targets:
        hook, extra = _slot_to_plan(observed.hooks.get(name) or Hook(name, None, None), observed, program, modes)
        actions.append(_plan_target(name, hook, program=program, want=want, want_id=want_id, modes=modes,
                                    observed=observed, rank=rank, rivals=rivals, take_over=take_over, held=held,
                                    offloaded=offloaded, settled=settled))
        actions += [Detach(name, observed.owner(pid)[1], mode) for pid, mode in extra]
    for name, hook in sorted(observed.hooks.items()):
        if name not in targets:
            actions += [Detach(name, observed.owner(pid)[1], mode) for pid, mode in _own_slots(hook, observed, program)]
    return actions


def _own_slots(hook: Hook, observed: Observed, program: str) -> list[tuple[int, str]]:
    return [(pid, mode) for pid, mode in hook.slots() if (observed.owner(pid) or ("",))[0] == program]


def _slot_to_plan(hook: Hook, observed: Observed, program: str,
                  modes: tuple[str, ...]) -> tuple[Hook, list[tuple[int, str]]]:
    """The one slot of an interface's hook to plan this program on, and this program's
    other slots there (to detach: one program, one mode per interface). This program's
    slot if it has one (in both: the earlier of `modes`), else the occupant."""
    ours = _own_slots(hook, observed, program)
    if not ours:
        return Hook(hook.interface, hook.prog_id, hook.mode), []
    rank = {m: i for i, m in enumerate(modes)}
    ours.sort(key=lambda slot: rank.get(slot[1], len(modes)))     # stable: the occupant first on a tie
    pid, mode = ours[0]
    return Hook(hook.interface, pid, mode), ours[1:]


def _plan_target(name: str, hook: Hook, *, program: str, want: str, want_id: int | None,
                 modes: tuple[str, ...], observed: Observed, rank: Rank | None, rivals: Mapping[str, Rank] | None,
                 take_over: bool, held: frozenset[str] | set[str], offloaded: Mapping[str, str],
                 settled: frozenset[str] | set[str] | None) -> Action:
    """The action for one target interface, planned on one slot of its hook."""
    owner = observed.owner(hook.prog_id)
    if hook.prog_id is None:
        return Attach(name, modes)
    if hook.mode == "offload" and owner is not None and owner[0] == program:
        if "offload" in modes and owner[1] == offloaded.get(name):
            return Keep(name, hook.prog_id, "offload")
        return Reattach(name, owner[1], "offload", modes)
    if owner == (program, want) and hook.prog_id == want_id:
        if hook.mode in modes and (hook.mode == modes[0] or settled is None or name in settled):
            return Keep(name, hook.prog_id, hook.mode)
        return Reattach(name, want, hook.mode, modes)
    if owner is not None and owner[0] == program:
        if hook.mode in modes:
            return Replace(name, owner[1], hook.mode)
        return Reattach(name, owner[1], hook.mode, modes)
    return _contest(name, hook, owner[0] if owner else None, modes, rank, rivals or {}, take_over, name in held)


def _contest(name: str, hook: Hook, other: str | None, modes: tuple[str, ...], rank: Rank | None,
             rivals: Mapping[str, Rank], take_over: bool, held: bool) -> Action:
    """A hook holding a program that is not this program's: take it over, or Conflict."""
    assert hook.prog_id is not None
    if other is not None:
        rival = rivals.get(other)
        if rank is None or rival is None:
            return Conflict(name, hook.prog_id, hook.mode, other)
        if not rank.outranks(rival):
            return Conflict(name, hook.prog_id, hook.mode, other,
                            f"it outranks this program (priority {rival.priority} vs {rank.priority}; "
                            "a tie goes to the older)")
        why = "priority"
    elif take_over or held:
        why = "takeOver" if take_over else "drift"
    else:
        return Conflict(name, hook.prog_id, hook.mode, None)
    if hook.mode not in modes:
        return Conflict(name, hook.prog_id, hook.mode, other,
                        f"taking it over would need {hook.mode} mode, which spec.mode/fallback do not allow")
    return Takeover(name, hook.prog_id, hook.mode, other, why)


def plan_repin(*, program: str, recorded: Mapping[int, str], observed: Observed) -> list[Action]:
    """Pins removed behind our back: `recorded` maps the prog ids this agent last reported
    for `program` (its own status) to their digest. A recorded program still attached to a
    hook of this node but no longer pinned is re-pinned (with its maps, contents intact)
    before anything else is planned, so it is recognised as ours again."""
    attached = {pid for h in observed.hooks.values() for pid, _ in h.slots()}
    pinned = set(observed.pins.get(program, {}).values())
    taken = {d for d in observed.pins.get(program, {})}
    return [Repin(program, digest, prog_id) for prog_id, digest in sorted(recorded.items())
            if prog_id in attached and prog_id not in pinned and digest not in taken
            and observed.owner(prog_id) is None]


def plan_cleanup(*, program: str, observed: Observed) -> list[Action]:
    """Actions that remove every trace of `program` from the node: detach it wherever it
    is attached (only where the hook holds one of its pinned programs), then unpin."""
    actions: list[Action] = []
    for name, hook in sorted(observed.hooks.items()):
        actions += [Detach(name, observed.owner(pid)[1], mode) for pid, mode in _own_slots(hook, observed, program)]
    if program in observed.pins:
        actions.append(Unpin(program, None))
    return actions


def plan_gc(*, program: str, keep: str | None, observed: Observed) -> list[Action]:
    """Unpin the program's digests that are neither `keep` nor attached anywhere."""
    attached = {observed.owner(pid) for h in observed.hooks.values() for pid, _ in h.slots()}
    return [Unpin(program, digest) for digest in sorted(observed.pins.get(program, {}))
            if digest != keep and (program, digest) not in attached]
