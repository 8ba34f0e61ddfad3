"""kube-xdp on a rig instance of its own, for the test suites (tests/e2e, tests/faults) and
the benchmark (bench/): free ports, the rig up and down, kube-xdp installed and started,
and the API in the terms a test or a benchmark thinks in (`Cluster`).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import kubernetes
from kubernetes.client.rest import ApiException

from kube_xdp_api import names

from . import workloads
from .config import RigConfig
from .controlplane import free_ports
from .procs import ProcTable
from .rig import Rig, RigInfo


def _quiet(*_) -> None:
    pass


def rig_ports() -> dict[str, int]:
    """etcd and API server ports for a rig instance of one's own (etcd uses etcd+1 too)."""
    etcd, _, api = free_ports(3, consecutive=True)
    return {"etcd_port": etcd, "apiserver_port": api}


@contextmanager
def rig_up(config: RigConfig, *, keep_logs: Path | None = None) -> Iterator[RigInfo]:
    """The rig up (quietly) for as long as the block runs, then down, even on failure; with
    `keep_logs`, its processes' logs are copied there first (for the post-mortem)."""
    rig = Rig(config)
    info = rig.up(log=_quiet)
    try:
        yield info
    finally:
        if keep_logs is not None:
            copy_logs(info, keep_logs)
        rig.down(log=_quiet)


def copy_logs(info: RigInfo, dest: Path) -> None:
    """Replace `dest` with a copy of the rig's process logs (if it has any)."""
    logs = ProcTable(Path(info.state_dir)).log_dir
    shutil.rmtree(dest, ignore_errors=True)
    if logs.is_dir():
        shutil.copytree(logs, dest)


def admin_client(info: RigInfo, identity: str = "admin") -> kubernetes.client.ApiClient:
    return kubernetes.config.new_client_from_config(config_file=info.kubeconfigs[identity])


class Cluster:
    """kube-xdp on a rig, through the admin client: XdpPrograms and their XdpAttachments,
    waiting for Ready, nodes, the rig's processes. `deploy()` installs kube-xdp (CRDs,
    RBAC) and starts the operator and one agent per node (real processes, with their
    ServiceAccount identities), then connects. A context manager: closes its client."""

    # what a wait that times out raises (tests: AssertionError, a test failure)
    timeout_error: type[Exception] = TimeoutError

    def __init__(self, info: RigInfo | None = None):
        self.info = info
        self.client: kubernetes.client.ApiClient | None = None

    def deploy(self, *, resync: float = 1.0) -> "Cluster":
        workloads.start_all(self.info, resync=resync)
        return self.connect(admin_client(self.info))

    def connect(self, client: kubernetes.client.ApiClient) -> "Cluster":
        self.client = client
        self.custom = kubernetes.client.CustomObjectsApi(client)
        self.core = kubernetes.client.CoreV1Api(client)
        return self

    def disconnect(self) -> None:
        if self.client is not None:
            self.client.close()

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc) -> None:
        self.disconnect()

    # -- programs and attachments -----------------------------------------------------------
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
        self.wait(lambda: self.is_current(name), timeout, f"{name} Ready")
        return self.get(name)

    def wait_gone(self, name: str, timeout: float = 60) -> None:
        self.wait(lambda: self.get(name) is None and not self.attachments(name), timeout,
                  f"{name} and its attachments gone")

    def wait(self, predicate, timeout: float, what: str, interval: float = 0.25):
        """Poll `predicate` until truthy; `timeout_error` when it does not come."""
        return wait(predicate, timeout, what, interval, error=self.timeout_error)

    @contextmanager
    def tracked_programs(self, *, gone_timeout: float = 60) -> Iterator[Callable[[dict], dict]]:
        """`create(body)` for the block; afterwards every program created through it is
        deleted and its removal from every node awaited."""
        created: list[str] = []

        def create(body: dict) -> dict:
            created.append(body["metadata"]["name"])
            return self.create(body)

        try:
            yield create
        finally:
            for name in created:
                self.delete(name)
            for name in created:
                self.wait_gone(name, timeout=gone_timeout)

    # -- nodes and processes ------------------------------------------------------------------
    def label_node(self, node: str, labels: dict) -> None:
        self.core.patch_node(node, {"metadata": {"labels": labels}})

    @property
    def procs(self) -> ProcTable:
        return ProcTable(Path(self.info.state_dir))

    def pid(self, name: str) -> int | None:
        return self.procs.pid(name)


def wait(predicate, timeout: float, what: str, interval: float = 0.25, *, error: type[Exception] = TimeoutError):
    """Poll `predicate` until truthy and return its value; raise `error` on timeout."""
    try:
        return workloads.wait_for(predicate, timeout, what, interval)
    except TimeoutError as e:
        if error is TimeoutError:
            raise
        raise error(str(e)) from None
