"""Rig orchestration: up (idempotent, recovers a stale rig), down (removes everything it
created), status. The state file <state>/rig.json describes a running rig for tests, the
demo and people: kubeconfig paths, nodes, namespaces, interfaces, addresses, bpffs."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from . import certs, controlplane, kube, netns
from .config import RigConfig
from .controlplane import RigError
from .procs import ProcTable

STATE_FILE = "rig.json"
# How long `up` waits for a running rig's API server to answer /readyz before it gives up
# (and says so, removing nothing): one slow probe on a loaded machine is not a dead rig.
READY_WAIT = 60.0


@dataclasses.dataclass
class NodeInfo:
    name: str
    netns: str
    src_netns: str
    bpffs: str
    labels: dict
    interfaces: list[dict]      # {name, node_ip, src_ip, node_mac, src_mac}


@dataclasses.dataclass
class RigInfo:
    """What a running rig looks like, as written to rig.json."""

    instance: str
    state_dir: str
    server: str
    kubeconfig: str                 # admin
    kubeconfigs: dict               # identity -> path (admin, nobody, operator); agents: workloads.agent_kubeconfig
    ca_file: str
    nodes: list[NodeInfo]
    apiserver_port: int
    etcd_port: int
    config: dict

    @classmethod
    def load(cls, state_dir: Path) -> "RigInfo":
        data = json.loads((state_dir / STATE_FILE).read_text())
        data["nodes"] = [NodeInfo(**n) for n in data["nodes"]]
        return cls(**data)

    def node(self, name: str) -> NodeInfo:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no rig node named {name!r}; nodes: {[n.name for n in self.nodes]}")


def link_diff(links, states: dict[str, str], addrs: dict[str, set[str]]) -> tuple[list[str], list[str]]:
    """Compare a node namespace with the links it should have: (extra, broken) where
    `extra` are links it has that are not wanted, and `broken` the wanted ones that are
    missing, not up, or without their address."""
    wanted = {link.name for link in links}
    extra = sorted(name for name in states if name not in wanted)
    broken = sorted(link.name for link in links
                    if states.get(link.name) not in ("UP", "UNKNOWN")
                    or f"{link.node_ip}/{link.prefix_len}" not in addrs.get(link.name, set()))
    return extra, broken


class Rig:
    def __init__(self, config: RigConfig, *, ready_wait: float = READY_WAIT):
        self.config = config
        self.ready_wait = ready_wait
        self.state = config.state_dir
        self.procs = ProcTable(self.state)

    # -- helpers ---------------------------------------------------------------------
    @contextmanager
    def _lock(self):
        lock = self.state.parent / f".{self.config.instance}.lock"
        for attempt in range(3):        # another instance's `down` may rmdir the root meanwhile
            self.state.parent.mkdir(parents=True, exist_ok=True)
            try:
                f = open(lock, "w")
                break
            except FileNotFoundError:
                if attempt == 2:
                    raise
        with f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RigError(f"another 'rig up/down' for instance {self.config.instance} is running; wait for it") from None
            try:
                yield
            finally:
                if not self.state.exists():
                    lock.unlink(missing_ok=True)
                    try:
                        self.state.parent.rmdir()      # /run/kube-xdp-rig goes when empty
                    except OSError:
                        pass

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.config.apiserver_port}"

    def info(self) -> RigInfo | None:
        try:
            return RigInfo.load(self.state)
        except (OSError, ValueError, TypeError):
            return None

    def healthy(self) -> bool:
        info = self.info()
        if info is None or self.procs.pid("etcd") is None or self.procs.pid("kube-apiserver") is None:
            return False
        token = certs.tokens(Path(info.state_dir) / "pki")["admin"]
        return controlplane.apiserver_ready(info.server, Path(info.ca_file), token)

    def leftovers(self) -> dict:
        """Everything of this instance that exists on the machine right now."""
        running = self.procs.running()
        known = {p.pid for p in running}
        return {
            "processes": sorted({f"{p.name}[{p.pid}]" for p in running}
                                | {f"{_comm(pid)}[{pid}]" for pid in self.procs.strays() if pid not in known}),
            "netns": netns.rig_netns(self.config.instance),
            "mounts": netns.mounts_under(self.state),
            "state_dir": self.state.exists() or self.failed_logs.exists(),
        }

    # -- up --------------------------------------------------------------------------
    def up(self, log=print) -> RigInfo:
        with self._lock():
            t0 = time.monotonic()
            info = self.info()
            etcd, apiserver = self.procs.pid("etcd"), self.procs.pid("kube-apiserver")
            if info is not None and etcd is not None:
                if (info.apiserver_port, info.etcd_port) != (self.config.apiserver_port, self.config.etcd_port):
                    raise RigError(f"the rig is already up on ports {info.apiserver_port}/{info.etcd_port}; "
                                   "run 'down' first to change ports")
            ready = None
            if info is not None and etcd is not None and apiserver is None:
                # etcd holds the rig's data: restart the API server on it rather than wipe it
                log(f"rig: kube-apiserver is not running (etcd is, pid {etcd}); restarting it on the rig's data")
                self.start_apiserver()
                ready = True
            elif info is not None and etcd is not None:
                ready = self._wait_ready(info, apiserver, log)
            if ready:
                log(f"rig: already up ({info.server}); reconciling nodes")
                info = self._reconcile_nodes(log)
            else:
                left = self.leftovers()
                if any(left.values()):
                    log(f"rig: found a stale rig ({_describe(left)}); cleaning it up first")
                    self._down(log=lambda *_: None)
                info = self._fresh_up(log, grace=5.0 if any(left.values()) else 0.0)
            log(f"rig: up in {time.monotonic() - t0:.1f}s")
            return info

    def _wait_ready(self, info: RigInfo, apiserver_pid: int, log) -> bool | None:
        """Probe a running rig's /readyz for up to `ready_wait` seconds: True when it
        answers, None when etcd or the API server died meanwhile (a stale rig). Past the
        bound with both alive, raise: nothing is removed (that would delete etcd's data)."""
        token = certs.tokens(Path(info.state_dir) / "pki")["admin"]
        deadline = time.monotonic() + self.ready_wait
        said = False
        while True:
            if controlplane.apiserver_ready(info.server, Path(info.ca_file), token):
                return True
            if self.procs.pid("etcd") is None or self.procs.pid("kube-apiserver") is None:
                return None
            if time.monotonic() >= deadline:
                log_file = self.procs.log_dir / "kube-apiserver.log"
                raise RigError(
                    f"rig '{self.config.instance}' is running (kube-apiserver pid {apiserver_pid}) but its API server "
                    f"has not answered /readyz for {self.ready_wait:.0f}s (overloaded machine or a wedged server: "
                    f"see {log_file}); nothing was removed: rerun 'up' later, or run 'down' to start over "
                    f"(that deletes the rig's etcd data)")
            if not said:
                log(f"rig: kube-apiserver (pid {apiserver_pid}) is running but not answering /readyz; "
                    f"retrying for up to {self.ready_wait:.0f}s")
                said = True
            time.sleep(1.0)

    def _fresh_up(self, log, grace: float = 0.0) -> RigInfo:
        cfg = self.config
        controlplane.ensure_port_free(cfg.apiserver_port, "kube-apiserver", "--apiserver-port", grace)
        controlplane.ensure_port_free(cfg.etcd_port, "etcd", "--etcd-port", grace)
        controlplane.ensure_port_free(cfg.etcd_port + 1, "etcd peer", "--etcd-port", grace)
        binaries = controlplane.binaries(cfg.cache_dir)
        self.state.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            pki = self.state / "pki"
            certs.generate(pki)
            log(f"rig: starting etcd on 127.0.0.1:{cfg.etcd_port}")
            controlplane.start_etcd(self.procs, self.state, binaries["etcd"], cfg.etcd_port)
            log(f"rig: starting kube-apiserver on {self.server}")
            controlplane.start_apiserver(self.procs, self.state, binaries["kube-apiserver"], cfg.apiserver_port,
                                         cfg.etcd_port, audit=cfg.audit)
            tokens = certs.tokens(pki)
            kubeconfigs = {}
            for ident, token in tokens.items():
                path = self.state / f"{ident}.kubeconfig"
                certs.write_kubeconfig(path, server=self.server, ca_file=pki / "ca.crt",
                                       user=certs.IDENTITIES[ident][0], token=token)
                kubeconfigs[ident] = str(path)
            controlplane.wait_apiserver(self.procs, self.server, pki / "ca.crt", tokens["admin"])
            self._write_info(kubeconfigs, nodes=[])
            return self._reconcile_nodes(log)
        except BaseException:
            kept = self._keep_logs()
            log(f"rig: start-up failed; removing what was created (logs kept in {kept})")
            self._down(log=lambda *_: None, keep_failed_logs=True)
            raise

    def _write_info(self, kubeconfigs: dict, nodes: list[NodeInfo]) -> RigInfo:
        cfg = self.config
        info = RigInfo(
            instance=cfg.instance, state_dir=str(self.state), server=self.server,
            kubeconfig=kubeconfigs["admin"], kubeconfigs=kubeconfigs,
            ca_file=str(self.state / "pki" / "ca.crt"), nodes=nodes,
            apiserver_port=cfg.apiserver_port, etcd_port=cfg.etcd_port,
            config={"nodes": cfg.nodes, "interfaces": list(cfg.interfaces), "labels": cfg.labels,
                    "node_labels": cfg.node_labels},
        )
        tmp = self.state / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(info), indent=2))
        tmp.rename(self.state / STATE_FILE)
        return info

    def _reconcile_nodes(self, log) -> RigInfo:
        """Make nodes exactly what the config asks: create missing, rebuild broken,
        remove extra (namespaces, bpffs, Node objects)."""
        info = self.info()
        assert info is not None
        api = kube.client(Path(info.kubeconfig))
        wanted = {n.name: n for n in self.config.node_specs()}
        existing_ns = set(netns.rig_netns(self.config.instance))
        nodes = []
        for spec in wanted.values():
            ns, src = spec.netns(self.config.instance), spec.src_netns(self.config.instance)
            bpffs = self.state / "nodes" / spec.name / "bpffs"
            extra, broken = self._node_diff(spec, existing_ns)
            if broken is None or broken:
                for name in (ns, src):
                    if name in existing_ns:
                        netns.delete_netns(name)
                log(f"rig: creating node {spec.name} (netns {ns}, interfaces {', '.join(l.name for l in spec.links)})")
                netns.create_node_netns(spec, self.config.instance)
            elif extra:
                log(f"rig: node {spec.name}: removing interface(s) {', '.join(extra)} (not in --interfaces)")
                for ifname in extra:
                    netns.delete_link(ns, ifname)
            netns.mount_bpffs(bpffs)
            kube.ensure_node(api, spec)
            nodes.append(NodeInfo(
                name=spec.name, netns=ns, src_netns=src, bpffs=str(bpffs), labels=spec.labels,
                interfaces=[{"name": l.name, "node_ip": l.node_ip, "src_ip": l.src_ip,
                             "node_mac": netns.mac(ns, l.name), "src_mac": netns.mac(src, l.name)}
                            for l in spec.links]))
        for name in kube.rig_nodes(api):
            if name not in wanted:
                log(f"rig: removing extra node {name}")
                kube.delete_node(api, name)
        keep = {n.netns for n in nodes} | {n.src_netns for n in nodes}
        for name in netns.rig_netns(self.config.instance):
            if name not in keep:
                netns.delete_netns(name)
        for node_dir in (self.state / "nodes").glob("*") if (self.state / "nodes").is_dir() else []:
            if node_dir.name not in wanted:
                for point in netns.mounts_under(node_dir):
                    netns.umount(point)
                shutil.rmtree(node_dir, ignore_errors=True)
        api.close()
        return self._write_info(info.kubeconfigs, nodes)

    def _node_diff(self, spec, existing_ns: set) -> tuple[list[str], list[str] | None]:
        """(extra links, broken links) of a node's namespace; broken None when the
        namespaces themselves are missing or unreadable (the node is rebuilt)."""
        ns, src = spec.netns(self.config.instance), spec.src_netns(self.config.instance)
        if ns not in existing_ns or src not in existing_ns:
            return [], None
        try:
            return link_diff(spec.links, netns.link_states(ns), netns.link_addrs(ns))
        except RigError:
            return [], None

    # -- down ------------------------------------------------------------------------
    def down(self, log=print) -> dict:
        with self._lock():
            left = self.leftovers()
            if not any(left.values()):
                log(f"rig: nothing to do: no rig '{self.config.instance}' is up")
                return left
            self._down(log)
            remaining = self.leftovers()
            if any(remaining.values()):
                raise RigError(f"rig: could not remove everything: {_describe(remaining)}")
            log("rig: down; nothing left behind")
            return left

    @property
    def failed_logs(self) -> Path:
        return self.state.parent / f"{self.config.instance}.failed-logs"

    def _keep_logs(self) -> Path:
        shutil.rmtree(self.failed_logs, ignore_errors=True)
        if self.procs.log_dir.is_dir():
            shutil.copytree(self.procs.log_dir, self.failed_logs)
        return self.failed_logs

    def _down(self, log, keep_failed_logs: bool = False) -> None:
        killed = self.procs.stop_all()
        if killed:
            log(f"rig: stopped {len(killed)} process(es)")
        for name in netns.rig_netns(self.config.instance):
            netns.delete_netns(name)
        for point in netns.mounts_under(self.state):
            netns.umount(point)
        if self.state.exists():
            shutil.rmtree(self.state)
        if not keep_failed_logs:
            shutil.rmtree(self.failed_logs, ignore_errors=True)
        (self.state.parent / f".{self.config.instance}.lock").unlink(missing_ok=True)

    # -- API server outage (fault tests) --------------------------------------------
    def stop_apiserver(self) -> bool:
        """Stop kube-apiserver only (etcd, nodes and workloads keep running): an outage.
        False when it was not running."""
        return self.procs.stop("kube-apiserver")

    def start_apiserver(self, timeout: float = 60) -> None:
        """Start kube-apiserver again on the same port, certificates and etcd, and wait
        until it is ready (after stop_apiserver)."""
        if self.info() is None:
            raise RigError(f"no rig '{self.config.instance}' is up")
        if self.procs.pid("kube-apiserver"):
            return
        cfg = self.config
        controlplane.ensure_port_free(cfg.apiserver_port, "kube-apiserver", "--apiserver-port", grace=10.0)
        binary = controlplane.binaries(cfg.cache_dir)["kube-apiserver"]
        controlplane.start_apiserver(self.procs, self.state, binary, cfg.apiserver_port, cfg.etcd_port,
                                     audit=cfg.audit)
        pki = self.state / "pki"
        controlplane.wait_apiserver(self.procs, self.server, pki / "ca.crt", certs.tokens(pki)["admin"], timeout)

    # -- status ----------------------------------------------------------------------
    def status(self) -> dict:
        """What runs. When the rig is not up, `leftovers` lists what of it is still on
        the machine and `problem` says why it is not up (None when nothing is there)."""
        info = self.info()
        procs = self.procs.running()
        up = info is not None and self.healthy()
        leftovers = None if up else self.leftovers()
        existing = set(netns.rig_netns(self.config.instance))
        return {
            "instance": self.config.instance,
            "up": up,
            "server": info.server if info else None,
            "kubeconfig": info.kubeconfig if info else None,
            "state_dir": str(self.state),
            "processes": [{"name": p.name, "pid": p.pid, "rss_mib": round(p.rss_kib / 1024, 1)} for p in procs],
            "nodes": [{"name": n.name, "netns": n.netns, "links": netns.link_states(n.netns) if n.netns in existing else {},
                       "bpffs": netns.is_bpffs(Path(n.bpffs))} for n in (info.nodes if info else [])],
            "leftovers": leftovers,
            "problem": None if up else why_down(info is not None, {p.name for p in procs}, leftovers),
        }


def why_down(has_state: bool, running: set[str], leftovers: dict) -> str | None:
    """Why a rig that is not up is not up, in a few words (None: nothing of it is there)."""
    if not any(leftovers.values()):
        return None
    if not has_state:
        return "no rig.json: left over from a crashed or interrupted run"
    missing = [name for name in ("etcd", "kube-apiserver") if name not in running]
    if missing:
        return f"{' and '.join(missing)} not running"
    return "kube-apiserver not answering /readyz"


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def _describe(left: dict) -> str:
    parts = []
    if left["processes"]:
        parts.append("processes " + ", ".join(left["processes"]))
    if left["netns"]:
        parts.append(f"{len(left['netns'])} namespaces")
    if left["mounts"]:
        parts.append(f"{len(left['mounts'])} mounts")
    if left["state_dir"] and not parts:
        parts.append("a state directory")
    return "; ".join(parts)
