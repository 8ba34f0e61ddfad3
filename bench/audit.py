"""Counting API requests at the server, from the kube-apiserver audit log (JSON lines,
one event per request stage; the rig's policy logs every request at Metadata level).

Pure: parse lines, keep one event per request (auditID), select a time window by the
request's `requestReceivedTimestamp`, classify reads/writes, count per identity.
"""

from __future__ import annotations

import datetime
import json
from collections import Counter
from collections.abc import Iterable, Mapping

READ_VERBS = frozenset({"get", "list", "watch"})
WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})

# ServiceAccount user names of the rig: the operator's static token (kube_xdp_rig.certs) and
# every agent's pod-bound token (kube_xdp_rig.workloads; one user name for all nodes)
OPERATOR_USER = "system:serviceaccount:kube-xdp:kube-xdp-operator"
AGENT_USER = "system:serviceaccount:kube-xdp:kube-xdp-agent"
WHO = {OPERATOR_USER: "operator", AGENT_USER: "agent"}


def parse_time(text: str) -> float:
    """RFC 3339 timestamp (as the audit log writes it) -> seconds since the epoch."""
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def requests(lines: Iterable[str]) -> list[dict]:
    """One record per request: {id, t, user, verb, resource, subresource, code}.
    A request logged at several stages (a watch: ResponseStarted, then ResponseComplete)
    is kept once, with its receive time. Unparseable lines are skipped."""
    seen: dict[str, dict] = {}
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        rid = ev.get("auditID")
        if not rid or rid in seen:
            continue
        ref = ev.get("objectRef") or {}
        try:
            t = parse_time(ev["requestReceivedTimestamp"])
        except (KeyError, ValueError):
            continue
        seen[rid] = {
            "id": rid, "t": t, "user": (ev.get("user") or {}).get("username", ""),
            "verb": ev.get("verb", ""), "resource": ref.get("resource", ""),
            "subresource": ref.get("subresource", ""),
            "code": (ev.get("responseStatus") or {}).get("code"),
        }
    return sorted(seen.values(), key=lambda r: r["t"])


def kind(verb: str) -> str:
    if verb in READ_VERBS:
        return "reads"
    if verb in WRITE_VERBS:
        return "writes"
    return "other"


def window(reqs: Iterable[Mapping], t0: float, t1: float) -> list[Mapping]:
    """Requests received in [t0, t1)."""
    return [r for r in reqs if t0 <= r["t"] < t1]


def count(reqs: Iterable[Mapping], who: Mapping[str, str] = WHO) -> dict:
    """{identity: {reads, writes, other, by_call: {"verb resource[/sub]": n}}} for the
    identities in `who` (username -> label); other users are summed under "others"."""
    out: dict[str, dict] = {}
    for r in reqs:
        label = who.get(r["user"], "others")
        entry = out.setdefault(label, {"reads": 0, "writes": 0, "other": 0, "by_call": Counter()})
        entry[kind(r["verb"])] += 1
        res = r["resource"] + (f"/{r['subresource']}" if r["subresource"] else "")
        entry["by_call"][f"{r['verb']} {res}"] += 1
    for entry in out.values():
        entry["by_call"] = dict(sorted(entry["by_call"].items()))
    return out


def inventory(reqs: Iterable[Mapping]) -> dict:
    """The agents' XdpNode requests among `reqs`: their inventory refresh (a get, and a
    status patch only when the inventory changed, every INVENTORY_SECONDS per agent) and
    their start-up publish (get, create, status patch). Periodic, not caused by a rollout
    (though a rollout's new program ids make the next refresh write)."""
    out = {"reads": 0, "writes": 0}
    for r in reqs:
        if r["user"] == AGENT_USER and r["resource"] == "xdpnodes":
            k = kind(r["verb"])
            if k in out:
                out[k] += 1
    return out


def per_node(counts: Mapping[str, Mapping], nodes: int) -> dict:
    """Reads and writes per node for the operator, the agents and both together."""
    res: dict[str, dict] = {}
    total_r = total_w = 0
    for label in ("operator", "agent"):
        c = counts.get(label) or {}
        r, w = c.get("reads", 0), c.get("writes", 0)
        total_r += r
        total_w += w
        res[label] = {"reads": round(r / nodes, 3), "writes": round(w / nodes, 3)}
    res["total"] = {"reads": round(total_r / nodes, 3), "writes": round(total_w / nodes, 3)}
    return res


def fanout(reqs: Iterable[Mapping], t0: float) -> dict:
    """Where a rollout's time goes, from its requests (seconds after `t0`): the
    operator's first and last write of an XdpAttachment, the agents' last write (status
    or finalizer), and the operator's last status write of the XdpProgram."""
    def first_last(pred):
        ts = [r["t"] - t0 for r in reqs if pred(r)]
        return (round(min(ts), 3), round(max(ts), 3)) if ts else (None, None)

    op_att = first_last(lambda r: r["user"] == OPERATOR_USER and r["resource"] == "xdpattachments"
                        and r["verb"] in WRITE_VERBS)
    agent = first_last(lambda r: r["user"] == AGENT_USER and r["resource"] == "xdpattachments"
                       and r["verb"] in WRITE_VERBS)
    op_status = first_last(lambda r: r["user"] == OPERATOR_USER and r["resource"] == "xdpprograms"
                           and r["subresource"] == "status" and r["verb"] in WRITE_VERBS)
    return {"operator_first_attachment_write": op_att[0], "operator_last_attachment_write": op_att[1],
            "agents_first_write": agent[0], "agents_last_write": agent[1],
            "operator_last_program_status_write": op_status[1]}
