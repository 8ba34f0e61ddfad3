"""kube-xdp-rig: bring the local cluster rig up, down, or show its status.

Examples:
  kube-xdp-rig up                                  3 nodes, interfaces eth0 and eth1
  kube-xdp-rig up --nodes 5 --interfaces eth0,eth1,eth2 --labels zone=lab
  kube-xdp-rig up --node-label node-2=role=edge,tier=1
  kube-xdp-rig status [--json]
  kube-xdp-rig down
  kube-xdp-rig --instance two up --apiserver-port 7443 --etcd-port 7379   a second rig

Exit status: 0 ok; 1 failed (one line on stderr says what and what to do); 2 not root;
3 `status` of a rig that is not up.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import traceback
from pathlib import Path

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
    instance_help = "rig instance name: namespaces are '<instance>-node-N' (default kxr)"
    parser.add_argument("--instance", default=os.environ.get("KUBE_XDP_RIG_INSTANCE", "kxr"), help=instance_help)
    # also accepted after the command (`down --instance two`)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--instance", default=argparse.SUPPRESS, help=instance_help)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", parents=[common], help="start etcd, kube-apiserver and the simulated nodes (idempotent)")
    up.add_argument("--nodes", type=int, default=3, help="number of simulated nodes (default 3)")
    up.add_argument("--interfaces", default="eth0,eth1", help="interface names in every node (default eth0,eth1)")
    up.add_argument("--labels", default="", help="labels for every node, k=v,k=v")
    up.add_argument("--node-label", action="append", metavar="NODE=k=v[,k=v]", help="labels for one node (repeatable)")
    up.add_argument("--apiserver-port", type=int, default=6443)
    up.add_argument("--etcd-port", type=int, default=2379, help="etcd client port; the peer port is the next one")
    up.add_argument("--audit", action="store_true", help="audit-log every API request to <state>/audit.log")
    sub.add_parser("down", parents=[common], help="stop everything and remove every namespace, mount and file of the rig")
    st = sub.add_parser("status", parents=[common], help="say what is running")
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
            print(f"     tear down: {teardown_hint(info.instance)}")
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
    except KeyboardInterrupt:
        print(f"kube-xdp-rig: {args.command} interrupted; run '{teardown_hint(args.instance)}' if it left a "
              "half-built rig", file=sys.stderr)
        return 130
    except Exception as e:      # anything else: one line with the logs, the traceback in a file
        print(f"kube-xdp-rig: {error_line(args.command, e, args.instance)}", file=sys.stderr)
        return 1
    return 0


def teardown_hint(instance: str) -> str:
    """The command that tears a rig instance down, as a person would type it."""
    if instance == "kxr":
        return "make rig-down"
    return f"{Path(sys.executable).parent / 'python'} -m kube_xdp_rig --instance {instance} down"


def error_line(command: str, exc: BaseException, instance: str, state_root: Path | None = None) -> str:
    """One line for an unexpected failure: what failed, where the logs are, what to do.
    The traceback goes to <state root>/<instance>.failed-logs/traceback.txt."""
    from kubernetes.client.rest import ApiException

    cfg = RigConfig(instance=instance, **({"state_root": state_root} if state_root else {}))
    what = f"'{command}' failed"
    if isinstance(exc, FileNotFoundError) and exc.filename:
        cause = f"command or file not found: {exc.filename} (install what is missing: make deps)"
    elif isinstance(exc, ApiException):
        cause = f"the API server answered {exc.status} {exc.reason}".rstrip()
    elif isinstance(exc, subprocess.CalledProcessError):
        cmd = exc.cmd if isinstance(exc.cmd, str) else " ".join(map(str, exc.cmd))
        err = (exc.stderr or b"")
        err = err.decode(errors="replace") if isinstance(err, bytes) else err
        cause = f"'{cmd}' exited {exc.returncode}" + (f": {_first_line(err)}" if err.strip() else "")
    else:
        cause = f"{type(exc).__name__}: {_first_line(str(exc)) or 'no message'}"
    logs = [p for p in (cfg.state_dir / "logs", cfg.state_root / f"{instance}.failed-logs") if p.is_dir()]
    where = f"; process logs: {', '.join(map(str, logs))}" if logs else ""
    trace = _save_traceback(exc, cfg.state_root / f"{instance}.failed-logs" / "traceback.txt")
    tb = f"; traceback: {trace}" if trace else ""
    return f"{what}: {cause}{where}{tb}; after fixing, rerun it (or '{teardown_hint(instance)}' to start over)"


def _first_line(text: str) -> str:
    lines = [l.strip() for l in text.strip().splitlines() if l.strip()]
    return lines[0][:300] if lines else ""


def _save_traceback(exc: BaseException, path: Path) -> Path | None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        return path
    except OSError:
        return None


def _print_status(status: dict) -> None:
    if not status["up"]:
        left = status.get("leftovers") or {}
        if not any(left.values()):
            print(f"rig '{status['instance']}': down")
            return
        print(f"rig '{status['instance']}': DOWN, but parts of it are still here ({status.get('problem')})")
        for p in left.get("processes") or []:
            print(f"  process {p}")
        for n in left.get("netns") or []:
            print(f"  netns   {n}")
        for m in left.get("mounts") or []:
            print(f"  mount   {m}")
        if left.get("state_dir"):
            print(f"  files   {status.get('state_dir') or ''}".rstrip())
        print(f"  to remove them: {teardown_hint(status['instance'])}   (or 'up' to start it again)")
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
