"""The agent's main() as the DaemonSet runs it, offline, for the CLI tests: the in-memory
kernel instead of the host's, a kubeconfig naming a server that is not there (the version
check logs and carries on), the Agent's loop not run, no signal handlers installed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import kube_xdp_agent.__main__ as agent_main
import kube_xdp_agent.controller as controller
import kube_xdp_agent.kernel as kernel_pkg
from tests.fakes import FakeKernel

KUBECONFIG = (
    "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
    "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:1'}}]\n"
    "users: [{name: u, user: {token: t}}]\ncontexts: [{name: c, context: {cluster: k, user: u}}]\n")


def offline_main(monkeypatch, tmp_path: Path) -> tuple[Callable[[list[str]], int], list]:
    """(main, built): main(argv) runs the agent's CLI with --node-name n1 and a kubeconfig
    added; `built` collects every Agent whose run() was called (their loops do not run)."""

    def host_kernel() -> FakeKernel:
        kernel = FakeKernel()
        kernel.mount_bpffs("/sys/fs/bpf")
        return kernel

    built: list = []
    monkeypatch.setattr(kernel_pkg, "HostKernel", host_kernel)
    monkeypatch.setattr(controller.Agent, "run", lambda self: built.append(self))
    monkeypatch.setattr(agent_main.signal, "signal", lambda *a: None)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)

    def main(argv: list[str]) -> int:
        return agent_main.main(["--node-name", "n1", "--kubeconfig", str(kubeconfig), *argv])

    return main, built
