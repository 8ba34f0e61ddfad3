"""The demo's row check (pure): a row passes only when placement, Ready, the kernel's
mode and program id, and every count are what the example promises."""

from __future__ import annotations

import dataclasses

import pytest

from kube_xdp_rig.demo import Row, check_row, print_table


def good_row(**changes) -> Row:
    row = Row(program="udp-drop", node="node-1", iface="eth0", selected=True, attached=True, ready="True",
              mode="native", prog_id=41, kernel=[("native", 41)], allowed_modes=("native", "generic"),
              program_ready="True/Ready", program_selected=3, program_ready_nodes=3, expected_selected=3,
              counts={"arrived at :7777": (0, 0), "arrived at :7778": (200, 200), "dropped": (200, 200)},
              counted="200 arrived", dropped=200, expect="200 to :7777 dropped, 200 to :7778 arrive")
    return dataclasses.replace(row, **changes)


def not_selected_row(**changes) -> Row:
    row = good_row(program="blocklist", iface="eth2", selected=False, attached=False, ready="not selected",
                   mode="-", prog_id=None, kernel=[], counts={"arrived at :5353": (200, 200)})
    return dataclasses.replace(row, **changes)


def test_rows_that_keep_their_promise_pass():
    assert check_row(good_row()) == [] and good_row().ok
    assert check_row(not_selected_row()) == []


@pytest.mark.parametrize("changes, says", [
    (dict(counts={"dropped": (400, 200)}), "dropped: 400, expected 200"),               # absolute, not delta
    (dict(counts={"arrived at :7777": (3, 0)}), "arrived at :7777: 3, expected 0"),
    (dict(attached=False), "no XdpAttachment"),
    (dict(program_ready="True/NoNodesSelected"), "program Ready is True/NoNodesSelected"),
    (dict(program_selected=2, program_ready_nodes=2), "labels select 3"),
    (dict(ready="False"), "interface ready is False"),
    (dict(kernel=[]), "no XDP program"),
    (dict(kernel=[("generic", 41)]), "the kernel shows generic id 41, the status says native id 41"),
    (dict(kernel=[("native", 42)]), "the kernel shows native id 42"),
    (dict(mode="offload", kernel=[("offload", 41)]), "mode offload is not one the program allows"),
], ids=["count", "leak", "unplaced", "no-nodes-selected", "selected-count", "iface-not-ready",
        "not-in-kernel", "mode-differs", "prog-differs", "mode-not-allowed"])
def test_a_broken_promise_fails_the_row(changes, says):
    problems = check_row(good_row(**changes))
    assert any(says in p for p in problems), problems


@pytest.mark.parametrize("changes, says", [
    (dict(attached=True), "XdpAttachment exists"),
    (dict(kernel=[("native", 7)]), "on a node the program does not select"),
    (dict(counts={"arrived at :5353": (0, 200)}), "arrived at :5353: 0, expected 200"),
], ids=["attached", "in-kernel", "blocked"])
def test_a_node_not_selected_must_be_untouched(changes, says):
    problems = check_row(not_selected_row(**changes))
    assert any(says in p for p in problems), problems


def test_table_says_what_differs():
    lines = []
    ok = print_table([good_row(), good_row(node="node-2", counts={"dropped": (0, 200)})], lines.append)
    assert not ok
    header = next(l for l in lines if l.startswith("PROGRAM"))
    assert header.split() == ["PROGRAM", "NODE", "IFACE", "MODE", "READY", "COUNTED", "DROPPED", "EXPECTED", "OK"]
    assert [l.split()[-1] for l in lines if l.startswith("udp-drop")] == ["yes", "NO"]
    assert "demo: udp-drop on node-2 eth0: dropped: 0, expected 200" in lines
    assert lines[-1] == "demo: 1 row(s) differ from what the example promises"
    assert print_table([good_row()], lines.append) is True
