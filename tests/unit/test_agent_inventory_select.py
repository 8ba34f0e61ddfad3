"""Which interfaces the agent probes for its XdpNode (--inventory-interfaces).

Selection is by name (the rig's simulated NICs are veths named eth0, hp0...): pods' veths
and overlay devices are skipped by default, loopback always; an interface not selected is
listed with its driver and its modes unknown, and nothing is loaded or attached for it.
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


@pytest.fixture
def node(monkeypatch):
    """A fake node (eth0 native+generic, a pod's veth, cni0, lo) whose probe loads and
    attaches are recorded: (what, interface or ifindex, mode)."""
    kernel = FakeKernel()
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
    return kernel, nl, calls


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


def test_unselected_interfaces_in_the_status(node, monkeypatch) -> None:
    kernel, nl, _ = node
    inv = probe_node(nl, select=interface_selector("eth0"), env={})
    status = inv.to_status(extended=True)
    by_name = {i["name"]: i for i in status["interfaces"]}
    assert status["interfaceCount"] == 4
    assert by_name["vethab12cd"]["driver"] == "veth" and by_name["vethab12cd"]["modes"] == []
    assert by_name["vethab12cd"]["unknownModes"] == ["offload", "native", "generic"]
    assert by_name["eth0"]["unknownModes"] == [] and by_name["eth0"]["modes"] == ["native", "generic"]
    assert status["modeSummary"] == "native=1,generic=1"
    # `probed: false` is written only once the XdpNode schema declares it (an undeclared
    # field is pruned by the API server, and the agent would rewrite the status each refresh).
    declared = inventory._declared_interface_fields()
    assert ("probed" in by_name["vethab12cd"]) == ("probed" in declared)
    assert all("probed" not in i for i in status["interfaces"] if i["name"] == "eth0")
    monkeypatch.setattr(inventory, "_declared_interface_fields", lambda: declared | {"probed"})
    with_field = {i["name"]: i for i in inv.to_status(extended=True)["interfaces"]}
    assert with_field["vethab12cd"]["probed"] is False and with_field["lo"]["probed"] is False
    assert "probed" not in with_field["eth0"]
    monkeypatch.setattr(inventory, "_declared_interface_fields", lambda: declared - {"probed"})
    without = {i["name"]: i for i in inv.to_status(extended=True)["interfaces"]}
    assert "probed" not in without["vethab12cd"]


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
    import kube_xdp_agent.controller as controller
    import kube_xdp_agent.kernel as kernel_pkg

    if env is None:
        monkeypatch.delenv("KUBE_XDP_INVENTORY_INTERFACES", raising=False)
    else:
        monkeypatch.setenv("KUBE_XDP_INVENTORY_INTERFACES", env)
    ran: list = []
    monkeypatch.setattr(controller.Agent, "run", lambda self: ran.append(self))

    def host_kernel():
        kernel = FakeKernel()
        kernel.mount_bpffs("/sys/fs/bpf")
        return kernel

    monkeypatch.setattr(kernel_pkg, "HostKernel", host_kernel)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "users: [{name: u, user: {token: t}}]\ncontexts: [{name: c, context: {cluster: k, user: u}}]\n")
    monkeypatch.setattr(agent_main.signal, "signal", lambda *a: None)
    assert agent_main.main(["--node-name", "n1", "--kubeconfig", str(kubeconfig), *argv]) == 0
    [agent] = ran
    assert agent.publisher.select(iface("eth5")) is probes_eth5
    assert agent.publisher.select(iface("veth0")) is probes_veth0
    assert not agent.publisher.select(iface("lo", index=1))
