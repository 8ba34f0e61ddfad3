"""The kernel -> observed state: interfaces' XDP hooks, the default route, kube-xdp's
pinned programs and its bpf_links (plain data, read once per observation).

Ownership is a kernel fact where a link holds the hook: a program on a hook through one
of kube-xdp's links (pinned under `<program>/links/<interface>`, or held open by this
agent while its pin is being repaired) belongs to that link's program, whatever else is
known about it. A program attached through netlink (a kernel or mode where links are
refused, an atomic takeover kept on netlink, an older agent's attachment) is kube-xdp's
only if its id is one of kube-xdp's pinned programs (`Observed.owner`), the guess that
links make unnecessary elsewhere.

`observe` reads it all from the kernel, every time. Reading is the agent's main idle
cost (every link decoded, each pin opened), so the node view shares one observation
between the reconciles it runs back to back and reads again as soon as one of them
changed the kernel (`changes_kernel`): see nodeview.NodeView.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .kernel.attach import link_record

if TYPE_CHECKING:
    from .kernel.bpffs import PinnedLink


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
class LinkView:
    """One of kube-xdp's XDP links: the (program, interface) it is pinned for, its ids,
    and where it is (attach.LinkRecord: 'attached' on that interface in `mode`,
    'defunct': its device is gone, 'elsewhere': on another device). `pinned` False: its
    pin was removed behind kube-xdp's back while this agent held the link open (the
    link, and so the program, kept running): to be pinned again."""
    program: str
    interface: str
    link_id: int
    prog_id: int
    where: str
    mode: str | None = None
    pinned: bool = True

    @property
    def alive(self) -> bool:
        return self.where == "attached"


@dataclasses.dataclass(frozen=True)
class Owner:
    """Whose a program on a hook is: `program` (kube-xdp's XdpProgram), the digest it is
    pinned under (None: its pin is gone), and how it holds the hook (`link`: the
    LinkView, None for netlink)."""
    program: str
    digest: str | None
    link: LinkView | None = None


@dataclasses.dataclass(frozen=True)
class Observed:
    hooks: Mapping[str, Hook]                       # every interface of the node
    primary: str | None                             # default-route interface
    pins: Mapping[str, Mapping[str, int]]           # program -> digest12 -> prog id
    links: tuple[LinkView, ...] = ()                # kube-xdp's links, every program

    def owner(self, prog_id: int | None) -> tuple[str, str] | None:
        """(program, digest12) of one of our pinned programs, else None: who owns a program
        attached through netlink (by its pin: a guess links make unnecessary)."""
        if prog_id:
            for program, digests in self.pins.items():
                for digest, pid in digests.items():
                    if pid == prog_id:
                        return program, digest
        return None

    def link_on(self, interface: str, prog_id: int | None, mode: str | None = None) -> LinkView | None:
        """Our link holding `prog_id` on `interface` (alive there; in `mode` if given: the
        same program may sit in a second slot through netlink), else None."""
        return next((v for v in self.links if v.alive and v.interface == interface and v.prog_id == prog_id
                     and mode in (None, v.mode)), None)

    def hook_owner(self, interface: str, prog_id: int | None, mode: str | None = None) -> Owner | None:
        """Whose `prog_id` on `interface` (in `mode`) is: the program of the link holding it
        (a kernel fact), else of the pin it was loaded under (netlink), else None (foreign)."""
        link = self.link_on(interface, prog_id, mode)
        if link is not None:
            digest = next((d for d, pid in self.pins.get(link.program, {}).items() if pid == prog_id), None)
            return Owner(link.program, digest, link)
        pinned = self.owner(prog_id)
        return Owner(pinned[0], pinned[1]) if pinned else None

    def links_of(self, program: str) -> list[LinkView]:
        return [v for v in self.links if v.program == program]

    def programs(self) -> set[str]:
        """Every program with pins or links on this node."""
        return set(self.pins) | {v.program for v in self.links}


def observe(netlink, pins, *, primary: bool = True,
            keep: Callable[[list[PinnedLink]], Sequence[PinnedLink]] | None = None) -> Observed:
    """The node as the kernel shows it now. With `primary=False` the default route is not
    read (`Observed.primary` is then None): for callers that select no primary interface.
    `keep(pinned_links) -> unpinned links`: the node view's LinkKeeper (holds our links
    open; returns those whose pin is gone)."""
    interfaces = netlink.interfaces()
    hooks = {}
    for iface in interfaces:
        prog_id, mode = iface.xdp.occupant
        # An offloaded program beside a native/generic one ('xdpmulti') is kept too: the
        # occupant alone would hide it from planning and cleanup.
        beside = iface.xdp.hw_prog_id if mode in ("native", "generic") else None
        hooks[iface.name] = Hook(iface.name, prog_id, mode, beside or None)
    pinned: dict[str, dict[str, int]] = {}
    for program in pins.list_programs():
        for p in pins.open_pinned(program):
            pinned.setdefault(program, {})[p.digest12] = p.prog_id
    links = list(pins.list_links())
    lost = list(keep(links)) if keep is not None else []
    by_name = {i.name: i for i in interfaces}
    views = tuple(_view(link, by_name.get(link.interface), pinned=True) for link in links) + \
        tuple(_view(link, by_name.get(link.interface), pinned=False) for link in lost)
    return Observed(hooks=hooks, primary=netlink.default_route_interface() if primary else None, pins=pinned,
                    links=views)


def _view(link: PinnedLink, iface, *, pinned: bool) -> LinkView:
    rec = link_record(link, iface)
    return LinkView(rec.program, rec.interface, rec.link_id, rec.prog_id, rec.where, rec.mode, pinned)


def changes_kernel(actions: Iterable[Any]) -> bool:
    """Whether running `actions` may leave the kernel other than observed before them:
    every action but the ones that only report what the observation showed (a Reattach
    may have detached before its attach failed)."""
    from .decide import READ_ONLY
    return any(not isinstance(a, READ_ONLY) for a in actions)
