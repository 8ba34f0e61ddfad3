"""One PNG of a results dict: convergence, hollow scaling, API writes, compile,
datapath, throughput."""

from __future__ import annotations

from pathlib import Path

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
    ax.set_xticks(list(pos), [f"{p}\n(n={real[p]['n']})" for p in xs])
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
    ax.set_xlabel("hollow nodes (control plane only)")
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
    ax.axhline(5.0, color="red", ls="--", lw=1, label="target 5")
    ax.set_xticks(range(len(api)), labels, rotation=70, fontsize=7)
    ax.set_ylabel("writes per node per rollout")
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
        ax.text(x, max(d["ns"]["deployed"]["mean"], d["hand_mean_ns"]) * 1.03,
                f"ratio {d['ratio_deployed_over_hand']['ratio_of_means']:.3f}", ha="center", fontsize=8)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("ns per packet (kernel, mean of rounds)")
    ax.set_title("BPF_PROG_TEST_RUN")
    if names:
        ax.legend(fontsize=8, loc="upper left")

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
