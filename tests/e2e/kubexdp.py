"""Helpers for tests that run kube-xdp on the rig: programs, waiting, kernel views."""

from __future__ import annotations

from pathlib import Path

from kube_xdp_api import names
from kube_xdp_rig import cluster as rig_cluster
from kube_xdp_rig import netns as rig_netns

# (mode, prog id) of an interface's hook as iproute2 reads it: a view of the kernel
# independent of kube-xdp's own netlink code
kernel_xdp = rig_netns.xdp_hook

UDP_DROP = """
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/in.h>
#include <uapi/linux/udp.h>
BPF_ARRAY(stats, u64, 2);
int xdp_drop_port(struct xdp_md *ctx) {
    void *data = (void *)(long)ctx->data, *data_end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    int idx = 1, action = XDP_PASS;
    if ((void *)(eth + 1) <= data_end && eth->h_proto == bpf_htons(ETH_P_IP)) {
        struct iphdr *ip = (void *)(eth + 1);
        if ((void *)(ip + 1) <= data_end && ip->protocol == IPPROTO_UDP && ip->ihl == 5) {
            struct udphdr *udp = (void *)(ip + 1);
            if ((void *)(udp + 1) <= data_end && udp->dest == bpf_htons(DROP_PORT)) {
                idx = 0;
                action = XDP_DROP;
            }
        }
    }
    u64 *v = stats.lookup(&idx);
    if (v)
        __sync_fetch_and_add(v, 1);
    return action;
}
"""

COUNT_ALL = """
#include <uapi/linux/bpf.h>
BPF_ARRAY(seen, u64, 1);
int xdp_count(struct xdp_md *ctx) {
    int zero = 0;
    u64 *v = seen.lookup(&zero);
    if (v)
        __sync_fetch_and_add(v, 1);
    return XDP_PASS;
}
"""


def program(name: str, source: str, entrypoint: str, *, interfaces=None, defines=None, selector=None,
            mode: str | None = None, fallback=None) -> dict:
    spec: dict = {"source": {"inline": source}, "entrypoint": entrypoint,
                  "interfaces": interfaces or {"names": ["eth0"]}}
    if defines:
        spec["defines"] = defines
    if selector is not None:
        spec["nodeSelector"] = selector
    if mode:
        spec["mode"] = mode
    if fallback is not None:
        spec["fallback"] = fallback
    return {"apiVersion": names.API_VERSION, "kind": names.PROGRAM_KIND, "metadata": {"name": name}, "spec": spec}


class Cluster(rig_cluster.Cluster):
    """The rig's API through the admin client, in the terms a test thinks in (the rig's
    kube_xdp_rig.cluster.Cluster); a wait that times out is a test failure."""

    timeout_error = AssertionError


def wait(predicate, timeout: float, what: str, interval: float = 0.25):
    """Poll `predicate` until truthy (AssertionError on timeout, as a test failure)."""
    return rig_cluster.wait(predicate, timeout, what, interval, error=AssertionError)


def pins_of(bpffs: str, program: str) -> list[str]:
    """The digests a program has pinned on a node (its links' pins aside: links_of)."""
    d = Path(bpffs) / "kube-xdp" / program
    return sorted(p.name for p in d.iterdir() if p.name != "links") if d.exists() else []


def links_of(bpffs: str, program: str) -> list[str]:
    """The interfaces a program has a pinned bpf_link on (pin names: '.' written as '+')."""
    d = Path(bpffs) / "kube-xdp" / program / "links"
    return sorted(p.name.replace("+", ".") for p in d.iterdir()) if d.exists() else []
