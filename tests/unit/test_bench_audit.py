"""Counting API requests from audit log lines (bench/audit.py) and the report's use of it."""

import json

from bench import audit, report

OP, AG = audit.OPERATOR_USER, audit.AGENT_USER


def line(rid, t, user, verb, resource, sub="", stage="ResponseComplete"):
    ev = {"auditID": rid, "stage": stage, "verb": verb, "user": {"username": user},
          "objectRef": {"resource": resource, **({"subresource": sub} if sub else {})},
          "requestReceivedTimestamp": f"2026-01-01T00:00:{t:09.6f}Z", "responseStatus": {"code": 200}}
    return json.dumps(ev)


T0 = audit.parse_time("2026-01-01T00:00:00Z")


def test_one_record_per_request_even_with_several_stages():
    lines = [line("w", 1, AG, "watch", "xdpattachments", stage="ResponseStarted"),
             line("w", 1, AG, "watch", "xdpattachments"), "not json", "",
             line("p", 2, AG, "patch", "xdpattachments", "status")]
    reqs = audit.requests(lines)
    assert [r["id"] for r in reqs] == ["w", "p"]
    assert reqs[0]["t"] == T0 + 1


def test_window_and_counts_by_identity_reads_and_writes():
    lines = [line("a", 1, OP, "create", "xdpattachments"), line("b", 2, OP, "patch", "xdpprograms", "status"),
             line("c", 3, AG, "get", "xdpprograms"), line("d", 4, AG, "patch", "xdpattachments", "status"),
             line("e", 5, "kube-xdp-admin", "list", "xdpprograms"), line("f", 9, OP, "delete", "xdpattachments")]
    reqs = audit.window(audit.requests(lines), T0 + 1, T0 + 9)      # [1, 9): f is outside
    c = audit.count(reqs)
    assert (c["operator"]["reads"], c["operator"]["writes"]) == (0, 2)
    assert (c["agent"]["reads"], c["agent"]["writes"]) == (1, 1)
    assert c["others"]["reads"] == 1
    assert c["operator"]["by_call"] == {"create xdpattachments": 1, "patch xdpprograms/status": 1}
    per = audit.per_node(c, 2)
    assert per["total"] == {"reads": 0.5, "writes": 1.5} and per["agent"]["writes"] == 0.5


def test_inventory_counts_only_the_agents_xdpnode_requests():
    reqs = audit.requests([line("a", 1, AG, "get", "xdpnodes"), line("b", 2, AG, "patch", "xdpnodes", "status"),
                           line("c", 3, AG, "create", "xdpnodes"), line("d", 4, OP, "get", "xdpnodes"),
                           line("e", 5, AG, "patch", "xdpattachments", "status")])
    assert audit.inventory(reqs) == {"reads": 1, "writes": 2}


def test_fanout_timeline():
    reqs = audit.requests([line("a", 1, OP, "create", "xdpattachments"), line("b", 3, OP, "create", "xdpattachments"),
                           line("c", 4, AG, "patch", "xdpattachments", "status"),
                           line("d", 5, OP, "patch", "xdpprograms", "status")])
    f = audit.fanout(reqs, T0)
    assert f["operator_first_attachment_write"] == 1 and f["operator_last_attachment_write"] == 3
    assert f["agents_last_write"] == 4 and f["operator_last_program_status_write"] == 5
    assert audit.fanout([], T0)["agents_last_write"] is None


def test_report_groups_runs_and_judges_targets():
    records = [{"scope": "real", "nodes": 3, "phase": "warm", "rep": i, "seconds": s, "verified": True, "check": "ok",
                "window": [T0, T0 + 10], "costs": {}} for i, s in enumerate([0.5, 0.7, 3.0])]
    reqs = audit.requests([line("a", 1, OP, "patch", "xdpattachments"), line("b", 2, AG, "patch", "xdpattachments", "status")])
    res = {"convergence": report.group_convergence(records), "api": report.api_counts(records, reqs)}
    conv = res["convergence"][0]
    assert (conv["n"], conv["p50"], conv["failed"]) == (3, 0.7, 0)
    assert res["api"][0]["per_node"]["total"]["writes"] == round(2 / 3, 2)
    targets = {t["target"]: t for t in report.targets(res)}
    assert targets["3 real nodes, warm (interfaces changed, compile key pinned): apply -> Ready p50"]["met"] is True
    assert targets["200 hollow nodes: apply -> Ready p50"]["met"] is None          # not measured
    assert targets["API writes per node per rollout, real N=3"]["met"] is True
