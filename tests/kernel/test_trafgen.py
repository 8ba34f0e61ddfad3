"""The rig's trafgen helper on a real veth pair: it sends what it says, and fails loudly.

Received packets are counted at the node namespace's IPv4/UDP stack (/proc/net/snmp):
the frames go to a UDP port nobody listens on, so each one that arrives is one
`Udp.NoPorts` (and one `Ip.InReceives`: nothing else sends IPv4 into a fresh pair,
trafgen's frames carry static MACs, so there is no ARP). One case counts at a real socket
(the rig's UdpReceiver) instead.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from kube_xdp_rig import traffic

from .conftest import NetnsPair

pytestmark = pytest.mark.kernel

NO_LISTENER = 9     # discard: nothing listens on it in the node namespace


def mac(netns: str, ifname: str) -> str:
    out = subprocess.run(["ip", "-j", "-n", netns, "link", "show", "dev", ifname], check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out)[0]["address"]


def config(pair: NetnsPair, dport: int = NO_LISTENER) -> str:
    return traffic.trafgen_config(src_mac=mac(pair.src, pair.src_if), dst_mac=mac(pair.ns, pair.ns_if),
                                  src_ip=pair.src_addr, dst_ip=pair.ns_addr, dport=dport)


def arrived(pair: NetnsPair, before: dict[str, int], expect: int, timeout: float = 5.0) -> dict[str, int]:
    """The node's IPv4 and UDP counters since `before`, once they reach `expect` (or at the timeout)."""
    def delta() -> dict[str, int]:
        now = traffic.snmp(pair.ns)
        return {k: now[k] - before[k] for k in ("Ip.InReceives", "Udp.NoPorts")}

    deadline = time.monotonic() + timeout
    while min(delta().values()) < expect and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)                             # and nothing more than that comes in
    return delta()


def test_a_counted_run_delivers_exactly_its_count(netns_pair: NetnsPair) -> None:
    before = traffic.snmp(netns_pair.ns)
    result = traffic.trafgen(netns_pair.src, netns_pair.src_if, config(netns_pair), count=20_000)
    assert result.sent == 20_000 and not result.interrupted and result.returncode == 0
    assert arrived(netns_pair, before, 20_000) == {"Ip.InReceives": 20_000, "Udp.NoPorts": 20_000}


def test_a_timed_run_ends_on_time_and_reports_what_arrived(netns_pair: NetnsPair) -> None:
    """SIGINT goes to trafgen's whole process group: its worker stops too, and the total
    it prints is what the node received (a SIGINT to the parent alone can leave the
    worker sending and the total wrong)."""
    before = traffic.snmp(netns_pair.ns)
    with traffic.Trafgen(netns_pair.src, netns_pair.src_if, config(netns_pair), seconds=1.0) as run:
        result = run.wait(timeout=30)
    assert result.interrupted and 1.0 <= result.seconds < 10
    assert result.sent > 1000, result.stdout
    assert arrived(netns_pair, before, result.sent) == {"Ip.InReceives": result.sent, "Udp.NoPorts": result.sent}
    assert not in_group(run.proc.pid), "trafgen processes left running"


def in_group(pgid: int) -> list[int]:
    """Live processes of a process group (from /proc/<pid>/stat)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


def test_a_background_flow_stopped_early_counts_what_it_sent(netns_pair: NetnsPair) -> None:
    before = traffic.snmp(netns_pair.ns)
    with traffic.Trafgen(netns_pair.src, netns_pair.src_if, config(netns_pair), count=1_000_000, seconds=30,
                         rate=20_000) as flow:
        time.sleep(0.5)
        assert flow.running()
        result = flow.stop()
    assert result.interrupted and 0 < result.sent < 1_000_000 and result.seconds < 10
    assert arrived(netns_pair, before, result.sent) == {"Ip.InReceives": result.sent, "Udp.NoPorts": result.sent}


def test_packets_reach_a_socket(netns_pair: NetnsPair) -> None:
    port = 5599
    with traffic.UdpReceiver(netns_pair.ns, port, bind=netns_pair.ns_addr) as rx:
        result = traffic.trafgen(netns_pair.src, netns_pair.src_if, config(netns_pair, port), count=500, rate=5000)
        assert result.sent == 500
        assert rx.count() == 500


@pytest.mark.parametrize("change, said", [
    (dict(dev="nosuchdev0"), "No networking device"),
    (dict(netns="kxt-no-such-netns"), "kxt-no-such-netns"),
    (dict(config="{ 0x00, garbage( }"), "yntax error"),
], ids=["no-device", "no-netns", "bad-config"])
def test_a_failing_trafgen_is_a_clear_error(netns_pair: NetnsPair, change: dict, said: str) -> None:
    netns, dev = change.get("netns", netns_pair.src), change.get("dev", netns_pair.src_if)
    cfg = change.get("config") or config(netns_pair)
    with pytest.raises(traffic.TrafgenError, match=r"trafgen exited with \d+ .*" + said):
        traffic.trafgen(netns, dev, cfg, count=10)
    with pytest.raises(traffic.TrafgenError, match=said):       # a timed run: the same
        traffic.trafgen(netns, dev, cfg, seconds=2)


@pytest.mark.parametrize("bounds", [{}, dict(count=0), dict(seconds=0)], ids=["unbounded", "count-0", "seconds-0"])
def test_unbounded_traffic_is_refused(bounds: dict) -> None:
    with pytest.raises(ValueError, match="trafgen"):
        traffic.trafgen("kxt-unused", "veth1", "{ fill(0x00, 60) }", **bounds)
