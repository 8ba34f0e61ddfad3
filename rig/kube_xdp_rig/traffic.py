"""Traffic into simulated nodes, from their traffic-source namespaces.

`send_udp` sends a counted burst with a plain socket (exact counts for tests);
`trafgen` drives line-rate 64-byte UDP with netsniff-ng's trafgen (load for faults and
benchmarks). Destinations are always the rig's own node addresses (198.18.0.0/15).
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
import tempfile
from pathlib import Path

RIG_NET = ipaddress.ip_network("198.18.0.0/15")

_SENDER = r"""
import socket, sys
dst, dport, count, sport = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
if sport:
    s.bind(("0.0.0.0", sport))
for i in range(count):
    s.sendto(b"kube-xdp-rig %d" % i, (dst, dport))
"""

_RECEIVER = r"""
import signal, socket, sys
bind, port = sys.argv[1], int(sys.argv[2])
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((bind, port))
s.settimeout(0.05)
print("ready", flush=True)
n = 0
while not stop:
    try:
        s.recv(2048)
        n += 1
    except (socket.timeout, InterruptedError):
        pass
s.setblocking(False)
while True:                      # drain what arrived before the stop
    try:
        s.recv(2048)
        n += 1
    except (BlockingIOError, InterruptedError):
        break
print(n, flush=True)
"""


def _check_dst(dst: str) -> None:
    if ipaddress.ip_address(dst) not in RIG_NET:
        raise ValueError(f"refusing to send to {dst}: the rig only sends to its own nodes in {RIG_NET}")


def send_udp(src_netns: str, dst: str, dport: int, count: int = 10, sport: int = 0) -> None:
    """Send `count` UDP datagrams from a traffic-source namespace to a node address."""
    _check_dst(dst)
    subprocess.run(["ip", "netns", "exec", src_netns, sys.executable, "-c", _SENDER, dst, str(dport), str(count), str(sport)],
                   check=True, capture_output=True, timeout=60)


class UdpReceiver:
    """Counts datagrams arriving at a UDP port inside a node namespace (a socket, so it
    counts what got past XDP and the stack). Use as a context manager; call `count()`
    after sending: it waits `grace` seconds for datagrams in flight, stops the receiver
    and returns the total (no idle timeout, so a slow sender on a loaded machine cannot
    make it stop early)."""

    def __init__(self, netns: str, port: int, bind: str = "0.0.0.0"):
        self.proc = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", _RECEIVER, bind, str(port)],
                                     stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"UDP receiver in {netns} failed to start")

    def count(self, grace: float = 0.5, timeout: float = 30) -> int:
        import time
        time.sleep(grace)
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=timeout)
        return int(out.strip().splitlines()[-1])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def trafgen_config(*, src_mac: str, dst_mac: str, src_ip: str, dst_ip: str, dport: int, sport: int = 9) -> str:
    """A trafgen packet description: one 64-byte Ethernet/IPv4/UDP frame."""
    _check_dst(dst_ip)

    def mac(m: str) -> str:
        return ", ".join(f"0x{b}" for b in m.split(":"))

    def ip(a: str) -> str:
        return ", ".join(str(b) for b in ipaddress.ip_address(a).packed)

    return f"""{{
  {mac(dst_mac)}, {mac(src_mac)}, c16(0x0800),
  0x45, 0x00, c16(46), c16(0), c16(0x4000), 64, 17, csumip(14, 33),
  {ip(src_ip)}, {ip(dst_ip)},
  c16({sport}), c16({dport}), c16(26), c16(0),
  fill(0x41, 18),
}}
"""


def trafgen(src_netns: str, dev: str, config: str, *, count: int | None = None, seconds: float | None = None,
            cpus: int = 1) -> subprocess.CompletedProcess:
    """Run trafgen in a traffic-source namespace, bounded by a packet count or a duration."""
    if count is None and seconds is None:
        raise ValueError("trafgen: give a packet count or a duration: the rig never sends unbounded traffic")
    with tempfile.NamedTemporaryFile("w", suffix=".cfg", delete=False) as f:
        f.write(config)
        cfg = Path(f.name)
    argv = ["ip", "netns", "exec", src_netns, "trafgen", "--dev", dev, "--conf", str(cfg), "--cpus", str(cpus),
            "--no-sock-mem", "--qdisc-path", "--silent"]
    if count is not None:
        argv += ["--num", str(count)]
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=(seconds or 60) + 30,
                              check=False) if seconds is None else _timed(argv, seconds)
    finally:
        cfg.unlink(missing_ok=True)


def _timed(argv: list[str], seconds: float) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.send_signal(2)   # trafgen prints its totals on SIGINT
        out, err = proc.communicate(timeout=10)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)
