"""kube-xdp-agent: compile, attach, pin and report the XdpAttachments of one node."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from kube_xdp_api import names

from .health import DEFAULT_ADDRESS, DEFAULT_PORT, HealthServer
from .inventory import DEFAULT_PROBE_PATTERN, DEFAULT_SKIPPED_PREFIXES, interface_selector


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kube-xdp-agent", description=__doc__)
    parser.add_argument("--node-name", default=os.environ.get("NODE_NAME"),
                        help="this node's name (default $NODE_NAME, from the downward API)")
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"),
                        help="kubeconfig file (default $KUBECONFIG, else the in-cluster ServiceAccount)")
    parser.add_argument("--bpffs", default=names.DEFAULT_BPFFS, help="bpffs mount for pins (default /sys/fs/bpf)")
    parser.add_argument("--netns", default=None,
                        help="do all netlink work in this named network namespace (the local rig's nodes); "
                             "on a real node leave unset: the agent runs with hostNetwork")
    parser.add_argument("--resync", type=float, default=3.0, help="seconds between drift checks: drift is repaired within about this (default 3)")
    parser.add_argument("--no-inventory", action="store_true",
                        help="do not publish this node's XdpNode")
    parser.add_argument("--probe-xdp-modes", action="store_true",
                        help="find the interfaces' XDP modes by attaching a test program to each empty hook, even "
                             "where the kernel reports xdp-features (netdev family, 6.3+; without it the agent "
                             "probes anyway). Attaching native XDP resets the link of many NICs (ixgbe, i40e, "
                             "mlx5): once per interface, results kept in the XdpNode across restarts. Default off")
    parser.add_argument("--inventory-interfaces", metavar="REGEX",
                        default=os.environ.get("KUBE_XDP_INVENTORY_INTERFACES", DEFAULT_PROBE_PATTERN),
                        help="when modes are probed (--probe-xdp-modes, or a kernel without xdp-features), probe "
                             "the interfaces whose whole name matches this Python regular expression (loopback "
                             "never); the others' modes come from xdp-features, or are unknown. Default "
                             "$KUBE_XDP_INVENTORY_INTERFACES, else every name not starting with "
                             f"{', '.join(DEFAULT_SKIPPED_PREFIXES)} (pods' veths and overlay devices); "
                             "'' probes none")
    parser.add_argument("--health-address", default=DEFAULT_ADDRESS, metavar="ADDRESS",
                        help="serve GET /healthz on this address (default 127.0.0.1: with hostNetwork the kubelet "
                             "probes it on the node itself, and nothing off the node reaches it)")
    parser.add_argument("--health-port", type=int, default=DEFAULT_PORT, metavar="PORT",
                        help=f"... and this port (default {DEFAULT_PORT}; 0: no /healthz)")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format=f"%(asctime)s %(levelname)s agent[{args.node_name}]: %(message)s")
    if not args.node_name:
        parser.error("--node-name (or $NODE_NAME) is required")
    try:
        interface_selector(args.inventory_interfaces)         # a bad regex stops here, with its error
    except ValueError as e:
        parser.error(f"--inventory-interfaces (or $KUBE_XDP_INVENTORY_INTERFACES): {e}")

    import kubernetes

    from .controller import Agent, AgentConfig
    from .kernel import HostKernel

    if args.kubeconfig:
        client = kubernetes.config.new_client_from_config(config_file=args.kubeconfig)
    else:
        config = kubernetes.client.Configuration()
        kubernetes.config.load_incluster_config(client_configuration=config)
        client = kubernetes.client.ApiClient(config)
    from kube_xdp_api import compat
    try:
        compat.require_supported(client, component="kube-xdp-agent")
    except compat.UnsupportedKubernetes as e:
        print(e, file=sys.stderr)
        return 1
    agent = Agent(AgentConfig(node_name=args.node_name, bpffs=args.bpffs, netns=args.netns, resync=args.resync,
                              inventory=not args.no_inventory, inventory_interfaces=args.inventory_interfaces,
                              probe_xdp_modes=args.probe_xdp_modes),
                  client, HostKernel())
    server = None
    if args.health_port:
        try:
            server = HealthServer(agent.health, args.health_address, args.health_port).start()
        except OSError as e:
            print(f"kube-xdp-agent: cannot serve /healthz on {args.health_address}:{args.health_port}: "
                  f"{e.strerror or e} (--health-address/--health-port)", file=sys.stderr)
            return 1

    def stop(*_):
        agent.shutdown()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        agent.run()
    finally:
        agent.close()
        if server is not None:
            server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
