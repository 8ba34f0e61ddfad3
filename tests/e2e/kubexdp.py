"""Helpers for tests that run kube-xdp on the rig: programs, waiting, kernel views."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import kubernetes
from kubernetes.client.rest import ApiException

from kube_xdp_api import names
from kube_xdp_rig.workloads import wait_for

# iproute2's JSON "xdp.mode": XDP_ATTACHED_* from the UAPI
IP_XDP_MODES = {0: None, 1: "native", 2: "generic", 3: "offload", 4: "multi"}

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


class Cluster:
    """The rig's API through the admin client, in the terms a test thinks in."""

    def __init__(self, client: kubernetes.client.ApiClient):
        self.custom = kubernetes.client.CustomObjectsApi(client)
        self.core = kubernetes.client.CoreV1Api(client)

    def create(self, body: dict) -> dict:
        return self.custom.create_cluster_custom_object(names.GROUP, names.VERSION, names.PROGRAMS, body)

    def patch_spec(self, name: str, spec: dict) -> dict:
        return self.custom.patch_cluster_custom_object(names.GROUP, names.VERSION, names.PROGRAMS, name, {"spec": spec})

    def get(self, name: str) -> dict | None:
        try:
            return self.custom.get_cluster_custom_object(names.GROUP, names.VERSION, names.PROGRAMS, name)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def delete(self, name: str) -> None:
        try:
            self.custom.delete_cluster_custom_object(names.GROUP, names.VERSION, names.PROGRAMS, name)
        except ApiException as e:
            if e.status != 404:
                raise

    def attachments(self, program: str) -> dict[str, dict]:
        items = self.custom.list_cluster_custom_object(names.GROUP, names.VERSION, names.ATTACHMENTS,
                                                       label_selector=f"{names.LABEL_PROGRAM}={program}")["items"]
        return {a["spec"]["nodeName"]: a for a in items}

    def condition(self, name: str, type_: str) -> dict | None:
        obj = self.get(name) or {}
        for c in (obj.get("status") or {}).get("conditions", []):
            if c["type"] == type_:
                return c
        return None

    def is_current(self, name: str, type_: str = "Ready", status: str = "True") -> bool:
        obj = self.get(name) or {}
        st = obj.get("status") or {}
        c = self.condition(name, type_)
        return (st.get("observedGeneration") == obj.get("metadata", {}).get("generation")
                and c is not None and c["status"] == status)

    def wait_ready(self, name: str, timeout: float = 90) -> dict:
        wait(lambda: self.is_current(name), timeout, f"{name} Ready")
        return self.get(name)

    def wait_gone(self, name: str, timeout: float = 60) -> None:
        wait(lambda: self.get(name) is None and not self.attachments(name), timeout, f"{name} and its attachments gone")

    def label_node(self, node: str, labels: dict) -> None:
        self.core.patch_node(node, {"metadata": {"labels": labels}})


def wait(predicate, timeout: float, what: str, interval: float = 0.25):
    """Poll `predicate` until truthy (AssertionError on timeout, as a test failure)."""
    try:
        return wait_for(predicate, timeout, what, interval)
    except TimeoutError as e:
        raise AssertionError(str(e)) from None


def kernel_xdp(netns: str, ifname: str) -> tuple[str | None, int | None]:
    """(mode, prog id) of an interface's XDP hook, as iproute2 reads it: a view of the
    kernel independent of kube-xdp's own netlink code."""
    out = subprocess.run(["ip", "-n", netns, "-j", "-d", "link", "show", "dev", ifname],
                         capture_output=True, text=True, check=True).stdout
    xdp = json.loads(out)[0].get("xdp") or {}
    return IP_XDP_MODES.get(xdp.get("mode", 0)), (xdp.get("prog") or {}).get("id")


def pins_of(bpffs: str, program: str) -> list[str]:
    d = Path(bpffs) / "kube-xdp" / program
    return sorted(p.name for p in d.iterdir()) if d.exists() else []
