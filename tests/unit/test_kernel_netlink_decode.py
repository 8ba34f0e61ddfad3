"""Decoding IFLA_XDP as pyroute2 presents it (real messages: tests/kernel/test_netlink.py)."""

from __future__ import annotations

import pytest

from kube_xdp_agent.kernel.netlink import XdpState, xdp_state_from_link


class Link:
    """Stands for a pyroute2 link message: `get(("xdp", attr))` lookups."""

    def __init__(self, **xdp: object) -> None:
        self.xdp = xdp

    def get(self, path: tuple[str, str]) -> object:
        assert path[0] == "xdp"
        return self.xdp.get(path[1])


@pytest.mark.parametrize(
    ("raw", "mode"),
    [(None, None), ("xdp", "native"), ("xdpgeneric", "generic"), ("xdpoffload", "offload"),
     ("xdpmulti", "multi"), (1, "native"), (2, "generic"), (3, "offload"), (4, "multi"), (0, None)],
)
def test_attached_modes(raw: object, mode: str | None) -> None:
    assert xdp_state_from_link(Link(xdp_attached=raw)).attached == mode


def test_unknown_attached_value_is_not_reported_as_a_mode() -> None:
    assert xdp_state_from_link(Link(xdp_attached=9)).attached == "unknown(9)"


def test_prog_ids() -> None:
    state = xdp_state_from_link(Link(xdp_attached="xdp", xdp_prog_id=7, xdp_drv_prog_id=7))
    assert state == XdpState(attached="native", prog_id=7, drv_prog_id=7)
    assert state.prog_id_for("native") == 7 and state.prog_id_for("generic") is None
    assert state.occupant == (7, "native")
    multi = xdp_state_from_link(Link(xdp_attached="xdpmulti", xdp_drv_prog_id=7, xdp_hw_prog_id=8))
    assert multi.prog_id is None and multi.occupant == (7, "native") and multi.hw_prog_id == 8
    assert XdpState().occupant == (None, None)


def test_unknown_mode_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        XdpState().prog_id_for("turbo")
