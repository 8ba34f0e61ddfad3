"""Network namespaces, veth "NICs" and bpffs mounts of simulated nodes (via iproute2).

Only namespaces whose names start with '<instance>-' and mounts under the rig's state
directory are ever created or removed here.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .config import NodeSpec
from .controlplane import RigError

BPF_FS_MAGIC = 0xCAFE4A11


def run(*argv: str) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RigError(f"'{' '.join(argv)}' failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def list_netns(prefix: str) -> list[str]:
    names = os.listdir("/run/netns") if os.path.isdir("/run/netns") else []
    return sorted(n for n in names if n.startswith(prefix))


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


def link_states(netns: str) -> dict[str, str]:
    """ifname -> operstate (UP/DOWN/...) for every non-loopback link in a namespace."""
    out = run("ip", "-n", netns, "-o", "link", "show")
    states = {}
    for line in out.splitlines():
        name = line.split(":", 2)[1].strip().split("@", 1)[0]
        if name != "lo":
            states[name] = line.split(" state ", 1)[1].split()[0] if " state " in line else "UNKNOWN"
    return states


def delete_netns(name: str) -> None:
    subprocess.run(["ip", "netns", "pids", name], capture_output=True)
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
