"""Planned actions run against FakeKernel (kube_xdp_agent.execute, .observe).

Each test plans from what `observe` reads, runs the Executor, then checks the kernel
model itself: what a user would see with `ip link` and bpftool.
"""

from __future__ import annotations

import pytest

from kube_xdp_agent.execute import Executor
from kube_xdp_agent.kernel import CompileRequest, XdpState
from tests.fakes import FakeKernel
from kube_xdp_agent.observe import observe
from kube_xdp_agent.plan import (
    Attach,
    Conflict,
    Detach,
    Hook,
    Keep,
    Reattach,
    Replace,
    Unpin,
    plan_attach,
    plan_cleanup,
    plan_gc,
)

NETNS, BPFFS = "node", "/sys/fs/bpf"
PROG, OTHER = "drop-udp", "rate-limit"
OLD, NEW, OTHER_DIGEST = "aaaaaaaaaaaa", "bbbbbbbbbbbb", "cccccccccccc"
BOTH = ("native", "generic")
SOURCE = "int xdp_pass(struct xdp_md *ctx) { return XDP_PASS + 0 * VERSION; }"


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
        self.netlink = self.kernel.netlink(NETNS)
        self.pins = self.kernel.pin_store(BPFFS)

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
        with self.pins.open_prog_fd(program, digest) as fd:
            self.netlink.attach(iface, fd.fd, mode)

    def take_off(self, iface: str, program: str, digest: str, mode: str) -> None:
        with self.pins.open_prog_fd(program, digest) as fd:
            self.netlink.detach(iface, mode, expected_prog_fd=fd.fd)

    def executor(self, program: str = PROG, want: str | None = NEW, netlink=None) -> Executor:
        want_id = {p.digest12: p.prog_id for p in self.pins.open_pinned(program)}.get(want)
        return Executor(netlink or self.netlink, self.pins, program=program, want=want, want_id=want_id)

    def attach_plan(self, targets, modes=BOTH, program=PROG, want=NEW):
        return plan_attach(program=program, want=want, targets=list(targets), modes=modes,
                           observed=observe(self.netlink, self.pins))

    def pinned_digests(self, program: str = PROG) -> list[str]:
        return self.pins.list_programs().get(program, [])


class RecordingNetlink:
    """Wraps a netlink handle: records each write and the hook right after it."""

    def __init__(self, inner, *, lie_mode: str | None = None) -> None:
        self.inner = inner
        self.calls: list[tuple[str, str, str, tuple[int | None, str | None]]] = []
        self.lie_mode = lie_mode     # report the program in this mode instead of what the kernel says

    def attach(self, name, prog_fd, mode, *, expected_prog_fd=None):
        state = self.inner.attach(name, prog_fd, mode, expected_prog_fd=expected_prog_fd)
        self.calls.append(("replace" if expected_prog_fd is not None else "attach", name, mode,
                           self.inner.read_xdp(name).occupant))
        if self.lie_mode:
            pid = state.prog_id_for(mode)
            return XdpState(attached=self.lie_mode, prog_id=pid,
                            **{{"native": "drv_prog_id", "generic": "skb_prog_id"}[self.lie_mode]: pid})
        return state

    def detach(self, name, mode, *, expected_prog_fd):
        state = self.inner.detach(name, mode, expected_prog_fd=expected_prog_fd)
        self.calls.append(("detach", name, mode, self.inner.read_xdp(name).occupant))
        return state

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.fixture
def node() -> Node:
    return Node()


def assert_read_back(node: Node, outcome) -> None:
    """Every successful result says exactly what the kernel holds now."""
    for r in outcome.interfaces:
        if r.ok:
            assert node.hook(r.interface) == (r.prog_id, r.mode), r


# --- observe ------------------------------------------------------------------------------
def test_observe_reads_hooks_primary_and_pins(node):
    old_id, new_id = node.pin(PROG, OLD, "1"), node.pin(PROG, NEW, "2")
    other_id = node.pin(OTHER, OTHER_DIGEST, "3")
    node.put("eth0", PROG, NEW, "native")
    node.put("eth2", OTHER, OTHER_DIGEST, "generic")
    foreign = node.kernel.attach_foreign("eth1", "generic", netns=NETNS)
    seen = observe(node.netlink, node.pins)
    assert seen.hooks == {"lo": Hook("lo", None, None), "eth0": Hook("eth0", new_id, "native"),
                          "eth1": Hook("eth1", foreign, "generic"), "eth2": Hook("eth2", other_id, "generic")}
    assert seen.primary == "eth0"
    assert seen.pins == {PROG: {OLD: old_id, NEW: new_id}, OTHER: {OTHER_DIGEST: other_id}}
    assert seen.owner(new_id) == (PROG, NEW)
    assert seen.owner(other_id) == (OTHER, OTHER_DIGEST)
    assert seen.owner(foreign) is None
    assert seen.owner(None) is None


def test_observe_without_default_route(node):
    node.kernel.set_default_route(None, netns=NETNS)
    assert observe(node.netlink, node.pins).primary is None


# --- attach ----------------------------------------------------------------------------------
def test_attach_native(node):
    want_id = node.pin(PROG, NEW)
    actions = node.attach_plan(["eth0"])
    assert actions == [Attach("eth0", BOTH)]
    out = node.executor().run(actions)
    [r] = out.interfaces
    assert (r.interface, r.ok, r.mode, r.prog_id, r.reason, r.changed) == ("eth0", True, "native", want_id, None, True)
    assert node.hook("eth0") == (want_id, "native")
    assert out.errors == []


def test_attach_tries_modes_in_the_given_order(node):
    want_id = node.pin(PROG, NEW)
    out = node.executor().run(node.attach_plan(["eth0"], modes=("generic", "native")))
    assert node.hook("eth0") == (want_id, "generic")
    assert out.interfaces[0].reason is None


def test_native_refused_falls_back_to_generic(node):
    want_id = node.pin(PROG, NEW)
    out = node.executor().run(node.attach_plan(["eth2"]))          # eth2: generic only
    [r] = out.interfaces
    assert r.ok and r.changed
    assert (r.mode, r.prog_id) == ("generic", want_id)
    assert r.reason == "DriverModeUnsupported"
    assert "attached in generic mode" in r.message
    assert "native: the driver refused XDP in native mode" in r.message      # the refusal's own text
    assert node.hook("eth2") == (want_id, "generic")
    assert_read_back(node, out)


@pytest.mark.parametrize("modes", [("native",), ("native", "offload")], ids=["native-only", "native-then-offload"])
def test_every_mode_refused_is_a_failure(node, modes):
    node.pin(PROG, NEW)
    out = node.executor().run(node.attach_plan(["eth2"], modes=modes))
    [r] = out.interfaces
    assert not r.ok and r.mode is None and r.prog_id is None
    assert r.reason == "DriverModeUnsupported"
    assert r.message.startswith("no allowed mode attached on eth2")
    for mode in modes:
        assert f"{mode}: the driver refused XDP in {mode} mode" in r.message
    assert node.hook("eth2") == (None, None)


def test_hook_taken_after_observing_is_a_conflict_and_left(node):
    node.pin(PROG, NEW)
    actions = node.attach_plan(["eth0"])                            # planned on an empty hook...
    foreign = node.kernel.attach_foreign("eth0", "generic", netns=NETNS)   # ...taken meanwhile
    out = node.executor().run(actions)
    [r] = out.interfaces
    assert not r.ok and r.reason == "Conflict"
    assert str(foreign) in r.message
    assert node.hook("eth0") == (foreign, "generic")


@pytest.mark.parametrize("owner", [OTHER, None], ids=["other-xdpprogram", "foreign"])
def test_planned_conflict_reports_the_owner_and_touches_nothing(node, owner):
    node.pin(PROG, NEW)
    if owner:
        node.pin(OTHER, OTHER_DIGEST, "9")
        node.put("eth0", OTHER, OTHER_DIGEST, "native")
    else:
        node.kernel.attach_foreign("eth0", "native", netns=NETNS)
    before = node.hook("eth0")
    actions = node.attach_plan(["eth0"])
    assert actions == [Conflict("eth0", before[0], "native", owner)]
    out = node.executor().run(actions)
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
def test_restart_adopts_without_touching_the_hook(node):
    want_id = node.pin(PROG, NEW)
    node.executor().run(node.attach_plan(["eth0", "eth2"]))
    node.kernel.restart()                                        # the agent dies; pins and hooks stay
    actions = node.attach_plan(["eth0", "eth2"])
    assert actions == [Keep("eth0", want_id, "native"), Keep("eth2", want_id, "generic")]
    spy = RecordingNetlink(node.netlink)
    out = node.executor(netlink=spy).run(actions)
    assert spy.calls == []                                        # nothing re-attached
    assert [(r.ok, r.changed) for r in out.interfaces] == [(True, False), (True, False)]
    assert_read_back(node, out)


# --- replace, reattach, gc -----------------------------------------------------------------
def test_replace_is_atomic_then_the_old_program_is_collected(node):
    old_id = node.pin(PROG, OLD, "1")
    node.put("eth0", PROG, OLD, "native")
    node.put("eth2", PROG, OLD, "generic")
    new_id = node.pin(PROG, NEW, "2")
    actions = node.attach_plan(["eth0", "eth2"])
    assert actions == [Replace("eth0", OLD, "native"), Replace("eth2", OLD, "generic")]
    spy = RecordingNetlink(node.netlink)
    out = node.executor(netlink=spy).run(actions)
    # One REPLACE per hook, no detach: the hook is never empty (old id -> new id).
    assert spy.calls == [("replace", "eth0", "native", (new_id, "native")),
                         ("replace", "eth2", "generic", (new_id, "generic"))]
    assert [(r.interface, r.ok, r.mode, r.prog_id) for r in out.interfaces] == [
        ("eth0", True, "native", new_id), ("eth2", True, "generic", new_id)]
    assert node.kernel.prog_exists(old_id)                       # still pinned until gc
    gc = plan_gc(program=PROG, keep=NEW, observed=observe(node.netlink, node.pins))
    assert gc == [Unpin(PROG, OLD)]
    node.executor().run(gc)
    assert node.pinned_digests() == [NEW]
    assert not node.kernel.prog_exists(old_id)                   # nothing holds it any more
    assert node.hook("eth0") == (new_id, "native")


def test_replace_of_a_hook_emptied_meanwhile_fails_without_attaching(node):
    node.pin(PROG, OLD, "1")
    node.put("eth0", PROG, OLD, "native")
    node.pin(PROG, NEW, "2")
    actions = node.attach_plan(["eth0"])
    node.take_off("eth0", PROG, OLD, "native")
    [r] = node.executor().run(actions).interfaces
    assert (r.ok, r.reason) == (False, "AttachFailed")
    assert node.hook("eth0") == (None, None)


@pytest.mark.parametrize("old_digest", [NEW, OLD], ids=["same-program", "older-digest"])
def test_reattach_moves_to_an_allowed_mode(node, old_digest):
    node.pin(PROG, OLD, "1")
    new_id = node.pin(PROG, NEW, "2")
    node.put("eth0", PROG, old_digest, "generic")
    actions = node.attach_plan(["eth0"], modes=("native",))
    assert actions == [Reattach("eth0", old_digest, "generic", ("native",))]
    spy = RecordingNetlink(node.netlink)
    out = node.executor(netlink=spy).run(actions)
    assert [c[:3] for c in spy.calls] == [("detach", "eth0", "generic"), ("attach", "eth0", "native")]
    assert node.hook("eth0") == (new_id, "native")
    assert_read_back(node, out)


# --- detach ---------------------------------------------------------------------------------
def test_untargeted_interface_is_detached_others_kept(node):
    want_id = node.pin(PROG, NEW)
    other_id = node.pin(OTHER, OTHER_DIGEST, "9")
    node.put("eth0", PROG, NEW, "native")
    node.put("eth1", PROG, NEW, "native")
    node.put("eth2", OTHER, OTHER_DIGEST, "generic")
    out = node.executor().run(node.attach_plan(["eth0"]))
    assert out.detached == ["eth1"]
    assert node.hook("eth0") == (want_id, "native")
    assert node.hook("eth1") == (None, None)
    assert node.hook("eth2") == (other_id, "generic")


def test_detach_leaves_a_foreign_program_that_took_the_hook(node):
    node.pin(PROG, NEW)
    node.put("eth1", PROG, NEW, "native")
    actions = node.attach_plan([])
    assert actions == [Detach("eth1", NEW, "native")]
    node.take_off("eth1", PROG, NEW, "native")                   # behind our back...
    foreign = node.kernel.attach_foreign("eth1", "native", netns=NETNS)   # ...someone else's
    out = node.executor().run(actions)
    assert out.detached == []
    assert [reason for reason, _ in out.errors] == ["HookBusy"]
    assert node.hook("eth1") == (foreign, "native")


# --- cleanup -------------------------------------------------------------------------------
def test_cleanup_detaches_and_unpins_only_this_program(node):
    old_id, new_id = node.pin(PROG, OLD, "1"), node.pin(PROG, NEW, "2")
    other_id = node.pin(OTHER, OTHER_DIGEST, "9")
    node.put("eth0", PROG, NEW, "native")
    node.put("eth1", PROG, OLD, "generic")
    node.put("eth2", OTHER, OTHER_DIGEST, "generic")
    actions = plan_cleanup(program=PROG, observed=observe(node.netlink, node.pins))
    out = node.executor(want=None).run(actions)
    assert out.detached == ["eth0", "eth1"]
    assert out.unpinned == [f"{PROG}/*"]
    assert out.errors == []
    assert (node.hook("eth0"), node.hook("eth1")) == ((None, None), (None, None))
    assert node.pinned_digests() == []
    assert not node.kernel.prog_exists(old_id) and not node.kernel.prog_exists(new_id)
    assert node.hook("eth2") == (other_id, "generic")
    assert node.pinned_digests(OTHER) == [OTHER_DIGEST]


def test_cleanup_with_a_failed_detach_keeps_the_pins(node):
    node.pin(PROG, NEW)
    node.put("eth0", PROG, NEW, "native")
    node.put("eth1", PROG, NEW, "native")
    actions = plan_cleanup(program=PROG, observed=observe(node.netlink, node.pins))
    node.take_off("eth1", PROG, NEW, "native")
    foreign = node.kernel.attach_foreign("eth1", "native", netns=NETNS)
    out = node.executor(want=None).run(actions)
    assert out.detached == ["eth0"]
    assert out.unpinned == []
    assert [reason for reason, _ in out.errors] == ["HookBusy"]
    assert node.pinned_digests() == [NEW]                         # kept: retried on the next pass
    assert node.hook("eth1") == (foreign, "native")


def test_cleanup_of_nothing_is_a_no_op(node):
    assert plan_cleanup(program=PROG, observed=observe(node.netlink, node.pins)) == []
    out = node.executor(want=None).run([])
    assert (out.interfaces, out.detached, out.unpinned, out.errors) == ([], [], [], [])


# --- results are what netlink read back ----------------------------------------------------
def test_a_read_back_that_does_not_show_the_program_in_the_mode_is_a_failure(node):
    node.pin(PROG, NEW)
    spy = RecordingNetlink(node.netlink, lie_mode="generic")     # netlink says: not in native
    [r] = node.executor(netlink=spy).run([Attach("eth0", ("native",))]).interfaces
    assert (r.ok, r.reason, r.mode) == (False, "AttachFailed", None)
    assert "netlink reports program None" in r.message


def test_a_wrong_expected_program_id_is_a_failure(node):
    node.pin(PROG, NEW)
    executor = Executor(node.netlink, node.pins, program=PROG, want=NEW, want_id=12345)
    [r] = executor.run([Attach("eth0", BOTH)]).interfaces
    assert (r.ok, r.reason) == (False, "AttachFailed")
    assert "expected 12345" in r.message


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
    assert observe(node.netlink, node.pins).hooks["eth3"] == Hook("eth3", foreign, "native", ours)
    node.take_off("eth3", PROG, NEW, "offload")
    assert observe(node.netlink, node.pins).hooks["eth3"] == Hook("eth3", foreign, "native")


def test_cleanup_detaches_our_offloaded_program_beside_a_foreign_native_one(offload_node):
    node = offload_node
    node.pin(PROG, NEW, "2")
    node.put("eth3", PROG, NEW, "offload")
    foreign = node.kernel.attach_foreign("eth3", "native", netns=NETNS)
    outcome = node.executor().run(plan_cleanup(program=PROG, observed=observe(node.netlink, node.pins)))
    assert outcome.detached == ["eth3"] and outcome.errors == []
    state = node.netlink.read_xdp("eth3")
    assert state.hw_prog_id is None and state.drv_prog_id == foreign      # the foreign one untouched
    assert node.pinned_digests() == []
