"""desired + observed -> actions (kube_xdp_agent.plan): pure, no kernel.

The rule under test everywhere: a program on a hook is ours only if its id is one of
our pinned programs, and the planner never touches anything else.
"""

from __future__ import annotations

import pytest

from kube_xdp_agent.plan import (
    Attach,
    Conflict,
    Detach,
    Hook,
    Keep,
    Observed,
    Reattach,
    Replace,
    Unpin,
    plan_attach,
    plan_cleanup,
    plan_gc,
)

PROG, OTHER = "drop-udp", "rate-limit"
OLD, NEW, MID = "aaaaaaaaaaaa", "bbbbbbbbbbbb", "dddddddddddd"
OTHER_DIGEST = "cccccccccccc"
OLD_ID, NEW_ID, MID_ID, OTHER_ID, FOREIGN_ID = 10, 11, 12, 20, 99
PINS = {PROG: {OLD: OLD_ID, NEW: NEW_ID}, OTHER: {OTHER_DIGEST: OTHER_ID}}
BOTH = ("native", "generic")


def observed(hooks: dict[str, tuple[int | None, str | None]], pins=PINS, primary="eth0") -> Observed:
    return Observed(hooks={n: Hook(n, pid, mode) for n, (pid, mode) in hooks.items()}, primary=primary, pins=pins)


def attach_plan(hooks, targets=("eth0",), modes=BOTH, pins=PINS):
    return plan_attach(program=PROG, want=NEW, targets=list(targets), modes=modes,
                       observed=observed(hooks, pins=pins))


# --- plan_attach: one target --------------------------------------------------------------
@pytest.mark.parametrize(
    "hook, modes, expected",
    [
        pytest.param((None, None), BOTH, Attach("eth0", BOTH), id="empty-hook-attach-modes-in-order"),
        pytest.param((None, None), ("generic", "native"), Attach("eth0", ("generic", "native")),
                     id="empty-hook-keeps-the-spec-order"),
        pytest.param((NEW_ID, "native"), BOTH, Keep("eth0", NEW_ID, "native"), id="wanted-native-keep"),
        pytest.param((NEW_ID, "generic"), BOTH, Keep("eth0", NEW_ID, "generic"),
                     id="wanted-in-fallback-mode-keep-not-upgraded"),
        pytest.param((NEW_ID, "generic"), ("native",), Reattach("eth0", NEW, "generic", ("native",)),
                     id="wanted-in-mode-no-longer-allowed-reattach"),
        pytest.param((OLD_ID, "native"), BOTH, Replace("eth0", OLD, "native"), id="older-digest-replace-same-mode"),
        pytest.param((OLD_ID, "generic"), BOTH, Replace("eth0", OLD, "generic"),
                     id="older-digest-in-fallback-mode-replace-in-that-mode"),
        pytest.param((OLD_ID, "generic"), ("native",), Reattach("eth0", OLD, "generic", ("native",)),
                     id="older-digest-mode-no-longer-allowed-reattach"),
        pytest.param((OTHER_ID, "native"), BOTH, Conflict("eth0", OTHER_ID, "native", OTHER),
                     id="another-kube-xdp-program-conflict-names-it"),
        pytest.param((FOREIGN_ID, "generic"), BOTH, Conflict("eth0", FOREIGN_ID, "generic", None),
                     id="foreign-program-conflict-owner-none"),
    ],
)
def test_plan_attach_one_interface(hook, modes, expected):
    assert attach_plan({"eth0": hook}, modes=modes) == [expected]


def test_target_missing_from_observed_hooks_is_an_attach():
    # An interface resolved from the spec but gone by the time we look: the attach reports it.
    assert attach_plan({}, targets=["eth9"]) == [Attach("eth9", BOTH)]


def test_our_program_whose_pin_is_gone_is_treated_as_foreign():
    # Without the pin nothing proves the program on the hook is ours: never replaced.
    pins = {PROG: {NEW: NEW_ID}, OTHER: {OTHER_DIGEST: OTHER_ID}}
    assert attach_plan({"eth0": (OLD_ID, "native")}, pins=pins) == [Conflict("eth0", OLD_ID, "native", None)]


def test_restart_adoption_plans_nothing_but_keeps():
    hooks = {"eth0": (NEW_ID, "native"), "eth1": (NEW_ID, "generic"), "lo": (None, None)}
    actions = attach_plan(hooks, targets=["eth0", "eth1"])
    assert actions == [Keep("eth0", NEW_ID, "native"), Keep("eth1", NEW_ID, "generic")]


# --- plan_attach: interfaces no longer targeted ------------------------------------------
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
    actions = attach_plan(hooks, targets=["eth0", "eth1"])
    assert actions == [
        Attach("eth0", BOTH),
        Keep("eth1", NEW_ID, "native"),
        Detach("eth2", NEW, "native"),
        Detach("eth3", OLD, "generic"),
    ]
    touched = {a.interface for a in actions}
    assert touched.isdisjoint({"eth4", "eth5", "lo"})


def test_no_targets_detaches_everywhere_and_touches_nothing_else():
    hooks = {"eth0": (NEW_ID, "native"), "eth1": (OTHER_ID, "native"), "eth2": (FOREIGN_ID, "generic")}
    assert attach_plan(hooks, targets=[]) == [Detach("eth0", NEW, "native")]


def test_other_programs_plan_ignores_ours():
    hooks = {"eth0": (NEW_ID, "native"), "eth1": (None, None)}
    actions = plan_attach(program=OTHER, want=OTHER_DIGEST, targets=["eth1"], modes=BOTH, observed=observed(hooks))
    assert actions == [Attach("eth1", BOTH)]


# --- plan_cleanup ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "hooks, pins, expected",
    [
        pytest.param(
            {"eth0": (NEW_ID, "native"), "eth1": (OLD_ID, "generic"), "eth2": (OTHER_ID, "native"),
             "eth3": (FOREIGN_ID, "generic"), "eth4": (None, None)},
            PINS,
            [Detach("eth0", NEW, "native"), Detach("eth1", OLD, "generic"), Unpin(PROG, None)],
            id="detach-own-hooks-only-then-unpin",
        ),
        pytest.param({"eth0": (OTHER_ID, "native")}, PINS, [Unpin(PROG, None)], id="pinned-not-attached-unpin"),
        pytest.param({"eth0": (OTHER_ID, "native"), "eth1": (FOREIGN_ID, "native")},
                     {OTHER: {OTHER_DIGEST: OTHER_ID}}, [], id="nothing-to-do"),
        pytest.param({"eth0": (NEW_ID, "native")}, {OTHER: {OTHER_DIGEST: OTHER_ID}}, [],
                     id="unpinned-program-on-hook-is-not-provably-ours"),
    ],
)
def test_plan_cleanup(hooks, pins, expected):
    assert plan_cleanup(program=PROG, observed=observed(hooks, pins=pins)) == expected


def test_plan_cleanup_unpins_after_every_detach():
    hooks = {"eth1": (NEW_ID, "native"), "eth0": (OLD_ID, "native")}
    actions = plan_cleanup(program=PROG, observed=observed(hooks))
    assert [type(a) for a in actions] == [Detach, Detach, Unpin]


# --- plan_gc --------------------------------------------------------------------------------
GC_PINS = {PROG: {OLD: OLD_ID, NEW: NEW_ID, MID: MID_ID}, OTHER: {OTHER_DIGEST: OTHER_ID}}


@pytest.mark.parametrize(
    "hooks, keep, expected",
    [
        pytest.param({"eth0": (NEW_ID, "native")}, NEW, [Unpin(PROG, OLD), Unpin(PROG, MID)],
                     id="unpin-neither-kept-nor-attached"),
        pytest.param({"eth0": (NEW_ID, "native"), "eth1": (OLD_ID, "generic")}, NEW, [Unpin(PROG, MID)],
                     id="attached-old-digest-stays-pinned"),
        pytest.param({}, None, [Unpin(PROG, OLD), Unpin(PROG, NEW), Unpin(PROG, MID)], id="keep-none-unpins-all-idle"),
        pytest.param({"eth0": (OLD_ID, "native"), "eth1": (MID_ID, "native")}, NEW, [], id="nothing-to-collect"),
    ],
)
def test_plan_gc(hooks, keep, expected):
    actions = plan_gc(program=PROG, keep=keep, observed=observed(hooks, pins=GC_PINS))
    assert sorted(actions, key=lambda a: a.digest) == sorted(expected, key=lambda a: a.digest)
    assert all(a.program == PROG for a in actions)    # never another program's pins


def test_plan_gc_of_unknown_program_is_empty():
    assert plan_gc(program="absent", keep=None, observed=observed({}, pins=GC_PINS)) == []


# --- plan_attach: a fallback mode is kept only when the preferred modes were tried ------------
@pytest.mark.parametrize("settled, expected", [
    pytest.param(frozenset({"eth0"}), Keep("eth0", NEW_ID, "generic"), id="fell-back-before-keep"),
    pytest.param(frozenset(), Reattach("eth0", NEW, "generic", BOTH), id="never-tried-native-reattach"),
    pytest.param(None, Keep("eth0", NEW_ID, "generic"), id="unknown-keep"),
])
def test_fallback_mode_kept_only_if_the_preferred_was_tried(settled, expected):
    """generic-only, then back to native-first: the program sits in generic, which is still
    allowed, but native was never tried against it: try it (a mode change is a gap by
    nature). Where the status says native was refused (settled), keep generic: no gap for
    nothing at every spec change."""
    actions = plan_attach(program=PROG, want=NEW, targets=["eth0"], modes=BOTH,
                          observed=observed({"eth0": (NEW_ID, "generic")}), settled=settled)
    assert actions == [expected]


def test_preferred_mode_is_kept_whatever_settled_says():
    actions = plan_attach(program=PROG, want=NEW, targets=["eth0"], modes=BOTH,
                          observed=observed({"eth0": (NEW_ID, "native")}), settled=frozenset())
    assert actions == [Keep("eth0", NEW_ID, "native")]


# --- a native/generic program and an offloaded one on one interface ('xdpmulti') ------------
OFF_ID, OFF = 13, "eeeeeeeeeeee"          # this program built for eth0's device, offloaded
MULTI_PINS = {PROG: {OLD: OLD_ID, NEW: NEW_ID, OFF: OFF_ID}, OTHER: {OTHER_DIGEST: OTHER_ID}}


def multi(occupant: tuple[int | None, str | None], offloaded: int | None, pins=MULTI_PINS) -> Observed:
    return Observed(hooks={"eth0": Hook("eth0", occupant[0], occupant[1], offloaded),
                           "eth1": Hook("eth1", None, None)}, primary="eth0", pins=pins)


def test_hook_slots_list_the_occupant_then_the_offloaded_one():
    assert Hook("eth0", FOREIGN_ID, "native", OFF_ID).slots() == [(FOREIGN_ID, "native"), (OFF_ID, "offload")]
    assert Hook("eth0", OFF_ID, "offload").slots() == [(OFF_ID, "offload")]
    assert Hook("eth0", None, None).slots() == []


@pytest.mark.parametrize("occupant", [(FOREIGN_ID, "native"), (OTHER_ID, "generic")], ids=["foreign", "other"])
def test_cleanup_detaches_our_offloaded_program_beside_another(occupant):
    actions = plan_cleanup(program=PROG, observed=multi(occupant, OFF_ID))
    assert actions == [Detach("eth0", OFF, "offload"), Unpin(PROG, None)]


def test_cleanup_detaches_ours_in_both_slots():
    actions = plan_cleanup(program=PROG, observed=multi((NEW_ID, "native"), OFF_ID))
    assert actions == [Detach("eth0", NEW, "native"), Detach("eth0", OFF, "offload"), Unpin(PROG, None)]


def test_cleanup_leaves_another_programs_offloaded_one():
    pins = {**MULTI_PINS, OTHER: {OTHER_DIGEST: OTHER_ID, "ffffffffffff": 30}}
    actions = plan_cleanup(program=PROG, observed=multi((NEW_ID, "native"), 30, pins=pins))
    assert actions == [Detach("eth0", NEW, "native"), Unpin(PROG, None)]


def test_our_offloaded_program_beside_a_foreign_native_one_is_kept():
    actions = plan_attach(program=PROG, want=NEW, targets=["eth0"], modes=("offload", "native"),
                          observed=multi((FOREIGN_ID, "native"), OFF_ID), offloaded={"eth0": OFF})
    assert actions == [Keep("eth0", OFF_ID, "offload")]


def test_our_offloaded_program_beside_another_on_an_untargeted_interface_is_detached():
    actions = plan_attach(program=PROG, want=NEW, targets=["eth1"], modes=("offload", "native"),
                          observed=multi((FOREIGN_ID, "native"), OFF_ID), offloaded={"eth1": "999999999999"})
    assert actions == [Attach("eth1", ("offload", "native")), Detach("eth0", OFF, "offload")]


def test_ours_in_both_slots_keeps_the_preferred_and_detaches_the_other():
    actions = plan_attach(program=PROG, want=NEW, targets=["eth0"], modes=("offload", "native"),
                          observed=multi((NEW_ID, "native"), OFF_ID), offloaded={"eth0": OFF})
    assert actions == [Keep("eth0", OFF_ID, "offload"), Detach("eth0", NEW, "native")]
    actions = plan_attach(program=PROG, want=NEW, targets=["eth0"], modes=BOTH,
                          observed=multi((NEW_ID, "native"), OFF_ID), offloaded={})
    assert actions == [Keep("eth0", NEW_ID, "native"), Detach("eth0", OFF, "offload")]


def test_ours_native_beside_another_offloaded_program_is_planned_as_before():
    pins = {**MULTI_PINS, OTHER: {OTHER_DIGEST: OTHER_ID, "ffffffffffff": 30}}
    actions = plan_attach(program=PROG, want=NEW, targets=["eth0"], modes=BOTH,
                          observed=multi((OLD_ID, "native"), 30, pins=pins))
    assert actions == [Replace("eth0", OLD, "native")]


def test_gc_keeps_a_digest_attached_in_the_offload_slot():
    actions = plan_gc(program=PROG, keep=NEW, observed=multi((FOREIGN_ID, "native"), OFF_ID))
    assert actions == [Unpin(PROG, OLD)]
