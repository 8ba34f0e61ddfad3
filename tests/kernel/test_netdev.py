"""xdp-features from the netdev generic-netlink family (kernel/netdev.py) on the real kernel.

Nothing else on this machine reads the family (iproute2 6.1 predates it), so the answers
are checked against what the kernel then DOES: a device reporting `basic` takes native
XDP, one reporting nothing refuses it; and against the kernel's documented reactions
(a veth whose peer runs native XDP gains ndo-xmit). Devices are keyed by the ifindex of
the namespace the socket was opened in.
"""

from __future__ import annotations

import errno

import pytest

from kube_xdp_agent.kernel import AttachError, Netlink
from kube_xdp_agent.kernel.netdev import FEATURE_NAMES, Netdev, features_of, modes_of
from kube_xdp_agent.kernel.errors import NetnsNotFound

from .conftest import run

pytestmark = pytest.mark.kernel


def test_features_of_a_namespaces_devices(netns_pair) -> None:
    with Netlink(netns_pair.ns) as nl:
        by_index = {i.index: i.name for i in nl.interfaces()}
    features = Netdev(netns_pair.ns).xdp_features()
    assert features is not None, "this kernel (6.3+) has the netdev family"
    assert set(features) == set(by_index)                     # the namespace's devices, by its ifindex
    veth = next(f for i, f in features.items() if by_index[i] == netns_pair.ns_if)
    lo = next(f for i, f in features.items() if by_index[i] == "lo")
    assert {"basic", "redirect", "rx-sg"} <= set(veth.features) and veth.modes == ("native", "generic")
    assert lo.features == () and lo.mask == 0 and lo.modes == ("generic",)


def test_the_features_say_what_the_kernel_then_does(netns_pair, pass_progs) -> None:
    """`basic` -> native attaches; none -> native refused (EOPNOTSUPP); a veth gains ndo-xmit
    while its peer runs native XDP (veth's own rule), and loses it after."""
    prog = pass_progs[0]
    run("ip", "-n", netns_pair.ns, "link", "add", "kxa0", "type", "veth", "peer", "name", "kxa1")
    run("ip", "-n", netns_pair.ns, "link", "set", "kxa0", "up")
    run("ip", "-n", netns_pair.ns, "link", "set", "kxa1", "up")
    with Netlink(netns_pair.ns) as nl:
        a0, a1, lo = nl.interface("kxa0"), nl.interface("kxa1"), nl.interface("lo")
        before = Netdev(netns_pair.ns).xdp_features()
        assert "native" in before[a1.index].modes and "native" not in before[lo.index].modes
        assert "ndo-xmit" not in before[a0.index].features
        with pytest.raises(AttachError) as refused:
            nl.attach("lo", prog.prog_fd, "native")
        assert refused.value.errno == errno.EOPNOTSUPP
        nl.attach("kxa1", prog.prog_fd, "native")
        try:
            during = Netdev(netns_pair.ns).xdp_features()
            assert {"ndo-xmit", "ndo-xmit-sg"} <= set(during[a0.index].features)
        finally:
            nl.detach("kxa1", "native", expected_prog_fd=prog.prog_fd)
        assert "ndo-xmit" not in Netdev(netns_pair.ns).xdp_features()[a0.index].features


def test_host_namespace_and_missing_namespace() -> None:
    with Netlink() as nl:
        host = {i.index for i in nl.interfaces()}
    assert set(Netdev().xdp_features()) == host
    with pytest.raises(NetnsNotFound):
        Netdev("kxt-no-such-netns").xdp_features()


def test_feature_names_and_modes() -> None:
    assert FEATURE_NAMES == ("basic", "redirect", "ndo-xmit", "xsk-zerocopy", "hw-offload", "rx-sg", "ndo-xmit-sg")
    assert features_of(127) == FEATURE_NAMES and features_of(1 << 10) == ()    # a newer kernel's bit: ignored
    assert modes_of(("hw-offload", "basic")) == ("offload", "native", "generic")
    assert modes_of(("hw-offload",)) == ("offload", "generic") and modes_of(()) == ("generic",)
