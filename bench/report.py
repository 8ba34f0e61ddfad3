"""From raw records to the summary: convergence percentiles, API requests per node,
rollout costs, the targets of issue 7 with met / missed, and the printed table.
Pure functions of the results dict (unit-tested in tests/unit/test_bench_report.py)."""

from __future__ import annotations

from collections import defaultdict

from . import audit
from .stats import summary

MB = 1e6 / 2**20          # MiB per MB: 120 MB = 114.4 MiB

TARGETS = {
    "real_warm_p50_s": 2.0,
    "hollow200_p50_s": 15.0,
    "writes_per_node": 5.0,
    "cached_compile_ms": 100.0,
    "agent_idle_rss_mb": 120.0,
}


def group_convergence(records: list[dict]) -> list[dict]:
    """One row per (scope, nodes, phase): seconds summary and failures."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["scope"], r["nodes"], r["phase"])].append(r)
    rows = []
    for (scope, nodes, phase), recs in groups.items():
        secs = [r["seconds"] for r in recs if r["seconds"] is not None]
        rows.append({"scope": scope, "nodes": nodes, "phase": phase, **summary(secs, 3),
                     "runs": len(recs), "failed": sum(1 for r in recs if r["seconds"] is None or not r["verified"]),
                     "checks": sorted({r["check"] for r in recs})})
    return rows


def api_counts(records: list[dict], reqs: list[dict]) -> list[dict]:
    """Per (scope, nodes, phase): API requests per node per rollout (mean over runs),
    operator and agents, reads and writes, from the audit log windows."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    timing: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        if r["seconds"] is None:
            continue
        win = audit.window(reqs, *r["window"])
        groups[(r["scope"], r["nodes"], r["phase"])].append(audit.count(win))
        timing[(r["scope"], r["nodes"], r["phase"])].append(audit.fanout(win, r["window"][0]))
    rows = []
    for (scope, nodes, phase), runs in groups.items():
        fan = timing[(scope, nodes, phase)]
        per = [audit.per_node(c, nodes) for c in runs]
        mean = {who: {k: round(sum(p[who][k] for p in per) / len(per), 2) for k in ("reads", "writes")}
                for who in ("operator", "agent", "total")}
        calls: dict[str, dict] = {}
        for who in ("operator", "agent"):
            agg: dict[str, float] = defaultdict(float)
            for c in runs:
                for call, n in (c.get(who) or {}).get("by_call", {}).items():
                    agg[call] += n / len(runs)
            calls[who] = {k: round(v, 2) for k, v in sorted(agg.items())}
        rows.append({"scope": scope, "nodes": nodes, "phase": phase, "runs": len(runs), "per_node": mean,
                     "per_rollout_calls": calls,
                     "timeline_s_p50": {k: summary([f[k] for f in fan if f[k] is not None], 3)["p50"]
                                        for k in fan[0]} if fan else {}})
    return rows


def costs(records: list[dict]) -> list[dict]:
    """Per (scope, nodes, phase): CPU seconds and peak RSS per rollout (p50 over runs)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        if r["seconds"] is not None:
            groups[(r["scope"], r["nodes"], r["phase"])].append(r["costs"])
    rows = []
    for (scope, nodes, phase), runs in groups.items():
        row: dict = {"scope": scope, "nodes": nodes, "phase": phase, "runs": len(runs)}
        for label in runs[0]:
            procs = runs[0][label]["processes"]
            row[label] = {
                "processes": procs,
                "cpu_s_p50": summary([c[label]["cpu_s"] for c in runs], 3)["p50"],
                "children_cpu_s_p50": summary([c[label]["children_cpu_s"] for c in runs], 3)["p50"],
                "peak_rss_mib_max": max(c[label]["peak_rss_mib"] for c in runs),
                "child_peak_rss_mib_max": max((c[label]["child_peak_rss_mib"] or 0) for c in runs) or None,
            }
        rows.append(row)
    return rows


def _find(rows: list[dict], **kw) -> dict | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in kw.items())), None)


def targets(res: dict) -> list[dict]:
    """The issue's targets, each with the measured value and met: True / False / None
    (None: not measured in this run)."""
    out = []
    conv, api = res.get("convergence", []), res.get("api", [])

    def add(name, target, measured, met, note=""):
        out.append({"target": name, "goal": target, "measured": measured, "met": met, "note": note})

    warm = _find(conv, scope="real", nodes=3, phase="warm")
    cold = _find(conv, scope="real", nodes=3, phase="create")
    m = warm and warm["p50"]
    add("3 real nodes, warm: apply -> Ready p50", f"<= {TARGETS['real_warm_p50_s']} s",
        None if m is None else f"{m:.2f} s (p95 {warm['p95']:.2f}, n={warm['n']})",
        None if m is None else m <= TARGETS["real_warm_p50_s"],
        "warm = a spec change whose compile key is already pinned on every node (the pin is adopted, nothing "
        "compiles); see the cold create row for a new program")
    m = cold and cold["p50"]
    add("3 real nodes, cold create: apply -> Ready p50", "(no target; for comparison)",
        None if m is None else f"{m:.2f} s (p95 {cold['p95']:.2f}, n={cold['n']})", None,
        "every node compiles: bcc/clang in a worker, 3 compiles sharing 2 cores")
    h = _find(conv, scope="hollow", nodes=200, phase="create")
    m = h and h["p50"]
    add("200 hollow nodes: apply -> Ready p50", f"<= {TARGETS['hollow200_p50_s']} s",
        None if m is None else f"{m:.2f} s (p95 {h['p95']:.2f}, n={h['n']})",
        None if m is None else m <= TARGETS["hollow200_p50_s"], "hollow: real agent control code, in-memory kernel")
    for scope, nodes in sorted({(r["scope"], r["nodes"]) for r in api}, key=lambda x: (x[0] != "real", x[1])):
        rows = [r for r in api if r["scope"] == scope and r["nodes"] == nodes]
        worst = max(rows, key=lambda r: r["per_node"]["total"]["writes"])
        parts = ", ".join(f"{r['phase']} {r['per_node']['total']['writes']:.2f}" for r in rows)
        add(f"API writes per node per rollout, {scope} N={nodes}", f"<= {TARGETS['writes_per_node']:.0f}",
            f"max {worst['per_node']['total']['writes']:.2f} ({parts})",
            worst["per_node"]["total"]["writes"] <= TARGETS["writes_per_node"])
    comp = res.get("compile", {}).get("examples", {})
    if comp:
        worst = max(comp.items(), key=lambda kv: kv[1]["cached_ms"]["p50"])
        add("cached compile path (pin adoption) p50", f"<= {TARGETS['cached_compile_ms']:.0f} ms",
            f"{worst[1]['cached_ms']['p50']:.2f} ms (worst: {worst[0]}; p95 {worst[1]['cached_ms']['p95']:.2f})",
            worst[1]["cached_ms"]["p50"] <= TARGETS["cached_compile_ms"])
    idle = res.get("idle", {})
    if idle.get("agent_rss_mib"):
        mx = max(idle["agent_rss_mib"].values())
        add("agent idle RSS (max of 3 agents)", f"<= {TARGETS['agent_idle_rss_mb']:.0f} MB",
            f"{mx / MB:.1f} MB ({mx:.1f} MiB)", mx / MB <= TARGETS["agent_idle_rss_mb"])
    for name, d in (res.get("datapath", {}).get("examples") or {}).items():
        r, aa = d["ratio_deployed_over_hand"], list(d["aa_hand_over_other_hands"].values())
        ci = r.get("ci95") or [None, None]
        add(f"datapath deployed/hand-attached, {name}", "1.00 within noise",
            f"{r['ratio_of_means']:.3f} (95% CI {_s3(ci[0])}-{_s3(ci[1])}; hand copies {min(aa):.3f}-{max(aa):.3f})",
            d["within_noise"], "same instructions (prog tags equal)" if d.get("same_instructions") else "TAGS DIFFER")
    return out


def _fmt_met(m) -> str:
    return {True: "MET", False: "MISSED", None: "-"}[m]


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(h), *(len(str(r[i])) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(str(v).ljust(w) for v, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def render(res: dict) -> str:
    """The printed summary."""
    out = []
    m = res["machine"]
    out.append(f"machine: {m['cpu_model']}, {m['cores']} cores{' (VM)' if m['virtualized'] else ''}, "
               f"{m['memory_gib']} GiB, kernel {m['kernel']}, {m['os']}; load average "
               f"{'/'.join(str(x) for x in m['loadavg_start'])} at start, {'/'.join(str(x) for x in m['loadavg_end'])} at end")
    out.append("")
    out.append("TARGETS (issue 7)")
    out.append(table([[t["target"], t["goal"], t["measured"] or "not measured", _fmt_met(t["met"])]
                      for t in res["targets"]], ["target", "goal", "measured", "result"]))
    out.append("")
    out.append("CONVERGENCE (seconds, apply -> Ready on every selected node; hollow = control plane only)")
    rows = []
    api = {(r["scope"], r["nodes"], r["phase"]): r for r in res.get("api", [])}
    for r in sorted(res.get("convergence", []), key=lambda r: (r["scope"] != "real", r["nodes"],
                                                                ["create", "warm", "update", "delete"].index(r["phase"]))):
        a = api.get((r["scope"], r["nodes"], r["phase"]))
        pn = a["per_node"] if a else None
        rows.append([r["scope"], r["nodes"], r["phase"], r["n"], _s(r["p50"]), _s(r["p95"]), _s(r["max"]),
                     f"{pn['operator']['writes']:.2f}/{pn['agent']['writes']:.2f}" if pn else "-",
                     f"{pn['operator']['reads']:.2f}/{pn['agent']['reads']:.2f}" if pn else "-",
                     r["failed"]])
    out.append(table(rows, ["scope", "N", "rollout", "n", "p50", "p95", "max", "writes/node op/ag",
                            "reads/node op/ag", "failed"]))
    out.append("")
    tl = [r for r in res.get("api", []) if r.get("timeline_s_p50")]
    if tl:
        out.append("WHERE THE TIME GOES (p50 seconds after apply, from the audit log)")
        rows = []
        for r in sorted(tl, key=lambda r: (r["scope"] != "real", r["nodes"], ["create", "warm", "update", "delete"].index(r["phase"]))):
            t = r["timeline_s_p50"]
            rows.append([r["scope"], r["nodes"], r["phase"], _s(t.get("operator_first_attachment_write")),
                         _s(t.get("operator_last_attachment_write")), _s(t.get("agents_last_write")),
                         _s(t.get("operator_last_program_status_write"))])
        out.append(table(rows, ["scope", "N", "rollout", "operator 1st attachment write", "operator last attachment write",
                                "agents' last write", "operator last program status"]))
        out.append("")
    cs = res.get("costs", [])
    if cs:
        out.append("COST PER ROLLOUT (p50 CPU seconds; peak RSS MiB)")
        rows = []
        for r in sorted(cs, key=lambda r: (r["scope"] != "real", r["nodes"], ["create", "warm", "update", "delete"].index(r["phase"]))):
            op = r.get("operator", {})
            ag = r.get("agent") or r.get("hollow") or {}
            rows.append([r["scope"], r["nodes"], r["phase"], op.get("cpu_s_p50"), op.get("peak_rss_mib_max"),
                         f"{ag.get('cpu_s_p50')} ({ag.get('processes')} proc)", ag.get("children_cpu_s_p50"),
                         ag.get("peak_rss_mib_max"), ag.get("child_peak_rss_mib_max") or "-"])
        out.append(table(rows, ["scope", "N", "rollout", "operator cpu", "operator peak", "agents cpu",
                                "build workers cpu", "agent peak", "worker peak"]))
        out.append("")
    comp = res.get("compile", {}).get("examples", {})
    if comp:
        out.append("COMPILE (ms)")
        out.append(table([[n, _ms(d["worker_summary"]["p50"]), _ms(d["worker_overhead_ms"]["p50"]),
                           _ms(d["inprocess_summary"]["p50"]), f"{d['cached_ms']['p50']:.2f}",
                           f"{d['inprocess_module_cache_hit_ms']:.3f}"] for n, d in comp.items()],
                         ["example", "worker (agent path) p50", "of which process overhead", "in-process p50",
                          "cached: pin adoption p50", "bcc module reuse"]))
        out.append("")
    dp = res.get("datapath", {}).get("examples", {})
    if dp:
        out.append(f"DATAPATH (BPF_PROG_TEST_RUN, repeat {res['datapath']['repeat']:,}, {res['datapath']['rounds']} "
                   f"interleaved rounds, {res['datapath'].get('hand_copies', '?')} hand-loaded copies; kernel ns/packet, "
                   "mean of rounds; every copy attached in native mode)")
        rows = []
        for n, d in dp.items():
            aa = list(d["aa_hand_over_other_hands"].values())
            rows.append([n, d["verdicts"]["deployed"], f"{d['ns']['deployed']['mean']:.2f}", f"{d['hand_mean_ns']:.2f}",
                         f"{d['ratio_deployed_over_hand']['ratio_of_means']:.3f}",
                         "-".join(_s3(x) for x in (d["ratio_deployed_over_hand"]["ci95"] or [None, None])),
                         f"{min(aa):.3f}-{max(aa):.3f}", "yes" if d["same_instructions"] else "NO"])
        out.append(table(rows, ["example", "verdict", "deployed", "hand copies (mean)", "deployed/hand", "95% CI",
                                "each hand copy / the others", "same tag"]))
        out.append("")
    tp = res.get("throughput", {}).get("runs", [])
    if tp:
        out.append(f"THROUGHPUT (node-1 eth0, trafgen 64-byte UDP, {res['throughput']['seconds_per_run']} s windows; pps)")
        out.append(table([[r["mode"], _k(r["sent_pps"]), _k(r["node_rx_pps"]), _k(r["node_rx_dropped_pps"]),
                           _k(r["prog_dropped_pps"]), _k(r["udp_noports_pps"])] for r in tp],
                         ["program", "sent", "node rx_packets", "node rx_dropped", "XDP dropped (prog counter)",
                          "UDP NoPorts (stack)"]))
        out.append("")
    if res.get("idle"):
        i = res["idle"]
        out.append(f"IDLE: agents RSS {', '.join(f'{k} {v:.1f}' for k, v in i['agent_rss_mib'].items())} MiB; "
                   f"operator RSS {i['operator_rss_mib']:.1f} MiB; API requests while idle ({i['seconds']:.0f} s, "
                   f"3 programs deployed): {i['requests_per_s']}")
    return "\n".join(out)


def _s(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def _s3(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def _ms(x) -> str:
    return "-" if x is None else f"{x:.0f}"


def _k(x) -> str:
    return "-" if x is None else f"{x:,}"
