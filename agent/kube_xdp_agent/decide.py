"""desired + observed + record -> actions (pure: no kernel, no API, no clock).

Inputs are plain data: `Wanted` (the attachment's spec, resolved against the node: the
digest to run, the target interfaces, the modes in order, the ranks of the programs
contending for interfaces), `observe.Observed` (hooks, pins and kube-xdp's links, read
from the kernel) and the record (`record.IfaceRecord` per interface: what this agent
last reported, read from the attachment's status). The executor (execute.py) runs the
actions, in order, through the one attach function (kernel/attach.py).

A reconcile calls, in this order: `repairs` (pins removed behind our back), then, once
the wanted program is built and pinned, `decide` (the interfaces), then `collect` (old
versions no longer used). A deletion calls `cleanup`.

Whose a program on a hook is (observe.Observed.hook_owner): the program of the kube-xdp
link holding it (a kernel fact: the kernel refuses other tools' netlink detach or replace
of it), else of the pin it was loaded under (attached through netlink), else nobody's
(foreign). The agent never detaches or replaces a program that is not this program's
unless a rule below says so, and then only atomically.

Per target interface (the slot planned: this program's if it has one there, else the
occupant), with `want` the wanted digest (for offload mode the program built for that
interface's device):
- empty                                          -> Attach, trying the modes in order;
- this program, digest `want`, an allowed mode   -> Keep (adopted after a restart too:
  nothing re-attached), unless it is in a fallback mode the record does not show as the
  outcome of trying the preferred modes first under the same policy (the policy
  changed, e.g. generic-only back to native-first): then Reattach;
- this program, another digest, an allowed mode  -> Replace: atomic (BPF_LINK_UPDATE of
  our link with the old program expected; a netlink REPLACE where it is attached through
  netlink), same mode, a fallback mode included (its record is carried);
- this program in a mode no longer allowed       -> Reattach (remove, attach: a gap, the
  only way to change a mode);
- another XdpProgram's program -> Takeover (atomic: BPF_LINK_UPDATE of its link and the
  pin renamed, or netlink REPLACE) when this program outranks it (`Rank`: higher
  spec.priority; a tie goes to the older attachment on this node, then the lower name),
  else Conflict, untouched;
- a program not managed by kube-xdp (foreign) -> Conflict, untouched; except Takeover
  (atomic, same mode) when the spec allows it (spec.takeOver) or when the record shows
  the interface ready with this program (a foreign program that replaced ours while our
  link was gone, or on netlink, is drift: repaired).
A takeover needing a mode the spec does not allow is a Conflict (a mode change cannot be
atomic). A foreign bpf_link (not pinned by kube-xdp) cannot be taken over at all: the
kernel refuses, and the executor reports the Conflict. Interfaces carrying this program
(or a link of it) but no longer targeted -> Detach.

A hook can hold a native/generic program and an offloaded one at once ('xdpmulti',
`Hook.offloaded`): an interface is planned on this program's slot when it has one (a
second slot of it there is detached: one mode per program and interface), else on the
occupant; cleanup, collection and repairs look at every slot.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from .observe import Hook, Observed, Owner
from .record import IfaceRecord


# -- actions (plain data) -------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Keep:
    interface: str
    prog_id: int
    mode: str
    digest: str | None
    link_id: int | None = None     # our link holding it; None: attached through netlink


@dataclasses.dataclass(frozen=True)
class Attach:
    interface: str
    modes: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Replace:
    """An older version of this program, replaced atomically in its mode."""
    interface: str
    prog_id: int
    mode: str


@dataclasses.dataclass(frozen=True)
class Reattach:
    """This program removed from the hook, then attached again trying `modes` in order."""
    interface: str
    prog_id: int
    mode: str
    modes: tuple[str, ...]
    by_link: bool


@dataclasses.dataclass(frozen=True)
class Detach:
    """This program taken off `interface`: its link (`by_link`), or the netlink-attached
    program `prog_id` (None: only a link, defunct or on another device)."""
    interface: str
    prog_id: int | None
    mode: str | None
    by_link: bool


@dataclasses.dataclass(frozen=True)
class Conflict:
    interface: str
    prog_id: int
    mode: str | None
    owner: str | None          # another XdpProgram's name, or None for a foreign program
    detail: str = ""           # why it is not taken over (priority, mode)


@dataclasses.dataclass(frozen=True)
class Takeover:
    """Replace, atomically, a program that is not this program's, in its mode."""
    interface: str
    prog_id: int
    mode: str
    owner: str | None          # the XdpProgram it belongs to, None for a foreign program
    why: str                   # 'priority' | 'takeOver' | 'drift'


@dataclasses.dataclass(frozen=True)
class Repin:
    """A program of ours still running (attached) whose pin was removed: pinned again
    from the kernel's object (by id), maps and their contents kept."""
    program: str
    digest: str
    prog_id: int


@dataclasses.dataclass(frozen=True)
class RepinLink:
    """Our link whose pin was removed while this agent held it open: pinned again."""
    program: str
    interface: str
    link_id: int


@dataclasses.dataclass(frozen=True)
class Unpin:
    program: str
    digest: str | None         # None: the whole program directory (its links included)


Action = Keep | Attach | Replace | Reattach | Detach | Conflict | Takeover | Repin | RepinLink | Unpin
# Actions that only report what the observation showed (observe.changes_kernel).
READ_ONLY = (Keep, Conflict)


@dataclasses.dataclass(frozen=True)
class Rank:
    """Who wins an interface two XdpPrograms select: higher priority; a tie goes to the
    older attachment on this node (RFC 3339 creationTimestamp), then the lower name."""
    priority: int
    created: str
    name: str

    def outranks(self, other: Rank) -> bool:
        return (-self.priority, self.created or "~", self.name) < (-other.priority, other.created or "~", other.name)


@dataclasses.dataclass(frozen=True)
class Wanted:
    """The attachment's spec resolved against the node: put digest `digest` of `program`
    on exactly `targets`, trying `modes` in order. `offloaded` maps an interface to the
    digest of the program built for offload on its device (offload in `modes` only);
    `rank` is this program's, `rivals` the other XdpPrograms' with an attachment on this
    node; `take_over` is spec.takeOver."""
    program: str
    digest: str
    targets: tuple[str, ...]
    modes: tuple[str, ...]
    rank: Rank | None = None
    rivals: Mapping[str, Rank] = dataclasses.field(default_factory=dict)
    take_over: bool = False
    offloaded: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def digest_for(self, interface: str, mode: str | None) -> str | None:
        """The digest that should run on `interface` in `mode`."""
        return self.offloaded.get(interface) if mode == "offload" else self.digest


Record = Mapping[str, IfaceRecord]


# -- the interfaces -------------------------------------------------------------------
def decide(wanted: Wanted, observed: Observed, record: Record) -> list[Action]:
    """The actions that put `wanted` on exactly its targets (see the module docstring)."""
    actions: list[Action] = []
    program = wanted.program
    for name in wanted.targets:
        hook, extra = _slot_to_plan(observed.hooks.get(name) or Hook(name, None, None), observed, program,
                                    wanted.modes)
        actions.append(_target(name, hook, wanted, observed, record.get(name)))
        actions += [_detach(name, pid, mode, observed) for pid, mode in extra]
    for name, hook in sorted(observed.hooks.items()):
        if name not in wanted.targets:
            actions += [_detach(name, pid, mode, observed) for pid, mode in _own_slots(hook, observed, program)]
    actions += _stray_links(program, observed, keep=set(wanted.targets))
    return actions


def _target(name: str, hook: Hook, wanted: Wanted, observed: Observed, rec: IfaceRecord | None) -> Action:
    """The action for one target interface, planned on one slot of its hook."""
    if hook.prog_id is None or hook.mode is None:
        return Attach(name, wanted.modes)
    owner = observed.hook_owner(name, hook.prog_id, hook.mode)
    if owner is None or owner.program != wanted.program:
        return _contest(name, hook, owner, wanted, held=rec is not None and rec.ready and bool(rec.prog_id))
    by_link = owner.link is not None
    if hook.mode not in wanted.modes:
        return Reattach(name, hook.prog_id, hook.mode, wanted.modes, by_link)
    want = wanted.digest_for(name, hook.mode)
    if want is None or owner.digest != want:
        return Replace(name, hook.prog_id, hook.mode)
    if hook.mode == wanted.modes[0] or (rec is not None and rec.mode == hook.mode and rec.settled(wanted.modes)):
        return Keep(name, hook.prog_id, hook.mode, want, owner.link.link_id if owner.link else None)
    return Reattach(name, hook.prog_id, hook.mode, wanted.modes, by_link)


def _contest(name: str, hook: Hook, owner: Owner | None, wanted: Wanted, *, held: bool) -> Action:
    """A hook holding a program that is not this program's: take it over, or Conflict."""
    assert hook.prog_id is not None and hook.mode is not None
    other = owner.program if owner else None
    if other is not None:
        rival = wanted.rivals.get(other)
        if wanted.rank is None or rival is None:
            return Conflict(name, hook.prog_id, hook.mode, other)
        if not wanted.rank.outranks(rival):
            return Conflict(name, hook.prog_id, hook.mode, other,
                            f"it outranks this program (priority {rival.priority} vs {wanted.rank.priority}; "
                            "a tie goes to the older)")
        why = "priority"
    elif wanted.take_over or held:
        why = "takeOver" if wanted.take_over else "drift"
    else:
        return Conflict(name, hook.prog_id, hook.mode, None)
    if hook.mode not in wanted.modes:
        return Conflict(name, hook.prog_id, hook.mode, other,
                        f"taking it over would need {hook.mode} mode, which spec.mode/fallback do not allow")
    return Takeover(name, hook.prog_id, hook.mode, other, why)


def _own_slots(hook: Hook, observed: Observed, program: str) -> list[tuple[int, str]]:
    return [(pid, mode) for pid, mode in hook.slots()
            if (observed.hook_owner(hook.interface, pid, mode) or Owner("", None)).program == program]


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


def _detach(name: str, prog_id: int, mode: str, observed: Observed) -> Detach:
    return Detach(name, prog_id, mode, by_link=observed.link_on(name, prog_id, mode) is not None)


def _stray_links(program: str, observed: Observed, *, keep: set[str]) -> list[Action]:
    """Detach for this program's links that hold no hook of this namespace (their device
    is gone, or the interface was renamed or moved) on interfaces not in `keep` (on a
    target, the attach drops such a link itself)."""
    return [Detach(v.interface, None, None, by_link=True) for v in observed.links_of(program)
            if not v.alive and v.interface not in keep]


# -- repairs, collection, cleanup ---------------------------------------------------------
def repairs(program: str, observed: Observed, record: Record) -> list[Action]:
    """Pins removed behind our back, planned before anything else so that what is ours is
    recognised as ours: our links held open while their pin was removed (RepinLink), and
    the programs the record reports (progId, digest) still attached on this node, or held
    by one of our links, but no longer pinned (Repin, maps and contents intact)."""
    actions: list[Action] = [RepinLink(v.program, v.interface, v.link_id) for v in observed.links_of(program)
                             if not v.pinned]
    running = {pid for h in observed.hooks.values() for pid, _ in h.slots()} | \
        {v.prog_id for v in observed.links_of(program)}
    taken = set(observed.pins.get(program, {}))
    for rec in sorted(record.values(), key=lambda r: r.name):
        if rec.prog_id and rec.digest and rec.prog_id in running and rec.digest not in taken \
                and observed.owner(rec.prog_id) is None:
            actions.append(Repin(program, rec.digest, rec.prog_id))
            taken.add(rec.digest)
    return actions


def collect(program: str, keep: set[str], observed: Observed) -> list[Action]:
    """Unpin the program's digests that are not in `keep` and run nowhere (no hook slot,
    none of its links)."""
    running = {pid for h in observed.hooks.values() for pid, _ in h.slots()} | \
        {v.prog_id for v in observed.links_of(program)}
    return [Unpin(program, digest) for digest, pid in sorted(observed.pins.get(program, {}).items())
            if digest not in keep and pid not in running]


def cleanup(program: str, observed: Observed) -> list[Action]:
    """Every trace of `program` removed from the node: its links pinned again where this
    agent holds one whose pin was removed (so that it can be detached), then detached
    wherever it runs (its links; netlink-attached only where the hook holds one of its
    pinned programs), then its pin directory removed."""
    actions: list[Action] = [RepinLink(v.program, v.interface, v.link_id) for v in observed.links_of(program)
                             if not v.pinned]
    for name, hook in sorted(observed.hooks.items()):
        actions += [_detach(name, pid, mode, observed) for pid, mode in _own_slots(hook, observed, program)]
    actions += _stray_links(program, observed, keep=set())
    if program in observed.programs():
        actions.append(Unpin(program, None))
    return actions
