"""kube-xdp-operator: place XdpPrograms on nodes and aggregate what the agents report."""

from __future__ import annotations

import argparse
import logging
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kube-xdp-operator", description=__doc__)
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"),
                        help="kubeconfig file (default: $KUBECONFIG, else the in-cluster ServiceAccount)")
    parser.add_argument("--liveness", default=os.environ.get("KUBE_XDP_LIVENESS", "http://0.0.0.0:8080/healthz"),
                        help="liveness endpoint URL, or 'none' (default http://0.0.0.0:8080/healthz)")
    parser.add_argument("--agent-cleanup-timeout", type=float,
                        default=float(os.environ.get("KUBE_XDP_AGENT_CLEANUP_TIMEOUT", "600")),
                        help="seconds a deleted program waits for a down node's agent before releasing it (default 600)")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig     # kopf logs in with the same credentials

    import kopf

    from . import handlers, reconciler
    from .kubeapi import ClusterApi

    from kube_xdp_api import compat

    api = ClusterApi.connect(args.kubeconfig)
    try:
        compat.require_supported(api.client, component="kube-xdp-operator")
    except compat.UnsupportedKubernetes as e:
        print(e, file=sys.stderr)
        return 1
    reconciler.AGENT_CLEANUP_TIMEOUT = args.agent_cleanup_timeout
    handlers.install(api)
    kopf.run(clusterwide=True, standalone=True,
             liveness_endpoint=None if args.liveness == "none" else args.liveness)
    return 0


if __name__ == "__main__":
    sys.exit(main())
