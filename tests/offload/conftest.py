"""Fixtures of the offload lab, for both sides.

On the host, tests/offload/test_offload_lab.py boots the lab kernel once (kube_xdp_lab)
and runs tests/offload/guest_*.py in it. Those guest files are never collected on the
host (pytest collects test_*.py only); in the guest they are collected with
`-o python_files=guest_*.py` and use the fixtures below, which need the lab kernel
(netdevsim, debugfs) and skip anywhere else.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# lab/ is not (yet) a source root in pyproject's pythonpath: make kube_xdp_lab importable.
_LAB = str(Path(__file__).resolve().parents[2] / "lab")
if _LAB not in sys.path:
    sys.path.insert(0, _LAB)

IN_GUEST = os.environ.get("KUBE_XDP_LAB_GUEST") == "1"
NSIM_BUS = "/sys/bus/netdevsim"
NSIM_DEBUGFS = "/sys/kernel/debug/netdevsim"
_ids = itertools.count(10)


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=60)


@dataclass(frozen=True)
class NsimPort:
    """One netdevsim device with one port: a NIC that implements XDP offload."""

    dev_id: int
    ifname: str
    debugfs: str  # .../netdevsim<id>/ports/0: bpf_xdpoffload_accept, bpf_xdpdrv_accept, ...
    netns: str | None = None

    def knob(self, name: str, value: str | None = None) -> str:
        """Read (or write, then read back) a netdevsim debugfs knob of this port or device."""
        path = os.path.join(self.debugfs, name)
        if not os.path.exists(path):
            path = os.path.join(os.path.dirname(os.path.dirname(self.debugfs)), name)
        if value is not None:
            with open(path, "w") as f:
                f.write(value)
        with open(path) as f:
            return f.read().strip()


def make_nsim(netns: str | None = None) -> NsimPort:
    dev_id = next(_ids)
    with open(f"{NSIM_BUS}/new_device", "w") as f:
        f.write(f"{dev_id} 1")
    net_dir = f"{NSIM_BUS}/devices/netdevsim{dev_id}/net"
    deadline = time.monotonic() + 10
    while not (os.path.isdir(net_dir) and os.listdir(net_dir)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"netdevsim{dev_id} made no netdev")
        time.sleep(0.05)
    ifname = sorted(os.listdir(net_dir))[0]
    if netns is not None:
        sh("ip", "link", "set", ifname, "netns", netns)
        sh("ip", "-n", netns, "link", "set", ifname, "up")
    else:
        sh("ip", "link", "set", ifname, "up")
    return NsimPort(dev_id, ifname, f"{NSIM_DEBUGFS}/netdevsim{dev_id}/ports/0", netns)


def del_nsim(port: NsimPort) -> None:
    """Detach whatever a test left (netdevsim WARNs when a device goes with XDP on), delete."""
    ns = ["-n", port.netns] if port.netns else []
    for what in ("xdpgeneric", "xdpdrv", "xdpoffload"):
        sh("ip", *ns, "link", "set", "dev", port.ifname, what, "off", check=False)
    with open(f"{NSIM_BUS}/del_device", "w") as f:
        f.write(str(port.dev_id))


PORT_KNOBS = ("bpf_xdpoffload_accept", "bpf_xdpdrv_accept", "bpf_map_accept")
DEV_KNOBS = ("bpf_bind_accept",)


@pytest.fixture(scope="session")
def _nsim_session() -> Iterator[NsimPort]:
    if not IN_GUEST:
        pytest.skip("needs the offload lab guest (netdevsim)")
    port = make_nsim()
    try:
        yield port
    finally:
        del_nsim(port)


@pytest.fixture
def nsim(_nsim_session: NsimPort) -> Iterator[NsimPort]:
    """A netdevsim port with an empty XDP hook and every knob accepting.

    One device serves the whole session: a device-bound program stays valid (and cached
    by the compiler) only while its device lives, and every bcc compile costs seconds
    under TCG. Each test gets it reset: knobs back to Y, hooks emptied.
    """
    port = _nsim_session

    def reset() -> None:
        for what in ("xdpgeneric", "xdpdrv", "xdpoffload"):
            sh("ip", "link", "set", "dev", port.ifname, what, "off", check=False)
        for knob in PORT_KNOBS + DEV_KNOBS:
            port.knob(knob, "Y")

    reset()
    try:
        yield port
    finally:
        reset()


@pytest.fixture
def netns() -> Iterator[str]:
    if not IN_GUEST:
        pytest.skip("needs the offload lab guest")
    name = f"kxlab-{next(_ids)}"
    sh("ip", "netns", "add", name)
    try:
        yield name
    finally:
        sh("ip", "netns", "del", name, check=False)


@pytest.fixture
def nsim_in_netns(netns: str) -> Iterator[tuple[str, NsimPort]]:
    port = make_nsim(netns)
    try:
        yield netns, port
    finally:
        del_nsim(port)


@pytest.fixture(scope="session")
def compiler():
    if not IN_GUEST:
        pytest.skip("needs the offload lab guest")
    from kube_xdp_agent.kernel import Compiler

    c = Compiler()
    yield c
    c.close()


@pytest.fixture(scope="session")
def measure():
    """record(name, value): kept in measurements.json in the results dir for the host."""
    results = os.environ.get("KUBE_XDP_LAB_RESULTS")
    data: dict = {}

    def record(name: str, value) -> None:
        data[name] = value
        if results:
            Path(results, "measurements.json").write_text(json.dumps(data, indent=1, sort_keys=True))

    return record


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """One line per guest test and the lab's timings, after a host run of the lab."""
    run = getattr(config, "_kube_xdp_lab_run", None)
    if run is None:
        return
    tr = terminalreporter
    tr.section("offload lab (guest)")
    for t in run.tests:
        tr.write_line(f"{t.outcome.upper():8} {t.nodeid} ({t.seconds:.1f}s)")
    for name, value in sorted(run.measurements.items()):
        tr.write_line(f"measured {name}: {value}")
    tr.write_line(f"guest wall time {run.wall_seconds}s, pytest in guest {run.pytest_seconds}s")
