"""The agent's view of its node's kernel: the kernel handles of the node, the shared
observation, and the links it holds open.

- `NodeView.observe` reads the kernel (hooks, pins, links, default route: observe.observe)
  once for the reconciles the worker runs back to back, a resync tick's typically, and
  reads again as soon as one of them may have changed the kernel (`changed`), when the
  worker goes idle (`forget`), and after OBSERVATION_MAX_AGE: an idle tick reads the node
  once, whatever the number of attachments.
- `LinkKeeper` holds an fd of each of kube-xdp's pinned links. A link lives while a pin or
  an fd holds it: with the agent's fd, a link pin removed behind kube-xdp's back (an
  `rm -r` of the bpffs directory) does not detach the program; the observation reports the
  link unpinned, and the reconcile pins it again (decide.repairs). Without the agent (it
  is down), removing a link's pin detaches the program, as the kernel documents; the
  restarted agent attaches it again. The fds are never used to decide ownership: the
  pins and the kernel's link info are.

Worker thread only (the control loop's single worker): nothing here is locked.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from .kernel.bpffs import PinnedLink
from .kernel.bpfsys import Fd
from .kernel.errors import KernelError
from .observe import Observed, changes_kernel, observe

log = logging.getLogger("kube_xdp_agent.nodeview")

# An observation shared by back-to-back reconciles is read again after this many seconds
# even if none of them changed the kernel (a long batch never plans on an old view).
OBSERVATION_MAX_AGE = 1.0


class LinkKeeper:
    """(program, interface) -> (link id, an fd of it) for each of our pinned links."""

    def __init__(self, pins, links) -> None:
        self.pins, self.links = pins, links
        self._held: dict[tuple[str, str], tuple[int, Fd]] = {}

    def fd(self, program: str, interface: str) -> Fd | None:
        held = self._held.get((program, interface))
        return held[1] if held else None

    def sync(self, pinned: list[PinnedLink]) -> list[PinnedLink]:
        """Hold every live pinned link; let go of links detached or replaced; return the
        links held whose pin is gone (still running: to be pinned again)."""
        by_key = {(link.program, link.interface): link for link in pinned}
        by_id = {link.link_id: link for link in pinned}
        lost = []
        for key, (link_id, fd) in list(self._held.items()):
            now = by_key.get(key)
            if now is not None and now.link_id == link_id:
                continue
            del self._held[key]
            moved = by_id.get(link_id)
            if moved is not None:             # its pin renamed (a takeover by another program)
                self._hold((moved.program, moved.interface), link_id, fd)
                continue
            unpinned = self._unpinned(key, link_id, fd, replaced=now is not None)
            if unpinned is not None:
                self._held[key] = (link_id, fd)
                lost.append(unpinned)
        for key, link in by_key.items():
            if not link.defunct and self._held.get(key, (None,))[0] != link.link_id:
                self._open(key, link)
        return lost

    def _unpinned(self, key: tuple[str, str], link_id: int, fd: Fd, *, replaced: bool) -> PinnedLink | None:
        """A held link with no pin: still attached (returned), or let go (detached, or
        another link pinned in its place)."""
        try:
            info = self.links.info(fd.fd)
        except KernelError:
            info = None
        if info is None or info.ifindex == 0 or replaced:
            fd.close()
            return None
        log.warning("the pin of link %d (%s on %s) was removed behind kube-xdp's back; the agent holds it: "
                    "the program keeps running and the pin is restored", link_id, *key)
        return PinnedLink(program=key[0], interface=key[1], path="", link_id=link_id, prog_id=info.prog_id,
                          ifindex=info.ifindex)

    def _hold(self, key: tuple[str, str], link_id: int, fd: Fd) -> None:
        old = self._held.pop(key, None)
        if old is not None and old[1] is not fd:
            old[1].close()
        self._held[key] = (link_id, fd)

    def _open(self, key: tuple[str, str], link: PinnedLink) -> None:
        try:
            fd = self.pins.open_link(*key)
        except KernelError as e:              # unpinned meanwhile: the next observation sees it
            log.debug("cannot hold link %d of %s on %s: %s", link.link_id, *key, e)
            return
        self._hold(key, link.link_id, fd)

    def close(self) -> None:
        for _, fd in self._held.values():
            fd.close()
        self._held.clear()


class NodeView:
    """The node's kernel as the worker sees it (see the module docstring)."""

    def __init__(self, kernel, *, netns: str | None, bpffs: str) -> None:
        self.node = kernel.node(netns, bpffs)
        self.keeper = LinkKeeper(self.node.pins, self.node.links)
        self._observed: Observed | None = None
        self._observed_at = 0.0
        self._observed_primary = False        # whether its default route was read
        # program -> digest12 -> PinnedProgram as last opened: reused while the observation
        # shows the same prog id under each digest (a prog id's tag and pin paths never
        # change), opened again otherwise.
        self._pinned: dict[str, dict[str, Any]] = {}

    @property
    def netlink(self):
        return self.node.netlink

    @property
    def pins(self):
        return self.node.pins

    def observe(self, *, primary: bool = False) -> Observed:
        """The kernel as read at most OBSERVATION_MAX_AGE ago and unchanged by this agent
        since (else read now); with `primary`, its default route too (read once per
        observation, only when an attachment selects the primary interface)."""
        now = time.monotonic()
        if self._observed is None or now - self._observed_at > OBSERVATION_MAX_AGE:
            self._observed = observe(self.netlink, self.pins, primary=primary, keep=self.keeper.sync)
            self._observed_at, self._observed_primary = now, primary
        elif primary and not self._observed_primary:
            self._observed = dataclasses.replace(self._observed, primary=self.netlink.default_route_interface())
            self._observed_primary = True
        return self._observed

    def forget(self) -> None:
        """The kernel may have changed (by this agent, or while it idled): read it again."""
        self._observed = None

    def changed(self, actions: list) -> None:
        """Forget the observation if `actions` (run, or attempted) may have changed the kernel."""
        if changes_kernel(actions):
            self.forget()

    def own_pins(self, program: str, observed: Observed) -> dict[str, Any]:
        """digest12 -> PinnedProgram of `program`'s pins: opened again only when `observed`
        (read from the kernel) shows other digests or prog ids than those opened last."""
        ids = dict(observed.pins.get(program, {}))
        known = self._pinned.get(program)
        if known is None or {d: p.prog_id for d, p in known.items()} != ids:
            known = {p.digest12: p for p in self.pins.open_pinned(program)}
            self._pinned[program] = known
        return dict(known)

    def ifindex(self, interface: str) -> int | None:
        """The interface's index now, None when it is gone."""
        try:
            return self.netlink.interface(interface).index
        except KernelError:
            return None

    def drop_program(self, program: str) -> None:
        """Forget what is cached about a program removed from the node."""
        self._pinned.pop(program, None)

    def close(self) -> None:
        self.keeper.close()
        close = getattr(self.netlink, "close", None)
        if close is not None:
            close()
