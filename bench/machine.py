"""What machine a result was measured on (it is shared and noisy: say so in numbers)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def _os_release() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return "?"


def _mem_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 1024 / 1024, 1)
    return 0.0


def _hypervisor() -> bool:
    return " hypervisor" in Path("/proc/cpuinfo").read_text()


def _apiserver_version() -> str:
    """The rig's kube-apiserver, as the cached binary reports it (built from build/k8s)."""
    from kube_xdp_rig.config import DEFAULT_CACHE
    binary = DEFAULT_CACHE / "bin" / "kube-apiserver"
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return f"{out.split()[-1]} (the rig's, built from build/k8s)" if out.strip() else "?"


def _git(repo: Path, *args: str) -> str:
    try:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        return ""


def describe(repo: Path) -> dict:
    try:
        from kube_xdp_agent.kernel.compile import bcc_version
        bcc = bcc_version()
    except Exception:  # noqa: BLE001 - descriptive only
        bcc = "?"
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "virtualized": _hypervisor(),
        "memory_gib": _mem_gib(),
        "kernel": platform.release(),
        "os": _os_release(),
        "python": sys.version.split()[0],
        "bcc": bcc,
        "kube_apiserver": _apiserver_version(),
        "git_commit": _git(repo, "rev-parse", "--short", "HEAD"),
        "git_dirty": bool(_git(repo, "status", "--porcelain", "--untracked-files=no")),
    }
