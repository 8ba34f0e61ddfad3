"""XdpState: which program holds the hook, by mode (decoding of IFLA_XDP itself:
tests/unit/test_agent_netlink_dump.py; real messages: tests/kernel/test_netlink.py)."""

from __future__ import annotations

import pytest

from kube_xdp_agent.kernel.netlink import XdpState


def test_prog_ids() -> None:
    state = XdpState(attached="native", prog_id=7, drv_prog_id=7)
    assert state.prog_id_for("native") == 7 and state.prog_id_for("generic") is None
    assert state.occupant == (7, "native")
    multi = XdpState(attached="multi", drv_prog_id=7, hw_prog_id=8)
    assert multi.prog_id is None and multi.occupant == (7, "native") and multi.prog_id_for("offload") == 8
    assert XdpState(attached="offload", prog_id=9, hw_prog_id=9).occupant == (9, "offload")
    assert XdpState().occupant == (None, None)


def test_unknown_mode_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        XdpState().prog_id_for("turbo")
