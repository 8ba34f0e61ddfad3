"""trafgen's command line: which send path each kind of flow gets (pure, no trafgen run)."""

import pytest

from kube_xdp_rig import traffic


def argv(**kw) -> list[str]:
    return traffic.Trafgen("src-ns", "eth0", "{ fill(0x00, 60) }", **kw).argv("/tmp/x.cfg")


def rate_of(args: list[str]) -> str | None:
    return args[args.index("--rate") + 1] if "--rate" in args else None


def test_an_unlimited_flow_uses_the_blocking_send_path():
    # a rate above what trafgen reaches: its shaper never waits, and it sends with sendto()
    assert rate_of(argv(seconds=1.0)) == f"{traffic.UNSHAPED_RATE}pps"


def test_a_limited_flow_is_sent_at_its_rate():
    assert rate_of(argv(count=500, rate=5000)) == "5000pps"


def test_only_an_explicit_tx_ring_flow_goes_without_a_rate():
    assert rate_of(argv(seconds=1.0, tx_ring=True)) is None


def test_a_rate_through_the_tx_ring_is_refused():
    with pytest.raises(ValueError, match="TX ring"):
        argv(seconds=1.0, rate=1000, tx_ring=True)


def test_unbounded_traffic_is_refused():
    with pytest.raises(ValueError, match="count or a duration"):
        argv()
