"""The fault suite's rig: an instance of its own ('kxf', free ports), 3 nodes with eth0 and
eth1, kube-xdp installed (CRDs, RBAC, operator, one agent per node, with the agent's shipped
resync interval: the repair bounds are proven as users get them), so fault
scenarios (killing agents, the operator, the API server) never touch another rig.

At the end of the session the scenario table (faultlib.TABLE) is printed, and written to
.pytest_cache/kube-xdp-faults.md (untracked); the processes' logs are kept in
.pytest_cache/kxf-logs/.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import yaml

from kube_xdp_rig.cluster import rig_ports, rig_up
from kube_xdp_rig.config import RigConfig
from kube_xdp_rig.rig import RigInfo
from tests.e2e.kubexdp import Cluster

from .faultlib import TABLE

FAULT_INSTANCE = os.environ.get("KUBE_XDP_FAULT_INSTANCE", "kxf")   # another name: two sessions side by side


# The agent's drift-check interval as shipped (the chart's agent.resync, the agent's --resync
# default): checked against the chart's values.yaml when the suite starts.
SHIPPED_RESYNC = 3.0
VALUES = Path(__file__).resolve().parents[2] / "charts" / "kube-xdp" / "values.yaml"

FAULT_CONFIG = dict(instance=FAULT_INSTANCE, nodes=3, interfaces=("eth0", "eth1"), **rig_ports())


class FaultCluster(Cluster):
    """The e2e Cluster helpers plus what faults need: killing processes, Events, logs."""

    def sigkill(self, name: str) -> int:
        """SIGKILL one process this suite started (by its pid file), and wait until it is gone."""
        pid = self.pid(name)
        assert pid, f"{name} is not running"
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self.pid(name) and time.monotonic() < deadline:   # a zombie counts as gone
            time.sleep(0.02)
        assert self.pid(name) is None, f"{name} (pid {pid}) survived SIGKILL"
        self.procs.reap()
        (self.procs.pid_dir / f"{name}.pid").unlink(missing_ok=True)
        return pid

    def events(self, name: str, reason: str | None = None) -> list:
        items = self.core.list_namespaced_event("default", field_selector=f"involvedObject.name={name}").items
        return [e for e in items if reason is None or e.reason == reason]

    def iface_status(self, program: str, node: str, ifname: str) -> dict:
        att = self.attachments(program).get(node) or {}
        return next((i for i in (att.get("status") or {}).get("interfaces") or [] if i["name"] == ifname), {})

    def log(self, name: str) -> str:
        path = self.procs.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture(scope="session")
def frig() -> RigInfo:
    keep = Path(__file__).resolve().parents[2] / ".pytest_cache" / "kxf-logs"   # for the post-mortem
    with rig_up(RigConfig(**FAULT_CONFIG), keep_logs=keep) as info:
        yield info


@pytest.fixture(scope="session")
def fx(frig) -> FaultCluster:
    shipped = yaml.safe_load(VALUES.read_text())["agent"]["resync"]
    assert shipped == SHIPPED_RESYNC, f"the chart ships agent.resync {shipped}; the fault suite assumes {SHIPPED_RESYNC}"
    with FaultCluster(frig).deploy(resync=SHIPPED_RESYNC) as cluster:
        yield cluster


@pytest.fixture()
def programs(fx):
    """Programs created through this fixture are deleted after the test, and their
    removal from every node awaited."""
    with fx.tracked_programs(gone_timeout=90) as create:
        yield create


@pytest.fixture(autouse=True)
def _table_row_owner(request):
    """Rows TABLE.add()s during a test belong to it (their outcome follows the test's)."""
    TABLE.current = request.node.nodeid
    yield
    TABLE.current = ""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" or (report.when in ("setup", "teardown") and report.failed):
        TABLE.finish(item.nodeid, passed=report.passed and not any(
            r.test == item.nodeid and r.outcome == "FAILED" for r in TABLE.rows))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not TABLE.rows:
        return
    text = TABLE.render()
    terminalreporter.write_sep("=", "kube-xdp fault scenarios")
    terminalreporter.write_line(text)
    try:
        out = Path(config.rootpath) / ".pytest_cache" / "kube-xdp-faults.md"
        out.parent.mkdir(exist_ok=True)
        out.write_text(text + "\n")
    except OSError:
        pass
