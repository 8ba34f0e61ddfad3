"""Datapath cost: ns per packet via BPF_PROG_TEST_RUN for each example as deployed by
kube-xdp (its pinned program, opened by path) against the same C compiled, loaded and
attached by hand with plain bcc, in one process, interleaved round by round. A second
hand-loaded copy gives the A/A comparison (same C, another program object): the noise
band that "1.00 within noise" is judged against.

The parent (`run`) finds the deployed pins and starts the child inside a node's network
namespace (`ip netns exec`), where the child attaches its hand-loaded programs with bcc's
own `attach_xdp` to spare interfaces (TEST_RUN does not go through the hook: attaching is
for fidelity to "attached by hand", it cannot change the numbers).

    ip netns exec <node-netns> python -m bench.datapath < request.json
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

from .stats import ratio_summary, summary, within_noise

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


# --- child: runs in the node's namespace -----------------------------------------------

def _child(req: dict) -> dict:
    import bcc

    from kube_xdp_agent.kernel import bpfsys

    repeat, rounds = req["repeat"], req["rounds"]
    rnd = random.Random(7)
    progs = []
    for ex in req["examples"]:
        cflags = [f"-D{k}={v}" for k, v in sorted(ex["defines"].items())]
        hands = []
        for copy_ in ("hand", "hand2"):
            b = bcc.BPF(text=ex["source"].encode(), cflags=cflags)
            fn = b.load_func(ex["entrypoint"].encode(), bcc.BPF.XDP)
            hands.append((copy_, b, fn))
        # attached by hand, native mode, each copy to a spare interface of this node. This
        # matters even for TEST_RUN: XDP programs run through the kernel's XDP dispatcher,
        # which calls attached programs directly and others through an indirect call
        # (a retpoline here): an unattached copy measured ~2x slower.
        for (_, _, fn), iface in zip(hands, ex["hand_ifaces"]):
            bcc.BPF.attach_xdp(iface.encode(), fn, bcc.BPF.XDP_FLAGS_DRV_MODE)
        deployed = bpfsys.obj_get(ex["deployed_pin"])
        packet = bytes.fromhex(ex["packet"])
        if ex.get("blocklist_key"):
            key = bytes.fromhex(ex["blocklist_key"])
            with bpfsys.BpfMap.open_pinned(ex["deployed_map"]) as m:
                m.update(key, struct.pack("<Q", 0))
            for _, b, _ in hands:
                t = b.get_table(ex["blocklist_map"])
                t[t.Key(int.from_bytes(key, "little"))] = t.Leaf(0)
        fds = {"deployed": deployed.fd, "hand": hands[0][2].fd, "hand2": hands[1][2].fd}
        tags = {k: bpfsys.prog_info(fd).tag for k, fd in fds.items()}
        verdicts = {k: XDP_VERDICT.get(bpfsys.prog_test_run(fd, packet).retval) for k, fd in fds.items()}
        progs.append({"name": ex["name"], "fds": fds, "tags": tags, "verdicts": verdicts, "packet": packet,
                      "ns": {k: [] for k in fds}, "wall": {k: [] for k in fds}, "keep": (deployed, hands), "ex": ex})
    for _ in range(rounds):               # interleaved: each round runs every variant once, in a random order
        for p in progs:
            order = list(p["fds"])
            rnd.shuffle(order)
            for variant in order:
                t = time.perf_counter_ns()
                res = bpfsys.prog_test_run(p["fds"][variant], p["packet"], repeat=repeat)
                p["wall"][variant].append((time.perf_counter_ns() - t) / repeat)
                p["ns"][variant].append(res.duration_ns)
    out = []
    for p in progs:
        ex = p["ex"]
        for iface in ex["hand_ifaces"]:
            bcc.BPF.remove_xdp(iface.encode(), bcc.BPF.XDP_FLAGS_DRV_MODE)
        if ex.get("blocklist_key"):
            with bpfsys.BpfMap.open_pinned(ex["deployed_map"]) as m:
                m.delete(bytes.fromhex(ex["blocklist_key"]))
        out.append({"name": p["name"], "tags": p["tags"], "verdicts": p["verdicts"], "ns": p["ns"], "wall": p["wall"]})
    return {"repeat": repeat, "rounds": rounds, "results": out}


# --- parent ------------------------------------------------------------------------------

def run(bench, repeat: int = 1_000_000, rounds: int = 20, log=print) -> dict:
    """The examples must be deployed (bench.deploy_examples). Hand-loaded copies live on
    node-3 (eth3..eth5); blocklist's deployed copy is on node-2 (role=edge)."""
    from .compile_bench import request
    node = bench.info.node("node-3")
    eth0 = node.interfaces[0]
    pkt = frame(eth0["src_ip"], eth0["node_ip"], 7777)
    plan = [("udp-drop", "node-3", "eth0", ("eth3", "eth6"), "stats"),
            ("proto-count", "node-3", "eth1", ("eth4", "eth7"), "proto_count"),
            ("blocklist", "node-2", "eth2", ("eth5", "eth2"), "blocklist")]
    examples = []
    for name, where, iface, hand_ifaces, map_name in plan:
        req = request(name)
        st = next(i for i in bench.attachments(name)[where]["status"]["interfaces"] if i["name"] == iface)
        ex = {"name": name, "source": req.source, "entrypoint": req.entrypoint, "defines": dict(req.defines),
              "deployed_pin": st["pinPath"], "hand_ifaces": list(hand_ifaces), "packet": pkt.hex(),
              "deployed_node": where, "deployed_mode": st["mode"]}
        if name == "blocklist":
            ex.update(blocklist_key=ipaddress.ip_address(eth0["src_ip"]).packed.hex(), blocklist_map=map_name,
                      deployed_map=str(Path(st["pinPath"]).parent / "maps" / map_name))
        examples.append(ex)
    req = {"repeat": repeat, "rounds": rounds, "examples": examples}
    proc = subprocess.run(["ip", "netns", "exec", node.netns, sys.executable, "-m", "bench.datapath"],
                          input=json.dumps(req), capture_output=True, text=True, timeout=600,
                          cwd=str(Path(__file__).resolve().parents[1]))
    if proc.returncode != 0:
        raise RuntimeError(f"datapath child failed ({proc.returncode}): {proc.stderr[-3000:]}")
    raw = json.loads(proc.stdout.strip().splitlines()[-1])
    out = {"repeat": repeat, "rounds": rounds, "packet": "64-byte Ethernet/IPv4/UDP to port 7777 "
           "(blocklist: its source inserted in both maps)", "examples": {}}
    for r in raw["results"]:
        ns, wall = r["ns"], r["wall"]
        # ns per packet as the kernel measures it (BPF_PROG_TEST_RUN's duration: the run
        # loop's time excluding reschedules, so background load hardly shows; a whole
        # number: total / repeat truncated). The ratio is the ratio of the means over the
        # interleaved rounds, with a 95% interval from the paired differences. The wall
        # time of each syscall / repeat is kept too (raw): it includes preemption.
        ratio = ratio_summary(ns["deployed"], ns["hand"])
        aa = ratio_summary(ns["hand2"], ns["hand"])
        hand_mean = sum(ns["hand"]) / len(ns["hand"])
        ok = within_noise(ratio, aa)
        ex = next(e for e in examples if e["name"] == r["name"])
        d = out["examples"][r["name"]] = {
            "deployed_on": f"{ex['deployed_node']} {ex['deployed_mode']}", "hand_attached": f"node-3 {' and '.join(ex['hand_ifaces'])} native",
            "verdicts": r["verdicts"], "tags": r["tags"], "same_instructions": len(set(r["tags"].values())) == 1,
            "ns": {k: summary(v, 2) for k, v in ns.items()},
            "wall_ns": {k: summary(v, 2) for k, v in wall.items()},
            "raw": {"wall_ns_per_run": {k: [round(x, 3) for x in v] for k, v in wall.items()}, "kernel_ns": ns},
            "ratio_deployed_over_hand": ratio, "aa_hand2_over_hand": aa,
            "resolution": f"1 ns of {hand_mean:.1f}",
            "within_noise": ok,
        }
        log(f"    {r['name']:<12} deployed mean {d['ns']['deployed']['mean']:.2f} ns, hand {d['ns']['hand']['mean']:.2f} ns, "
            f"hand 2nd copy {d['ns']['hand2']['mean']:.2f} ns: ratio {ratio['ratio_of_means']} {ratio['ci95']} "
            f"(A/A {aa['ratio_of_means']}), "
            f"verdict {r['verdicts']['deployed']}, tags {'equal' if d['same_instructions'] else 'DIFFER'}")
    return out


if __name__ == "__main__":
    print(json.dumps(_child(json.loads(sys.stdin.read()))))
