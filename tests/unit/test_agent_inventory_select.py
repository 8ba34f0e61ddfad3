"""Where the XdpNode's modes come from, and which interfaces the agent probes
(--probe-xdp-modes, --inventory-interfaces).

By default the modes are READ (xdp-features, netdev family): nothing is attached anywhere.
Probing happens on a kernel without the family, or on the operator's opt-in; then
selection is by name (the rig's simulated NICs are veths named eth0, hp0...): pods' veths
and overlay devices are skipped by default, loopback always; an interface not selected is
listed with its driver and its modes unknown (or read), and nothing is loaded or
attached for it. Probe results survive a restart through the published XdpNode.
"""

from __future__ import annotations

import pytest

from kube_xdp_agent import __main__ as agent_main
from kube_xdp_agent import inventory
from kube_xdp_agent.inventory import (
    DEFAULT_PROBE_PATTERN,
    NOT_SELECTED,
    SUPPORTED,
    UNKNOWN,
    interface_selector,
    previous_from_status,
    probe_node,
)
from tests.fakes import FakeKernel
from tests.fakes.kernel import FakeFd
from kube_xdp_agent.kernel.netlink import Interface, XdpState

EMPTY = XdpState(attached=None, prog_id=None, drv_prog_id=None, skb_prog_id=None, hw_prog_id=None)


def iface(name: str, index: int = 7, kind: str | None = None) -> Interface:
    return Interface(name=name, index=index, mac=None, oper_state="up", kind=kind, driver=kind, xdp=EMPTY)


# -- the selection (pure) ---------------------------------------------------------------------

NICS = ["eth0", "eth1", "eth2", "hp0", "ens5", "enp3s0f1", "eno1", "bond0", "br0", "wlan0", "ib0", "vlan100",
        "eni1np1", "team0"]
VIRTUAL = ["veth1a2b3c4d", "vethe0", "cali0123456789a", "lxc12ab34cd", "lxc_health", "cilium_host", "cilium_net",
           "cilium_vxlan", "flannel.1", "flannel-wg", "cni0", "docker0", "vxlan.calico", "vxlan0", "tunl0",
           "kube-ipvs0", "kube-bridge", "genev_sys_6081", "weave", "br-3f2a1b0c9d8e", "virbr0", "virbr0-nic"]


@pytest.mark.parametrize("name", NICS)
def test_default_probes_nic_names(name) -> None:
    assert interface_selector()(iface(name))


@pytest.mark.parametrize("name", VIRTUAL)
def test_default_skips_container_and_overlay_names(name) -> None:
    assert not interface_selector()(iface(name))
    assert not interface_selector(DEFAULT_PROBE_PATTERN)(iface(name, kind="veth"))


def test_selection_is_by_name_not_kind() -> None:
    """The rig's NICs are veths: eth0 and hp0 of kind veth are probed; a physical NIC
    someone named veth9 is not."""
    select = interface_selector()
    assert select(iface("eth0", kind="veth")) and select(iface("hp0", kind="veth"))
    assert not select(iface("veth9", kind=None))


def test_loopback_is_never_probed() -> None:
    for pattern in (DEFAULT_PROBE_PATTERN, ".*", "lo", "l.+"):
        select = interface_selector(pattern)
        assert not select(iface("lo", index=1)), pattern
        assert not select(iface("lo", index=5)), pattern           # by name, whatever its index
        assert not select(iface("loopy", index=1)), pattern        # index 1 is loopback in every netns
    assert interface_selector("l.+")(iface("loopy", index=5))


def test_the_whole_name_must_match() -> None:
    select = interface_selector("eth[0-9]+|hp0")
    assert select(iface("eth0")) and select(iface("eth12")) and select(iface("hp0"))
    assert not select(iface("eth")) and not select(iface("eth0.100")) and not select(iface("xeth0"))
    assert not select(iface("hp01"))


def test_empty_pattern_probes_nothing() -> None:
    select = interface_selector("")
    assert not any(select(iface(n)) for n in NICS)


def test_invalid_pattern_is_a_clear_error() -> None:
    with pytest.raises(ValueError) as info:
        interface_selector("eth(0")
    assert "invalid interface regular expression 'eth(0'" in str(info.value)
    assert "missing )" in str(info.value)            # re's own words


# -- probe_node with a selection, on the in-memory kernel -------------------------------------


def make_node(monkeypatch, *, netdev_family: bool):
    """A fake node (eth0 native+generic, a pod's veth, cni0, lo) whose probe loads and
    attaches are recorded: (what, interface or ifindex, mode). Probes attach by link (or
    netlink): both are recorded."""
    kernel = FakeKernel(netdev_family=netdev_family)
    kernel.add_interface("lo", kind=None, driver=None, modes=("generic",))
    kernel.add_interface("eth0", kind="veth", driver="veth", default_route=True)
    kernel.add_interface("vethab12cd", kind="veth", driver="veth")
    kernel.add_interface("cni0", kind="bridge", driver="bridge", modes=("generic",))
    calls: list[tuple] = []

    def load_pass_program(ifindex: int = 0, *, name: str = "kxdp_probe"):
        calls.append(("load", ifindex, None))
        with kernel.lock:
            return FakeFd(kernel, kernel._open_fd("prog", kernel._new_prog(name, {})))

    monkeypatch.setattr(inventory, "load_pass_program", load_pass_program)
    nl = kernel.netlink()
    real_attach = nl.attach

    def attach(name, fd, mode, **kw):
        calls.append(("attach", name, mode))
        return real_attach(name, fd, mode, **kw)

    nl.attach = attach  # type: ignore[method-assign]
    real_links = kernel.links

    def links(netns=None):
        handle = real_links(netns)
        real_create = handle.create

        def create(ifindex, prog_fd, mode, *, interface=None):
            calls.append(("attach", interface, mode))
            return real_create(ifindex, prog_fd, mode, interface=interface)

        handle.create = create  # type: ignore[method-assign]
        return handle

    kernel.links = links  # type: ignore[method-assign]
    monkeypatch.setattr(inventory, "XdpLinks", lambda netns=None: kernel.links(netns))
    return kernel, nl, calls


@pytest.fixture
def node(monkeypatch):
    """A node whose kernel has no netdev family (before 6.3): the agent probes."""
    return make_node(monkeypatch, netdev_family=False)


@pytest.fixture
def features_node(monkeypatch):
    """A node whose kernel reports xdp-features."""
    return make_node(monkeypatch, netdev_family=True)


def test_unselected_interfaces_are_listed_but_never_touched(node) -> None:
    kernel, nl, calls = node
    inv = probe_node(nl, select=interface_selector(), env={})
    # Only eth0 was probed: every attach on it, every device-bound load for its index.
    eth0 = inv.interface("eth0")
    assert {c[1] for c in calls if c[0] == "attach"} == {"eth0"}
    assert {c[1] for c in calls if c[0] == "load"} <= {0, eth0.index}
    assert eth0.probed and eth0.modes == ("native", "generic") and eth0.unknown_modes == ()
    for name, driver in (("lo", None), ("vethab12cd", "veth"), ("cni0", "bridge")):
        skipped = inv.interface(name)
        assert skipped is not None, f"{name} must still be listed"
        assert skipped.driver == driver and not skipped.probed
        assert skipped.modes == () and skipped.unknown_modes == ("offload", "native", "generic")
        assert {p.detail for p in skipped.probes} == {NOT_SELECTED}
    # Nothing left on any hook.
    assert all(i.xdp.attached is None for i in nl.interfaces())


def test_unselected_interfaces_in_the_status(node) -> None:
    kernel, nl, _ = node
    inv = probe_node(nl, select=interface_selector("eth0"), env={})
    status = inv.to_status()
    by_name = {i["name"]: i for i in status["interfaces"]}
    assert status["interfaceCount"] == 4 and status["netdevFamily"] is False
    assert by_name["vethab12cd"]["driver"] == "veth" and by_name["vethab12cd"]["modes"] == []
    assert by_name["vethab12cd"]["unknownModes"] == ["offload", "native", "generic"]
    assert by_name["vethab12cd"]["probed"] is False and by_name["lo"]["probed"] is False
    assert by_name["vethab12cd"]["modesFrom"] == "none" and "xdpFeatures" not in by_name["vethab12cd"]
    assert by_name["eth0"]["unknownModes"] == [] and by_name["eth0"]["modes"] == ["native", "generic"]
    assert by_name["eth0"]["probed"] is True and by_name["eth0"]["modesFrom"] == "probe"
    assert by_name["eth0"]["ifindex"] == nl.interface("eth0").index
    assert status["modeSummary"] == "native=1,generic=1"


def test_refresh_never_probes_an_unselected_interface_later(node) -> None:
    """An interface not selected is not 'probed later' by the refresh (its unknown modes
    would otherwise make it a candidate at every refresh); a new selected one is."""
    kernel, nl, calls = node
    select = interface_selector()
    first = probe_node(nl, select=select, env={})
    calls.clear()
    kernel.add_interface("veth99", kind="veth", driver="veth")      # a new pod
    kernel.add_interface("eth1", kind="veth", driver="veth")        # a new NIC
    again = probe_node(nl, select=select, previous=first, env={})
    assert {c[1] for c in calls if c[0] == "attach"} == {"eth1"}
    assert again.interface("veth99").unknown_modes == ("offload", "native", "generic")
    assert again.interface("eth0").probes == first.interface("eth0").probes
    assert again.interface("eth1").modes == ("native", "generic")


def test_no_select_probes_everything_but_what_the_kernel_refuses(node) -> None:
    """probe_node's own default (select=None) probes every interface, lo included: the
    selection is the agent's (NodePublisher), not the kernel layer's."""
    kernel, nl, calls = node
    inv = probe_node(nl, env={})
    assert {c[1] for c in calls if c[0] == "attach"} == {"lo", "eth0", "vethab12cd", "cni0"}
    assert all(i.probed for i in inv.interfaces)
    assert inv.interface("lo").probe("generic").result == SUPPORTED
    assert inv.interface("lo").probe("native").result != UNKNOWN


def test_xdp_features_are_read_and_nothing_is_attached(features_node) -> None:
    """The default on a kernel with the netdev family: every interface's modes from its
    xdp-features, selected or not; not one load, not one attach."""
    kernel, nl, calls = features_node
    inv = probe_node(nl, select=interface_selector(), env={})
    assert calls == []
    assert inv.netdev_family is True
    assert inv.interface("eth0").modes == ("native", "generic") and inv.interface("eth0").features
    assert inv.interface("lo").modes == ("generic",) and inv.interface("lo").features == ()
    assert inv.interface("vethab12cd").modes == ("native", "generic")          # read, though not selected
    assert all(i.source == "xdpFeatures" and i.unknown_modes == () for i in inv.interfaces)
    status = {i["name"]: i for i in inv.to_status()["interfaces"]}
    assert status["eth0"]["xdpFeatures"] == ["basic", "redirect", "rx-sg"]
    assert "probed" not in status["eth0"] and status["eth0"]["modesFrom"] == "xdpFeatures"


def test_opt_in_probes_the_selection_even_with_xdp_features(features_node) -> None:
    kernel, nl, calls = features_node
    inv = probe_node(nl, probe="always", select=interface_selector(), env={})
    assert {c[1] for c in calls if c[0] == "attach"} == {"eth0"}
    assert inv.interface("eth0").source == "probe" and inv.interface("eth0").features
    assert inv.interface("vethab12cd").source == "xdpFeatures" and not inv.interface("vethab12cd").probed
    assert probe_node(nl, probe="never", env={}).interface("eth0").source == "xdpFeatures"
    with pytest.raises(ValueError):
        probe_node(nl, probe="sometimes", env={})


def test_probes_survive_a_restart_through_the_xdpnode(node) -> None:
    """A restarted agent reads its published XdpNode back: eth0 (same name, index and
    driver) is not probed again; a re-created interface (new index) is."""
    kernel, nl, calls = node
    first = probe_node(nl, select=interface_selector(), env={})
    published = first.to_status()
    calls.clear()
    previous = previous_from_status(published)
    assert [i.name for i in previous.interfaces] == ["eth0"]
    again = probe_node(nl, select=interface_selector(), previous=previous, env={})
    assert calls == [] and again.interface("eth0").modes == first.interface("eth0").modes
    assert again.to_status()["interfaces"] == published["interfaces"]
    kernel.remove_interface("eth0")
    kernel.add_interface("eth0", kind="veth", driver="veth")
    probe_node(nl, select=interface_selector(), previous=previous, env={})
    assert {c[1] for c in calls if c[0] == "attach"} == {"eth0"}
    assert previous_from_status(None) is None and previous_from_status({"interfaces": []}) is None


def test_node_publisher_uses_the_default_selection(node) -> None:
    from kube_xdp_agent.nodeinfo import NodePublisher

    kernel, nl, calls = node
    publisher = NodePublisher(custom=None, node_name="n", netlink=nl)
    assert publisher.select(iface("eth0")) and not publisher.select(iface("veth0"))
    assert not publisher.select(iface("lo", index=1))


# -- the CLI --------------------------------------------------------------------------------


def test_cli_rejects_an_invalid_pattern(capsys, monkeypatch) -> None:
    monkeypatch.delenv("KUBE_XDP_INVENTORY_INTERFACES", raising=False)
    with pytest.raises(SystemExit) as info:
        agent_main.main(["--node-name", "n1", "--inventory-interfaces", "eth[0-"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--inventory-interfaces" in err and "invalid interface regular expression 'eth[0-'" in err


def test_cli_rejects_an_invalid_pattern_from_the_environment(capsys, monkeypatch) -> None:
    monkeypatch.setenv("KUBE_XDP_INVENTORY_INTERFACES", "(veth")
    with pytest.raises(SystemExit) as info:
        agent_main.main(["--node-name", "n1"])
    assert info.value.code == 2
    assert "KUBE_XDP_INVENTORY_INTERFACES" in capsys.readouterr().err


@pytest.mark.parametrize(("env", "argv", "probes_eth5", "probes_veth0"), [
    (None, [], True, False),                                          # the default
    ("veth.*", [], False, True),                                      # the environment
    ("veth.*", ["--inventory-interfaces", "eth[0-9]+"], True, False),  # the flag wins
    (None, ["--inventory-interfaces", ""], False, False),            # '' probes nothing
])
def test_cli_hands_the_selection_to_the_publisher(monkeypatch, tmp_path, env, argv, probes_eth5, probes_veth0) -> None:
    """main() as the DaemonSet runs it, over the in-memory kernel and with the agent's loop
    not run: the publisher the real Agent builds selects what the flag / environment says."""
    from .agent_cli import offline_main

    if env is None:
        monkeypatch.delenv("KUBE_XDP_INVENTORY_INTERFACES", raising=False)
    else:
        monkeypatch.setenv("KUBE_XDP_INVENTORY_INTERFACES", env)
    main, ran = offline_main(monkeypatch, tmp_path)
    assert main(["--health-port", "0", *argv]) == 0
    [agent] = ran
    assert agent.publisher.select(iface("eth5")) is probes_eth5
    assert agent.publisher.select(iface("veth0")) is probes_veth0
    assert not agent.publisher.select(iface("lo", index=1))


def test_the_xdpnode_schema_names_what_the_agent_writes() -> None:
    """The schema's enums (api/, which imports no agent code) are the agent's own names."""
    from kube_xdp_api import schema

    from kube_xdp_agent.kernel.netdev import FEATURE_NAMES

    assert schema.XDP_FEATURES == FEATURE_NAMES
    assert set(schema.MODES_FROM) == {inventory.FROM_FEATURES, inventory.FROM_PROBE, inventory.FROM_NONE}
    item = schema.node_status_schema()["properties"]["interfaces"]["items"]["properties"]
    assert item["xdpFeatures"]["items"]["enum"] == list(FEATURE_NAMES)
    assert item["modesFrom"]["enum"] == list(schema.MODES_FROM)
