"""The agents' /healthz on the rig: each process agent serves it on loopback (the port the
rig gave it, --health-port), and says ok while it watches the real API server and its
worker runs. (The chart's liveness probe that reads it: tests/unit/test_chart_render.py,
tests/e2e/test_chart.py; the verdict's bounds: tests/unit/test_agent_health.py.)"""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

from kube_xdp_rig import workloads

from .kubexdp import wait

pytestmark = pytest.mark.rig


def health_port(pid: int) -> int:
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    return int(argv[argv.index("--health-port") + 1])


def healthz(port: int) -> tuple[int, bytes] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as reply:
            return reply.status, reply.read()
    except OSError:                 # not listening yet: the agent is still starting
        return None


def test_every_agent_says_it_is_healthy(rig, kubexdp):
    for node in rig.nodes:
        pid = kubexdp.pid(workloads.agent_name(node.name))
        assert pid, node.name
        port = health_port(pid)
        assert wait(lambda: healthz(port), 60, f"{node.name}'s agent serving /healthz") == (200, b"ok\n")
