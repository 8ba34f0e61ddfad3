"""Fixtures for real-kernel tests: network namespaces with a veth pair, bpffs mounts, bcc.

Everything a test creates is named `kxt-<pid>-<n>...` and removed on teardown, even when
the test fails; a session finalizer removes any `kxt-<pid>-*` namespace left behind.
Addresses come from 198.18.0.0/15 (benchmarking range) only.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from kube_xdp_agent.kernel import CompileRequest, Compiler, LoadedProgram

PREFIX = f"kxt-{os.getpid()}"
_counter = itertools.count(1)

NS_IF = "veth0"  # the end in the node namespace (XDP goes here)
SRC_IF = "veth1"  # the peer, in the traffic source namespace
NS_ADDR = "198.18.0.1"
SRC_ADDR = "198.18.0.2"


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="session", autouse=True)
def _require_root_and_cleanup() -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.skip("kernel tests need root (netns, XDP, bpffs)")
    yield
    listed = run("ip", "netns", "list", check=False).stdout.split("\n")
    for line in listed:
        name = line.split(" ", 1)[0]
        if name.startswith(PREFIX + "-"):
            run("ip", "netns", "del", name, check=False)


@dataclass(frozen=True)
class NetnsPair:
    ns: str  # the "node": holds NS_IF, a default route via the peer
    src: str  # the traffic source: holds SRC_IF
    ns_if: str = NS_IF
    src_if: str = SRC_IF
    ns_addr: str = NS_ADDR
    src_addr: str = SRC_ADDR


@pytest.fixture
def netns_pair() -> Iterator[NetnsPair]:
    n = next(_counter)
    pair = NetnsPair(ns=f"{PREFIX}-{n}", src=f"{PREFIX}-{n}-src")
    try:
        run("ip", "netns", "add", pair.ns)
        run("ip", "netns", "add", pair.src)
        run("ip", "link", "add", NS_IF, "netns", pair.ns, "type", "veth", "peer", "name", SRC_IF, "netns", pair.src)
        run("ip", "-n", pair.ns, "addr", "add", f"{NS_ADDR}/30", "dev", NS_IF)
        run("ip", "-n", pair.src, "addr", "add", f"{SRC_ADDR}/30", "dev", SRC_IF)
        run("ip", "-n", pair.ns, "link", "set", NS_IF, "up")
        run("ip", "-n", pair.src, "link", "set", SRC_IF, "up")
        run("ip", "-n", pair.ns, "link", "set", "lo", "up")
        run("ip", "-n", pair.ns, "route", "add", "default", "via", SRC_ADDR, "dev", NS_IF)
        yield pair
    finally:
        run("ip", "netns", "del", pair.ns, check=False)
        run("ip", "netns", "del", pair.src, check=False)


@pytest.fixture
def bpffs() -> Iterator[str]:
    """A fresh bpffs instance mounted on a temp dir (each mount is a separate instance)."""
    path = tempfile.mkdtemp(prefix=f"{PREFIX}-bpffs-")
    mounted = False
    try:
        run("mount", "-t", "bpf", "bpf", path)
        mounted = True
        yield path
    finally:
        if mounted:
            if run("umount", path, check=False).returncode != 0:
                run("umount", "-l", path, check=False)
        os.rmdir(path)


# --- programs shared by the tests (compiled once per session through one Compiler) -----

COUNTER_SRC = r"""
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/udp.h>

BPF_ARRAY(counter, u64, 1);          /* every packet */
BPF_PERCPU_ARRAY(udp_hits, u32, 2);  /* UDP to COUNT_PORT: 4-byte values, stride 8 per CPU */
BPF_HASH(by_port, u16, u64, 64);     /* UDP packets by destination port */

int xdp_count(struct xdp_md *ctx) {
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    u32 zero = 0;
    u64 *all = counter.lookup(&zero);
    if (all)
        __sync_fetch_and_add(all, 1);
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end || eth->h_proto != htons(ETH_P_IP))
        return XDP_PASS;
    struct iphdr *ip = (void *)(eth + 1);
    if ((void *)(ip + 1) > end || ip->ihl != 5 || ip->protocol != IPPROTO_UDP)
        return XDP_PASS;
    struct udphdr *udp = (void *)(ip + 1);
    if ((void *)(udp + 1) > end)
        return XDP_PASS;
    u16 port = ntohs(udp->dest);
    u64 one = 1, *seen = by_port.lookup(&port);
    if (seen)
        __sync_fetch_and_add(seen, 1);
    else
        by_port.update(&port, &one);
    if (port == COUNT_PORT) {
        u32 *hits = udp_hits.lookup(&zero);
        if (hits)
            *hits += 1;
    }
    if (port == DROP_PORT)
        return XDP_DROP;
    return XDP_PASS;
}
"""
COUNTER_DEFINES = {"COUNT_PORT": "9999", "DROP_PORT": "7777"}

PASS_SRC = "int xdp_pass(struct xdp_md *ctx) { return XDP_PASS + 0 * ID; }"


@pytest.fixture(scope="session")
def compiler() -> Iterator[Compiler]:
    c = Compiler()
    yield c
    c.close()


@pytest.fixture(scope="session")
def counter_request() -> CompileRequest:
    """The counting program: counts every packet, UDP by port, drops UDP to DROP_PORT."""
    return CompileRequest(COUNTER_SRC, "xdp_count", COUNTER_DEFINES)


@pytest.fixture(scope="session")
def counter_prog(compiler: Compiler, counter_request: CompileRequest) -> LoadedProgram:
    return compiler.load(counter_request)


@pytest.fixture(scope="session")
def pass_progs(compiler: Compiler) -> tuple[LoadedProgram, LoadedProgram, LoadedProgram]:
    """Three distinct XDP_PASS programs (different defines -> different ids)."""
    first, second, third = (compiler.load(CompileRequest(PASS_SRC, "xdp_pass", {"ID": str(i)})) for i in range(3))
    return first, second, third


@pytest.fixture(scope="session")
def python_in_netns() -> Callable[[str, str], subprocess.CompletedProcess[str]]:
    """Run Python `code` with this interpreter inside a namespace (ip netns exec)."""

    def _run(netns: str, code: str) -> subprocess.CompletedProcess[str]:
        return run("ip", "netns", "exec", netns, sys.executable, "-c", code)

    return _run
