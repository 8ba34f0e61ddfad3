"""Node inventory on netdevsim (lab guest, kernel 6.1: no netdev family, so the agent attach-probes):
offload probed for real, refusals reported."""

from __future__ import annotations

import errno

from kube_xdp_agent.inventory import SUPPORTED, UNSUPPORTED, probe_interface, probe_node
from kube_xdp_agent.kernel import Netlink


def test_netdevsim_supports_every_mode(nsim, measure) -> None:
    with Netlink() as nl:
        inv = probe_node(nl)
        iface = inv.interface(nsim.ifname)
        assert iface is not None and iface.driver == "netdevsim"
        assert iface.modes == ("offload", "native", "generic")
        assert nl.read_xdp(nsim.ifname).attached is None  # probes leave nothing behind
    assert inv.kernel_release.endswith("-kube-xdp-lab")
    assert inv.headers.found and inv.headers.path.endswith("/headers")
    assert "offload=1" in inv.mode_summary()
    status = inv.to_status()
    item = next(i for i in status["interfaces"] if i["name"] == nsim.ifname)
    assert {k: item[k] for k in ("name", "driver", "modes", "attached", "modesFrom")} == {
        "name": nsim.ifname, "driver": "netdevsim", "modes": ["offload", "native", "generic"], "attached": [],
        "modesFrom": "probe"}


def test_refusing_device_is_reported_unsupported(nsim) -> None:
    nsim.knob("bpf_xdpoffload_accept", "N")
    with Netlink() as nl:
        iface = probe_interface(nl, nsim.ifname)
    off = iface.probe("offload")
    assert off.result == UNSUPPORTED and off.errno == errno.EOPNOTSUPP
    assert off.detail.endswith("XDP offload disabled in DebugFS")  # the kernel's extack
    assert iface.modes == ("native", "generic")


def test_device_refusing_bound_programs(nsim) -> None:
    """bpf_bind_accept=N: no program can even be loaded for the device."""
    nsim.knob("bpf_bind_accept", "N")
    with Netlink() as nl:
        iface = probe_interface(nl, nsim.ifname, modes=("offload",))
    off = iface.probe("offload")
    assert off.result == UNSUPPORTED and off.errno == errno.EOPNOTSUPP and "bound to" in off.detail


def test_probe_in_a_named_namespace(nsim_in_netns) -> None:
    netns, port = nsim_in_netns
    with Netlink(netns) as nl:
        inv = probe_node(nl)
    assert {i.name for i in inv.interfaces} == {"lo", port.ifname}
    iface = inv.interface(port.ifname)
    assert iface.probe("offload").result == SUPPORTED
    assert iface.modes == ("offload", "native", "generic")


def test_a_kernel_without_the_netdev_family_is_probed(nsim) -> None:
    """The lab's 6.1 kernel predates the netdev family (6.3): no xdp-features to read, so
    the inventory's default ('auto') attach-probes, as before; the status says so."""
    from kube_xdp_agent.kernel.netdev import Netdev

    assert Netdev().xdp_features() is None
    with Netlink() as nl:
        assert nl.xdp_features() is None
        inv = probe_node(nl)
        assert nl.read_xdp(nsim.ifname).attached is None
    assert inv.netdev_family is False
    iface = inv.interface(nsim.ifname)
    assert iface.source == "probe" and iface.features is None and iface.modes == ("offload", "native", "generic")
    item = next(i for i in inv.to_status()["interfaces"] if i["name"] == nsim.ifname)
    assert item["modesFrom"] == "probe" and item["probed"] is True and "xdpFeatures" not in item
    assert inv.to_status()["netdevFamily"] is False
