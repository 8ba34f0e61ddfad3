"""make demo: the rig, kube-xdp on it, the three examples, real traffic, a table.

1. bring the rig up (3 nodes, eth0/eth1/eth2; node-2 and node-3 labelled role=edge);
2. install the CRDs and RBAC, start the operator and one agent per node;
3. apply examples/*.yaml and wait until every program is Ready;
4. fill the blocklist map from user space with each edge node's traffic source;
5. send real UDP into every node and read the programs' pinned maps;
6. print program / node / interface / mode / ready / counted / dropped, and exit 1 if
   anything differs from what the example promises.
The rig, operator and agents keep running afterwards for exploring with kubectl.
"""

from __future__ import annotations

import argparse
import ipaddress
import struct
import sys
import time
from pathlib import Path

import kubernetes

from kube_xdp_api import names

from . import apply as applier
from . import traffic, workloads
from .config import RigConfig
from .controlplane import RigError
from .rig import Rig, RigInfo

EXAMPLES = workloads.REPO / "examples"
DROP_PORT, PASS_PORT = 7777, 7778
SENT = 200


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kube-xdp demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, default=180, help="seconds to wait for Ready (default 180)")
    args = parser.parse_args(argv)
    cfg = RigConfig(nodes=3, interfaces=("eth0", "eth1", "eth2"),
                    node_labels={"node-2": {"role": "edge"}, "node-3": {"role": "edge"}})
    t0 = time.monotonic()
    try:
        info = Rig(cfg).up()
    except RigError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 1
    print("demo: installing kube-xdp (CRDs, RBAC, operator, 3 agents)")
    workloads.start_all(info)
    client = kubernetes.config.new_client_from_config(config_file=info.kubeconfig)
    docs = applier.load_yaml(EXAMPLES)
    applier.apply(client, docs)
    programs = [d["metadata"]["name"] for d in docs if d["kind"] == "XdpProgram"]
    print(f"demo: applied {', '.join(programs)}; waiting for Ready on every selected node")
    custom = kubernetes.client.CustomObjectsApi(client)
    try:
        workloads.wait_for(lambda: all(_ready(custom, p) for p in programs), args.timeout, "programs Ready", 0.5)
    except TimeoutError:
        for p in programs:
            st = _get(custom, names.PROGRAMS, p).get("status", {})
            print(f"demo: {p} not Ready: {[(c['type'], c['status'], c.get('reason'), c.get('message', '')[:300]) for c in st.get('conditions', [])]}")
        print(f"demo: agent logs: {info.state_dir}/logs/", file=sys.stderr)
        return 1
    print(f"demo: all programs Ready {time.monotonic() - t0:.1f}s after start; sending traffic")
    rows = run_traffic(info, custom)
    ok = print_table(rows)
    print()
    print(f"kubeconfig: export KUBECONFIG={info.kubeconfig}")
    print("explore:    kubectl get xdpp; kubectl get xdpa; kubectl describe xdpp udp-drop")
    print(f"node view:  ip -n {info.nodes[0].netns} link show eth0   (look for 'prog/xdp')")
    print("tear down:  make rig-down")
    return 0 if ok else 1


def _get(custom, plural: str, name: str) -> dict:
    return custom.get_cluster_custom_object(names.GROUP, names.VERSION, plural, name)


def _ready(custom, program: str) -> bool:
    status = _get(custom, names.PROGRAMS, program).get("status") or {}
    return any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", []))


def _attachments(custom, program: str) -> dict[str, dict]:
    items = custom.list_cluster_custom_object(names.GROUP, names.VERSION, names.ATTACHMENTS,
                                              label_selector=f"{names.LABEL_PROGRAM}={program}")["items"]
    return {a["spec"]["nodeName"]: a for a in items}


def _map(iface_status: dict, name: str):
    from kube_xdp_agent.kernel.bpfsys import BpfMap
    return BpfMap.open_pinned(str(Path(iface_status["pinPath"]).parent / "maps" / name))


def _u64(value) -> int:
    values = value if isinstance(value, list) else [value]
    return sum(struct.unpack("<Q", v[:8])[0] for v in values if v)


def run_traffic(info: RigInfo, custom) -> list[dict]:
    rows = []
    for node in info.nodes:
        links = {l["name"]: l for l in node.interfaces}
        # udp-drop on eth0: SENT to DROP_PORT are dropped, SENT to PASS_PORT arrive
        att = _attachments(custom, "udp-drop")[node.name]
        st = att["status"]["interfaces"][0]
        eth0 = links["eth0"]
        with traffic.UdpReceiver(node.netns, DROP_PORT, bind=eth0["node_ip"]) as rx_drop, \
                traffic.UdpReceiver(node.netns, PASS_PORT, bind=eth0["node_ip"]) as rx_pass:
            traffic.send_udp(node.src_netns, eth0["node_ip"], DROP_PORT, SENT)
            traffic.send_udp(node.src_netns, eth0["node_ip"], PASS_PORT, SENT)
            got_drop, got_pass = rx_drop.count(), rx_pass.count()
        with _map(st, "stats") as stats:
            dropped = _u64(stats.lookup(struct.pack("<I", 0)))
        rows.append(dict(program="udp-drop", node=node.name, iface="eth0", mode=st.get("mode"), ready=st.get("ready"),
                         counted=f"{got_pass} arrived", dropped=dropped,
                         expect=f"{SENT} to :{DROP_PORT} dropped, {SENT} to :{PASS_PORT} arrive",
                         ok=dropped == SENT and got_drop == 0 and got_pass == SENT))
        # proto-count on eth1: SENT UDP datagrams counted under protocol 17
        st = _attachments(custom, "proto-count")[node.name]["status"]["interfaces"][0]
        eth1 = links["eth1"]
        with _map(st, "proto_count") as counts:
            before = _u64(counts.lookup(struct.pack("<I", 17)))
            traffic.send_udp(node.src_netns, eth1["node_ip"], 9999, SENT)
            udp = _u64(counts.lookup(struct.pack("<I", 17))) - before
        rows.append(dict(program="proto-count", node=node.name, iface="eth1", mode=st.get("mode"), ready=st.get("ready"),
                         counted=f"{udp} udp", dropped=0, expect=f"{SENT} UDP counted", ok=udp == SENT))
        # blocklist on eth2 of edge nodes: the traffic source is blocked from user space
        eth2 = links["eth2"]
        blocked = _attachments(custom, "blocklist").get(node.name)
        with traffic.UdpReceiver(node.netns, 5353, bind=eth2["node_ip"]) as rx:
            if blocked:
                st = blocked["status"]["interfaces"][0]
                with _map(st, "blocklist") as bl:
                    bl.update(ipaddress.IPv4Address(eth2["src_ip"]).packed, struct.pack("<Q", 0))
            traffic.send_udp(node.src_netns, eth2["node_ip"], 5353, SENT)
            arrived = rx.count()
        if blocked:
            with _map(st, "blocklist") as bl:
                hits = _u64(bl.lookup(ipaddress.IPv4Address(eth2["src_ip"]).packed))
            rows.append(dict(program="blocklist", node=node.name, iface="eth2", mode=st.get("mode"), ready=st.get("ready"),
                             counted=f"{arrived} arrived", dropped=hits, expect=f"{SENT} from {eth2['src_ip']} dropped",
                             ok=hits == SENT and arrived == 0))
        else:
            rows.append(dict(program="blocklist", node=node.name, iface="eth2", mode="-", ready="not selected",
                             counted=f"{arrived} arrived", dropped=0, expect=f"not role=edge: {SENT} arrive",
                             ok=arrived == SENT))
    return rows


def print_table(rows: list[dict]) -> bool:
    cols = [("PROGRAM", "program"), ("NODE", "node"), ("IFACE", "iface"), ("MODE", "mode"), ("READY", "ready"),
            ("COUNTED", "counted"), ("DROPPED", "dropped"), ("EXPECTED", "expect"), ("OK", "ok")]
    table = [[str(r[k]) if k != "ok" else ("yes" if r["ok"] else "NO") for _, k in cols] for r in rows]
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, (h, _) in enumerate(cols)]
    print()
    print("  ".join(h.ljust(w) for (h, _), w in zip(cols, widths)))
    for row in table:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))
    bad = [r for r in rows if not r["ok"]]
    print()
    print("demo: every example did what it promises" if not bad else
          f"demo: {len(bad)} row(s) differ from what the example promises")
    return not bad


if __name__ == "__main__":
    sys.exit(main())
