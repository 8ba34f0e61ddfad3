"""The benchmark report's pure parts (bench/report.py) and the small pure helpers of the
harness: per-run API counts and the writes target, idle requests, labels, the XdpNode
start-up wait, trafgen's count check."""

import json

from bench import report
from bench.cluster import pending_xdpnodes, xdpnode_published
from bench.procstat import cpu_delta
from bench.throughput import count_check
from tests.unit.test_bench_audit import AG, OP, T0, line


def _records(phase, reps, nodes=3):
    return [{"scope": "real", "nodes": nodes, "phase": phase, "rep": i, "seconds": 1.0, "verified": True,
             "check": "ok", "window": [T0 + 10 * i, T0 + 10 * i + 10], "costs": {}} for i in range(reps)]


def _rollout(i, extra=()):
    """One 3-node create in window i: 3 attachment creates, 3 agent status patches (2 writes
    per node), plus `extra` lines."""
    base = T0 + 10 * i
    ts = lambda k: base - T0 + 1 + k * 0.1      # noqa: E731
    out = [line(f"{i}-op{k}", ts(k), OP, "create", "xdpattachments") for k in range(3)]
    out += [line(f"{i}-ag{k}", ts(3 + k), AG, "patch", "xdpattachments", "status") for k in range(3)]
    return out + [line(f"{i}-x{k}", ts(6 + k), *e) for k, e in enumerate(extra)]


def test_a_bad_rollout_is_judged_on_its_own_not_hidden_in_the_mean():
    # rep 0 carries 3 agents' start-up publish (create + status patch each) and 3 more
    # writes: 2 + 4 = 6 writes per node in that run, 2 in the others; mean 3.33 <= 5
    startup = [(AG, "create", "xdpnodes"), (AG, "patch", "xdpnodes", "status")] * 3 + [(OP, "patch", "xdpprograms")] * 6
    lines = _rollout(0, startup) + _rollout(1) + _rollout(2)
    reqs = report.audit.requests(lines)
    rows = report.api_counts(_records("create", 3), reqs)
    row = rows[0]
    assert row["per_node"]["total"]["writes"] == round((6 + 2 + 2) / 3, 2)
    assert row["per_node_max"]["total"]["writes"] == 6.0 and row["worst_rep"] == 0
    assert [r["writes"] for r in row["per_run"]] == [6.0, 2.0, 2.0]
    assert row["per_run"][0]["inventory"] == {"reads": 0.0, "writes": 2.0}
    assert row["per_run"][1]["inventory"] == {"reads": 0.0, "writes": 0.0}
    json.dumps(rows)                                            # stored in the results file as is
    target = next(t for t in report.targets({"api": rows}) if t["target"].startswith("API writes"))
    assert target["met"] is False and "worst run 6.00 (create rep 0" in target["measured"]
    assert "2.00 XdpNode inventory" in target["measured"]
    # without the start-up traffic every run is 2 writes per node: met
    rows = report.api_counts(_records("create", 2), report.audit.requests(_rollout(0) + _rollout(1)))
    assert next(t for t in report.targets({"api": rows}) if t["target"].startswith("API writes"))["met"] is True


def test_an_older_results_file_with_means_only_is_not_judged():
    rows = [{"scope": "real", "nodes": 3, "phase": "create", "per_node": {"total": {"writes": 4.1}}}]
    w, text, met = report.writes_judgement(rows)
    assert (w, met) == (4.1, None) and "not judged" in text


def test_idle_requests_per_agent_and_inventory_refreshes():
    reqs = report.audit.requests([line("a", 1, AG, "get", "xdpnodes"), line("b", 2, AG, "get", "xdpnodes"),
                                  line("c", 3, AG, "get", "xdpnodes"), line("d", 4, AG, "patch", "xdpnodes", "status"),
                                  line("e", 5, OP, "get", "configmaps"), line("f", 6, OP, "create", "events")])
    out = report.idle_api(reqs, seconds=10.0, agents=3)
    assert out["requests_per_s"] == {"per_agent": round(4 / 10 / 3, 3), "operator": 0.2}
    assert out["inventory_refreshes_seen"] == 3
    assert out["requests"]["agent"] == {"get xdpnodes": 3, "patch xdpnodes/status": 1}


def _idle(seconds, covers, cpu=1.5):
    return {"seconds": seconds, "window": [0, seconds], "agent_resync_s": 3.0, "inventory_seconds": 60.0,
            "covers_inventory_refresh": covers, "inventory_refreshes_seen": 3,
            "agents": {"node-1": {"cpu_s": 1.0, "cpu_s_per_min": cpu, "rss_mib": 90.0},
                       "node-2": {"cpu_s": None, "cpu_s_per_min": None, "rss_mib": 91.0}},
            "operator": {"cpu_s": 0.1, "cpu_s_per_min": 0.1, "rss_mib": 80.0},
            "requests_per_s": {"per_agent": 0.02, "operator": 0.1}, "requests": {"agent": {}, "operator": {}}}


def test_render_idle_says_whether_the_window_saw_the_inventory_refresh():
    full = report.render_idle(_idle(65, True))
    assert "covers the agents' XdpNode inventory refresh" in full and "3 refresh(es) seen" in full
    assert "1.50" in full and "2.5%" in full            # 1.5 CPU s per minute = 2.5% of a core
    short = report.render_idle(_idle(10, False))
    assert "cannot see it" in short and "covers" not in short


def test_phase_labels_never_say_hollow_nodes_compile():
    for phase in report.PHASES:
        assert "compiles" not in report.phase_label("hollow", phase)
    assert "every node compiles" in report.phase_label("real", "create")
    assert "no compile" in report.phase_label("real", "warm")


def test_xdpnode_published_needs_its_status_written():
    assert not xdpnode_published(None)
    created = {"metadata": {"name": "node-1"}, "spec": {"nodeName": "node-1"}}
    assert not xdpnode_published(created)                           # created, status not yet patched
    done = {**created, "status": {"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "True"}]}}
    assert xdpnode_published(done)
    assert pending_xdpnodes([done], ["node-1", "node-2"]) == ["node-2"]
    assert pending_xdpnodes([created], ["node-1"]) == ["node-1"]


def test_trafgen_count_checked_against_the_node_counter():
    before = {"src": {"tx_packets": 100}, "node": {"rx_packets": 50}}
    after = {"src": {"tx_packets": 1100}, "node": {"rx_packets": 1048}}
    c = count_check(1000, before, after)
    assert c["trafgen_minus_src_tx"] == 0 and c["trafgen_minus_node_rx"] == 2 and c["relative"] == 0.002
    assert count_check(10, {"src": {}, "node": {}}, {"src": {}, "node": {}})["trafgen_minus_node_rx"] is None


def test_cpu_delta_counts_own_and_children():
    assert cpu_delta({"self": 1.0, "children": 2.0}, {"self": 1.5, "children": 2.25}) == 0.75
    assert cpu_delta(None, {"self": 1.0, "children": 0.0}) is None
