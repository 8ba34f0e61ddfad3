"""kube-xdp-rig: bring the local cluster rig up, down, or show its status.

Examples:
  kube-xdp-rig up                                  3 nodes, interfaces eth0 and eth1
  kube-xdp-rig up --nodes 5 --interfaces eth0,eth1,eth2 --labels zone=lab
  kube-xdp-rig up --node-label node-2=role=edge,tier=1
  kube-xdp-rig status [--json]
  kube-xdp-rig down
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .config import ConfigError, RigConfig, parse_labels
from .controlplane import RigError
from .rig import Rig


def _config(args) -> RigConfig:
    node_labels: dict = {}
    for item in args.node_label or []:
        node, sep, labels = item.partition("=")
        if not sep:
            raise ConfigError(f"--node-label {item!r}: expected NODE=key=value[,key=value]")
        node_labels.setdefault(node, {}).update(parse_labels(labels))
    return RigConfig(
        instance=args.instance, nodes=args.nodes,
        interfaces=tuple(i.strip() for i in args.interfaces.split(",") if i.strip()),
        labels=parse_labels(args.labels), node_labels=node_labels,
        apiserver_port=args.apiserver_port, etcd_port=args.etcd_port, audit=args.audit,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kube-xdp-rig", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instance", default=os.environ.get("KUBE_XDP_RIG_INSTANCE", "kxr"),
                        help="rig instance name: namespaces are '<instance>-node-N' (default kxr)")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start etcd, kube-apiserver and the simulated nodes (idempotent)")
    up.add_argument("--nodes", type=int, default=3, help="number of simulated nodes (default 3)")
    up.add_argument("--interfaces", default="eth0,eth1", help="interface names in every node (default eth0,eth1)")
    up.add_argument("--labels", default="", help="labels for every node, k=v,k=v")
    up.add_argument("--node-label", action="append", metavar="NODE=k=v[,k=v]", help="labels for one node (repeatable)")
    up.add_argument("--apiserver-port", type=int, default=6443)
    up.add_argument("--etcd-port", type=int, default=2379, help="etcd client port; the peer port is the next one")
    up.add_argument("--audit", action="store_true", help="audit-log every API request to <state>/audit.log")
    sub.add_parser("down", help="stop everything and remove every namespace, mount and file of the rig")
    st = sub.add_parser("status", help="say what is running")
    st.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    if os.geteuid() != 0:
        print("kube-xdp-rig: must run as root (network namespaces, bpffs mounts)", file=sys.stderr)
        return 2
    try:
        if args.command == "up":
            info = Rig(_config(args)).up()
            print(f"rig: {len(info.nodes)} nodes: {', '.join(n.name for n in info.nodes)}")
            print(f"rig: admin kubeconfig: {info.kubeconfig}")
            print(f"     export KUBECONFIG={info.kubeconfig}; kubectl get nodes --show-labels")
            print(f"     a node's interfaces: ip -n {info.nodes[0].netns} link")
            print(f"     tear down: make rig-down")
        elif args.command == "down":
            Rig(RigConfig(instance=args.instance)).down()
        else:
            status = Rig(RigConfig(instance=args.instance)).status()
            if args.json:
                print(json.dumps(status, indent=2))
            else:
                _print_status(status)
            return 0 if status["up"] else 3
    except (ConfigError, RigError) as e:
        print(f"kube-xdp-rig: {e}", file=sys.stderr)
        return 1
    return 0


def _print_status(status: dict) -> None:
    if not status["up"]:
        left = status.get("leftovers") or {}
        extra = f" (leftovers: {left}; run 'kube-xdp-rig down')" if left and any(left.values()) else ""
        print(f"rig '{status['instance']}': down{extra}")
        return
    print(f"rig '{status['instance']}': up at {status['server']}")
    print(f"  kubeconfig: {status['kubeconfig']}")
    for p in status["processes"]:
        print(f"  process {p['name']:<16} pid {p['pid']:<8} rss {p['rss_mib']} MiB")
    for n in status["nodes"]:
        links = ", ".join(f"{k}:{v}" for k, v in n["links"].items())
        print(f"  node {n['name']:<10} netns {n['netns']:<16} {links}  bpffs {'mounted' if n['bpffs'] else 'MISSING'}")


if __name__ == "__main__":
    sys.exit(main())
