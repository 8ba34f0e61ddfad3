"""Who gets an interface two programs want (pure: decide + FakeKernel, no root needed).

- two XdpPrograms: the higher spec.priority takes the interface over atomically; a tie
  goes to the older attachment on the node, then the lower name; the loser reports
  Conflict naming the winner and is never forced off by its own plan;
- a foreign program (not managed by kube-xdp): never touched (Conflict naming its id)
  unless spec.takeOver is true, or unless it replaced ours behind our back (the
  attachment last reported the interface ready with its own program: drift, repaired);
- a takeover is atomic, in the taken program's mode (a netlink REPLACE with it as the
  expected one; another XdpProgram's link updated with it expected, then its pin
  renamed): if the spec does not allow that mode it stays a Conflict (no gap is ever made).
"""

from __future__ import annotations

import pytest

from kube_xdp_agent.decide import Conflict, Rank, Takeover, Wanted, decide
from kube_xdp_agent.execute import Executor
from kube_xdp_agent.kernel import CompileRequest
from kube_xdp_agent.observe import Hook, Observed, observe
from kube_xdp_agent.record import IfaceRecord
from tests.fakes import FakeKernel

PROG, OTHER = "edge-fw", "ddos"
MINE, THEIRS = "aaaaaaaaaaaa", "bbbbbbbbbbbb"
MINE_ID, THEIRS_ID, FOREIGN_ID = 11, 21, 99
PINS = {PROG: {MINE: MINE_ID}, OTHER: {THEIRS: THEIRS_ID}}
BOTH = ("native", "generic")
T0, T1 = "2025-01-01T00:00:00Z", "2025-01-01T00:00:05Z"


def plan(hook, *, rank=Rank(500, T1, PROG), rivals=None, take_over=False, held=(), modes=BOTH):
    observed = Observed(hooks={"eth0": Hook("eth0", *hook)}, primary="eth0", pins=PINS)
    wanted = Wanted(PROG, MINE, ("eth0",), modes, rank=rank,
                    rivals=rivals if rivals is not None else {OTHER: Rank(500, T0, OTHER)}, take_over=take_over)
    return decide(wanted, observed, {name: IfaceRecord(name, True, "native", prog_id=MINE_ID) for name in held})


@pytest.mark.parametrize("mine, theirs, wins", [
    (Rank(600, T1, PROG), Rank(500, T0, OTHER), True),      # higher priority, younger
    (Rank(400, T0, PROG), Rank(500, T1, OTHER), False),     # lower priority, older
    (Rank(500, T0, PROG), Rank(500, T1, OTHER), True),      # tie: the older attachment
    (Rank(500, T1, PROG), Rank(500, T0, OTHER), False),
    (Rank(500, T0, "a"), Rank(500, T0, "b"), True),         # same second: the lower name
    (Rank(500, "", "a"), Rank(500, T0, "b"), False),        # unknown age counts as youngest
])
def test_rank(mine, theirs, wins):
    assert mine.outranks(theirs) is wins
    assert theirs.outranks(mine) is (not wins)


def test_higher_priority_takes_over_another_xdpprogram_atomically_in_its_mode():
    assert plan((THEIRS_ID, "generic"), rank=Rank(700, T1, PROG)) == [
        Takeover("eth0", THEIRS_ID, "generic", OTHER, "priority")]


def test_lower_priority_reports_conflict_naming_the_winner():
    [action] = plan((THEIRS_ID, "native"), rank=Rank(100, T0, PROG))
    assert isinstance(action, Conflict) and action.owner == OTHER and "priority 500 vs 100" in action.detail


def test_a_rival_without_an_attachment_on_this_node_is_left_alone():
    [action] = plan((THEIRS_ID, "native"), rank=Rank(1000, T0, PROG), rivals={})
    assert action == Conflict("eth0", THEIRS_ID, "native", OTHER)


def test_takeover_needing_a_mode_the_spec_forbids_is_a_conflict():
    [action] = plan((THEIRS_ID, "generic"), rank=Rank(700, T1, PROG), modes=("native",))
    assert isinstance(action, Conflict) and "generic mode" in action.detail


@pytest.mark.parametrize("take_over, held, expected", [
    (False, (), Conflict("eth0", FOREIGN_ID, "native", None)),
    (True, (), Takeover("eth0", FOREIGN_ID, "native", None, "takeOver")),
    (False, ("eth0",), Takeover("eth0", FOREIGN_ID, "native", None, "drift")),
    (False, ("eth1",), Conflict("eth0", FOREIGN_ID, "native", None)),
], ids=["never-clobbered", "takeOver-opt-in", "replaced-ours-is-drift", "held-elsewhere"])
def test_foreign_program(take_over, held, expected):
    assert plan((FOREIGN_ID, "native"), take_over=take_over, held=held) == [expected]


def test_priority_never_overrides_a_foreign_program():
    [action] = plan((FOREIGN_ID, "native"), rank=Rank(1000, T0, PROG))
    assert action == Conflict("eth0", FOREIGN_ID, "native", None)


# --- on the fake kernel: the hook is never empty -------------------------------------------
class Node:
    def __init__(self):
        self.kernel = FakeKernel()
        self.kernel.add_netns("n")
        self.kernel.add_interface("eth0", netns="n", default_route=True)
        self.kernel.mount_bpffs("/b")
        self.node = self.kernel.node("n", "/b")
        self.netlink, self.pins = self.node.netlink, self.node.pins

    def pin(self, program, digest, version):
        loaded = self.kernel.compiler.load(CompileRequest("int f(struct xdp_md *c) { return XDP_PASS + 0 * V; }",
                                                          "f", {"V": version}))
        pinned = self.pins.pin_program(program, digest, loaded)
        self.kernel.compiler.release(loaded.key)
        return pinned.prog_id

    def run(self, program, digest, **kw):
        actions = decide(Wanted(program, digest, ("eth0",), BOTH, **kw), observe(self.netlink, self.pins), {})
        return actions, Executor(self.node, program=program, want=digest, modes=BOTH).run(actions)


def test_takeover_of_a_foreign_program_is_one_atomic_replace():
    node = Node()
    mine = node.pin(PROG, MINE, "1")
    foreign = node.kernel.attach_foreign("eth0", "native", netns="n")
    _, outcome = node.run(PROG, MINE, take_over=True)
    [res] = outcome.interfaces
    assert res.ok and res.prog_id == mine and res.replaced == (foreign, None, "takeOver")
    assert node.netlink.read_xdp("eth0").occupant == (mine, "native")


def test_takeover_loses_the_race_cleanly_when_the_hook_changed_meanwhile():
    node = Node()
    node.pin(PROG, MINE, "1")
    first = node.kernel.attach_foreign("eth0", "native", netns="n")
    actions = decide(Wanted(PROG, MINE, ("eth0",), BOTH, take_over=True), observe(node.netlink, node.pins), {})
    # between the decision and the execution another tool swaps its program: the takeover
    # (of the first one) must leave the second one alone
    node.kernel._iface("n", "eth0").hooks.pop("native")
    node.kernel.programs[first].holders.discard(("hook", "n", "eth0", "native"))
    second = node.kernel.attach_foreign("eth0", "native", netns="n")
    outcome = Executor(node.node, program=PROG, want=MINE, modes=BOTH).run(actions)
    [res] = outcome.interfaces
    assert not res.ok
    assert node.netlink.read_xdp("eth0").occupant == (second, "native")    # untouched


def test_two_programs_settle_on_the_higher_priority_and_stay_there():
    node = Node()
    low = node.pin(OTHER, THEIRS, "1")
    high = node.pin(PROG, MINE, "2")
    ranks = {PROG: Rank(800, T1, PROG), OTHER: Rank(200, T0, OTHER)}

    def reconcile(program, digest):
        rivals = {p: r for p, r in ranks.items() if p != program}
        return node.run(program, digest, rank=ranks[program], rivals=rivals)

    reconcile(OTHER, THEIRS)                                   # the low one came first
    assert node.netlink.read_xdp("eth0").occupant == (low, "native")
    _, outcome = reconcile(PROG, MINE)
    assert outcome.interfaces[0].replaced == (low, OTHER, "priority")
    for _ in range(3):                                         # resyncs: nobody flaps
        actions, outcome = reconcile(OTHER, THEIRS)
        assert isinstance(actions[0], Conflict) and not outcome.interfaces[0].ok
        reconcile(PROG, MINE)
        assert node.netlink.read_xdp("eth0").occupant == (high, "native")
