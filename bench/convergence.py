"""Convergence: apply -> Ready on every selected node, for create (cold), a spec change
that keeps the compile key (warm: the pinned program is adopted, nothing compiles), a
spec change that needs a new program (update), and delete (-> nothing left), with the
cost of each rollout (CPU seconds, peak RSS) and its time window for counting API
requests in the audit log afterwards."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from kube_xdp_rig import netns

from . import procstat
from .cluster import Bench, example, program_body
from .watch import gone, ready

PHASES = ("create", "warm", "update", "delete")     # their labels per scope: report.PHASE_LABELS

class Costs:
    """CPU seconds and peak RSS of labelled process groups over one rollout."""

    def __init__(self, bench: Bench, groups: dict[str, list[int]]):
        self.bench, self.groups = bench, groups

    def begin(self) -> None:
        self.cpu0 = {p: procstat.cpu(p) for pids in self.groups.values() for p in pids}
        for pids in self.groups.values():
            for p in pids:
                procstat.reset_peak(p)
        self.bench.sampler.reset()

    def end(self) -> dict:
        out = {}
        for label, pids in self.groups.items():
            self_s = child_s = 0.0
            hwm = 0
            for p in pids:
                c0, c1 = self.cpu0.get(p), procstat.cpu(p)
                if c0 and c1:
                    self_s += c1["self"] - c0["self"]
                    child_s += c1["children"] - c0["children"]
                m = procstat.memory_kib(p) or {}
                hwm = max(hwm, m.get("hwm") or 0)
            worker = self.bench.sampler.peak_kib(label)
            out[label] = {"processes": len(pids), "cpu_s": round(self_s, 3), "children_cpu_s": round(child_s, 3),
                          "peak_rss_mib": round(hwm / 1024, 1),
                          "child_peak_rss_mib": round(worker / 1024, 1) if worker else None}
        return out


def _iface(att: dict, name: str) -> dict | None:
    return next((i for i in (att.get("status") or {}).get("interfaces", []) if i["name"] == name), None)


class Scope:
    """Where a rollout goes: the 3 real rig nodes, or N hollow nodes."""

    def __init__(self, bench: Bench, kind: str, nodes: list[str], selector: dict, groups: dict[str, list[int]]):
        self.bench, self.kind, self.nodes, self.selector, self.groups = bench, kind, nodes, selector, groups

    # What each phase must leave behind, checked after it converged (not timed).
    def verify(self, program: str, phase: str, before: dict) -> tuple[bool, str, dict]:
        atts = self.bench.attachments(program)
        if phase == "delete":
            left = [n for n in self.nodes if n in atts]
            if self.kind == "real":
                for node in self.bench.info.nodes:
                    if (Path(node.bpffs) / "kube-xdp" / program).exists():
                        left.append(f"{node.name}:pins")
                    for ifname in ("eth0", "eth1"):
                        if netns.xdp_hook(node.netns, ifname) != (None, None):
                            left.append(f"{node.name}:{ifname}")
            return not left, ("left: " + ", ".join(left)) if left else "nothing left", {}
        iface = "eth0" if phase == "create" else "eth1"
        ids, bad = {}, []
        for n in self.nodes:
            st = _iface(atts.get(n, {}), iface)
            if not st or not st.get("ready"):
                bad.append(f"{n}: {iface} not ready")
                continue
            ids[n] = st["progId"]
            if phase == "warm" and before.get(n) != st["progId"]:
                bad.append(f"{n}: program {before.get(n)} -> {st['progId']} (recompiled?)")
            if phase == "update" and before.get(n) == st["progId"]:
                bad.append(f"{n}: still program {st['progId']}")
        if self.kind == "real" and not bad:
            for node in self.bench.info.nodes:
                hook = netns.xdp_hook(node.netns, iface)
                if hook != ("native", ids[node.name]):
                    bad.append(f"{node.name}: kernel shows {hook} on {iface}, status {ids[node.name]}")
                if phase != "create" and netns.xdp_hook(node.netns, "eth0") != (None, None):
                    bad.append(f"{node.name}: eth0 still holds a program")
        what = {"create": "every node runs it", "warm": "same program ids, moved to eth1 (no compile)",
                "update": "new program ids on every node"}[phase]
        return not bad, "; ".join(bad[:5]) if bad else what, ids


def run(bench: Bench, scope: Scope, reps: int, *, timeout: float, settle: float, log=print) -> list[dict]:
    """`reps` x (create, warm, update, delete) of a fresh program; one record per phase."""
    base = example("udp-drop")
    n = len(scope.nodes)
    records = []
    for rep in range(reps):
        name = f"bench-{scope.kind[0]}{n}-{rep}-{uuid.uuid4().hex[:6]}"
        nonce = uuid.uuid4().hex            # a new source each run: nothing can be cached
        ids: dict = {}
        for phase in PHASES:
            costs = Costs(bench, scope.groups)
            costs.begin()
            t0w, t0 = time.time(), time.monotonic()
            if phase == "create":
                bench.create(program_body(name, base, scope.selector, ["eth0"], nonce=nonce))
                w = bench.watcher.expect(ready(name, n))
            elif phase == "warm":
                gen = bench.patch_spec(name, {"interfaces": {"names": ["eth1"]}})["metadata"]["generation"]
                w = bench.watcher.expect(ready(name, n, gen))
            elif phase == "update":
                gen = bench.patch_spec(name, {"defines": {"DROP_PORT": "7788"}})["metadata"]["generation"]
                w = bench.watcher.expect(ready(name, n, gen))
            else:
                w = bench.watcher.expect(gone(name))
                bench.delete(name)
            t1 = w.wait(timeout)
            seconds = None if t1 is None else round(t1 - t0, 4)
            time.sleep(settle)                  # trailing requests (Events, last status) belong to this rollout
            t1w = time.time()
            cost = costs.end()
            ok, note, new_ids = scope.verify(name, phase, ids) if t1 is not None else (False, f"timed out after {timeout:.0f}s", {})
            ids = new_ids or ids
            rec = {"scope": scope.kind, "nodes": n, "phase": phase, "rep": rep, "program": name,
                   "seconds": seconds, "verified": ok, "check": note, "window": [t0w, t1w], "costs": cost}
            records.append(rec)
            log(f"    {scope.kind} N={n} rep {rep + 1}/{reps} {phase:<7} "
                f"{'%.2f s' % seconds if seconds is not None else 'TIMEOUT'}  {'ok' if ok else 'CHECK FAILED: ' + note}")
            if t1 is None:
                bench.delete(name)
                bench.watcher.expect(gone(name)).wait(timeout)
                break
    return records
