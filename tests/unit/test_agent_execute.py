"""Decided actions run against FakeKernel (kube_xdp_agent.execute, .observe, .decide).

Each test decides from what `observe` reads, runs the Executor (which changes hooks only
through kernel/attach.py), then checks the kernel model itself: what a user would see
with `ip link` and bpftool. The fake's link semantics (netlink refused while a link holds
the hook, atomic link update, ...) are each checked on the real kernel in
tests/kernel/test_link.py; the executor over the real kernel: tests/kernel/test_agent_links.py.
"""

from __future__ import annotations

import dataclasses
import errno

import pytest

from kube_xdp_agent.decide import Attach, Conflict, Detach, Keep, Reattach, Replace, Unpin, Wanted, cleanup, collect, decide
from kube_xdp_agent.execute import Executor
from kube_xdp_agent.kernel import CompileRequest, XdpState
from kube_xdp_agent.kernel.errors import BpfSyscallError, HookBusy
from kube_xdp_agent.observe import Hook, observe
from tests.fakes import FakeKernel

NETNS, BPFFS = "node", "/sys/fs/bpf"
PROG, OTHER = "drop-udp", "rate-limit"
OLD, NEW, OTHER_DIGEST = "aaaaaaaaaaaa", "bbbbbbbbbbbb", "cccccccccccc"
BOTH = ("native", "generic")
SOURCE = "int xdp_pass(struct xdp_md *ctx) { return XDP_PASS + 0 * VERSION; }"


class Recording:
    """Wraps a netlink or links handle: records each write and the hook right after it."""

    WRITES = {"attach", "detach", "create", "update"}

    def __init__(self, inner, netlink, calls: list, *, lie_mode: str | None = None) -> None:
        self.inner, self.netlink, self.calls, self.lie_mode = inner, netlink, calls, lie_mode

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if name not in self.WRITES:
            return attr

        def recorded(*args, **kwargs):
            result = attr(*args, **kwargs)
            iface = kwargs.get("interface") or args[0]
            kind = {"create": "link-create", "update": "link-update", "detach": "detach"}.get(name, name)
            if name == "attach" and kwargs.get("expected_prog_fd") is not None:
                kind = "replace"
            if name == "detach" and "interface" in kwargs and not isinstance(args[0], str):
                kind = "link-detach"
            mode = args[2] if name in ("attach", "create") else (args[1] if name == "detach" and kind == "detach"
                                                                 else None)
            self.calls.append((kind, iface, mode))
            return result
        return recorded

    def read_xdp(self, name):
        state = self.inner.read_xdp(name)
        if self.lie_mode and state.attached:
            return XdpState(attached=self.lie_mode)         # says: nothing in the mode it was put in
        return state


class Node:
    """A FakeKernel node: eth0 and eth1 (native + generic), eth2 (generic only), lo."""

    def __init__(self) -> None:
        self.kernel = FakeKernel()
        self.kernel.add_netns(NETNS)
        self.kernel.add_interface("lo", netns=NETNS, modes=("generic",), kind=None, driver=None)
        self.kernel.add_interface("eth0", netns=NETNS, default_route=True)
        self.kernel.add_interface("eth1", netns=NETNS)
        self.kernel.add_interface("eth2", netns=NETNS, modes=("generic",), driver="dummy")
        self.kernel.mount_bpffs(BPFFS)
        self.node = self.kernel.node(NETNS, BPFFS)
        self.netlink, self.pins = self.node.netlink, self.node.pins
        self.calls: list[tuple] = []

    def record(self, *, lie_mode: str | None = None) -> list[tuple]:
        """From now on, record the writes to hooks (netlink and links)."""
        self.node = dataclasses.replace(self.node, netlink=Recording(self.netlink, None, self.calls, lie_mode=lie_mode),
                                        links=Recording(self.node.links, self.netlink, self.calls))
        return self.calls

    def pin(self, program: str, digest: str, version: str = "1") -> int:
        """Compile, pin under `digest`, drop the loader's fds (as the agent does); the prog id."""
        loaded = self.kernel.compiler.load(CompileRequest(SOURCE, "xdp_pass", {"VERSION": version}))
        pinned = self.pins.pin_program(program, digest, loaded)
        self.kernel.compiler.release(loaded.key)
        return pinned.prog_id

    def hook(self, iface: str) -> tuple[int | None, str | None]:
        """(prog id, mode) read back from the fake's netlink."""
        return self.netlink.read_xdp(iface).occupant

    def put(self, iface: str, program: str, digest: str, mode: str) -> None:
        """Attach through netlink, as an older agent (or a kernel without links) did."""
        with self.pins.open_prog_fd(program, digest) as fd:
            self.netlink.attach(iface, fd.fd, mode)

    def take_off(self, iface: str, program: str, digest: str, mode: str) -> None:
        with self.pins.open_prog_fd(program, digest) as fd:
            self.netlink.detach(iface, mode, expected_prog_fd=fd.fd)

    def executor(self, program: str = PROG, want: str | None = NEW, modes=BOTH) -> Executor:
        return Executor(self.node, program=program, want=want, modes=modes)

    def decide(self, targets, modes=BOTH, program=PROG, want=NEW, record=None):
        return decide(Wanted(program=program, digest=want, targets=tuple(targets), modes=modes),
                      self.observe(), record or {})

    def run(self, targets, modes=BOTH, program=PROG, want=NEW):
        actions = self.decide(targets, modes, program, want)
        return actions, self.executor(program, want, modes).run(actions)

    def observe(self):
        return observe(self.netlink, self.pins)

    def pinned_digests(self, program: str = PROG) -> list[str]:
        return self.pins.list_programs().get(program, [])


@pytest.fixture
def node() -> Node:
    return Node()


def assert_read_back(node: Node, outcome) -> None:
    """Every successful result says exactly what the kernel holds now."""
    for r in outcome.interfaces:
        if r.ok:
            assert node.hook(r.interface) == (r.prog_id, r.mode), r


# --- observe ------------------------------------------------------------------------------
def test_observe_reads_hooks_primary_pins_and_links(node):
    old_id, new_id = node.pin(PROG, OLD, "1"), node.pin(PROG, NEW, "2")
    other_id = node.pin(OTHER, OTHER_DIGEST, "3")
    node.run(["eth0"])                                          # by link
    node.put("eth2", OTHER, OTHER_DIGEST, "generic")            # through netlink
    foreign = node.kernel.attach_foreign("eth1", "generic", netns=NETNS)
    seen = node.observe()
    assert seen.hooks == {"lo": Hook("lo", None, None), "eth0": Hook("eth0", new_id, "native"),
                          "eth1": Hook("eth1", foreign, "generic"), "eth2": Hook("eth2", other_id, "generic")}
    assert seen.primary == "eth0"
    assert seen.pins == {PROG: {OLD: old_id, NEW: new_id}, OTHER: {OTHER_DIGEST: other_id}}
    [link] = seen.links
    assert (link.program, link.interface, link.prog_id, link.where, link.mode, link.pinned) == (
        PROG, "eth0", new_id, "attached", "native", True)
    assert seen.hook_owner("eth0", new_id).link == link              # a kernel fact: our link holds it
    assert seen.hook_owner("eth2", other_id).link is None            # netlink: by its pin
    assert seen.hook_owner("eth2", other_id).program == OTHER
    assert seen.hook_owner("eth1", foreign) is None
    assert seen.owner(None) is None


def test_observe_without_default_route(node):
    node.kernel.set_default_route(None, netns=NETNS)
    assert node.observe().primary is None


# --- attach ----------------------------------------------------------------------------------
def test_attach_creates_and_pins_a_link(node):
    want_id = node.pin(PROG, NEW)
    actions, out = node.run(["eth0"])
    assert actions == [Attach("eth0", BOTH)]
    [r] = out.interfaces
    assert (r.interface, r.ok, r.mode, r.prog_id, r.digest, r.attached_by, r.reason, r.changed, r.tried) == (
        "eth0", True, "native", want_id, NEW, "link", None, True, True)
    pinned = node.pins.read_link(PROG, "eth0")
    assert pinned.link_id == r.link_id and pinned.prog_id == want_id
    assert node.hook("eth0") == (want_id, "native")
    with pytest.raises(HookBusy):                                 # the kernel holds it for us
        node.take_off("eth0", PROG, NEW, "native")
    assert out.errors == []


def test_attach_tries_modes_in_the_given_order(node):
    want_id = node.pin(PROG, NEW)
    _, out = node.run(["eth0"], modes=("generic", "native"))
    assert node.hook("eth0") == (want_id, "generic")
    assert out.interfaces[0].refused == ()


def test_native_refused_falls_back_to_generic_with_each_refusal(node):
    want_id = node.pin(PROG, NEW)
    _, out = node.run(["eth2"])                                   # eth2: generic only
    [r] = out.interfaces
    assert r.ok and r.changed and r.tried
    assert (r.mode, r.prog_id, r.attached_by) == ("generic", want_id, "link")
    [refusal] = r.refused
    assert (refusal.mode, refusal.reason, refusal.errno) == ("native", "DriverModeUnsupported", errno.EOPNOTSUPP)
    assert "the driver refused XDP in native mode" in refusal.message   # the kernel layer's own words
    assert node.hook("eth2") == (want_id, "generic")
    assert_read_back(node, out)


@pytest.mark.parametrize("modes", [("native",), ("native", "offload")], ids=["native-only", "native-then-offload"])
def test_every_mode_refused_is_a_failure(node, modes):
    node.pin(PROG, NEW)
    _, out = node.run(["eth2"], modes=modes)
    [r] = out.interfaces
    assert not r.ok and r.mode is None and r.prog_id is None
    assert r.reason == "DriverModeUnsupported"
    assert r.message.startswith("no allowed mode attached on eth2")
    assert [x.mode for x in r.refused] == list(modes)
    assert node.hook("eth2") == (None, None)


def test_hook_taken_after_observing_is_a_conflict_and_left(node):
    node.pin(PROG, NEW)
    actions = node.decide(["eth0"])                               # decided on an empty hook...
    foreign = node.kernel.attach_foreign("eth0", "generic", netns=NETNS)   # ...taken meanwhile
    [r] = node.executor().run(actions).interfaces
    assert not r.ok and r.reason == "Conflict"
    assert str(foreign) in r.message
    assert node.hook("eth0") == (foreign, "generic")


@pytest.mark.parametrize("owner", [OTHER, None], ids=["other-xdpprogram", "foreign"])
def test_a_decided_conflict_reports_the_owner_and_touches_nothing(node, owner):
    node.pin(PROG, NEW)
    if owner:
        node.pin(OTHER, OTHER_DIGEST, "9")
        node.run(["eth0"], program=OTHER, want=OTHER_DIGEST)
    else:
        node.kernel.attach_foreign("eth0", "native", netns=NETNS)
    before = node.hook("eth0")
    actions, out = node.run(["eth0"])
    assert actions == [Conflict("eth0", before[0], "native", owner)]
    [r] = out.interfaces
    assert (r.ok, r.reason) == (False, "Conflict")
    assert (f"XdpProgram {OTHER}" if owner else "not managed by kube-xdp") in r.message
    assert f"program id {before[0]}" in r.message
    assert node.hook("eth0") == before


def test_one_failure_does_not_stop_the_others(node):
    want_id = node.pin(PROG, NEW)
    out = node.executor().run([Attach("eth9", BOTH), Attach("eth0", BOTH)])
    assert [(r.interface, r.ok, r.reason) for r in out.interfaces] == [("eth9", False, "InterfaceNotFound"),
                                                                      ("eth0", True, None)]
    assert node.hook("eth0") == (want_id, "native")


# --- restart adoption -------------------------------------------------------------------
def test_restart_adopts_the_pinned_links_without_touching_the_hook(node):
    want_id = node.pin(PROG, NEW)
    _, first = node.run(["eth0", "eth2"])
    links = {r.interface: r.link_id for r in first.interfaces}
    node.kernel.restart()                                        # the agent dies; pins, links and hooks stay
    record = {r.interface: _record(r) for r in first.interfaces}
    actions = node.decide(["eth0", "eth2"], record=record)
    assert actions == [Keep("eth0", want_id, "native", NEW, links["eth0"]),
                       Keep("eth2", want_id, "generic", NEW, links["eth2"])]
    calls = node.record()
    out = node.executor().run(actions)
    assert calls == []                                            # nothing re-attached
    assert [(r.ok, r.changed, r.link_id) for r in out.interfaces] == [(True, False, links["eth0"]),
                                                                     (True, False, links["eth2"])]
    assert_read_back(node, out)


def _record(r):
    from kube_xdp_agent.record import IfaceRecord
    return IfaceRecord(r.interface, r.ok, r.mode, "native", r.refused, r.attached_by, r.link_id, r.prog_id, r.digest)


# --- replace, reattach, collect -----------------------------------------------------------
def test_an_update_is_one_atomic_link_update_then_the_old_program_is_collected(node):
    old_id = node.pin(PROG, OLD, "1")
    node.run(["eth0", "eth2"], want=OLD)
    links = {v.interface: v.link_id for v in node.observe().links}
    new_id = node.pin(PROG, NEW, "2")
    actions = node.decide(["eth0", "eth2"])
    assert actions == [Replace("eth0", old_id, "native"), Replace("eth2", old_id, "generic")]
    calls = node.record()
    out = node.executor().run(actions)
    # One BPF_LINK_UPDATE per hook, no detach: the hook is never empty (old id -> new id).
    assert calls == [("link-update", "eth0", None), ("link-update", "eth2", None)]
    assert [(r.interface, r.ok, r.mode, r.prog_id, r.link_id, r.tried) for r in out.interfaces] == [
        ("eth0", True, "native", new_id, links["eth0"], False), ("eth2", True, "generic", new_id, links["eth2"], False)]
    assert node.kernel.prog_exists(old_id)                       # still pinned until collected
    gc = collect(PROG, {NEW}, node.observe())
    assert gc == [Unpin(PROG, OLD)]
    node.executor().run(gc)
    assert node.pinned_digests() == [NEW]
    assert not node.kernel.prog_exists(old_id)                   # nothing holds it any more
    assert node.hook("eth0") == (new_id, "native")


def test_an_update_of_an_older_agents_netlink_attachment_is_an_atomic_netlink_replace(node):
    old_id = node.pin(PROG, OLD, "1")
    node.put("eth0", PROG, OLD, "native")
    new_id = node.pin(PROG, NEW, "2")
    actions = node.decide(["eth0"])
    assert actions == [Replace("eth0", old_id, "native")]
    calls = node.record()
    [r] = node.executor().run(actions).interfaces
    assert calls == [("replace", "eth0", "native")]
    assert (r.ok, r.prog_id, r.attached_by, r.link_id) == (True, new_id, "netlink", None)


def test_a_replace_of_a_hook_emptied_meanwhile_attaches_afresh(node):
    node.pin(PROG, OLD, "1")
    node.put("eth0", PROG, OLD, "native")
    new_id = node.pin(PROG, NEW, "2")
    actions = node.decide(["eth0"])
    node.take_off("eth0", PROG, OLD, "native")
    [r] = node.executor().run(actions).interfaces
    assert (r.ok, r.prog_id, r.attached_by, r.tried) == (True, new_id, "link", True)


@pytest.mark.parametrize("by_link", [True, False], ids=["link", "netlink"])
@pytest.mark.parametrize("old_digest", [NEW, OLD], ids=["same-program", "older-digest"])
def test_reattach_moves_to_an_allowed_mode(node, old_digest, by_link):
    old_id = node.pin(PROG, OLD, "1")
    new_id = node.pin(PROG, NEW, "2")
    if by_link:
        node.run(["eth0"], modes=("generic",), want=old_digest)
    else:
        node.put("eth0", PROG, old_digest, "generic")
    actions = node.decide(["eth0"], modes=("native",))
    assert actions == [Reattach("eth0", new_id if old_digest == NEW else old_id, "generic", ("native",), by_link)]
    calls = node.record()
    out = node.executor(modes=("native",)).run(actions)
    assert calls == [("link-detach" if by_link else "detach", "eth0", None if by_link else "generic"),
                     ("link-create", "eth0", "native")]
    assert node.hook("eth0") == (new_id, "native")
    assert out.interfaces[0].moved
    assert_read_back(node, out)


# --- detach ---------------------------------------------------------------------------------
def test_untargeted_interface_is_detached_others_kept(node):
    want_id = node.pin(PROG, NEW)
    other_id = node.pin(OTHER, OTHER_DIGEST, "9")
    node.run(["eth0", "eth1"])
    node.put("eth2", OTHER, OTHER_DIGEST, "generic")
    _, out = node.run(["eth0"])
    assert out.detached == ["eth1"]
    assert node.hook("eth0") == (want_id, "native")
    assert node.hook("eth1") == (None, None) and node.pins.read_link(PROG, "eth1") is None
    assert node.hook("eth2") == (other_id, "generic")


def test_a_netlink_detach_leaves_a_foreign_program_that_took_the_hook(node):
    node.pin(PROG, NEW)
    node.put("eth1", PROG, NEW, "native")
    actions = node.decide([])
    assert actions == [Detach("eth1", node.hook("eth1")[0], "native", by_link=False)]
    node.take_off("eth1", PROG, NEW, "native")                   # behind our back (netlink: possible)...
    foreign = node.kernel.attach_foreign("eth1", "native", netns=NETNS)   # ...someone else's
    out = node.executor().run(actions)
    assert out.detached == [] and out.errors == []                # ours was not there: nothing to do
    assert node.hook("eth1") == (foreign, "native")


# --- cleanup -------------------------------------------------------------------------------
def test_cleanup_detaches_and_unpins_only_this_program(node):
    old_id, new_id = node.pin(PROG, OLD, "1"), node.pin(PROG, NEW, "2")
    other_id = node.pin(OTHER, OTHER_DIGEST, "9")
    node.run(["eth0"])
    node.put("eth1", PROG, OLD, "generic")
    node.run(["eth2"], program=OTHER, want=OTHER_DIGEST)
    out = node.executor(want=None).run(cleanup(PROG, node.observe()))
    assert out.detached == ["eth0", "eth1"]
    assert out.unpinned == [f"{PROG}/*"]
    assert out.errors == []
    assert (node.hook("eth0"), node.hook("eth1")) == ((None, None), (None, None))
    assert node.pinned_digests() == [] and node.pins.list_links(PROG) == []
    assert not node.kernel.prog_exists(old_id) and not node.kernel.prog_exists(new_id)
    assert node.hook("eth2") == (other_id, "generic")
    assert node.pinned_digests(OTHER) == [OTHER_DIGEST]


class FailingDetach:
    def __init__(self, inner):
        self.inner = inner

    def detach(self, link_fd, *, interface=None):
        raise BpfSyscallError("detaching the XDP link failed: Operation not permitted", cmd="BPF_LINK_DETACH",
                              errno=errno.EPERM, interface=interface)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_cleanup_with_a_failed_detach_keeps_the_pins(node):
    node.pin(PROG, NEW)
    node.run(["eth0", "eth1"])
    actions = cleanup(PROG, node.observe())
    node.node = dataclasses.replace(node.node, links=FailingDetach(node.node.links))
    out = node.executor(want=None).run(actions)
    assert out.detached == []
    assert out.unpinned == []
    assert [reason for reason, _ in out.errors] == ["DetachFailed", "DetachFailed"]
    assert node.pinned_digests() == [NEW]                         # kept: retried on the next pass
    assert node.hook("eth0")[0] is not None


def test_cleanup_of_nothing_is_a_no_op(node):
    assert cleanup(PROG, node.observe()) == []
    out = node.executor(want=None).run([])
    assert (out.interfaces, out.detached, out.unpinned, out.errors) == ([], [], [], [])


# --- results are what netlink read back ----------------------------------------------------
def test_a_read_back_that_does_not_show_the_program_in_the_mode_is_a_failure(node):
    node.pin(PROG, NEW)
    node.record(lie_mode="generic")                               # netlink says: not in native
    [r] = node.executor().run([Attach("eth0", ("native",))]).interfaces
    assert (r.ok, r.reason, r.mode) == (False, "AttachFailed", None)
    assert "not confirmed: netlink reads program None in native mode" in r.message


# --- a native program and an offloaded one on one interface ('xdpmulti') --------------------
@pytest.fixture
def offload_node() -> Node:
    node = Node()
    node.kernel.add_interface("eth3", netns=NETNS, modes=("native", "generic", "offload"))
    return node


def test_observe_sees_an_offloaded_program_beside_a_native_one(offload_node):
    node = offload_node
    ours = node.pin(PROG, NEW, "2")
    node.put("eth3", PROG, NEW, "offload")
    foreign = node.kernel.attach_foreign("eth3", "native", netns=NETNS)
    assert node.netlink.read_xdp("eth3").attached == "multi"
    assert node.observe().hooks["eth3"] == Hook("eth3", foreign, "native", ours)
    node.take_off("eth3", PROG, NEW, "offload")
    assert node.observe().hooks["eth3"] == Hook("eth3", foreign, "native")


@pytest.mark.parametrize("by_link", [True, False], ids=["link", "netlink"])
def test_cleanup_detaches_our_offloaded_program_beside_a_foreign_native_one(offload_node, by_link):
    node = offload_node
    node.pin(PROG, NEW, "2")
    if by_link:
        node.run(["eth3"], modes=("offload",))
    else:
        node.put("eth3", PROG, NEW, "offload")
    foreign = node.kernel.attach_foreign("eth3", "native", netns=NETNS)
    outcome = node.executor().run(cleanup(PROG, node.observe()))
    assert outcome.detached == ["eth3"] and outcome.errors == []
    state = node.netlink.read_xdp("eth3")
    assert state.hw_prog_id is None and state.drv_prog_id == foreign      # the foreign one untouched
    assert node.pinned_digests() == []


def test_a_netlink_slot_beside_our_link_is_detached_without_touching_the_link(offload_node):
    """Ours in both slots: native by our link, offload through netlink (an older agent):
    the one not wanted goes, and only that one (attach.remove(link=False))."""
    node = offload_node
    want_id = node.pin(PROG, NEW, "2")
    node.run(["eth3"])
    node.put("eth3", PROG, NEW, "offload")
    actions = node.decide(["eth3"])
    assert actions[1:] == [Detach("eth3", want_id, "offload", by_link=False)]
    out = node.executor().run(actions)
    assert out.detached == ["eth3"]
    state = node.netlink.read_xdp("eth3")
    assert (state.drv_prog_id, state.hw_prog_id) == (want_id, None)
    assert node.pins.read_link(PROG, "eth3") is not None
