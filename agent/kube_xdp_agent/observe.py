"""The kernel -> observed state (netlink hooks, default route, kube-xdp's pins)."""

from __future__ import annotations

from .plan import Hook, Observed


def observe(netlink, pins) -> Observed:
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
    return Observed(hooks=hooks, primary=netlink.default_route_interface(), pins=pinned)
