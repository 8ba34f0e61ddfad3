"""Network namespaces, veth "NICs" and bpffs mounts of simulated nodes (via iproute2).

Only the rig's own namespaces ('<instance>-node-N' and '<instance>-node-N-src') and
mounts under the rig's state directory are ever created or removed here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from .config import NodeSpec
from .controlplane import RigError

BPF_FS_MAGIC = 0xCAFE4A11
# XDP_ATTACHED_* as `ip -j -d link` reports "mode" -> the mode names of the API
IP_XDP_MODES = {0: None, 1: "native", 2: "generic", 3: "offload", 4: "multi"}


def run(*argv: str) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RigError(f"'{' '.join(argv)}' failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def list_netns(prefix: str) -> list[str]:
    names = os.listdir("/run/netns") if os.path.isdir("/run/netns") else []
    return sorted(n for n in names if n.startswith(prefix))


def is_rig_netns(name: str, instance: str) -> bool:
    """True for the rig's own namespace names: '<instance>-node-N' and '<instance>-node-N-src'
    (a person's 'kxr-lab' is not the rig's)."""
    return re.fullmatch(rf"{re.escape(instance)}-node-[1-9][0-9]*(-src)?", name) is not None


def rig_netns(instance: str) -> list[str]:
    """The rig instance's own namespaces that exist now."""
    return [n for n in list_netns(f"{instance}-") if is_rig_netns(n, instance)]


def create_node_netns(node: NodeSpec, instance: str) -> None:
    """Create the node's namespace and its traffic-source namespace, wired by one veth pair
    per interface, addressed, up, with static neighbour entries both ways (trafgen and
    tests need the peer's MAC without waiting for ARP) and a default route via the first
    interface (so `primary` interface selection has something to find)."""
    ns, src = node.netns(instance), node.src_netns(instance)
    for name in (ns, src):
        run("ip", "netns", "add", name)
        run("ip", "-n", name, "link", "set", "lo", "up")
    for link in node.links:
        run("ip", "-n", ns, "link", "add", link.name, "type", "veth", "peer", "name", link.name, "netns", src)
        run("ip", "-n", ns, "addr", "add", f"{link.node_ip}/{link.prefix_len}", "dev", link.name)
        run("ip", "-n", src, "addr", "add", f"{link.src_ip}/{link.prefix_len}", "dev", link.name)
        run("ip", "-n", ns, "link", "set", link.name, "up")
        run("ip", "-n", src, "link", "set", link.name, "up")
        node_mac, src_mac = mac(ns, link.name), mac(src, link.name)
        run("ip", "-n", src, "neigh", "replace", link.node_ip, "lladdr", node_mac, "dev", link.name, "nud", "permanent")
        run("ip", "-n", ns, "neigh", "replace", link.src_ip, "lladdr", src_mac, "dev", link.name, "nud", "permanent")
    first = node.links[0]
    run("ip", "-n", ns, "route", "add", "default", "via", first.src_ip, "dev", first.name)


def mac(netns: str, ifname: str) -> str:
    out = run("ip", "-n", netns, "-o", "link", "show", "dev", ifname)
    return out.split("link/ether", 1)[1].split()[0]


def link_xdp(netns: str, ifname: str) -> dict:
    """The "xdp" object of `ip -j -d link show dev IFNAME` ({} when nothing is attached):
    iproute2's view of the hook, independent of kube-xdp's own netlink code."""
    return json.loads(run("ip", "-n", netns, "-j", "-d", "link", "show", "dev", ifname))[0].get("xdp") or {}


def xdp_hook(netns: str, ifname: str) -> tuple[str | None, int | None]:
    """(mode, prog id) of an interface's hook as iproute2 reports it ('multi', None when
    a native/generic and an offloaded program sit there together)."""
    xdp = link_xdp(netns, ifname)
    return IP_XDP_MODES.get(xdp.get("mode", 0)), (xdp.get("prog") or {}).get("id")


def xdp_programs(netns: str, ifname: str) -> list[tuple[str, int]]:
    """Every XDP program on an interface, [(mode, prog id)] sorted, as iproute2 reports them."""
    xdp = link_xdp(netns, ifname)
    attached = xdp.get("attached") or ([xdp] if "prog" in xdp else [])
    return sorted((IP_XDP_MODES.get(a.get("mode")) or str(a.get("mode")), a["prog"]["id"])
                  for a in attached if a.get("prog"))


def link_states(netns: str) -> dict[str, str]:
    """ifname -> operstate (UP/DOWN/...) for every non-loopback link in a namespace."""
    out = run("ip", "-n", netns, "-o", "link", "show")
    states = {}
    for line in out.splitlines():
        name = line.split(":", 2)[1].strip().split("@", 1)[0]
        if name != "lo":
            states[name] = line.split(" state ", 1)[1].split()[0] if " state " in line else "UNKNOWN"
    return states


def link_addrs(netns: str) -> dict[str, set[str]]:
    """ifname -> its IPv4 addresses as 'a.b.c.d/len', for every non-loopback link that has one."""
    out = run("ip", "-n", netns, "-o", "-4", "addr", "show")
    addrs: dict[str, set[str]] = {}
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[2] == "inet" and fields[1] != "lo":
            addrs.setdefault(fields[1].split("@", 1)[0], set()).add(fields[3])
    return addrs


def delete_link(netns: str, ifname: str) -> None:
    """Delete a link (for a veth, both ends go)."""
    run("ip", "-n", netns, "link", "del", ifname)


def delete_netns(name: str) -> None:
    run("ip", "netns", "del", name)


def is_bpffs(path: Path) -> bool:
    try:
        return _statfs_type(path) == BPF_FS_MAGIC
    except OSError:
        return False


def _statfs_type(path: Path) -> int:
    import ctypes
    import ctypes.util

    class StatFs(ctypes.Structure):
        _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_byte * 120)]

    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    buf = StatFs()
    if libc.statfs(str(path).encode(), ctypes.byref(buf)) != 0:
        raise OSError(ctypes.get_errno(), f"statfs {path}")
    return buf.f_type & 0xFFFFFFFF


def mount_bpffs(path: Path) -> None:
    """A fresh bpffs instance at `path` (each mount is separate: pins are per node)."""
    path.mkdir(parents=True, exist_ok=True)
    if not is_bpffs(path):
        run("mount", "-t", "bpf", "bpf", str(path))


def mounts_under(root: Path) -> list[str]:
    """Mount points under `root`, deepest first (so they unmount cleanly)."""
    out = []
    prefix = str(root).rstrip("/") + "/"
    with open("/proc/self/mounts") as f:
        for line in f:
            point = line.split()[1].replace("\\040", " ")
            if point.startswith(prefix):
                out.append(point)
    return sorted(set(out), key=len, reverse=True)


def umount(point: str) -> None:
    run("umount", "-l", point)
