"""The agent's /healthz (kube_xdp_agent.health): the verdict from the watch's and the
worker's heartbeats, served over real HTTP on loopback, and a port already in use
stopping the agent at start with one line."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import pytest

from kube_xdp_agent.health import WATCH_STALE, WORKER_STALE, Health, HealthServer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_healthy_while_the_watch_and_the_worker_beat():
    clock = Clock()
    health = Health(clock=clock)
    assert health.problems() == []                       # a starting agent: its first list is on the way
    clock.now += WATCH_STALE - 1
    health.worker_beat()
    assert health.problems() == []
    clock.now += 2
    [problem] = health.problems()
    assert problem.startswith("watch: no list, event or bookmark for ")
    health.watch_ok()
    assert health.problems() == []
    clock.now += WORKER_STALE + 1
    health.watch_ok()
    [problem] = health.problems()
    assert problem.startswith("worker: no key taken and no idle wake-up for ")


def get(port: int, path: str = "/healthz") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_the_server_says_ok_or_503_with_the_problems():
    clock = Clock()
    health = Health(clock=clock)
    server = HealthServer(health, "127.0.0.1", 0).start()
    try:
        assert get(server.port) == (200, "ok\n")
        clock.now += WATCH_STALE + 5
        code, body = get(server.port)
        assert code == 503 and body.startswith("watch: ") and body.endswith("\n")
        assert get(server.port, "/metrics")[0] == 404
    finally:
        server.close()


def test_a_port_in_use_is_an_error_at_start():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            HealthServer(Health(), "127.0.0.1", taken.getsockname()[1]).start()


def test_the_agent_exits_with_one_line_when_its_health_port_is_taken(monkeypatch, tmp_path, capsys):
    """main() as the DaemonSet runs it, over the in-memory kernel: no crash loop with a
    traceback, one line naming the address and the flags."""
    from kube_xdp_api import compat

    from .agent_cli import offline_main

    main, ran = offline_main(monkeypatch, tmp_path)
    monkeypatch.setattr(compat, "require_supported", lambda *a, **kw: None)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["--no-inventory", "--health-port", str(port)])
    assert code == 1 and ran == []
    err = capsys.readouterr().err.strip()
    assert err == (f"kube-xdp-agent: cannot serve /healthz on 127.0.0.1:{port}: Address already in use "
                   "(--health-address/--health-port)")
    # the port free: served while the agent runs, closed when it returns
    assert main(["--no-inventory", "--health-port", str(port)]) == 0
    assert len(ran) == 1
    with socket.socket() as again:
        again.bind(("127.0.0.1", port))                 # released
