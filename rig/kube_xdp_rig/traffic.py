"""Traffic into simulated nodes, from their traffic-source namespaces.

`send_udp` sends a counted burst with a plain socket (exact counts for tests);
`trafgen` / `Trafgen` drive line-rate 64-byte UDP with netsniff-ng's trafgen (load for
faults and benchmarks), always bounded by a count or a duration, and raise TrafgenError
(with trafgen's stderr) when trafgen fails. Destinations are always the rig's own node
addresses (198.18.0.0/15). `link_stats` and `snmp` read the kernel's counters.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
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
# 32 MiB (the default ~208 KiB holds ~256 small datagrams: a burst while this process is
# not scheduled on a loaded machine overflowed it). FORCE: as root, past rmem_max.
try:
    s.setsockopt(socket.SOL_SOCKET, 33, 32 << 20)      # SO_RCVBUFFORCE
except OSError:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
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


def link_stats(netns: str, dev: str) -> dict[str, int]:
    """An interface's packet counters (the kernel's stats64), as `ip -s` reads them."""
    out = subprocess.run(["ip", "-n", netns, "-s", "-j", "link", "show", "dev", dev],
                         capture_output=True, text=True, check=True).stdout
    st = json.loads(out)[0]["stats64"]
    return {"rx_packets": st["rx"]["packets"], "rx_dropped": st["rx"]["dropped"],
            "tx_packets": st["tx"]["packets"], "tx_dropped": st["tx"]["dropped"]}


def snmp(netns: str) -> dict[str, int]:
    """A namespace's IP/ICMP/TCP/UDP counters from /proc/net/snmp, as {"Udp.NoPorts": n, ...}."""
    lines = subprocess.run(["ip", "netns", "exec", netns, "cat", "/proc/net/snmp"],
                           capture_output=True, text=True, check=True).stdout.splitlines()
    out = {}
    for head, values in zip(lines[0::2], lines[1::2]):
        proto, keys = head.split(":", 1)
        out.update({f"{proto}.{k}": int(v) for k, v in zip(keys.split(), values.split(":", 1)[1].split())})
    return out


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


# trafgen has two send paths. With a rate (--rate) it calls a blocking sendto() per
# frame (~0.44 Mpps here). Without one it fills its mmap TX ring and flushes it with a
# non-blocking sendto (~0.58 Mpps), and exits with "Flushing TX_RING failed: Resource
# temporarily unavailable" when the socket's send buffer is full of frames the receiving
# CPU has not consumed yet (a loaded machine: seen in full CI runs). So "as fast as it
# goes" is asked as a rate above what trafgen reaches on one core: its shaper never
# waits, and the send path is the blocking one. Only a peak-rate benchmark asks for the
# TX ring (tx_ring=True) and accepts that risk.
UNSHAPED_RATE = 20_000_000


class TrafgenError(RuntimeError):
    """trafgen failed, or did not send what it was asked to (the message has its stderr)."""


@dataclass(frozen=True)
class TrafgenResult:
    sent: int              # what trafgen reports it sent ("N packets outgoing")
    seconds: float         # from start to exit
    interrupted: bool      # ended by SIGINT (its duration bound, or stop()), not by its count
    returncode: int
    stdout: str
    stderr: str


class Trafgen:
    """trafgen in a traffic-source namespace, in the background, bounded by a packet count
    (`count`: trafgen stops by itself), a duration (`seconds`: then SIGINT), or both.

    trafgen forks one worker per CPU, and a SIGINT to the parent alone can leave the worker
    sending: trafgen runs in a process group of its own and the whole group is signalled.
    On SIGINT trafgen prints its totals and exits 0. `wait()`/`stop()` return a
    TrafgenResult, or raise TrafgenError if trafgen failed (bad option, no such device or
    namespace, a config it cannot parse) or ended by itself short of its count.
    Use as a context manager: on exit a trafgen still running is killed.

    `rate` None: as fast as trafgen goes, through its blocking send path (see
    UNSHAPED_RATE); `tx_ring=True` (with no rate): through its mmap TX ring, faster but
    liable to fail on a loaded machine (benchmarks of peak rate only).
    """

    def __init__(self, src_netns: str, dev: str, config: str, *, count: int | None = None,
                 seconds: float | None = None, rate: int | None = None, cpus: int = 1, tx_ring: bool = False):
        if count is None and seconds is None:
            raise ValueError("trafgen: give a packet count or a duration: the rig never sends unbounded traffic")
        if count is not None and count <= 0:      # trafgen's --num 0 means "forever"
            raise ValueError(f"trafgen: count must be positive, not {count}")
        if seconds is not None and seconds <= 0:
            raise ValueError(f"trafgen: seconds must be positive, not {seconds}")
        if rate is not None and tx_ring:
            raise ValueError("trafgen: a rate is sent with blocking sendto(), never through the TX ring")
        self.tx_ring = tx_ring
        self.src_netns, self.dev, self.config = src_netns, dev, config
        self.count, self.seconds, self.rate, self.cpus = count, seconds, rate, cpus
        self.proc: subprocess.Popen | None = None
        self.result: TrafgenResult | None = None
        self._cfg: Path | None = None
        self._timer: threading.Timer | None = None
        self._interrupted = False

    def argv(self, cfg: str) -> list[str]:
        return ["ip", "netns", "exec", self.src_netns, "trafgen", "--dev", self.dev, "--conf", cfg,
                "--cpus", str(self.cpus), "--no-sock-mem", "--qdisc-path", "--no-cpu-stats",
                *(["--num", str(self.count)] if self.count is not None else []),
                *([] if self.tx_ring else ["--rate", f"{self.rate or UNSHAPED_RATE}pps"])]

    def start(self) -> "Trafgen":
        fd, name = tempfile.mkstemp(suffix=".cfg", prefix="kube-xdp-trafgen-")
        with os.fdopen(fd, "w") as f:
            f.write(self.config)
        self._cfg = Path(name)
        self.proc = subprocess.Popen(self.argv(name), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
        self.t0 = time.monotonic()
        if self.seconds is not None:
            self._timer = threading.Timer(self.seconds, self.interrupt)
            self._timer.daemon = True
            self._timer.start()
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def interrupt(self) -> None:
        """SIGINT to trafgen's process group, if it is still running."""
        if self.running():
            self._interrupted = True
            self._signal(signal.SIGINT)

    def wait(self, timeout: float | None = None) -> TrafgenResult:
        """Until trafgen ends by itself (its count) or by its duration bound; after `timeout`
        seconds it is stopped and that is an error."""
        assert self.proc is not None, "trafgen was not started"
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise TrafgenError(f"trafgen did not finish within {timeout:.0f} s ({self._describe()}); stopped "
                               f"after {self.result.sent} packets") from None
        return self._finish(out, err)

    def stop(self) -> TrafgenResult:
        """Now: SIGINT (trafgen prints its totals), then count; SIGKILL if it does not exit."""
        assert self.proc is not None, "trafgen was not started"
        if self.result is not None:
            return self.result
        if self._timer is not None:
            self._timer.cancel()
        self.interrupt()
        try:
            out, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            out, err = self.proc.communicate(timeout=10)
        return self._finish(out, err)

    def kill(self) -> None:
        """SIGKILL the whole group if still running, and clean up (no result)."""
        if self._timer is not None:
            self._timer.cancel()
        if self.proc is not None:
            self._signal(signal.SIGKILL)
            self.proc.wait()
            for pipe in (self.proc.stdout, self.proc.stderr):
                if pipe is not None:
                    pipe.close()
        if self._cfg is not None:
            self._cfg.unlink(missing_ok=True)

    def _signal(self, sig: int) -> None:
        if self.running():
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def _describe(self) -> str:
        bounds = [f"{self.count} packets" if self.count is not None else "",
                  f"{self.seconds} s" if self.seconds is not None else "",
                  f"{self.rate} pps" if self.rate else ""]
        return f"netns {self.src_netns}, dev {self.dev}, {', '.join(b for b in bounds if b)}"

    def _finish(self, out: str, err: str) -> TrafgenResult:
        if self._timer is not None:
            self._timer.cancel()
        if self._cfg is not None:
            self._cfg.unlink(missing_ok=True)
        rc = self.proc.returncode
        said = (err or "").strip() or (out or "").strip()[-500:] or "(no output)"
        if rc != 0:
            how = f"was killed by signal {-rc}" if rc < 0 else f"exited with {rc}"
            raise TrafgenError(f"trafgen {how} ({self._describe()}): {said}")
        match = re.search(r"(\d+) packets outgoing", out or "")
        if not match:
            raise TrafgenError(f"trafgen did not report what it sent ({self._describe()}): {said}")
        sent = int(match.group(1))
        self.result = TrafgenResult(sent=sent, seconds=self.elapsed(), interrupted=self._interrupted,
                                    returncode=rc, stdout=out, stderr=err)
        if not self._interrupted and self.count is not None and sent != self.count:
            raise TrafgenError(f"trafgen ended by itself after {sent} of {self.count} packets "
                               f"({self._describe()}): {said}")
        return self.result

    def __enter__(self) -> "Trafgen":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()


def trafgen(src_netns: str, dev: str, config: str, *, count: int | None = None, seconds: float | None = None,
            rate: int | None = None, cpus: int = 1, timeout: float = 60) -> TrafgenResult:
    """Run trafgen in a traffic-source namespace until its packet count is sent or its
    duration is over (then SIGINT); raise TrafgenError if it failed or sent short. A run
    with only a count that takes longer than `timeout` seconds is stopped, as an error."""
    with Trafgen(src_netns, dev, config, count=count, seconds=seconds, rate=rate, cpus=cpus) as run:
        return run.wait(timeout=seconds + 30 if seconds is not None else timeout)
