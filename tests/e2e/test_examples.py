"""The demo and the three examples (udp-drop, proto-count, blocklist), through the demo's
own code, on a rig of the demo's shape (3 nodes, eth0-eth2, node-2 and node-3 role=edge)
with kube-xdp deployed as the e2e tests deploy it: every row keeps its promise, a second
run on the same rig too (counts are this run's), and a placement the labels call for but
the operator never made is caught."""

from __future__ import annotations

import pytest

from kube_xdp_rig import demo, workloads
from kube_xdp_rig.cluster import rig_ports, rig_up

from .kubexdp import Cluster
from .test_rig import SECOND

pytestmark = pytest.mark.rig


@pytest.fixture(scope="module")
def demo_rig():
    with rig_up(demo.demo_config(SECOND, **rig_ports())) as info:
        with Cluster(info).deploy(resync=1.0) as cluster:
            yield info, cluster


def _problems(rows: list[demo.Row]) -> list[str]:
    return [f"{r.program} {r.node} {r.iface}: {p}" for r in rows for p in r.problems]


def test_every_example_keeps_its_promise_and_again_on_a_second_run(demo_rig):
    info, cluster = demo_rig
    lines: list[str] = []
    first = demo.run(info, cluster, timeout=180, out=lines.append)
    assert not _problems(first), "\n".join(lines)
    assert lines[-1] == "demo: every example did what it promises"
    # 3 programs x 3 nodes; blocklist only on the role=edge nodes
    assert len(first) == 9
    placed = {(r.program, r.node) for r in first if r.selected}
    assert placed == {(p, n) for p in ("udp-drop", "proto-count") for n in ("node-1", "node-2", "node-3")} \
        | {("blocklist", "node-2"), ("blocklist", "node-3")}
    assert all(r.kernel == [(r.mode, r.prog_id)] and r.mode == "native" for r in first if r.selected)
    assert all(r.dropped == demo.SENT for r in first if r.program in ("udp-drop", "blocklist") and r.selected)

    second = demo.run(info, cluster, timeout=60, out=lines.append)           # make demo, again
    assert not _problems(second), "\n".join(lines)
    assert [(r.program, r.node, r.prog_id) for r in second] == [(r.program, r.node, r.prog_id) for r in first]


def test_a_placement_the_labels_call_for_but_nobody_made_is_caught(demo_rig):
    """node-1 labelled role=edge while the operator is stopped: blocklist's selector now
    matches node-1, but no attachment and no program are there, and the program's status
    still counts 2 nodes. The demo's check must fail those rows (its table says NO)."""
    info, cluster = demo_rig
    programs = demo.apply_examples(cluster)
    demo.wait_ready(cluster, list(programs), 120)
    assert workloads.stop(info, "operator")
    try:
        cluster.label_node("node-1", {"role": "edge"})
        rows = demo.measure(info, cluster, programs)
        bad = {(r.program, r.node): r.problems for r in rows if r.problems}
        assert set(bad) == {("blocklist", "node-1"), ("blocklist", "node-2"), ("blocklist", "node-3")}, bad
        assert any("no XdpAttachment although the node's labels match" in p for p in bad[("blocklist", "node-1")])
        assert any("the kernel shows no XDP program" in p for p in bad[("blocklist", "node-1")])
        assert "arrived at :5353: 200, expected 0" in bad[("blocklist", "node-1")]
        assert "dropped (map blocklist[source]): 0, expected 200" in bad[("blocklist", "node-1")]
        assert all(any("2/2 nodes ready/selected; the nodes' labels select 3" in p for p in problems)
                   for problems in bad.values())
        lines: list[str] = []
        assert demo.print_table(rows, lines.append) is False
        assert lines[-1] == "demo: 3 row(s) differ from what the example promises"
    finally:
        cluster.label_node("node-1", {"role": None})
        workloads.start_operator(info)
    rows = demo.run(info, cluster, timeout=120, out=lambda *_: None)        # and all is well again
    assert not _problems(rows)
