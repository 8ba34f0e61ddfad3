"""Datapath cost: ns per packet via BPF_PROG_TEST_RUN for each example as deployed by
kube-xdp (its pinned program, opened by path) against the same C compiled, loaded and
attached by hand with plain bcc (several copies), in one process, interleaved round by
round.

Noise model: two program objects with identical instructions still differ a little
(where the JIT placed each image; measured up to a few %). So the deployed program is
compared with the mean of HAND_COPIES hand-loaded copies, and each hand copy is compared
with the mean of the others the same way (the A/A ratios, whose range is the noise band).
Verdict (stats.datapath_verdict): "within noise" when the deployed program's 95%
interval overlaps that band (or 1.00), "faster" when it lies wholly below it (met:
management adds nothing), "slower" when wholly above it (missed). More rounds narrow the
interval; more hand copies make the band a better estimate of the placement noise.

Every copy is attached (bcc's `attach_xdp`, native mode, spare veths of node-1 and
node-3, entered with setns). That matters even for TEST_RUN: XDP programs run through
the kernel's XDP dispatcher, which calls attached programs directly and others through
an indirect call (a retpoline here): an unattached copy measured about 2x slower.

The parent (`run`) finds the deployed pins and runs the child:
    python -m bench.datapath < request.json
"""

from __future__ import annotations

import ipaddress
import json
import random
import struct
import subprocess
import sys
import time
from pathlib import Path

from .stats import datapath_verdict, ratio_summary, summary

XDP_VERDICT = {0: "ABORTED", 1: "DROP", 2: "PASS", 3: "TX", 4: "REDIRECT"}


def frame(src_ip: str, dst_ip: str, dport: int, sport: int = 9) -> bytes:
    """A 64-byte Ethernet/IPv4/UDP frame (as trafgen sends), with a valid IP checksum."""
    payload = b"A" * 18
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0,
                               ipaddress.ip_address(src_ip).packed, ipaddress.ip_address(dst_ip).packed))
    csum = sum(struct.unpack("!10H", bytes(ip)))
    csum = (csum & 0xFFFF) + (csum >> 16)
    csum = (csum & 0xFFFF) + (csum >> 16)
    struct.pack_into("!H", ip, 10, ~csum & 0xFFFF)
    eth = bytes.fromhex("020000000002") + bytes.fromhex("020000000001") + b"\x08\x00"
    return eth + bytes(ip) + udp


# --- child --------------------------------------------------------------------------------

HAND_COPIES = 4
CLONE_NEWNET = 0x40000000


class _Netns:
    """Enter a named network namespace for the calling thread, and come back."""

    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        import ctypes
        import os
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._home = os.open("/proc/self/ns/net", os.O_RDONLY)
        fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        try:
            if self._libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns into {self.name}")
        finally:
            os.close(fd)
        return self

    def __exit__(self, *exc):
        import os
        try:
            if self._libc.setns(self._home, CLONE_NEWNET) != 0:
                raise OSError("setns back to the original network namespace failed")
        finally:
            os.close(self._home)


def _child(req: dict) -> dict:
    import bcc

    from kube_xdp_agent.kernel import bpfsys

    repeat, rounds = req["repeat"], req["rounds"]
    rnd = random.Random(7)
    progs = []
    attached: list[tuple[str, str]] = []
    try:
        for ex in req["examples"]:
            cflags = [f"-D{k}={v}" for k, v in sorted(ex["defines"].items())]
            fds, keep = {}, []
            for i, (netns, iface) in enumerate(ex["hand_at"], 1):
                b = bcc.BPF(text=ex["source"].encode(), cflags=cflags)
                fn = b.load_func(ex["entrypoint"].encode(), bcc.BPF.XDP)
                with _Netns(netns):
                    bcc.BPF.attach_xdp(iface.encode(), fn, bcc.BPF.XDP_FLAGS_DRV_MODE)
                attached.append((netns, iface))
                if ex.get("blocklist_key"):
                    t = b.get_table(ex["blocklist_map"])
                    t[t.Key(int.from_bytes(bytes.fromhex(ex["blocklist_key"]), "little"))] = t.Leaf(0)
                fds[f"hand{i}"] = fn.fd
                keep.append(b)
            deployed = bpfsys.obj_get(ex["deployed_pin"])
            fds = {"deployed": deployed.fd, **fds}
            if ex.get("blocklist_key"):
                with bpfsys.BpfMap.open_pinned(ex["deployed_map"]) as m:
                    m.update(bytes.fromhex(ex["blocklist_key"]), struct.pack("<Q", 0))
            packet = bytes.fromhex(ex["packet"])
            tags = {k: bpfsys.prog_info(fd).tag for k, fd in fds.items()}
            verdicts = {k: XDP_VERDICT.get(bpfsys.prog_test_run(fd, packet).retval) for k, fd in fds.items()}
            progs.append({"name": ex["name"], "fds": fds, "tags": tags, "verdicts": verdicts, "packet": packet,
                          "ns": {k: [] for k in fds}, "wall": {k: [] for k in fds}, "keep": (deployed, keep), "ex": ex})
        for _ in range(rounds):           # interleaved: each round runs every variant once, in a random order
            for p in progs:
                order = list(p["fds"])
                rnd.shuffle(order)
                for variant in order:
                    t = time.perf_counter_ns()
                    res = bpfsys.prog_test_run(p["fds"][variant], p["packet"], repeat=repeat)
                    p["wall"][variant].append((time.perf_counter_ns() - t) / repeat)
                    p["ns"][variant].append(res.duration_ns)
    finally:
        for netns, iface in attached:
            with _Netns(netns):
                bcc.BPF.remove_xdp(iface.encode(), bcc.BPF.XDP_FLAGS_DRV_MODE)
        for p in progs:
            if p["ex"].get("blocklist_key"):
                with bpfsys.BpfMap.open_pinned(p["ex"]["deployed_map"]) as m:
                    m.delete(bytes.fromhex(p["ex"]["blocklist_key"]))
    out = [{"name": p["name"], "tags": p["tags"], "verdicts": p["verdicts"], "ns": p["ns"], "wall": p["wall"]}
           for p in progs]
    return {"repeat": repeat, "rounds": rounds, "results": out}


# --- parent ------------------------------------------------------------------------------

def _mean_of(series: list[list[float]]) -> list[float]:
    return [sum(xs) / len(xs) for xs in zip(*series)]


def run(bench, repeat: int = 1_000_000, rounds: int = 30, log=print) -> dict:
    """The examples must be deployed (run.deploy_examples). The deployed copies measured:
    node-3's udp-drop (eth0) and proto-count (eth1), node-2's blocklist (eth2, role=edge).
    Hand copies go to the spare veths eth2..eth7 of node-3 and node-1."""
    from .compile_bench import request
    node3 = bench.info.node("node-3")
    eth0 = node3.interfaces[0]
    pkt = frame(eth0["src_ip"], eth0["node_ip"], 7777)
    spare = [(n.netns, f"eth{i}") for n in (bench.info.node("node-3"), bench.info.node("node-1")) for i in range(2, 8)]
    plan = [("udp-drop", "node-3", "eth0", "stats"), ("proto-count", "node-3", "eth1", "proto_count"),
            ("blocklist", "node-2", "eth2", "blocklist")]
    examples = []
    for k, (name, where, iface, map_name) in enumerate(plan):
        req = request(name)
        st = next(i for i in bench.attachments(name)[where]["status"]["interfaces"] if i["name"] == iface)
        ex = {"name": name, "source": req.source, "entrypoint": req.entrypoint, "defines": dict(req.defines),
              "deployed_pin": st["pinPath"], "hand_at": spare[k * HAND_COPIES:(k + 1) * HAND_COPIES],
              "packet": pkt.hex(), "deployed_node": where, "deployed_mode": st["mode"]}
        if name == "blocklist":
            ex.update(blocklist_key=ipaddress.ip_address(eth0["src_ip"]).packed.hex(), blocklist_map=map_name,
                      deployed_map=str(Path(st["pinPath"]).parent / "maps" / map_name))
        examples.append(ex)
    req = {"repeat": repeat, "rounds": rounds, "examples": examples}
    proc = subprocess.run([sys.executable, "-m", "bench.datapath"], input=json.dumps(req), capture_output=True,
                          text=True, timeout=900, cwd=str(Path(__file__).resolve().parents[1]))
    if proc.returncode != 0:
        raise RuntimeError(f"datapath child failed ({proc.returncode}): {proc.stderr[-3000:]}")
    raw = json.loads(proc.stdout.strip().splitlines()[-1])
    out = {"repeat": repeat, "rounds": rounds, "hand_copies": HAND_COPIES,
           "packet": "64-byte Ethernet/IPv4/UDP to port 7777 (blocklist: its source inserted in every copy's map)",
           "examples": {}}
    for r in raw["results"]:
        ns, wall = r["ns"], r["wall"]
        hands = sorted(k for k in ns if k.startswith("hand"))
        # ns per packet as the kernel measures it (BPF_PROG_TEST_RUN's duration: the run
        # loop's time excluding reschedules, so background load hardly shows; a whole
        # number: total / repeat truncated). Ratios are ratios of means over the
        # interleaved rounds, with a 95% interval from the paired differences. The wall
        # time of each syscall / repeat is kept too (raw): it includes preemption.
        ratio = ratio_summary(ns["deployed"], _mean_of([ns[h] for h in hands]))
        aa = {h: ratio_summary(ns[h], _mean_of([ns[o] for o in hands if o != h])) for h in hands}
        same = len(set(r["tags"].values())) == 1
        verdict = datapath_verdict(ratio, [a["ratio_of_means"] for a in aa.values()], same)
        ex = next(e for e in examples if e["name"] == r["name"])
        d = out["examples"][r["name"]] = {
            "deployed_on": f"{ex['deployed_node']} {ex['deployed_mode']}",
            "hand_attached": [f"{n} {i} native" for n, i in ex["hand_at"]],
            "xdp_actions": r["verdicts"], "tags": r["tags"], "same_instructions": same,
            "ns": {k: summary(v, 2) for k, v in ns.items()},
            "hand_mean_ns": round(sum(sum(ns[h]) for h in hands) / (len(hands) * len(ns["deployed"])), 2),
            "wall_ns": {k: summary(v, 2) for k, v in wall.items()},
            "raw": {"wall_ns_per_run": {k: [round(x, 3) for x in v] for k, v in wall.items()}, "kernel_ns": ns},
            "ratio_deployed_over_hand": ratio,
            "aa_hand_over_other_hands": {h: a["ratio_of_means"] for h, a in aa.items()},
            "aa_ci95": {h: a["ci95"] for h, a in aa.items()},
            "result": verdict,       # met / verdict / why: is the deployed program 1.00 within noise?
            # half-width of the deployed program's interval: what more rounds would shrink
            "ci95_half_width": (round((ratio["ci95"][1] - ratio["ci95"][0]) / 2, 4) if ratio["ci95"] else None),
        }
        aas = list(d["aa_hand_over_other_hands"].values())
        log(f"    {r['name']:<12} deployed {d['ns']['deployed']['mean']:.2f} ns, hand copies {d['hand_mean_ns']:.2f} ns: "
            f"ratio {ratio['ratio_of_means']} {ratio['ci95']} (hand copies vs the others {min(aas)}-{max(aas)}), "
            f"XDP action {r['verdicts']['deployed']}, tags {'equal' if d['same_instructions'] else 'DIFFER'}: {verdict['verdict']}")
    return out


if __name__ == "__main__":
    print(json.dumps(_child(json.loads(sys.stdin.read()))))
