"""The benchmark's own rig instance and kube-xdp on it: set up, tracked processes,
API helpers (the rig's kube_xdp_rig.cluster.Cluster). Always torn down by the caller
(`Bench.close`), even on failure."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import yaml
from kubernetes.client.rest import ApiException

from kube_xdp_api import names
from kube_xdp_rig import workloads
from kube_xdp_rig.cluster import Cluster, admin_client, copy_logs, rig_ports
from kube_xdp_rig.config import RigConfig
from kube_xdp_rig.rig import Rig, RigInfo

from . import procstat
from .hollow import HOLLOW_LABEL
from .watch import ProgramWatcher

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
INSTANCE = "kxb"
RIG_NODE_SELECTOR = {"matchLabels": {"kubexdp.io/rig-node": "true"}}
HOLLOW_SELECTOR = {"matchLabels": {HOLLOW_LABEL: "true"}}
# eth0/eth1: the convergence runs and examples; eth2: blocklist (role=edge); on node-3
# and node-1, eth2-eth7 carry the hand-attached copies of the datapath comparison.
INTERFACES = ("eth0", "eth1", "eth2", "eth3", "eth4", "eth5", "eth6", "eth7")
CHART_VALUES = REPO / "charts" / "kube-xdp" / "values.yaml"


def shipped_resync() -> float:
    """The agent's drift-check interval as shipped (the chart's agent.resync): the bench's
    agents (real and hollow) run with it, so idle cost is what users get."""
    return float(yaml.safe_load(CHART_VALUES.read_text())["agent"]["resync"])


def xdpnode_published(obj: dict | None) -> bool:
    """An agent's start-up publish of its XdpNode is complete: the object exists and its
    status (inventory and Ready condition) is written. Until then the agent still has a
    create and a status patch to make, which would land in the first rollout's window."""
    st = (obj or {}).get("status") or {}
    return bool(obj) and "observedGeneration" in st and any(c.get("type") == "Ready" for c in st.get("conditions") or [])


def pending_xdpnodes(items: list[dict], nodes: list[str]) -> list[str]:
    """Of `nodes`, those whose XdpNode (in a listing's `items`) is not published yet."""
    by_name = {o["metadata"]["name"]: o for o in items}
    return [n for n in nodes if not xdpnode_published(by_name.get(n))]


def example(name: str) -> dict:
    """The XdpProgram of examples/<name>.yaml, with its C source resolved (inline)."""
    docs = [d for d in yaml.safe_load_all((EXAMPLES / f"{name}.yaml").read_text()) if d]
    prog = next(d for d in docs if d["kind"] == names.PROGRAM_KIND)
    src = prog["spec"]["source"]
    if "configMapRef" in src:
        ref = src["configMapRef"]
        cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == ref["name"])
        prog = {**prog, "spec": {**prog["spec"], "source": {"inline": cm["data"][ref["key"]]}}}
    return prog


def program_body(name: str, base: dict, selector: dict, interfaces: list[str], *, nonce: str = "",
                 defines: dict | None = None) -> dict:
    spec = dict(base["spec"])
    spec["source"] = {"inline": spec["source"]["inline"] + (f"\n/* bench {nonce} */\n" if nonce else "")}
    spec["nodeSelector"] = selector
    spec["interfaces"] = {"names": list(interfaces)}
    if defines is not None:
        spec["defines"] = defines
    return {"apiVersion": names.API_VERSION, "kind": names.PROGRAM_KIND, "metadata": {"name": name}, "spec": spec}


class Bench(Cluster):
    def __init__(self, log=print, *, nodes: int = 3):
        super().__init__()
        self.log = log
        self.config = RigConfig(instance=INSTANCE, nodes=nodes, interfaces=INTERFACES,
                                node_labels={"node-2": {"role": "edge"}}, **rig_ports(), audit=True)
        self.rig = Rig(self.config)
        self.watcher: ProgramWatcher | None = None
        self.sampler = procstat.Sampler().start()

    # -- lifecycle ---------------------------------------------------------------------
    def up(self) -> RigInfo:
        if self.rig.info() is not None or any(self.rig.leftovers().values()):
            self.log(f"bench: a rig instance '{INSTANCE}' exists (a previous bench run?): removing it first")
            self.rig.down(log=lambda *_: None)
        self.info = self.rig.up(log=lambda m: self.log(f"  {m}"))
        self.resync = shipped_resync()
        self.deploy(resync=self.resync)
        self.watcher = ProgramWatcher(admin_client(self.info)).start()
        self.sampler.track("agent", [self.pid(workloads.agent_name(n.name)) for n in self.info.nodes])
        self.sampler.track("operator", [self.pid("operator")])
        self.wait_agents_synced()
        self.wait_xdpnodes([n.name for n in self.info.nodes])
        return self.info

    def close(self, keep_logs: Path | None = None) -> None:
        """Tear the rig down; with `keep_logs`, copy its process logs and audit log there first."""
        self.sampler.stop()
        if keep_logs is not None and self.info is not None:
            import shutil
            try:
                copy_logs(self.info, keep_logs)
                shutil.copy(self.audit_log, keep_logs / "audit.log")
                self.log(f"bench: logs kept in {keep_logs}")
            except OSError as e:
                self.log(f"bench: could not keep logs: {e}")
        if self.watcher:
            self.watcher.stop()
        try:
            self.rig.down(log=lambda *_: None)
            self.log("bench: rig torn down")
        except Exception as e:  # noqa: BLE001 - report, never mask the original error
            self.log(f"bench: rig teardown FAILED: {e}; run: {sys.executable} -m kube_xdp_rig down --instance {INSTANCE}")

    @property
    def audit_log(self) -> Path:
        return Path(self.info.state_dir) / "audit.log"

    def private_bpffs(self) -> str:
        """A bpffs mount no agent watches, under the rig's state dir (so `down` unmounts it)."""
        from kube_xdp_rig import netns
        path = Path(self.info.state_dir) / "bench-bpffs"
        netns.mount_bpffs(path)
        return str(path)

    @property
    def procs(self):
        return self.rig.procs       # the rig's own table (there before `up`)

    def agent_pids(self) -> dict[str, int]:
        return {n.name: self.pid(workloads.agent_name(n.name)) for n in self.info.nodes}

    def wait_agents_synced(self, timeout: float = 30) -> None:
        """Until each agent has listed its attachments: its log says so ("listed ...");
        agents that do not log it are confirmed by their list request in the audit log."""
        deadline = time.monotonic() + timeout
        logs = Path(self.info.state_dir) / "logs"
        while time.monotonic() < deadline:
            pending = []
            for n in self.info.nodes:
                try:
                    if "listed" in (logs / f"{workloads.agent_name(n.name)}.log").read_text():
                        continue
                except OSError:
                    pass
                pending.append(n.name)
            if not pending:
                return
            try:
                text = self.audit_log.read_text()
            except OSError:
                text = ""
            if all(f"fieldSelector=spec.nodeName%3D{p}" in text for p in pending):     # the agent's list
                return
            time.sleep(0.5)
        self.log("bench: warning: could not confirm that every agent has listed its attachments")

    def list_xdpnodes(self) -> list[dict]:
        return self.custom.list_cluster_custom_object(names.GROUP, names.VERSION, names.NODES)["items"]

    def wait_xdpnodes(self, nodes: list[str], timeout: float = 60) -> None:
        """Until every node's agent has published its XdpNode (created it and written its
        status): an agent's start-up traffic must not fall in the first timed rollout. The
        next refresh comes INVENTORY_SECONDS later (its requests, when one falls in a
        window, are counted and shown apart)."""
        deadline = time.monotonic() + timeout
        while True:
            pending = pending_xdpnodes(self.list_xdpnodes(), nodes)
            if not pending:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(pending)} agent(s) did not publish their XdpNode within {timeout:.0f}s: "
                                   f"{', '.join(pending[:5])}")
            time.sleep(0.3)

    def wait_xdpnodes_gone(self, nodes: list[str], timeout: float = 60) -> None:
        """Until the XdpNodes of deleted `nodes` are gone (the operator deletes them at the
        Node's deletion): a stale one would let the next hollow agent of that name skip
        its publish, and the operator delete it mid-run."""
        deadline = time.monotonic() + timeout
        names_ = set(nodes)
        while time.monotonic() < deadline:
            left = [o["metadata"]["name"] for o in self.list_xdpnodes() if o["metadata"]["name"] in names_]
            if not left:
                return
            time.sleep(0.5)
        self.log(f"bench: warning: {len(left)} XdpNode(s) of deleted hollow nodes still there after {timeout:.0f}s")

    def audit_flushed(self, timeout: float = 30) -> bool:
        """Make a marker request now and wait until the audit log has it: every request
        made before it is then in the log too (the log is written in batches)."""
        from . import audit
        t = time.time()
        self.core.read_namespace("default")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(self.audit_log, "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - 200_000))
                tail = f.read().decode(errors="replace").splitlines()
            for r in audit.requests(tail[1:]):
                if r["t"] >= t and r["resource"] == "namespaces" and r["verb"] == "get" and "admin" in r["user"]:
                    return True
            time.sleep(0.3)
        return False

    # -- hollow nodes ------------------------------------------------------------------
    def create_hollow_nodes(self, n: int) -> list[str]:
        names_ = [f"hollow-{i}" for i in range(1, n + 1)]
        for name in names_:
            body = {"apiVersion": "v1", "kind": "Node",
                    "metadata": {"name": name, "labels": {HOLLOW_LABEL: "true", "kubernetes.io/hostname": name}}}
            try:
                self.core.create_node(body)
            except ApiException as e:
                if e.status != 409:
                    raise
        return names_

    def delete_hollow_nodes(self) -> None:
        deleted = []
        for node in self.core.list_node(label_selector=f"{HOLLOW_LABEL}=true").items:
            try:
                self.core.delete_node(node.metadata.name)
                deleted.append(node.metadata.name)
            except ApiException as e:
                if e.status != 404:
                    raise
        self.wait_xdpnodes_gone(deleted)

    def start_hollow(self, nodes: list[str], procs: int = 1, timeout: float | None = None) -> list[int]:
        """Start hollow agents for `nodes` in `procs` processes (tracked by the rig, so
        `down` stops them); wait until each has listed its attachments and published its
        XdpNode."""
        chunks = [nodes[i::procs] for i in range(procs)]
        pids, logs = [], []
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        # each hollow agent authenticates as its own node (a placeholder pod and a bound
        # token per node), so the agents' node-restriction policy holds for them too
        t0 = time.monotonic()
        workloads.issue_agent_credentials(self.info, nodes)
        self.log(f"bench: {len(nodes)} hollow agents' pod-bound tokens issued in {time.monotonic() - t0:.2f} s")
        for i, chunk in enumerate(chunks):
            name = f"hollow-{len(nodes)}-{i}"
            log = Path(self.info.state_dir) / "logs" / f"{name}.log"
            pids.append(self.rig.procs.start(name, [sys.executable, "-m", "bench.hollow", "--kubeconfig-dir",
                                                    str(workloads.agent_kubeconfig_dir(self.info)),
                                                    "--state", self.info.state_dir,
                                                    "--resync", str(self.resync), *chunk], env=env))
            logs.append(log)
        timeout = timeout or 60 + 1.5 * len(nodes)     # a loaded machine: 200 TLS clients take a while
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(l.exists() and "synced" in l.read_text() for l in logs):
                self.wait_xdpnodes(nodes, timeout=max(10.0, deadline - time.monotonic()))
                return pids
            if any(not Path(f"/proc/{p}").exists() for p in pids):
                raise RuntimeError(f"a hollow agent process exited; see {logs}")
            time.sleep(0.2)
        raise TimeoutError(f"hollow agents did not sync within {timeout:.0f}s; see {logs}")

    def stop_hollow(self, n: int, procs: int) -> None:
        for i in range(procs):
            self.rig.procs.stop(f"hollow-{n}-{i}")
