"""desired + observed + record -> actions (kube_xdp_agent.decide): pure, no kernel.

The rules under test everywhere: a program on a hook is this program's when one of
kube-xdp's links of this program holds it (a kernel fact), or, attached through netlink,
when its id is one of this program's pins; the decision never touches anything else
except by an atomic takeover a rule allows; and it reads the record's structured fields
only.
"""

from __future__ import annotations

import dataclasses

import pytest

from kube_xdp_agent.decide import (
    Attach,
    Conflict,
    Detach,
    Keep,
    Rank,
    Reattach,
    Replace,
    Repin,
    RepinLink,
    Takeover,
    Unpin,
    Wanted,
    cleanup,
    collect,
    decide,
    repairs,
)
from kube_xdp_agent.observe import Hook, LinkView, Observed
from kube_xdp_agent.record import IfaceRecord, Refused

PROG, OTHER = "drop-udp", "rate-limit"
OLD, NEW, MID = "aaaaaaaaaaaa", "bbbbbbbbbbbb", "dddddddddddd"
OTHER_DIGEST = "cccccccccccc"
OLD_ID, NEW_ID, MID_ID, OTHER_ID, FOREIGN_ID = 10, 11, 12, 20, 99
PINS = {PROG: {OLD: OLD_ID, NEW: NEW_ID}, OTHER: {OTHER_DIGEST: OTHER_ID}}
BOTH = ("native", "generic")
T0, T1 = "2025-01-01T00:00:00Z", "2025-01-01T00:00:05Z"


def link(program: str, iface: str, prog_id: int, mode: str | None = "native", *, link_id: int = 0,
         where: str = "attached", pinned: bool = True) -> LinkView:
    return LinkView(program, iface, link_id or 1000 + prog_id, prog_id, where, mode if where == "attached" else None,
                    pinned)


def observed(hooks: dict[str, tuple[int | None, str | None]], pins=PINS, primary="eth0", links=(),
             by_link: bool = True) -> Observed:
    """Hooks as read back; with `by_link`, every kube-xdp program on a hook is held by its
    link (the normal case), else attached through netlink."""
    views = list(links)
    if by_link:
        owner = {pid: prog for prog, digests in pins.items() for pid in digests.values()}
        views += [link(owner[pid], n, pid, mode) for n, (pid, mode) in hooks.items() if pid in owner]
    return Observed(hooks={n: Hook(n, pid, mode) for n, (pid, mode) in hooks.items()}, primary=primary, pins=pins,
                    links=tuple(views))


def wanted(targets=("eth0",), modes=BOTH, **kw) -> Wanted:
    return Wanted(program=PROG, digest=NEW, targets=tuple(targets), modes=modes, **kw)


def ready(name="eth0", mode="native", prog_id=NEW_ID, **kw) -> IfaceRecord:
    return IfaceRecord(name, True, mode=mode, prog_id=prog_id, digest=NEW, **{"preferred_mode": "native", **kw})


def plan(hooks, *, targets=("eth0",), modes=BOTH, pins=PINS, record=None, by_link=True, **kw):
    return decide(wanted(targets, modes, **kw), observed(hooks, pins=pins, by_link=by_link), record or {})


# --- one target -------------------------------------------------------------------------------
@pytest.mark.parametrize("by_link", [True, False], ids=["link", "netlink"])
@pytest.mark.parametrize(
    "hook, modes, expected",
    [
        pytest.param((None, None), BOTH, Attach("eth0", BOTH), id="empty-hook-attach-modes-in-order"),
        pytest.param((None, None), ("generic", "native"), Attach("eth0", ("generic", "native")),
                     id="empty-hook-keeps-the-spec-order"),
        pytest.param((NEW_ID, "native"), BOTH, Keep("eth0", NEW_ID, "native", NEW), id="wanted-native-keep"),
        pytest.param((NEW_ID, "generic"), ("native",), Reattach("eth0", NEW_ID, "generic", ("native",), True),
                     id="wanted-in-mode-no-longer-allowed-reattach"),
        pytest.param((OLD_ID, "native"), BOTH, Replace("eth0", OLD_ID, "native"), id="older-digest-replace-same-mode"),
        pytest.param((OLD_ID, "generic"), BOTH, Replace("eth0", OLD_ID, "generic"),
                     id="older-digest-in-fallback-mode-replace-in-that-mode"),
        pytest.param((OLD_ID, "generic"), ("native",), Reattach("eth0", OLD_ID, "generic", ("native",), True),
                     id="older-digest-mode-no-longer-allowed-reattach"),
        pytest.param((OTHER_ID, "native"), BOTH, Conflict("eth0", OTHER_ID, "native", OTHER),
                     id="another-kube-xdp-program-conflict-names-it"),
        pytest.param((FOREIGN_ID, "generic"), BOTH, Conflict("eth0", FOREIGN_ID, "generic", None),
                     id="foreign-program-conflict-owner-none"),
    ],
)
def test_one_interface(hook, modes, expected, by_link):
    [action] = plan({"eth0": hook}, modes=modes, by_link=by_link)
    if isinstance(expected, Keep) and by_link:
        expected = Keep("eth0", NEW_ID, "native", NEW, 1000 + NEW_ID)
    if isinstance(expected, Reattach):
        expected = dataclasses.replace(expected, by_link=by_link)
    assert action == expected


def test_target_missing_from_observed_hooks_is_an_attach():
    # An interface resolved from the spec but gone by the time we look: the attach reports it.
    assert plan({}, targets=["eth9"]) == [Attach("eth9", BOTH)]


def test_our_link_holding_a_program_whose_pin_is_gone_is_still_ours():
    """The kernel says whose it is: our link holds it. (Through netlink, the same program
    without its pin is not provably ours: a Conflict, never replaced.)"""
    pins = {PROG: {NEW: NEW_ID}}
    hooks = {"eth0": (OLD_ID, "native")}
    linked = observed(hooks, pins=pins, by_link=False, links=[link(PROG, "eth0", OLD_ID)])
    assert decide(wanted(), linked, {}) == [Replace("eth0", OLD_ID, "native")]
    assert decide(wanted(), observed(hooks, pins=pins, by_link=False), {}) == [
        Conflict("eth0", OLD_ID, "native", None)]


def test_another_programs_link_is_that_programs():
    hooks = {"eth0": (FOREIGN_ID, "native")}
    theirs = observed(hooks, by_link=False, links=[link(OTHER, "eth0", FOREIGN_ID)])
    [action] = decide(wanted(rank=Rank(900, T0, PROG), rivals={OTHER: Rank(100, T1, OTHER)}), theirs, {})
    assert action == Takeover("eth0", FOREIGN_ID, "native", OTHER, "priority")


def test_restart_adoption_plans_nothing_but_keeps():
    hooks = {"eth0": (NEW_ID, "native"), "eth1": (NEW_ID, "generic"), "lo": (None, None)}
    record = {"eth1": ready("eth1", "generic", refused=(Refused("native", "DriverModeUnsupported", 95),))}
    actions = plan(hooks, targets=["eth0", "eth1"], record=record)
    assert actions == [Keep("eth0", NEW_ID, "native", NEW, 1000 + NEW_ID),
                       Keep("eth1", NEW_ID, "generic", NEW, 1000 + NEW_ID)]


# --- interfaces no longer targeted ------------------------------------------------------------
def test_untargeted_interfaces_carrying_the_program_are_detached_others_untouched():
    hooks = {
        "eth0": (None, None),             # target, empty
        "eth1": (NEW_ID, "native"),       # target, already right
        "eth2": (NEW_ID, "native"),       # ours, no longer targeted
        "eth3": (OLD_ID, "generic"),      # ours (older digest), no longer targeted
        "eth4": (OTHER_ID, "native"),     # another XdpProgram's: not ours to touch
        "eth5": (FOREIGN_ID, "native"),   # foreign: not ours to touch
        "lo": (None, None),
    }
    actions = plan(hooks, targets=["eth0", "eth1"])
    assert actions == [
        Attach("eth0", BOTH),
        Keep("eth1", NEW_ID, "native", NEW, 1000 + NEW_ID),
        Detach("eth2", NEW_ID, "native", by_link=True),
        Detach("eth3", OLD_ID, "generic", by_link=True),
    ]
    assert {a.interface for a in actions}.isdisjoint({"eth4", "eth5", "lo"})


def test_no_targets_detaches_everywhere_and_touches_nothing_else():
    hooks = {"eth0": (NEW_ID, "native"), "eth1": (OTHER_ID, "native"), "eth2": (FOREIGN_ID, "generic")}
    assert plan(hooks, targets=[]) == [Detach("eth0", NEW_ID, "native", by_link=True)]
    assert plan(hooks, targets=[], by_link=False) == [Detach("eth0", NEW_ID, "native", by_link=False)]


@pytest.mark.parametrize("where", ["defunct", "elsewhere"])
def test_a_link_that_holds_no_hook_here_is_detached_unless_its_interface_is_a_target(where):
    """A link left defunct by a removed interface, or on a renamed or moved one: off a
    target it is detached; on a target the attach drops it itself (attach.place)."""
    stray = link(PROG, "eth7", NEW_ID, where=where)
    obs = observed({"eth0": (None, None)}, links=[stray])
    assert decide(wanted(), obs, {}) == [Attach("eth0", BOTH), Detach("eth7", None, None, by_link=True)]
    assert decide(wanted(targets=("eth0", "eth7")), obs, {}) == [Attach("eth0", BOTH), Attach("eth7", BOTH)]


def test_other_programs_decision_ignores_ours():
    hooks = {"eth0": (NEW_ID, "native"), "eth1": (None, None)}
    w = Wanted(program=OTHER, digest=OTHER_DIGEST, targets=("eth1",), modes=BOTH)
    assert decide(w, observed(hooks), {}) == [Attach("eth1", BOTH)]


# --- a fallback mode is kept only when the record shows the preferred modes were tried --------
NATIVE_REFUSED = (Refused("native", "DriverModeUnsupported", 95, "EOPNOTSUPP"),)


@pytest.mark.parametrize("record, expected_keep", [
    pytest.param({"eth0": ready(mode="generic", refused=NATIVE_REFUSED)}, True, id="fell-back-before-keep"),
    pytest.param({"eth0": ready(mode="generic")}, False, id="native-never-tried-reattach"),
    pytest.param({}, False, id="no-record-reattach"),
    pytest.param({"eth0": ready(mode="generic", refused=NATIVE_REFUSED, preferred_mode="offload")}, False,
                 id="another-preferred-mode-then-reattach"),
    pytest.param({"eth0": IfaceRecord("eth0", True, mode="generic", prog_id=NEW_ID, reason="DriverModeUnsupported",
                                      legacy=True)}, True, id="an-older-agents-fallback-is-kept"),
    pytest.param({"eth0": IfaceRecord("eth0", True, mode="generic", prog_id=NEW_ID, legacy=True)}, False,
                 id="an-older-agents-entry-without-a-fallback-reason-reattach"),
])
def test_fallback_mode_kept_only_if_the_preferred_was_tried(record, expected_keep):
    """generic-only, then back to native-first: the program sits in generic, which is still
    allowed, but native was never tried against it: try it (a mode change is a gap by
    nature). Where the record says native was refused (settled), keep generic: no gap for
    nothing at every spec change."""
    [action] = plan({"eth0": (NEW_ID, "generic")}, record=record)
    assert action == (Keep("eth0", NEW_ID, "generic", NEW, 1000 + NEW_ID) if expected_keep
                      else Reattach("eth0", NEW_ID, "generic", BOTH, True))


def test_preferred_mode_is_kept_whatever_the_record_says():
    assert plan({"eth0": (NEW_ID, "native")}, record={}) == [Keep("eth0", NEW_ID, "native", NEW, 1000 + NEW_ID)]


@pytest.mark.parametrize("entry, modes, settled", [
    (dict(mode="generic", preferred_mode="native", refused=NATIVE_REFUSED), BOTH, True),
    (dict(mode="generic", preferred_mode="native", refused=NATIVE_REFUSED), ("offload", "native", "generic"), False),
    (dict(mode="native", preferred_mode="offload", refused=(Refused("offload", "OffloadUnsupported"),)),
     ("native", "generic"), True),        # the preferred mode is settled whatever was tried before
    (dict(mode="generic", preferred_mode="offload",
          refused=(Refused("offload", "OffloadUnsupported"), Refused("native", "DriverModeUnsupported"))),
     ("offload", "native", "generic"), True),
    (dict(mode="generic", preferred_mode="offload", refused=(Refused("offload", "OffloadUnsupported"),)),
     ("offload", "native", "generic"), False),          # native never tried
    (dict(mode="generic", preferred_mode="native"), BOTH, False),
], ids=["same-preferred", "offload-now-preferred-never-tried", "now-preferred", "both-refused",
        "one-of-two-refused", "nothing-refused"])
def test_the_record_says_when_a_mode_is_settled(entry, modes, settled):
    assert IfaceRecord("eth0", True, prog_id=7, **entry).settled(modes) is settled
    assert IfaceRecord("eth0", False, prog_id=7, **entry).settled(modes) is False     # not ready: nothing settled


# --- who gets an interface (ported from the contest rules) --------------------------------------
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


def contest(hook, *, rank=Rank(500, T1, PROG), rivals=None, take_over=False, record=None, modes=BOTH):
    return plan({"eth0": hook}, modes=modes, rank=rank, take_over=take_over, record=record,
                rivals=rivals if rivals is not None else {OTHER: Rank(500, T0, OTHER)})


def test_higher_priority_takes_over_another_xdpprogram_atomically_in_its_mode():
    assert contest((OTHER_ID, "generic"), rank=Rank(700, T1, PROG)) == [
        Takeover("eth0", OTHER_ID, "generic", OTHER, "priority")]


def test_lower_priority_reports_conflict_naming_the_winner():
    [action] = contest((OTHER_ID, "native"), rank=Rank(100, T0, PROG))
    assert isinstance(action, Conflict) and action.owner == OTHER and "priority 500 vs 100" in action.detail


def test_a_rival_without_an_attachment_on_this_node_is_left_alone():
    [action] = contest((OTHER_ID, "native"), rank=Rank(1000, T0, PROG), rivals={})
    assert action == Conflict("eth0", OTHER_ID, "native", OTHER)


def test_takeover_needing_a_mode_the_spec_forbids_is_a_conflict():
    [action] = contest((OTHER_ID, "generic"), rank=Rank(700, T1, PROG), modes=("native",))
    assert isinstance(action, Conflict) and "generic mode" in action.detail


@pytest.mark.parametrize("take_over, record, expected", [
    (False, {}, Conflict("eth0", FOREIGN_ID, "native", None)),
    (True, {}, Takeover("eth0", FOREIGN_ID, "native", None, "takeOver")),
    (False, {"eth0": ready()}, Takeover("eth0", FOREIGN_ID, "native", None, "drift")),
    (False, {"eth1": ready("eth1")}, Conflict("eth0", FOREIGN_ID, "native", None)),
    (False, {"eth0": IfaceRecord("eth0", False, reason="Conflict")}, Conflict("eth0", FOREIGN_ID, "native", None)),
], ids=["never-clobbered", "takeOver-opt-in", "replaced-ours-is-drift", "held-elsewhere", "never-held"])
def test_foreign_program(take_over, record, expected):
    assert contest((FOREIGN_ID, "native"), take_over=take_over, record=record) == [expected]


def test_priority_never_overrides_a_foreign_program():
    [action] = contest((FOREIGN_ID, "native"), rank=Rank(1000, T0, PROG))
    assert action == Conflict("eth0", FOREIGN_ID, "native", None)


# --- repairs: pins removed behind our back -----------------------------------------------------
def test_a_running_program_whose_pin_is_gone_is_repinned_from_the_record():
    pins = {PROG: {OLD: OLD_ID}}                                  # NEW's pin removed, NEW_ID still attached
    obs = observed({"eth0": (NEW_ID, "native")}, pins=pins, by_link=False, links=[link(PROG, "eth0", NEW_ID)])
    assert repairs(PROG, obs, {"eth0": ready()}) == [Repin(PROG, NEW, NEW_ID)]
    assert repairs(PROG, obs, {}) == []                           # nothing recorded: nothing to repin from
    gone = observed({"eth0": (None, None)}, pins=pins)
    assert repairs(PROG, gone, {"eth0": ready()}) == []           # not running any more: rebuilt instead


def test_a_link_held_while_its_pin_was_removed_is_repinned():
    obs = observed({"eth0": (NEW_ID, "native")}, by_link=False,
                   links=[link(PROG, "eth0", NEW_ID, link_id=7, pinned=False)])
    assert repairs(PROG, obs, {"eth0": ready()}) == [RepinLink(PROG, "eth0", 7)]
    assert repairs(OTHER, obs, {}) == []


def test_a_repin_never_takes_a_digest_pinned_again_meanwhile():
    pins = {PROG: {NEW: 55}}                                       # NEW rebuilt as another program
    obs = observed({"eth0": (NEW_ID, "native")}, pins=pins, by_link=False)
    assert repairs(PROG, obs, {"eth0": ready()}) == []


# --- collection and cleanup ---------------------------------------------------------------------
GC_PINS = {PROG: {OLD: OLD_ID, NEW: NEW_ID, MID: MID_ID}, OTHER: {OTHER_DIGEST: OTHER_ID}}


@pytest.mark.parametrize(
    "hooks, keep, expected",
    [
        pytest.param({"eth0": (NEW_ID, "native")}, {NEW}, [Unpin(PROG, OLD), Unpin(PROG, MID)],
                     id="unpin-neither-kept-nor-attached"),
        pytest.param({"eth0": (NEW_ID, "native"), "eth1": (OLD_ID, "generic")}, {NEW}, [Unpin(PROG, MID)],
                     id="attached-old-digest-stays-pinned"),
        pytest.param({}, set(), [Unpin(PROG, OLD), Unpin(PROG, NEW), Unpin(PROG, MID)], id="keep-none-unpins-all-idle"),
        pytest.param({"eth0": (OLD_ID, "native"), "eth1": (MID_ID, "native")}, {NEW}, [], id="nothing-to-collect"),
    ],
)
def test_collect(hooks, keep, expected):
    actions = collect(PROG, keep, observed(hooks, pins=GC_PINS))
    assert sorted(actions, key=lambda a: a.digest) == sorted(expected, key=lambda a: a.digest)
    assert all(a.program == PROG for a in actions)    # never another program's pins


def test_collect_keeps_a_digest_held_by_a_defunct_link():
    obs = observed({}, pins=GC_PINS, links=[link(PROG, "eth9", OLD_ID, where="defunct")])
    assert Unpin(PROG, OLD) not in collect(PROG, {NEW}, obs)
    assert collect("absent", set(), obs) == []


@pytest.mark.parametrize(
    "hooks, pins, expected",
    [
        pytest.param(
            {"eth0": (NEW_ID, "native"), "eth1": (OLD_ID, "generic"), "eth2": (OTHER_ID, "native"),
             "eth3": (FOREIGN_ID, "generic"), "eth4": (None, None)},
            PINS,
            [Detach("eth0", NEW_ID, "native", True), Detach("eth1", OLD_ID, "generic", True), Unpin(PROG, None)],
            id="detach-own-hooks-only-then-unpin",
        ),
        pytest.param({"eth0": (OTHER_ID, "native")}, PINS, [Unpin(PROG, None)], id="pinned-not-attached-unpin"),
        pytest.param({"eth0": (OTHER_ID, "native"), "eth1": (FOREIGN_ID, "native")},
                     {OTHER: {OTHER_DIGEST: OTHER_ID}}, [], id="nothing-to-do"),
    ],
)
def test_cleanup(hooks, pins, expected):
    assert cleanup(PROG, observed(hooks, pins=pins)) == expected


def test_cleanup_of_an_unpinned_program_on_a_hook_through_netlink_is_not_provably_ours():
    assert cleanup(PROG, observed({"eth0": (NEW_ID, "native")}, pins={}, by_link=False)) == []


def test_cleanup_repins_a_held_link_then_detaches_every_link_then_unpins():
    obs = observed({"eth0": (NEW_ID, "native")}, pins={}, by_link=False,
                   links=[link(PROG, "eth0", NEW_ID, link_id=7, pinned=False),
                          link(PROG, "eth8", OLD_ID, where="defunct")])
    assert cleanup(PROG, obs) == [RepinLink(PROG, "eth0", 7), Detach("eth0", NEW_ID, "native", True),
                                  Detach("eth8", None, None, True), Unpin(PROG, None)]


# --- a native/generic program and an offloaded one on one interface ('xdpmulti') ------------
OFF_ID, OFF = 13, "eeeeeeeeeeee"          # this program built for eth0's device, offloaded
MULTI_PINS = {PROG: {OLD: OLD_ID, NEW: NEW_ID, OFF: OFF_ID}, OTHER: {OTHER_DIGEST: OTHER_ID}}


def multi(occupant: tuple[int | None, str | None], offloaded: int | None, pins=MULTI_PINS) -> Observed:
    """eth0 with an occupant and an offloaded program beside it, attached through netlink
    (links hold one slot per (program, interface): the second one is a netlink program)."""
    return Observed(hooks={"eth0": Hook("eth0", occupant[0], occupant[1], offloaded),
                           "eth1": Hook("eth1", None, None)}, primary="eth0", pins=pins)


def test_hook_slots_list_the_occupant_then_the_offloaded_one():
    assert Hook("eth0", FOREIGN_ID, "native", OFF_ID).slots() == [(FOREIGN_ID, "native"), (OFF_ID, "offload")]
    assert Hook("eth0", OFF_ID, "offload").slots() == [(OFF_ID, "offload")]
    assert Hook("eth0", None, None).slots() == []


@pytest.mark.parametrize("occupant", [(FOREIGN_ID, "native"), (OTHER_ID, "generic")], ids=["foreign", "other"])
def test_cleanup_detaches_our_offloaded_program_beside_another(occupant):
    assert cleanup(PROG, multi(occupant, OFF_ID)) == [Detach("eth0", OFF_ID, "offload", False), Unpin(PROG, None)]


def test_cleanup_detaches_ours_in_both_slots():
    assert cleanup(PROG, multi((NEW_ID, "native"), OFF_ID)) == [
        Detach("eth0", NEW_ID, "native", False), Detach("eth0", OFF_ID, "offload", False), Unpin(PROG, None)]


def test_our_offloaded_program_beside_a_foreign_native_one_is_kept():
    w = wanted(modes=("offload", "native"), offloaded={"eth0": OFF})
    assert decide(w, multi((FOREIGN_ID, "native"), OFF_ID), {}) == [Keep("eth0", OFF_ID, "offload", OFF)]


def test_an_older_offloaded_version_is_replaced_in_place_with_the_new_device_build():
    w = wanted(modes=("offload", "native"), offloaded={"eth0": "999999999999"})
    assert decide(w, multi((FOREIGN_ID, "native"), OFF_ID), {}) == [Replace("eth0", OFF_ID, "offload")]


def test_our_offloaded_program_beside_another_on_an_untargeted_interface_is_detached():
    w = wanted(targets=("eth1",), modes=("offload", "native"), offloaded={"eth1": "999999999999"})
    assert decide(w, multi((FOREIGN_ID, "native"), OFF_ID), {}) == [
        Attach("eth1", ("offload", "native")), Detach("eth0", OFF_ID, "offload", False)]


def test_ours_in_both_slots_keeps_the_preferred_and_detaches_the_other():
    w = wanted(modes=("offload", "native"), offloaded={"eth0": OFF})
    assert decide(w, multi((NEW_ID, "native"), OFF_ID), {}) == [
        Keep("eth0", OFF_ID, "offload", OFF), Detach("eth0", NEW_ID, "native", False)]
    assert decide(wanted(), multi((NEW_ID, "native"), OFF_ID), {}) == [
        Keep("eth0", NEW_ID, "native", NEW), Detach("eth0", OFF_ID, "offload", False)]


def test_ours_native_beside_another_offloaded_program_is_planned_as_before():
    pins = {**MULTI_PINS, OTHER: {OTHER_DIGEST: OTHER_ID, "ffffffffffff": 30}}
    assert decide(wanted(), multi((OLD_ID, "native"), 30, pins=pins), {}) == [Replace("eth0", OLD_ID, "native")]


def test_collect_keeps_a_digest_attached_in_the_offload_slot():
    assert collect(PROG, {NEW}, multi((FOREIGN_ID, "native"), OFF_ID)) == [Unpin(PROG, OLD)]
