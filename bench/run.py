"""make bench: measure kube-xdp on this machine and report. Benchmarks, not tests: they
measure and print, they never fail because of a timing. Exit status is non-zero only if
the harness itself broke (the rig would not come up, a rollout never converged...).

    python -m bench.run [--quick] [--name latest] [--only real,compile,...]

A full run takes about 6-7 minutes on the 2-core VM, --quick about 4-6 (RUN_MINUTES).
Writes bench/results/<name>.json and bench/results/<name>.png, prints a summary table.
Runs on a rig instance of its own ('kxb', free ports), torn down at the end, even on
failure. See bench/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
SECTIONS = ("real", "compile", "datapath", "throughput", "hollow")

# Repetitions of a full `make bench` (RUN_MINUTES on the 2-core machine: see bench/README.md).
# The full idle window (65 s) covers at least one XdpNode inventory refresh of every agent
# (kube_xdp_agent.controller.INVENTORY_SECONDS, 60 s); --quick's (10 s) cannot see it.
FULL = {"real_reps": 7, "hollow": {10: 5, 50: 5, 200: 3}, "compile_reps": 3, "cached_reps": 30,
        "dp_repeat": 1_000_000, "dp_rounds": 30, "tp_seconds": 4.0, "settle": 1.5, "idle_seconds": 65.0}
QUICK = {"real_reps": 2, "hollow": {10: 2, 50: 1}, "compile_reps": 1, "cached_reps": 10,
         "dp_repeat": 1_000_000, "dp_rounds": 5, "tp_seconds": 2.0, "settle": 1.5, "idle_seconds": 10.0}
# Wall time of a run on the 2-core VM: a full run took 5.2 min on a quiet machine before
# its idle window grew from 10 to 65 s; --quick took 6.4 min at load average 10.
RUN_MINUTES = {"full": "about 6-7", "quick": "about 4-6"}


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help=f"fewer repetitions, no 200-node run, a 10 s idle window (a smoke run, {RUN_MINUTES['quick']} "
                        f"minutes; a full run takes {RUN_MINUTES['full']})")
    p.add_argument("--name", default=None, help="results name (default: latest, or quick with --quick)")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--hollow-nodes", default=None, help="comma-separated hollow sizes (default 10,50,200)")
    p.add_argument("--render", metavar="JSON", default=None,
                   help="measure nothing: print the summary of a results file and redraw its plot")
    args = p.parse_args(argv)
    if args.render:
        from . import plot, report
        path = Path(args.render)
        res = json.loads(path.read_text())
        res["targets"] = report.targets(res)
        print(report.render(res))
        print(f"plot: {plot.plot(res, path.with_suffix('.png'))}")
        return 0
    if os.geteuid() != 0:
        print("bench: needs root (network namespaces, bpffs, XDP)", file=sys.stderr)
        return 2
    os.chdir(REPO)
    cfg = dict(QUICK if args.quick else FULL)
    if args.hollow_nodes:
        sizes = [int(x) for x in args.hollow_nodes.split(",")]
        cfg["hollow"] = {n: cfg["hollow"].get(n, 1 if args.quick else 3) for n in sizes}
    only = set(args.only.split(","))
    unknown = only - set(SECTIONS)
    if unknown:
        p.error(f"--only: unknown section(s) {sorted(unknown)}")
    name = args.name or ("quick" if args.quick else "latest")

    from . import machine

    t_start = time.monotonic()
    res: dict = {"name": name, "started": now(), "config": {**cfg, "hollow": {str(k): v for k, v in cfg["hollow"].items()},
                                                             "sections": sorted(only)},
                 "machine": {**machine.describe(REPO), "loadavg_start": machine.loadavg()}, "errors": []}
    print(f"bench: {res['machine']['cpu_model']}, {res['machine']['cores']} cores, kernel {res['machine']['kernel']}, "
          f"load average {res['machine']['loadavg_start']}")
    status = 0
    bench = None
    try:
        from .cluster import Bench
        bench = Bench(log=print)
        print("bench: bringing up rig instance 'kxb' (3 nodes, audit log) and kube-xdp on it")
        bench.up()
        status = run_sections(bench, res, cfg, only)
    except KeyboardInterrupt:
        res["errors"].append("interrupted")
        status = 130
    except Exception as e:  # noqa: BLE001 - reported, results so far are still written
        traceback.print_exc()
        res["errors"].append(f"{type(e).__name__}: {e}")
        status = 1
    finally:
        if bench is not None:
            try:
                finish_api(bench, res)
            except Exception as e:  # noqa: BLE001
                res["errors"].append(f"audit log: {type(e).__name__}: {e}")
            timed_out = any(r["seconds"] is None for r in res.get("convergence_runs", []))
            bench.close(keep_logs=Path(f"/tmp/kube-xdp-bench-{name}-logs") if res["errors"] or timed_out else None)
    res["machine"]["loadavg_end"] = machine.loadavg()
    res["finished"] = now()
    res["duration_s"] = round(time.monotonic() - t_start, 1)
    from . import report
    res["targets"] = report.targets(res)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps(res, indent=1, sort_keys=False) + "\n")
    png = None
    try:
        from . import plot
        png = plot.plot(res, RESULTS / f"{name}.png")
    except Exception as e:  # noqa: BLE001 - the numbers are in the json
        print(f"bench: plot failed: {type(e).__name__}: {e}", file=sys.stderr)
    print()
    print(report.render(res))
    print()
    print(f"bench: {res['duration_s'] / 60:.1f} min; results {out.relative_to(REPO)}"
          + (f", plot {png.relative_to(REPO)}" if png else ""))
    if res["errors"]:
        print(f"bench: errors: {res['errors']}", file=sys.stderr)
    return status


def run_sections(bench, res: dict, cfg: dict, only: set) -> int:
    from . import convergence
    from .cluster import HOLLOW_SELECTOR, RIG_NODE_SELECTOR

    records: list[dict] = []
    res["convergence_runs"] = records
    info = bench.info
    if "real" in only:
        print(f"bench: convergence on 3 real nodes, {cfg['real_reps']} runs of create/warm/update/delete")
        groups = {"operator": [bench.pid("operator")], "agent": list(bench.agent_pids().values())}
        scope = convergence.Scope(bench, "real", [n.name for n in info.nodes], RIG_NODE_SELECTOR, groups)
        records += convergence.run(bench, scope, cfg["real_reps"], timeout=180, settle=cfg["settle"])
    if "compile" in only:
        from . import compile_bench
        print(f"bench: compile, {cfg['compile_reps']} cold runs per path and example")
        res["compile"] = compile_bench.run(info.node("node-1"), bench.private_bpffs(), cfg["compile_reps"],
                                           cfg["cached_reps"])
    if only & {"datapath", "throughput"} or "real" in only:
        print("bench: deploying the examples (kube-xdp), then idle")
        deploy_examples(bench)
        print(f"bench: idle for {cfg['idle_seconds']:.0f} s"
              + ("" if cfg["idle_seconds"] >= 60 else " (shorter than the agents' 60 s inventory refresh: cannot see it)"))
        res["idle"] = idle(bench, cfg["idle_seconds"])
    if "datapath" in only:
        from . import datapath
        print(f"bench: datapath, BPF_PROG_TEST_RUN repeat {cfg['dp_repeat']:,} x {cfg['dp_rounds']} interleaved rounds")
        res["datapath"] = datapath.run(bench, cfg["dp_repeat"], cfg["dp_rounds"])
    if "throughput" in only:
        from . import throughput
        print(f"bench: throughput, trafgen {cfg['tp_seconds']} s per run, modes interleaved")
        res["throughput"] = throughput.run(bench, cfg["tp_seconds"])
    remove_examples(bench)
    if "hollow" in only:
        op = bench.pid("operator")
        for n, reps in sorted(cfg["hollow"].items()):
            procs = 1
            print(f"bench: {n} hollow nodes ({procs} process), {reps} runs of create/warm/update/delete")
            nodes = bench.create_hollow_nodes(n)
            try:
                pids = bench.start_hollow(nodes, procs)
                time.sleep(1.0)
                scope = convergence.Scope(bench, "hollow", nodes, HOLLOW_SELECTOR, {"operator": [op], "hollow": pids})
                records += convergence.run(bench, scope, reps, timeout=300, settle=cfg["settle"] + (1.0 if n >= 100 else 0))
            finally:
                bench.stop_hollow(n, procs)
                bench.delete_hollow_nodes()
            time.sleep(2.0)
    failed = [r for r in records if r["seconds"] is None]
    return 1 if failed else 0


def deploy_examples(bench) -> None:
    from kube_xdp_rig import apply as applier

    from .cluster import EXAMPLES
    from .watch import ready
    docs = applier.load_yaml(EXAMPLES)
    waits = {"udp-drop": 3, "proto-count": 3, "blocklist": 1}
    applier.apply(bench.client, docs)
    for name, nodes in waits.items():
        if bench.watcher.expect(ready(name, nodes)).wait(180) is None:
            raise TimeoutError(f"example {name} not Ready on {nodes} node(s) within 180 s")


def remove_examples(bench) -> None:
    from .watch import gone
    for name in ("udp-drop", "proto-count", "blocklist"):
        w = bench.watcher.expect(gone(name))
        bench.delete(name)
        w.wait(120)


def idle(bench, seconds: float, settle: float = 3.0) -> dict:
    """Agents and operator idle with the 3 examples deployed, for `seconds` (after
    `settle` s for the deployment's trailing writes): CPU seconds per minute (own and
    build workers'), RSS at the end; the window, for counting API requests afterwards."""
    from kube_xdp_agent.controller import INVENTORY_SECONDS

    from . import procstat
    time.sleep(settle)
    pids = {f"agent {n}": p for n, p in bench.agent_pids().items()}
    pids["operator"] = bench.pid("operator")
    c0 = {k: procstat.cpu(p) for k, p in pids.items()}
    t0, m0 = time.time(), time.monotonic()
    time.sleep(seconds)
    t1, m1 = time.time(), time.monotonic()
    c1 = {k: procstat.cpu(p) for k, p in pids.items()}

    def proc(k: str) -> dict:
        cpu = procstat.cpu_delta(c0[k], c1[k])
        return {"cpu_s": None if cpu is None else round(cpu, 3),
                "cpu_s_per_min": None if cpu is None else round(cpu / (m1 - m0) * 60, 3),
                "rss_mib": round(((procstat.memory_kib(pids[k]) or {}).get("rss") or 0) / 1024, 1)}

    procs = {k: proc(k) for k in pids}
    agents = {k.split(" ", 1)[1]: v for k, v in procs.items() if k.startswith("agent ")}
    return {"seconds": round(m1 - m0, 1), "window": [t0, t1], "settle_s": settle,
            "agent_resync_s": bench.resync, "inventory_seconds": INVENTORY_SECONDS,
            "covers_inventory_refresh": m1 - m0 >= INVENTORY_SECONDS,
            "agents": agents, "operator": procs["operator"],
            "agent_rss_mib": {n: v["rss_mib"] for n, v in agents.items()},
            "operator_rss_mib": procs["operator"]["rss_mib"], "requests_per_s": None}


def finish_api(bench, res: dict) -> None:
    """Parse the audit log once (after its batch flush) and attribute requests to rollouts."""
    from . import audit, report
    if not bench.audit_flushed():
        res["errors"].append("the audit log did not show a marker request within 30 s: API counts may be short")
    reqs = audit.requests(bench.audit_log.read_text().splitlines())
    records = res.get("convergence_runs", [])
    res["convergence"] = report.group_convergence(records)
    res["api"] = report.api_counts(records, reqs)
    res["costs"] = report.costs(records)
    if res.get("idle"):
        w = res["idle"]["window"]
        res["idle"].update(report.idle_api(audit.window(reqs, *w), w[1] - w[0], len(res["idle"]["agents"])))


if __name__ == "__main__":
    sys.exit(main())
