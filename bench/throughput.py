"""Throughput: 64-byte UDP from trafgen (the rig's traffic helper: bounded duration, rig
addresses only) into node-1's eth0, with kube-xdp's deployed udp-drop program in native
mode, in generic mode, and with no program on that node (its attachment removed through
a nodeSelector change). Modes are switched through kube-xdp itself and interleaved
(A B C C B A) to cancel drift on a shared machine.

trafgen runs through the rig's kube_xdp_rig.traffic.Trafgen: a rig address (checked by
traffic.trafgen_config) and a duration, after which its whole process group gets SIGINT
(then SIGKILL); a trafgen that fails raises TrafgenError with its stderr, so a run that
sent nothing cannot pass for a measurement.

trafgen's own count of what it sent is compared with the node veth's rx_packets (and
the source veth's tx_packets) over trafgen's whole run (`count_check`): the difference
is reported, not asserted.

Counted over a steady-state window (trafgen running for 1 s before the first read):
- sent: the traffic source's veth tx_packets;
- rx: the node veth's rx_packets / rx_dropped (the kernel's interface stats);
- the program's own counters (stats[0] dropped, stats[1] passed), read from its pin;
- the node's UDP stack (/proc/net/snmp in its namespace): NoPorts, InDatagrams.
"""

from __future__ import annotations

import struct
import time
from pathlib import Path

from kube_xdp_agent.kernel.bpfsys import BpfMap
from kube_xdp_rig import netns, traffic

from .watch import ready

DROP_PORT = 7777


def _snmp(netns: str) -> dict:
    out = traffic.snmp(netns)
    return {k: out.get(k, 0) for k in ("Udp.NoPorts", "Udp.InDatagrams", "Udp.InErrors", "Ip.InReceives")}


def _prog_counters(pin_path: str | None) -> dict:
    if not pin_path:
        return {}
    with BpfMap.open_pinned(str(Path(pin_path).parent / "maps" / "stats")) as m:
        vals = [m.lookup(struct.pack("<I", i)) for i in (0, 1)]
    u64 = [sum(struct.unpack("<Q", x[:8])[0] for x in (v if isinstance(v, list) else [v])) for v in vals]
    return {"prog_dropped": u64[0], "prog_passed": u64[1]}


def _snapshot(node, pin: str | None) -> dict:
    return {"t": time.monotonic(), "src": traffic.link_stats(node.src_netns, "eth0"),
            "node": traffic.link_stats(node.netns, "eth0"),
            "snmp": _snmp(node.netns), "prog": _prog_counters(pin)}


def _set_mode(bench, mode: str, timeout: float = 120) -> str | None:
    """Make kube-xdp put udp-drop on node-1's eth0 in `mode` ('none': not on node-1);
    return the pin path of node-1's program (None for 'none')."""
    if mode == "none":
        spec = {"nodeSelector": {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "NotIn",
                                                       "values": ["node-1"]}]}}
        nodes = len(bench.info.nodes) - 1
    else:
        # nodeSelector null: back to the default, every node ({} would merge as "no change")
        # fallback []: exactly this mode. With native + fallback [generic], an agent whose
        # program runs in generic keeps it there (generic is allowed), so the switch back
        # to native would not happen (see the report's findings).
        spec = {"nodeSelector": None, "mode": mode, "fallback": []}
        nodes = len(bench.info.nodes)
    gen = bench.patch_spec("udp-drop", spec)["metadata"]["generation"]
    if bench.watcher.expect(ready("udp-drop", nodes, gen)).wait(timeout) is None:
        raise TimeoutError(f"udp-drop not Ready in mode {mode} after {timeout:.0f}s")
    node = bench.info.node("node-1")
    hook = netns.xdp_hook(node.netns, "eth0")
    if mode == "none":
        # Ready describes the selected nodes; a deselected node's detach is reported by
        # Reconciling (api.md) and the attachment's disappearance: wait for the kernel.
        deadline = time.monotonic() + 60
        while hook != (None, None) and time.monotonic() < deadline:
            time.sleep(0.2)
            hook = netns.xdp_hook(node.netns, "eth0")
        if hook != (None, None):
            raise RuntimeError(f"node-1 eth0 still holds {hook} 60 s after udp-drop deselected it")
        return None
    att = bench.attachments("udp-drop")["node-1"]
    st = next(i for i in att["status"]["interfaces"] if i["name"] == "eth0")
    if hook != (mode, st["progId"]):
        raise RuntimeError(f"node-1 eth0: kernel shows {hook}, wanted {mode} program {st['progId']}")
    return st["pinPath"]


def measure(bench, mode: str, seconds: float) -> dict:
    node = bench.info.node("node-1")
    eth0 = node.interfaces[0]
    pin = _set_mode(bench, mode)
    cfg = traffic.trafgen_config(src_mac=eth0["src_mac"], dst_mac=eth0["node_mac"], src_ip=eth0["src_ip"],
                                 dst_ip=eth0["node_ip"], dport=DROP_PORT)
    before = _snapshot(node, pin)
    # tx_ring=True: trafgen's mmap TX ring, its fastest path (this is a peak-rate
    # benchmark); on a loaded machine it can exit on EAGAIN, which raises TrafgenError
    # rather than passing for a measurement.
    with traffic.Trafgen(node.src_netns, "eth0", cfg, seconds=seconds + 2.0, tx_ring=True) as gen:
        time.sleep(1.0)
        a = _snapshot(node, pin)
        time.sleep(seconds)
        b = _snapshot(node, pin)
        tg = gen.wait(timeout=seconds + 40)
    time.sleep(0.2)                       # the last frames through the veth pair
    after = _snapshot(node, pin)
    dt = b["t"] - a["t"]

    def rate(section: str, key: str) -> float | None:
        if key not in a[section] or key not in b[section]:
            return None
        return round((b[section][key] - a[section][key]) / dt)

    return {
        "mode": mode, "seconds": round(dt, 3),
        "sent_pps": rate("src", "tx_packets"), "src_tx_dropped_pps": rate("src", "tx_dropped"),
        "node_rx_pps": rate("node", "rx_packets"), "node_rx_dropped_pps": rate("node", "rx_dropped"),
        "prog_dropped_pps": rate("prog", "prog_dropped"), "prog_passed_pps": rate("prog", "prog_passed"),
        "udp_noports_pps": rate("snmp", "Udp.NoPorts"), "ip_inreceives_pps": rate("snmp", "Ip.InReceives"),
        "trafgen_rc": tg.returncode, "trafgen_stderr": tg.stderr[-500:], "trafgen_sent": tg.sent,
        "trafgen_seconds": round(tg.seconds, 3),
        "count_check": count_check(tg.sent, before, after),
    }


def count_check(trafgen_sent: int, before: dict, after: dict) -> dict:
    """trafgen's own count of what it sent against the kernel's counters over its whole
    run (snapshots before it started and after it exited): the source veth's
    tx_packets, and what the node veth received (rx_packets; XDP-dropped frames are
    counted there too on veth). Anything else on the link in that time (an IPv6
    neighbour message) shows as a difference of a few packets."""
    def delta(section: str, key: str) -> int | None:
        if key not in before[section] or key not in after[section]:
            return None
        return after[section][key] - before[section][key]

    src_tx, node_rx = delta("src", "tx_packets"), delta("node", "rx_packets")
    diff = None if node_rx is None else trafgen_sent - node_rx
    return {"trafgen_sent": trafgen_sent, "src_tx_packets": src_tx, "node_rx_packets": node_rx,
            "trafgen_minus_src_tx": None if src_tx is None else trafgen_sent - src_tx,
            "trafgen_minus_node_rx": diff,
            "relative": None if diff is None or not trafgen_sent else round(diff / trafgen_sent, 6)}


def run(bench, seconds: float = 4.0, log=print) -> dict:
    order = ["native", "generic", "none", "none", "generic", "native"]
    runs = []
    try:
        for mode in order:
            r = measure(bench, mode, seconds)
            runs.append(r)
            log(f"    {mode:<8} sent {r['sent_pps'] or 0:>9,} pps  node rx {r['node_rx_pps'] or 0:>9,} pps  "
                f"prog dropped {r['prog_dropped_pps'] if r['prog_dropped_pps'] is not None else '-':>9} pps  "
                f"udp NoPorts {r['udp_noports_pps'] or 0:>9,} pps")
    finally:
        _set_mode(bench, "native")
    return {"seconds_per_run": seconds, "order": order, "runs": runs, "node": "node-1", "interface": "eth0",
            "frame": "64-byte Ethernet/IPv4/UDP to the udp-drop port", "generator": "trafgen --cpus 1"}
