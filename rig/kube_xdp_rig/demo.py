"""make demo: the rig, kube-xdp on it, the three examples, real traffic, a table.

1. bring the rig up (3 nodes, eth0/eth1/eth2; node-2 and node-3 labelled role=edge);
2. install the CRDs and RBAC, start the operator and one agent per node;
3. apply examples/*.yaml and wait until every program is Ready;
4. fill the blocklist map from user space with each edge node's traffic source;
5. send real UDP into every node and read the programs' pinned maps (before and after:
   every count is what this run's traffic did, so a second `make demo` reads the same);
6. print program / node / interface / mode / ready / counted / dropped, and exit 1 if
   anything differs from what the example promises: placement (which nodes the
   program's nodeSelector matches by their labels: an attachment and a program in the
   kernel there, neither anywhere else), Ready (the program's and the interface's), the
   mode and program id read back from the kernel equal to what the status says and one
   the program allows, and the counts.
The rig, operator and agents keep running afterwards for exploring with kubectl.

The steps (`apply_examples`, `wait_ready`, `measure`, `check_row`, `print_table`; `run`
does them all) take a running rig (RigInfo) and a `cluster.Cluster` connected to it: the
CLI below and tests/e2e/test_examples.py run the same code.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

from kube_xdp_api.selectors import matches
from kube_xdp_api.spec import DEFAULT_FALLBACK, DEFAULT_MODE

from . import apply as applier
from . import netns, traffic, workloads
from .cli import error_line, teardown_hint
from .cluster import Cluster
from .config import DEFAULT_INSTANCE, ConfigError, RigConfig
from .controlplane import RigError, free_ports, port_owner
from .rig import Rig, RigInfo

EXAMPLES = workloads.REPO / "examples"
DROP_PORT, PASS_PORT = 7777, 7778
COUNT_PORT, BLOCK_PORT = 9999, 5353
SENT = 200
DEMO_NODES = 3
DEMO_INTERFACES = ("eth0", "eth1", "eth2")
DEMO_NODE_LABELS = {"node-2": {"role": "edge"}, "node-3": {"role": "edge"}}


def demo_config(instance: str = DEFAULT_INSTANCE, **ports) -> RigConfig:
    """The rig the demo runs on: 3 nodes, eth0-eth2, node-2 and node-3 role=edge."""
    return RigConfig(instance=instance, nodes=DEMO_NODES, interfaces=DEMO_INTERFACES,
                     node_labels=DEMO_NODE_LABELS, **ports)


# -- rows and their check (pure) ------------------------------------------------------------
@dataclasses.dataclass
class Row:
    """One program on one node's interface: what was measured, and what the example
    promises (`expect` for people; the `want_*` and `counts` fields for `check_row`)."""

    program: str
    node: str
    iface: str
    selected: bool                  # the program's nodeSelector matches the node's labels
    attached: bool                  # an XdpAttachment for the node exists
    ready: str                      # the interface's `ready` in the attachment status
    mode: str                       # the mode the status reports ("-" if none)
    prog_id: int | None             # the program id the status reports
    kernel: list                    # [(mode, prog id)] attached on the interface, read from the kernel
    allowed_modes: tuple            # spec.mode then spec.fallback
    program_ready: str              # the program's Ready condition: "True/Ready", "True/NoNodesSelected", ...
    program_selected: int | None    # status.selectedNodes
    program_ready_nodes: int | None  # status.readyNodes
    expected_selected: int          # nodes whose labels the selector matches
    counts: dict                    # what -> (measured, promised), e.g. "dropped": (200, 200)
    counted: str                    # the table's COUNTED cell
    dropped: int                    # the table's DROPPED cell
    expect: str                     # the table's EXPECTED cell

    @property
    def problems(self) -> list[str]:
        return check_row(self)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_row(row: Row) -> list[str]:
    """Every way the row differs from what its example promises (empty: all kept)."""
    out = []
    if row.selected:
        if not row.attached:
            out.append("no XdpAttachment although the node's labels match the nodeSelector")
        if row.program_ready != "True/Ready":
            out.append(f"program Ready is {row.program_ready}, not True/Ready")
        if row.program_selected != row.expected_selected or row.program_ready_nodes != row.expected_selected:
            out.append(f"program status says {row.program_ready_nodes}/{row.program_selected} nodes ready/selected; "
                       f"the nodes' labels select {row.expected_selected}")
        if row.ready != "True":
            out.append(f"interface ready is {row.ready}")
        if not row.kernel:
            out.append("the kernel shows no XDP program on the interface")
        elif row.kernel != [(row.mode, row.prog_id)]:
            out.append(f"the kernel shows {_kernel_text(row.kernel)}, the status says {row.mode} id {row.prog_id}")
        if row.mode not in row.allowed_modes:
            out.append(f"mode {row.mode} is not one the program allows ({', '.join(row.allowed_modes)})")
    else:
        if row.attached:
            out.append("an XdpAttachment exists although the node's labels do not match the nodeSelector")
        if row.kernel:
            out.append(f"the kernel shows {_kernel_text(row.kernel)} on a node the program does not select")
    for what, (got, want) in row.counts.items():
        if got != want:
            out.append(f"{what}: {got}, expected {want}")
    return out


def _kernel_text(kernel: list) -> str:
    return ", ".join(f"{m} id {p}" for m, p in kernel) or "nothing"


def print_table(rows: list[Row], out: Callable[[str], None] = print) -> bool:
    cols = [("PROGRAM", "program"), ("NODE", "node"), ("IFACE", "iface"), ("MODE", "mode"), ("READY", "ready"),
            ("COUNTED", "counted"), ("DROPPED", "dropped"), ("EXPECTED", "expect"), ("OK", "ok")]
    table = [[str(getattr(r, k)) if k != "ok" else ("yes" if r.ok else "NO") for _, k in cols] for r in rows]
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, (h, _) in enumerate(cols)]
    out("")
    out("  ".join(h.ljust(w) for (h, _), w in zip(cols, widths)).rstrip())
    for row in table:
        out("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    bad = [r for r in rows if not r.ok]
    out("")
    for r in bad:
        out(f"demo: {r.program} on {r.node} {r.iface}: " + "; ".join(r.problems))
    out("demo: every example did what it promises" if not bad else
        f"demo: {len(bad)} row(s) differ from what the example promises")
    return not bad


# -- the steps against a rig ------------------------------------------------------------------
def apply_examples(cluster: Cluster, examples: Path = EXAMPLES) -> dict[str, dict]:
    """Server-side apply of examples/*.yaml; the XdpPrograms by name."""
    docs = applier.load_yaml(examples)
    applier.apply(cluster.client, docs)
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == "XdpProgram"}


def wait_ready(cluster: Cluster, programs: list[str], timeout: float) -> None:
    """Until every program's status is current and Ready; TimeoutError with each
    program's conditions otherwise."""
    try:
        cluster.wait(lambda: all(cluster.is_current(p) for p in programs), timeout, "programs Ready", 0.5)
    except (TimeoutError, cluster.timeout_error) as e:
        detail = []
        for p in programs:
            st = (cluster.get(p) or {}).get("status") or {}
            detail.append(f"{p}: " + ", ".join(f"{c['type']}={c['status']} {c.get('reason')} {c.get('message', '')[:200]}"
                                               for c in st.get("conditions", [])))
        raise TimeoutError(f"{e}; " + "; ".join(detail)) from None


def _map(iface_status: dict, name: str):
    from kube_xdp_agent.kernel.bpfsys import BpfMap
    return BpfMap.open_pinned(str(Path(iface_status["pinPath"]).parent / "maps" / name))


def _u64(value) -> int:
    values = value if isinstance(value, list) else [value]
    return sum(struct.unpack("<Q", v[:8])[0] for v in values if v)


def _read(iface_status: dict, map_name: str, key: bytes) -> int:
    with _map(iface_status, map_name) as m:
        return _u64(m.lookup(key))


def measure(info: RigInfo, cluster: Cluster, programs: dict[str, dict]) -> list[Row]:
    """Send this run's traffic into every node and read what each program did, with
    placement judged from the nodes' labels (read from the API) and the programs'
    selectors, and modes read back from the kernel."""
    labels = {n.metadata.name: n.metadata.labels or {} for n in cluster.core.list_node().items}
    rows = []
    for node in info.nodes:
        links = {l["name"]: l for l in node.interfaces}
        for name in ("udp-drop", "proto-count", "blocklist"):
            spec = programs[name]["spec"]
            iface = spec["interfaces"]["names"][0]
            selected = matches(spec.get("nodeSelector"), labels.get(node.name))
            att = cluster.attachments(name).get(node.name)
            ifaces = {i["name"]: i for i in ((att or {}).get("status") or {}).get("interfaces") or []}
            st = ifaces.get(iface) or {}
            prog_status = (cluster.get(name) or {}).get("status") or {}
            ready_cond = next((c for c in prog_status.get("conditions", []) if c["type"] == "Ready"), {})
            base = dict(
                program=name, node=node.name, iface=iface, selected=selected, attached=att is not None,
                ready=str(st.get("ready")) if selected else "not selected",
                mode=st.get("mode") or "-", prog_id=st.get("progId"),
                kernel=netns.xdp_programs(node.netns, iface),
                allowed_modes=tuple(dict.fromkeys((spec.get("mode", DEFAULT_MODE),
                                                   *spec.get("fallback", DEFAULT_FALLBACK)))),
                program_ready=f"{ready_cond.get('status')}/{ready_cond.get('reason')}",
                program_selected=prog_status.get("selectedNodes"),
                program_ready_nodes=prog_status.get("readyNodes"),
                expected_selected=sum(matches(spec.get("nodeSelector"), l) for l in labels.values()),
            )
            # the promise follows the labels (`selected`); the maps are read where they are
            measured = _TRAFFIC[name](node, links[iface], st if st.get("pinPath") else None, selected)
            rows.append(Row(**base, **measured))
    return rows


def _udp_drop(node, link: dict, st: dict | None, selected: bool) -> dict:
    """SENT to DROP_PORT are dropped (and counted in stats[0]), SENT to PASS_PORT arrive."""
    key = struct.pack("<I", 0)
    before = _read(st, "stats", key) if st else 0
    with traffic.UdpReceiver(node.netns, DROP_PORT, bind=link["node_ip"]) as rx_drop, \
            traffic.UdpReceiver(node.netns, PASS_PORT, bind=link["node_ip"]) as rx_pass:
        traffic.send_udp(node.src_netns, link["node_ip"], DROP_PORT, SENT)
        traffic.send_udp(node.src_netns, link["node_ip"], PASS_PORT, SENT)
        got_drop, got_pass = rx_drop.count(), rx_pass.count()
    dropped = (_read(st, "stats", key) - before) if st else 0
    promised = SENT if selected else 0
    return dict(counts={f"arrived at :{DROP_PORT}": (got_drop, SENT - promised),
                        f"arrived at :{PASS_PORT}": (got_pass, SENT),
                        "dropped (map stats[0])": (dropped, promised)},
                counted=f"{got_pass} arrived", dropped=dropped,
                expect=f"{SENT} to :{DROP_PORT} dropped, {SENT} to :{PASS_PORT} arrive")


def _proto_count(node, link: dict, st: dict | None, selected: bool) -> dict:
    """SENT UDP datagrams counted under protocol 17."""
    key = struct.pack("<I", 17)
    before = _read(st, "proto_count", key) if st else 0
    with traffic.UdpReceiver(node.netns, COUNT_PORT, bind=link["node_ip"]) as rx:
        traffic.send_udp(node.src_netns, link["node_ip"], COUNT_PORT, SENT)
        arrived = rx.count()
    udp = (_read(st, "proto_count", key) - before) if st else 0
    return dict(counts={"UDP counted (map proto_count[17])": (udp, SENT if selected else 0),
                        f"arrived at :{COUNT_PORT}": (arrived, SENT)},
                counted=f"{udp} udp", dropped=0, expect=f"{SENT} UDP counted")


def _blocklist(node, link: dict, st: dict | None, selected: bool) -> dict:
    """On a selected node, the traffic source is put in the map from user space and its
    SENT datagrams are dropped (counted in its map value); elsewhere they arrive."""
    key = ipaddress.IPv4Address(link["src_ip"]).packed
    before = 0
    if st:
        with _map(st, "blocklist") as bl:
            current = bl.lookup(key)
            if current is None:
                bl.update(key, struct.pack("<Q", 0))
            else:
                before = _u64(current)
    with traffic.UdpReceiver(node.netns, BLOCK_PORT, bind=link["node_ip"]) as rx:
        traffic.send_udp(node.src_netns, link["node_ip"], BLOCK_PORT, SENT)
        arrived = rx.count()
    hits = (_read(st, "blocklist", key) - before) if st else 0
    if selected:
        return dict(counts={f"arrived at :{BLOCK_PORT}": (arrived, 0), "dropped (map blocklist[source])": (hits, SENT)},
                    counted=f"{arrived} arrived", dropped=hits, expect=f"{SENT} from {link['src_ip']} dropped")
    return dict(counts={f"arrived at :{BLOCK_PORT}": (arrived, SENT)},
                counted=f"{arrived} arrived", dropped=hits, expect=f"not role=edge: {SENT} arrive")


_TRAFFIC = {"udp-drop": _udp_drop, "proto-count": _proto_count, "blocklist": _blocklist}


def run(info: RigInfo, cluster: Cluster, *, timeout: float = 180, out: Callable[[str], None] = print) -> list[Row]:
    """Apply the examples, wait for Ready, send the traffic, print the table: the rows."""
    programs = apply_examples(cluster)
    out(f"demo: applied {', '.join(programs)}; waiting for Ready on every selected node")
    wait_ready(cluster, list(programs), timeout)
    out("demo: all programs Ready; sending traffic")
    rows = measure(info, cluster, programs)
    print_table(rows, out)
    return rows


# -- the CLI ----------------------------------------------------------------------------------
def _ports(instance: str, apiserver_port: int | None, etcd_port: int | None) -> dict:
    """Ports for the demo's rig: given ones; else the running rig's; else the defaults,
    or (for an instance other than the default one, when those are taken) free ones."""
    if apiserver_port and etcd_port:
        return dict(apiserver_port=apiserver_port, etcd_port=etcd_port)
    probe = RigConfig(instance=instance)
    current = Rig(probe).info()
    if current is not None:
        return dict(apiserver_port=current.apiserver_port, etcd_port=current.etcd_port)
    ports = dict(apiserver_port=apiserver_port or probe.apiserver_port, etcd_port=etcd_port or probe.etcd_port)
    taken = any(port_owner(p) for p in (ports["apiserver_port"], ports["etcd_port"], ports["etcd_port"] + 1))
    if taken and instance != DEFAULT_INSTANCE:
        etcd, _, api = free_ports(3, consecutive=True)
        ports = dict(apiserver_port=apiserver_port or api, etcd_port=etcd_port or etcd)
        print(f"demo: default ports taken; rig '{instance}' uses API server port {ports['apiserver_port']}, "
              f"etcd {ports['etcd_port']}")
    return ports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kube-xdp demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--instance", default=os.environ.get("KUBE_XDP_RIG_INSTANCE", DEFAULT_INSTANCE),
                        help=f"rig instance to run on (default {DEFAULT_INSTANCE})")
    parser.add_argument("--apiserver-port", type=int, help="for a new rig (default 6443; a running rig keeps its own)")
    parser.add_argument("--etcd-port", type=int, help="for a new rig (default 2379)")
    parser.add_argument("--timeout", type=float, default=180, help="seconds to wait for Ready (default 180)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("demo: must run as root (network namespaces, bpffs mounts, BPF)", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    try:
        cfg = demo_config(args.instance, **_ports(args.instance, args.apiserver_port, args.etcd_port))
        info = Rig(cfg).up()
        print("demo: installing kube-xdp (CRDs, RBAC, operator, 3 agents)")
        with Cluster(info).deploy(resync=2.0) as cluster:
            rows = run(info, cluster, timeout=args.timeout)
    except (ConfigError, RigError) as e:
        print(f"demo: {e}", file=sys.stderr)
        return 1
    except TimeoutError as e:
        print(f"demo: {e}", file=sys.stderr)
        print(f"demo: agent and operator logs: {Rig(RigConfig(instance=args.instance)).procs.log_dir}/", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"demo: interrupted; the rig stays up ('{teardown_hint(args.instance)}' removes it)", file=sys.stderr)
        return 130
    except Exception as e:          # one line with the logs; the traceback in a file
        print(f"demo: {error_line('demo', e, args.instance)}", file=sys.stderr)
        return 1
    ok = all(r.ok for r in rows)
    print(f"demo: done in {time.monotonic() - t0:.1f}s")
    print()
    print(f"kubeconfig: export KUBECONFIG={info.kubeconfig}")
    print("explore:    kubectl get xdpp; kubectl get xdpa; kubectl describe xdpp udp-drop")
    print(f"node view:  ip -n {info.nodes[0].netns} link show eth0   (look for 'prog/xdp')")
    print(f"tear down:  {teardown_hint(info.instance)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
