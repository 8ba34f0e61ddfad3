"""etcd and kube-apiserver on loopback: start, wait until ready, diagnose port clashes."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from . import gobuild
from .config import SERVICE_CIDR
from .procs import ProcTable

CONTROL_PLANE = ["kube-apiserver", "etcd", "kubectl"]

SERVICE_ACCOUNT_ISSUER = "https://kube-xdp-rig.invalid"


class RigError(RuntimeError):
    """A rig operation failed; the message is one line saying what to do."""


def port_owner(port: int) -> str | None:
    """Who listens on 127.0.0.1:port (or any address), e.g. 'pid 123 (nginx)'; None if free."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return None
        except OSError:
            pass
    out = subprocess.run(["ss", "-Htlnp", f"sport = :{port}"], capture_output=True, text=True).stdout
    return out.split("users:", 1)[1].strip() if "users:" in out else "an unknown process"


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_ports(n: int = 1, consecutive: bool = False) -> list[int]:
    """n ports free on 127.0.0.1 now, for a rig instance of its own (tests, bench).

    They are taken below the kernel's ephemeral range (ip_local_port_range): a port chosen
    inside it can be grabbed minutes later as the local end of any outgoing connection
    (the API server's own connections to etcd, for one), and etcd then cannot bind it."""
    import random
    low, high = _ephemeral_range()
    if low - n > 12000:
        bottom, top = 10000, low - n
    elif high + 2000 < 65535 - n:
        bottom, top = max(high + 1, 10000), 65535 - n
    else:                                   # no room outside the range: take our chances
        bottom, top = 10000, 60000
    rnd = random.Random()
    for _ in range(10000):
        base = rnd.randrange(bottom, top)
        ports = [base + i for i in range(n)] if consecutive else [rnd.randrange(bottom, top) for _ in range(n)]
        if len(set(ports)) == n and not any(port_owner(p) for p in ports):
            return ports
    raise RigError(f"no {n} free ports found between {bottom} and {top}")


def ensure_port_free(port: int, what: str, flag: str, grace: float = 0.0) -> None:
    """Raise a one-line RigError naming the owner if the port is taken. `grace` waits for
    a port held by a process that was just killed (the kernel closes it asynchronously)."""
    deadline = time.monotonic() + grace
    owner = port_owner(port)
    while owner and time.monotonic() < deadline:
        time.sleep(0.2)
        owner = port_owner(port)
    if owner:
        raise RigError(f"port {port} for {what} is already in use by {owner}: stop it, or pass {flag} PORT")


def binaries(cache_dir: Path) -> dict[str, Path]:
    """The control plane's binaries (kube-apiserver, etcd) and the clients a person uses
    with the rig (kubectl), built from the project's Go build module when not cached; a
    failed build raises a one-line RigError naming the component and its log."""
    try:
        return gobuild.ensure(CONTROL_PLANE, cache_dir)
    except gobuild.BuildError as e:
        raise RigError(f"{e}; fix that, then rerun 'make binaries'") from None


def start_etcd(procs: ProcTable, state: Path, binary: Path, port: int) -> None:
    data = state / "etcd"
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    peer = port + 1
    procs.start("etcd", [
        str(binary), "--name", "kube-xdp-rig", "--data-dir", str(data),
        "--listen-client-urls", f"http://127.0.0.1:{port}", "--advertise-client-urls", f"http://127.0.0.1:{port}",
        "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-cluster", f"kube-xdp-rig=http://127.0.0.1:{peer}", "--initial-cluster-state", "new",
        "--log-level", "warn", "--logger", "zap",
    ])
    _wait(lambda: _etcd_healthy(port), 30, "etcd", procs, "etcd")


def _etcd_healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return json.loads(r.read()).get("health") == "true"
    except (OSError, ValueError):
        return False


AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
"""


def start_apiserver(procs: ProcTable, state: Path, binary: Path, port: int, etcd_port: int,
                    extra_args: list[str] | None = None, audit: bool = False) -> None:
    pki = state / "pki"
    extra_args = list(extra_args or [])
    if audit:
        # One JSON line per request (user, verb, resource, response code): the benchmarks
        # count API reads and writes per node at the server, not in the clients.
        (state / "audit-policy.yaml").write_text(AUDIT_POLICY)
        extra_args += [f"--audit-policy-file={state}/audit-policy.yaml", f"--audit-log-path={state}/audit.log",
                       "--audit-log-format=json", "--audit-log-mode=batch", "--audit-log-batch-max-wait=1s"]
    procs.start("kube-apiserver", [
        str(binary),
        f"--etcd-servers=http://127.0.0.1:{etcd_port}",
        f"--secure-port={port}", "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
        f"--tls-cert-file={pki}/server.crt", f"--tls-private-key-file={pki}/server.key",
        f"--client-ca-file={pki}/ca.crt",
        f"--service-account-key-file={pki}/sa.pub", f"--service-account-signing-key-file={pki}/sa.key",
        f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
        f"--token-auth-file={pki}/tokens.csv",
        "--authorization-mode=RBAC",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        # The API server listens and advertises on loopback, which the endpoint reconciler
        # of the `kubernetes` Service refuses since 1.2x: process nodes reach it on loopback
        # and no pod needs that Service here, so no reconciler (no endpoints).
        "--endpoint-reconciler-type=none",
        "--allow-privileged=true",
        "--profiling=false",
        "--v=1",
        *extra_args,
    ])


def wait_apiserver(procs: ProcTable, server: str, ca_file: Path, token: str, timeout: float = 60) -> None:
    _wait(lambda: apiserver_ready(server, ca_file, token), timeout, "kube-apiserver", procs, "kube-apiserver")


def apiserver_ready(server: str, ca_file: Path, token: str) -> bool:
    ctx = ssl.create_default_context(cafile=str(ca_file))
    req = urllib.request.Request(f"{server}/readyz", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=3, context=ctx) as r:
            return r.status == 200
    except (OSError, urllib.error.URLError, ssl.SSLError):
        return False


def _wait(check, timeout: float, what: str, procs: ProcTable, name: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if procs.exited(name) is not None:
            log = procs.log_dir / f"{name}.log"
            tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
            raise RigError(f"{what} exited during start-up; last log lines: {' | '.join(tail)} (full log: {log})")
        time.sleep(0.25)
    raise RigError(f"{what} not ready after {timeout:.0f}s (log: {procs.log_dir / (name + '.log')})")
