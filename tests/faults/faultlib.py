"""Measuring instruments of the fault suite: traffic, counters, status watches, the table.

A scenario runs under continuous traffic (`Flow`: trafgen, a fixed number of 64-byte
UDP frames at a fixed rate, only to the rig's own node addresses) and counts every packet
that was not handled as the active program dictates:

- `sent`: what trafgen reports it sent; `delivered`: sent minus what the veth dropped
  before the node's interface (tx_dropped of the traffic source's end: ring overflow);
- the programs' own counters (`Counter`: the `hits` map of FAULT_PROG, held by fd, so
  an old program's count stays readable after it was replaced and unpinned);
- the receiver: the node namespace's IPv4 `InReceives` (every IPv4 packet that reached
  the node's stack, i.e. that XDP let through). Nothing else sends IPv4 into a node's
  namespace while a flow runs (static neighbours, no ARP), so the delta is the flow's.

FAULT_PROG drops UDP to PORT and counts it (with VERSION=-1 it passes them: a stand-in
for a foreign program). Every delivered packet should be counted by exactly one dropping
program of kube-xdp, so for a flow to PORT:
    mishandled = max(delivered - packets counted by the dropping programs,
                     packets that reached the node's stack)
the two views of the same loss (a packet no dropping program counted reaches the stack);
max() keeps the worse one if they ever disagree.
"""

from __future__ import annotations

import errno
import json
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field

import kubernetes

from kube_xdp_agent.kernel import XdpLinks
from kube_xdp_agent.kernel.bpfsys import BpfMap, link_fd_by_id, link_info, obj_get, prog_fd_by_id, prog_info
from kube_xdp_agent.kernel.errors import BpfSyscallError
from kube_xdp_api import names
from kube_xdp_rig import traffic
from kube_xdp_rig.netns import xdp_hook

FAULT_PROG = """
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/in.h>
#include <uapi/linux/udp.h>
BPF_ARRAY(hits, u64, 1);
int xdp_fault(struct xdp_md *ctx) {
    void *data = (void *)(long)ctx->data, *data_end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
        return XDP_PASS;
    struct iphdr *ip = (void *)(eth + 1);
    if ((void *)(ip + 1) > data_end || ip->protocol != IPPROTO_UDP || ip->ihl != 5)
        return XDP_PASS;
    struct udphdr *udp = (void *)(ip + 1);
    if ((void *)(udp + 1) > data_end || udp->dest != bpf_htons(PORT))
        return XDP_PASS;
    int zero = 0;
    u64 *v = hits.lookup(&zero);
    if (v)
        __sync_fetch_and_add(v, 1);
    return VERSION >= 0 ? XDP_DROP : XDP_PASS;
}
"""

RATE = 50_000          # packets per second (trafgen sends a limited rate in bursts ~20 ms apart)
MAX_RATE = 3_000_000   # more than trafgen reaches here: bounds an unlimited flow's count


def fault_program(name: str, port: int, *, version: int = 1, interfaces=None, selector=None, **spec) -> dict:
    from tests.e2e.kubexdp import program
    body = program(name, FAULT_PROG, "xdp_fault", interfaces=interfaces or {"names": ["eth0"]},
                   defines={"PORT": str(port), "VERSION": str(version)}, selector=selector)
    body["spec"].update(spec)
    return body


# --- counters ---------------------------------------------------------------------------------
def ip_in_receives(netns: str) -> int:
    return traffic.snmp(netns)["Ip.InReceives"]


def tx_dropped(netns: str, ifname: str) -> int:
    return traffic.link_stats(netns, ifname)["tx_dropped"]


class Counter:
    """The `hits` counter of a live program, opened by the program's id and held by fd."""

    def __init__(self, prog_id: int, map_name: str = "hits", *, fresh: bool = False):
        """`fresh`: the program was just loaded, count from 0 (not from the first read)."""
        self.prog_id = prog_id
        with prog_fd_by_id(prog_id) as fd:
            ids = prog_info(fd.fd).map_ids
        self.map = None
        for map_id in ids:
            m = BpfMap.open_id(map_id)
            if m.info.name == map_name:
                self.map = m
                break
            m.close()
        if self.map is None:
            raise AssertionError(f"program {prog_id} has no map {map_name!r}")
        self.start = 0 if fresh else self.read()

    def read(self) -> int:
        value = self.map.lookup(struct.pack("<I", 0))
        values = value if isinstance(value, list) else [value]
        return sum(struct.unpack("<Q", v[:8])[0] for v in values)

    def delta(self) -> int:
        return self.read() - self.start

    def close(self) -> None:
        self.map.close()


# --- the hook and its bpf_link, as the kernel shows them -------------------------------------------
def ifindex(netns: str, ifname: str) -> int:
    out = subprocess.run(["ip", "-n", netns, "-j", "link", "show", "dev", ifname], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)[0]["ifindex"]


def hook_link(netns: str, ifname: str) -> tuple[str | None, int | None, int | None]:
    """(mode, prog id, link id) of an interface's hook: mode and prog id as iproute2 reads
    them, and the id of the bpf_link holding that program on that device, from the
    kernel's table of links (None: attached through netlink, or nothing attached)."""
    mode, prog_id = xdp_hook(netns, ifname)
    if prog_id is None:
        return mode, None, None
    holder = XdpLinks(netns).holding(ifindex(netns, ifname), prog_id)
    return mode, prog_id, holder.id if holder else None


def link_device(link_id: int) -> int | None:
    """The ifindex a bpf_link is attached to (0: defunct, detached or its device gone), or
    None when the kernel has no such link any more (released)."""
    try:
        with link_fd_by_id(link_id) as fd:
            return link_info(fd.fd).ifindex
    except BpfSyscallError as e:
        if e.errno == errno.ENOENT:
            return None
        raise


def pinned_link_id(path) -> int:
    """The id of the bpf_link pinned at `path`."""
    with obj_get(str(path)) as fd:
        return link_info(fd.fd).id


# --- traffic --------------------------------------------------------------------------------------
@dataclass
class FlowResult:
    sent: int
    delivered: int
    reached_stack: int
    seconds: float


class Flow:
    """trafgen in the background (the rig's traffic.Trafgen): 64-byte frames to UDP `port`
    on one of a node's interfaces at `rate` pps until `wait()` stops it (SIGINT: trafgen
    prints its totals), and never more than `rate * max_seconds` frames (the bound)."""

    def __init__(self, node, port: int, *, iface: int | dict = 0, rate: int | None = RATE, max_seconds: float = 30.0):
        """`rate` None: as fast as trafgen goes (one core, its blocking send path: see
        traffic.UNSHAPED_RATE; smooth, unlike a limited rate, which trafgen sends in
        bursts about 20 ms apart). `iface`: an index into the node's interfaces, or a
        link dict of the same shape."""
        self.node = node
        self.link = iface if isinstance(iface, dict) else node.interfaces[iface]
        # trafgen runs a limited rate faster than asked when it falls behind (a busy
        # machine): the count is 3x the rate, the duration is bounded (SIGINT at max_seconds).
        self.count = int((rate * 3 if rate else MAX_RATE) * max_seconds)
        self.rate, self.max_seconds = rate, max_seconds
        self.config = traffic.trafgen_config(src_mac=self.link["src_mac"], dst_mac=self.link["node_mac"],
                                             src_ip=self.link["src_ip"], dst_ip=self.link["node_ip"], dport=port)
        self.trafgen = traffic.Trafgen(node.src_netns, self.link["name"], self.config, count=self.count,
                                       seconds=max(max_seconds, 1.0), rate=rate)
        self.result: FlowResult | None = None
        self.output = ""

    def start(self) -> "Flow":
        self._in0 = ip_in_receives(self.node.netns)
        self._drop0 = tx_dropped(self.node.src_netns, self.link["name"])
        self.trafgen.start()
        time.sleep(0.2)
        if not self.running():
            self.trafgen.wait()       # a failed trafgen raises TrafgenError with its stderr here
            raise AssertionError(f"trafgen ended at once: {self.trafgen.result}")
        return self

    def elapsed(self) -> float:
        return self.trafgen.elapsed()

    def running(self) -> bool:
        return self.trafgen.running()

    def wait(self) -> FlowResult:
        """Stop the flow now (if still running) and count. trafgen ending by itself short
        of its count (not stopped by its bound) raises TrafgenError."""
        tg = self.trafgen.stop()
        self.output = tg.stdout
        time.sleep(0.3)                                   # let the last frames through NAPI
        dropped = tx_dropped(self.node.src_netns, self.link["name"]) - self._drop0
        self.result = FlowResult(sent=tg.sent, delivered=tg.sent - dropped,
                                 reached_stack=ip_in_receives(self.node.netns) - self._in0, seconds=tg.seconds)
        return self.result

    def stop(self) -> None:
        self.trafgen.kill()

    def __enter__(self) -> "Flow":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def mishandled(result: FlowResult, counted: int) -> int:
    """Packets to a dropping program's port that no dropping program counted, or that
    reached the node's stack (the worse of the two counts; see the module docstring)."""
    return max(result.delivered - counted, result.reached_stack, 0)


# --- status watches -------------------------------------------------------------------------------
class ReadyWatch:
    """Watches one kube-xdp object (an XdpProgram, or an XdpAttachment) with an API watch
    in a thread, so every version of it the API server stores is seen (not samples of a
    poll), and records each version that is not Ready=True for its current generation.
    A dropped watch resumes from the last resourceVersion seen (a 410 re-reads the object
    first); connection errors are counted in `errors` (the outage scenario expects some)."""

    def __init__(self, cluster, name: str, plural: str = names.PROGRAMS):
        self.cluster, self.name, self.plural = cluster, name, plural
        self.not_ready: list[tuple[float, str, str]] = []     # (seconds, resourceVersion, why)
        self.versions: set[str] = set()
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.monotonic()

    def _check(self, obj: dict) -> None:
        meta, st = obj["metadata"], obj.get("status") or {}
        if meta["resourceVersion"] in self.versions:
            return
        self.versions.add(meta["resourceVersion"])
        ready = next((c for c in st.get("conditions") or [] if c["type"] == "Ready"), {})
        if ready.get("status") != "True" or st.get("observedGeneration") != meta["generation"]:
            self.not_ready.append((round(time.monotonic() - self._t0, 2), meta["resourceVersion"],
                                   f"{ready.get('reason')}: {ready.get('message')} (observedGeneration "
                                   f"{st.get('observedGeneration')}, generation {meta['generation']})"))

    def _read(self) -> str:
        obj = self.cluster.custom.get_cluster_custom_object(names.GROUP, names.VERSION, self.plural, self.name)
        self._check(obj)
        return obj["metadata"]["resourceVersion"]

    def _run(self) -> None:
        rv = None
        while not self._stop.is_set():
            try:
                if rv is None:
                    rv = self._read()
                stream = kubernetes.watch.Watch().stream(
                    self.cluster.custom.list_cluster_custom_object, names.GROUP, names.VERSION, self.plural,
                    field_selector=f"metadata.name={self.name}", resource_version=rv, timeout_seconds=1)
                for event in stream:
                    if event["type"] == "ERROR":          # e.g. 410 Gone: too old, read it again
                        rv = None
                        break
                    self._check(event["object"])
                    rv = event["object"]["metadata"]["resourceVersion"]
                    if self._stop.is_set():
                        break
            except Exception:  # noqa: BLE001  the API may be away (outage scenario)
                self.errors += 1
                self._stop.wait(0.2)

    def __enter__(self) -> "ReadyWatch":
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.versions and time.monotonic() < deadline:     # the version it starts from
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    """Like kubexdp.wait, with a finer interval: returns (value, seconds waited)."""
    t0 = time.monotonic()
    last = None
    while time.monotonic() - t0 < timeout:
        last = predicate()
        if last:
            return last, time.monotonic() - t0
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


# --- the results table ------------------------------------------------------------------------------
@dataclass
class Row:
    scenario: str
    sent: int
    mishandled: int
    recover: str
    note: str = ""
    test: str = ""
    outcome: str = "running"       # the test's outcome: passed / FAILED (set by conftest's report hook)


@dataclass
class Table:
    """Rows added by the scenarios as they measure; each row carries its test's outcome, so
    a scenario that failed after measuring never reads as a clean row."""
    rows: list[Row] = field(default_factory=list)
    current: str = ""              # the node id of the running test (conftest sets it)

    def add(self, scenario: str, sent: int, mishandled: int, recover: str, note: str = "") -> None:
        self.rows = [r for r in self.rows if r.scenario != scenario] + \
                    [Row(scenario, sent, mishandled, recover, note, test=self.current)]

    def finish(self, test: str, passed: bool) -> None:
        for row in self.rows:
            if row.test == test:
                row.outcome = "passed" if passed else "FAILED"

    def render(self) -> str:
        lines = ["| scenario | packets sent | mishandled | time to recover | notes | test |",
                 "|---|---:|---:|---|---|---|"]
        lines += [f"| {r.scenario} | {r.sent} | {r.mishandled} | {r.recover} | {r.note} | {r.outcome} |"
                  for r in self.rows]
        return "\n".join(lines)


TABLE = Table()
