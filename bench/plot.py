"""One PNG of a results dict: convergence, hollow scaling, API writes, compile,
datapath, throughput."""

from __future__ import annotations

from pathlib import Path

from .stats import datapath_verdict

PHASES = ["create", "warm", "update", "delete"]


def plot(res: dict, path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(17, 9.5))
    m = res["machine"]
    fig.suptitle(f"kube-xdp benchmarks ({res['name']}, {res['started'][:16]}Z, commit {m['git_commit']}): "
                 f"{m['cpu_model']}, {m['cores']} cores, kernel {m['kernel']}, load {m['loadavg_start'][0]}->{m['loadavg_end'][0]}",
                 fontsize=10)
    conv = res.get("convergence", [])

    # 1. real nodes: p50/p95 per phase
    ax = axes[0][0]
    real = {r["phase"]: r for r in conv if r["scope"] == "real"}
    xs = [p for p in PHASES if p in real]
    p50 = [real[p]["p50"] or 0 for p in xs]
    p95 = [real[p]["p95"] or 0 for p in xs]
    pos = range(len(xs))
    ax.bar([x - 0.2 for x in pos], p50, 0.4, label="p50")
    ax.bar([x + 0.2 for x in pos], p95, 0.4, label="p95")
    ax.axhline(2.0, color="red", ls="--", lw=1, label="target (warm) 2 s")
    ticks = {"create": "create\n(compiles)", "warm": "warm: interfaces\nchanged, key pinned\n(no compile)",
             "update": "update\n(new program,\ncompiles)", "delete": "delete"}
    ax.set_xticks(list(pos), [f"{ticks[p]}\n(n={real[p]['n']})" for p in xs], fontsize=8)
    ax.set_ylabel("seconds")
    ax.set_title("3 real nodes: apply -> Ready")
    ax.legend(fontsize=8)

    # 2. hollow scaling
    ax = axes[0][1]
    for phase in PHASES:
        pts = sorted((r["nodes"], r["p50"], r["p95"]) for r in conv if r["scope"] == "hollow" and r["phase"] == phase
                     and r["p50"] is not None)
        if pts:
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts],
                        yerr=[[0] * len(pts), [p[2] - p[1] for p in pts]], marker="o", capsize=3, label=phase)
    ax.axhline(15.0, color="red", ls="--", lw=1, label="target (200 nodes) 15 s")
    if any(r["scope"] == "hollow" for r in conv):
        ax.set_xscale("log")
    ax.set_xlabel("hollow nodes (control plane only: in-memory kernel, never compiles)")
    ax.set_ylabel("seconds (p50, bar to p95)")
    ax.set_title("hollow nodes: apply -> Ready")
    ax.legend(fontsize=8)

    # 3. API writes per node
    ax = axes[0][2]
    api = sorted(res.get("api", []), key=lambda r: (r["scope"] != "real", r["nodes"], PHASES.index(r["phase"])))
    labels = [f"{'R' if r['scope'] == 'real' else 'H'}{r['nodes']} {r['phase']}" for r in api]
    op = [r["per_node"]["operator"]["writes"] for r in api]
    ag = [r["per_node"]["agent"]["writes"] for r in api]
    ax.bar(range(len(api)), op, label="operator")
    ax.bar(range(len(api)), ag, bottom=op, label="agents")
    mx = [(i, r["per_node_max"]["total"]["writes"]) for i, r in enumerate(api) if r.get("per_node_max")]
    if mx:
        ax.scatter([i for i, _ in mx], [v for _, v in mx], marker="_", s=120, color="black", zorder=3,
                   label="worst single run")
    ax.axhline(5.0, color="red", ls="--", lw=1, label="target 5 (every run)")
    ax.set_xticks(range(len(api)), labels, rotation=70, fontsize=7)
    ax.set_ylabel("writes per node per rollout (mean of runs)")
    ax.set_title("API writes at the server (audit log); R=real, H=hollow")
    ax.legend(fontsize=8)

    # 4. compile
    ax = axes[1][0]
    comp = res.get("compile", {}).get("examples", {})
    names = list(comp)
    if not names:
        _empty(ax, "compile + load")
    series = [("worker (agent path)", [comp[n]["worker_summary"]["p50"] for n in names]),
              ("in-process", [comp[n]["inprocess_summary"]["p50"] for n in names]),
              ("cached: pin adoption", [comp[n]["cached_ms"]["p50"] for n in names])]
    for i, (label, vals) in enumerate(series if names else []):
        ax.bar([x + (i - 1) * 0.27 for x in range(len(names))], vals, 0.27, label=label)
    if names:
        ax.axhline(100, color="red", ls="--", lw=1, label="target (cached) 100 ms")
        ax.set_yscale("log")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("ms (p50, log)")
    ax.set_title("compile + load")
    ax.legend(fontsize=8)

    # 5. datapath
    ax = axes[1][1]
    dp = res.get("datapath", {}).get("examples", {})
    names = list(dp)
    if not names:
        _empty(ax, "BPF_PROG_TEST_RUN")
    for x, n in enumerate(names):
        d = dp[n]
        hands = sorted(k for k in d["ns"] if k.startswith("hand"))
        ax.bar(x - 0.2, d["ns"]["deployed"]["mean"], 0.4, color="tab:blue", label="deployed by kube-xdp" if x == 0 else None)
        ax.bar(x + 0.2, d["hand_mean_ns"], 0.4, color="tab:orange", label="plain bcc, by hand (mean of copies)" if x == 0 else None)
        ax.scatter([x + 0.2] * len(hands), [d["ns"][h]["mean"] for h in hands], color="black", s=8, zorder=3,
                   label="each hand copy" if x == 0 else None)
        r = d["ratio_deployed_over_hand"]
        v = d.get("result") or datapath_verdict(r, list(d["aa_hand_over_other_hands"].values()),
                                                d.get("same_instructions", True))
        ci = r.get("ci95") or [r["ratio_of_means"]] * 2
        aa = list(d["aa_hand_over_other_hands"].values())
        ax.text(x, max(d["ns"]["deployed"]["mean"], d["hand_mean_ns"], *(d["ns"][h]["mean"] for h in hands)) * 1.04,
                f"ratio {r['ratio_of_means']:.3f}\nCI {ci[0]:.3f}-{ci[1]:.3f}\ncopies {min(aa):.3f}-{max(aa):.3f}\n"
                f"{v['verdict']}: {'MET' if v['met'] else 'MISSED' if v['met'] is False else '-'}",
                ha="center", va="bottom", fontsize=7, color="black" if v["met"] is not False else "red")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("ns per packet (kernel, mean of rounds)")
    ax.set_title("BPF_PROG_TEST_RUN: deployed vs hand-attached (target 1.00 within noise)", fontsize=9)
    if names:
        top = max(max(dp[n]["ns"]["deployed"]["mean"], *(v["mean"] for v in dp[n]["ns"].values())) for n in names)
        ax.set_ylim(0, top * 1.45)
        ax.legend(fontsize=7, loc="upper left")

    # 6. throughput
    ax = axes[1][2]
    runs = res.get("throughput", {}).get("runs", [])
    if not runs:
        _empty(ax, "throughput")
    modes = ["native", "generic", "none"]
    for i, (key, label) in enumerate((("sent_pps", "sent"), ("node_rx_pps", "node rx_packets"),
                                      ("prog_dropped_pps", "XDP dropped"))):
        vals = []
        for mode in modes:
            xs_ = [r[key] for r in runs if r["mode"] == mode and r[key] is not None]
            vals.append(sum(xs_) / len(xs_) / 1e6 if xs_ else 0)
        ax.bar([x + (i - 1) * 0.27 for x in range(len(modes))], vals, 0.27, label=label)
    ax.set_xticks(range(len(modes)), ["udp-drop native", "udp-drop generic", "no program"])
    ax.set_ylabel("Mpps (mean of interleaved runs)")
    ax.set_title("trafgen 64-byte UDP into node-1 eth0")
    ax.legend(fontsize=8)

    fig.tight_layout(rect=(0, 0, 1, 0.96))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _empty(ax, title: str) -> None:
    ax.text(0.5, 0.5, "not measured in this run", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title)
