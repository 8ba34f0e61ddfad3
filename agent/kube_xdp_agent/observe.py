"""The kernel -> observed state (netlink hooks, default route, kube-xdp's pins).

`observe` reads it all from the kernel, every time. Reading is the agent's main idle
cost (pyroute2 decodes every link in Python; each pin is opened), so the control loop
shares one observation between the reconciles it runs back to back and reads again as
soon as one of them changed the kernel (`changes_kernel`): see controller.Agent._observe.
"""

from __future__ import annotations

from collections.abc import Iterable

from .plan import Action, Conflict, Hook, Keep, Observed

# Actions that only report what the observation showed; every other one writes a hook
# or a pin (even when it fails: a Reattach may have detached before its attach failed).
_READ_ONLY = (Keep, Conflict)


def observe(netlink, pins, *, primary: bool = True) -> Observed:
    """The node as the kernel shows it now. With `primary=False` the default route is not
    read (`Observed.primary` is then None): for callers that select no primary interface."""
    hooks = {}
    for iface in netlink.interfaces():
        prog_id, mode = iface.xdp.occupant
        # An offloaded program beside a native/generic one ('xdpmulti') is kept too: the
        # occupant alone would hide it from planning and cleanup.
        beside = iface.xdp.hw_prog_id if mode in ("native", "generic") else None
        hooks[iface.name] = Hook(iface.name, prog_id, mode, beside or None)
    pinned: dict[str, dict[str, int]] = {}
    for program in pins.list_programs():
        for p in pins.open_pinned(program):
            pinned.setdefault(program, {})[p.digest12] = p.prog_id
    return Observed(hooks=hooks, primary=netlink.default_route_interface() if primary else None, pins=pinned)


def changes_kernel(actions: Iterable[Action]) -> bool:
    """Whether running `actions` may leave the kernel other than observed before them."""
    return any(not isinstance(a, _READ_ONLY) for a in actions)
