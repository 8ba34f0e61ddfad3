"""Hollow nodes: the real agent control code (kube_xdp_agent.controller.Agent, its watch,
reconcile, finalizer and status logic, each with its own API client authenticated as the
agent ServiceAccount with its own node's pod-bound token, so the agents' node-restriction
policy applies to each as to a real agent) over tests.fakes.FakeKernel, an in-memory kernel: no
compile, no netlink, no bpffs. They measure the control plane alone (API server, operator,
agent control loop); they say nothing about compile or attach time. Each publishes its
XdpNode (modes from the in-memory kernel's xdp-features), as a real agent does.

    python -m bench.hollow --kubeconfig-dir DIR --state STATE hollow-1 hollow-2 ...

DIR holds one kubeconfig per node, <node>.kubeconfig (kube_xdp_rig.workloads.issue_agent_credentials).

One thread pair (watch + worker) per hollow agent, in this one process; prints
"synced <n>" once every agent has listed its attachments, runs until SIGTERM.
The Node objects must exist (the benchmark creates them, labelled kubexdp.io/hollow=true).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

HOLLOW_LABEL = "kubexdp.io/hollow"


INTERFACES = ("eth0", "eth1")


def make_agent(node: str, kubeconfig: str, resync: float):
    import kubernetes

    from kube_xdp_agent.controller import Agent, AgentConfig
    # The test double of the kernel (tests/fakes), imported on purpose: the real agent code
    # needs a kernel that behaves (programs, pins, hooks, links), and a copy of that model
    # here would drift from the one the unit tests check. The bench runs from a checkout
    # (PYTHONPATH is the repository), where tests/ is importable.
    from tests.fakes import FakeKernel

    kernel = FakeKernel(compile_ms=0.0)      # compile time is not modelled: control plane only
    for i, name in enumerate(INTERFACES):
        kernel.add_interface(name, default_route=(i == 0))
    kernel.mount_bpffs("/sys/fs/bpf")        # in memory: FakeKernel touches no file
    configuration = kubernetes.client.Configuration()        # its own token (node), its own connection pool
    kubernetes.config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    client = kubernetes.client.ApiClient(configuration)
    # inventory=True as the real agent's CLI: each hollow node publishes its XdpNode (read
    # from the in-memory kernel), so the operator sees an agent there as on a real node
    return Agent(AgentConfig(node_name=node, bpffs="/sys/fs/bpf", netns=None, resync=resync, inventory=True),
                 client, kernel)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.hollow", description=__doc__.split("\n\n")[0])
    p.add_argument("--kubeconfig-dir", required=True, help="one kubeconfig per node: DIR/<node>.kubeconfig")
    p.add_argument("--state", required=True, help="the rig's state dir (marks the process as the rig's)")
    p.add_argument("--resync", type=float, default=3.0,
                   help="drift-check interval, s (the bench passes the chart's agent.resync)")
    p.add_argument("nodes", nargs="+")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s hollow: %(message)s")
    agents = [make_agent(n, f"{args.kubeconfig_dir}/{n}.kubeconfig", args.resync) for n in args.nodes]
    print(f"created {len(agents)} hollow agents", flush=True)
    threads = [threading.Thread(target=a.run, name=f"agent-{n}", daemon=True) for a, n in zip(agents, args.nodes)]
    done = threading.Event()

    def stop(*_):
        for a in agents:
            a.shutdown()
        done.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for t in threads:
        t.start()
    for i, a in enumerate(agents):
        while not a.synced.wait(0.5):
            if done.is_set():
                return 0
        if (i + 1) % 50 == 0:
            print(f"listed: {i + 1}", flush=True)
    print(f"synced {len(agents)}", flush=True)
    done.wait()
    for t in threads:
        t.join(timeout=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
