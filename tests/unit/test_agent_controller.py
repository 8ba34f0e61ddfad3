"""The agent's reconcile (kube_xdp_agent.controller.Agent) over FakeKernel and an in-memory
API: sequences of reconciles (attach, spec update, resync, restart) and what each one
leaves on the hooks, in the status and as Events.

The API side is a small stand-in for the kube-apiserver: status patches are applied as
JSON merge patches (null deletes) and counted; Events are recorded. The kernel side is
the FakeKernel; where the real kernel refuses something the fake accepts (a program not
bound to the device in offload mode) a wrapper says so, pinned down by the offload lab
(tests/offload/guest_offload.py).
"""

from __future__ import annotations

import copy
import dataclasses
import errno

import kubernetes
import pytest

from kube_xdp_agent.build import InProcessBuilder
from kube_xdp_agent.controller import Agent, AgentConfig
from tests.fakes import FakeKernel
from kube_xdp_agent.kernel.errors import AttachError
from kube_xdp_api import names, reasons
from kube_xdp_api.spec import source_digest

NETNS, BPFFS, NODE = "node", "/sys/fs/bpf", "node-1"
PROG = "drop-udp"
ATT = f"{PROG}.{NODE}"
SOURCE = "int xdp_pass(struct xdp_md *ctx) { return XDP_PASS + 0 * VERSION; }"


def merge(target: dict, patch: dict) -> dict:
    """RFC 7386 JSON merge patch, in place."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)
    return target


class FakeApi:
    """CustomObjectsApi + CoreV1Api, as far as the agent's reconcile uses them."""

    def __init__(self) -> None:
        self.objects: dict[str, dict] = {}
        self.status_writes: list[dict] = []
        self.events: list[dict] = []

    def patch_cluster_custom_object_status(self, group, version, plural, name, body):
        self.status_writes.append(copy.deepcopy(body["status"]))
        obj = self.objects[name]
        merge(obj, body)
        obj["metadata"]["resourceVersion"] = str(int(obj["metadata"]["resourceVersion"]) + 1)
        return copy.deepcopy(obj)

    def patch_cluster_custom_object(self, group, version, plural, name, patch):
        obj = self.objects[name]
        merge(obj, patch)
        obj["metadata"]["resourceVersion"] = str(int(obj["metadata"]["resourceVersion"]) + 1)
        return copy.deepcopy(obj)

    def create_namespaced_event(self, namespace, body):
        self.events.append(body)

    def event_reasons(self) -> list[str]:
        return [e["reason"] for e in self.events]


class CountingBuilder(InProcessBuilder):
    """The in-process builder, counting builds; a device-bound build (offload) on a device
    that cannot offload fails as the real one does (load_for_offload: OffloadUnsupported),
    and the prog ids built for a device are remembered."""

    def __init__(self, kernel: FakeKernel, pins) -> None:
        super().__init__(kernel.compiler, pins)
        self.kernel = kernel
        self.builds: list[tuple[str, str | None]] = []      # (program, device)
        self.device_bound: dict[int, str] = {}               # prog id -> device

    def build(self, req, program):
        self.builds.append((program, req.device))
        if req.device is not None:
            iface = self.kernel.namespaces[NETNS][req.device]
            if "offload" not in iface.modes:
                raise AttachError(f"{req.device} cannot offload XDP: loading a program bound to it fails (EINVAL)",
                                  reason=reasons.OFFLOAD_UNSUPPORTED, errno=errno.EINVAL,
                                  interface=req.device, mode="offload")
        result = super().build(req, program)
        if req.device is not None:
            pinned = {p.digest12: p for p in self.pins.open_pinned(program)}[result.key[:12]]
            self.device_bound[pinned.prog_id] = req.device
        return result


class DeviceBoundNetlink:
    """The fake's netlink, refusing in offload mode a program not bound to the device, as
    the kernel does (the driver's XDP_SETUP_PROG_HW: EINVAL -> DriverModeUnsupported)."""

    def __init__(self, inner, builder: CountingBuilder) -> None:
        self.inner, self.builder = inner, builder
        self.refuse_offload: set[str] = set()      # devices that load bound programs, refuse the HW attach

    def attach(self, name, prog_fd, mode, *, expected_prog_fd=None):
        if mode == "offload" and name in self.refuse_offload:     # netdevsim's bpf_xdpoffload_accept=N
            raise AttachError("the driver refused XDP in offload mode: netdevsim: XDP offload disabled in DebugFS",
                              reason="DriverModeUnsupported", errno=errno.EOPNOTSUPP, interface=name, mode=mode,
                              kernel_message="netdevsim: XDP offload disabled in DebugFS")
        if mode == "offload":
            prog_id = self.inner._kernel.prog_id_of_fd(prog_fd)
            if self.builder.device_bound.get(prog_id) != name:
                raise AttachError("the driver refused XDP in offload mode: program not bound to this device",
                                  reason="DriverModeUnsupported", errno=errno.EINVAL, interface=name, mode=mode)
        return self.inner.attach(name, prog_fd, mode, expected_prog_fd=expected_prog_fd)

    def __getattr__(self, name):
        return getattr(self.inner, name)


class Node:
    """A FakeKernel node with one agent (restartable) and the API stand-in."""

    def __init__(self, *, eth0_modes=("native", "generic")) -> None:
        self.kernel = FakeKernel()
        self.kernel.add_netns(NETNS)
        self.kernel.add_interface("lo", netns=NETNS, modes=("generic",), kind=None, driver=None)
        self.kernel.add_interface("eth0", netns=NETNS, modes=eth0_modes, default_route=True)
        self.kernel.mount_bpffs(BPFFS)
        self.api = FakeApi()
        self.agent = self.start_agent()

    def start_agent(self) -> Agent:
        agent = Agent(AgentConfig(node_name=NODE, bpffs=BPFFS, netns=NETNS), kubernetes.client.ApiClient(),
                      self.kernel)
        agent.custom = agent.core = self.api
        agent.builder = CountingBuilder(self.kernel, agent.pins)
        agent.netlink = DeviceBoundNetlink(agent.netlink, agent.builder)
        agent.sources[source_digest(SOURCE)] = SOURCE
        for name, obj in self.api.objects.items():
            agent.cache[name] = copy.deepcopy(obj)
        return agent

    def restart(self) -> None:
        self.kernel.restart()
        self.agent = self.start_agent()

    def create(self, *, version="1", mode="native", fallback=("generic",), interfaces=None, **extra) -> None:
        spec = {"nodeName": NODE, "programRef": {"name": PROG, "uid": "uid-1"}, "programGeneration": 1,
                "sourceDigest": source_digest(SOURCE), "entrypoint": "xdp_pass", "defines": {"VERSION": version},
                "interfaces": interfaces or {"names": ["eth0"]}, "mode": mode, "fallback": list(fallback),
                "priority": 500, **extra}
        obj = {"apiVersion": names.API_VERSION, "kind": names.ATTACHMENT_KIND,
               "metadata": {"name": ATT, "uid": "att-uid", "generation": 1, "resourceVersion": "1",
                            "creationTimestamp": "2026-01-01T00:00:00Z", "finalizers": [names.FINALIZER_AGENT]},
               "spec": spec}
        self.api.objects[ATT] = obj
        self.agent.cache[ATT] = copy.deepcopy(obj)

    def update_spec(self, **changes) -> None:
        obj = self.api.objects[ATT]
        obj["spec"].update(changes)
        obj["spec"]["programGeneration"] += 1
        obj["metadata"]["generation"] += 1
        obj["metadata"]["resourceVersion"] = str(int(obj["metadata"]["resourceVersion"]) + 1)
        self.agent.cache[ATT] = copy.deepcopy(obj)

    def reconcile(self) -> dict:
        # as the worker's loop: it went idle since the last reconcile (tests change the
        # kernel in between), so the shared observation is read again
        self.agent._forget_observation()
        self.agent.reconcile(ATT)
        return self.status()

    def status(self) -> dict:
        return self.api.objects[ATT].get("status") or {}

    def entry(self, iface: str = "eth0") -> dict:
        return next(i for i in self.status()["interfaces"] if i["name"] == iface)

    def hook(self, iface: str = "eth0"):
        return self.kernel.netlink(NETNS).read_xdp(iface)

    def pin_id(self, digest: str) -> int:
        return {p.digest12: p.prog_id for p in self.agent.pins.open_pinned(PROG)}[digest]


class HookLog:
    """Records every write to the hooks (to see a detach+attach gap)."""

    def __init__(self, node: Node) -> None:
        self.calls: list[tuple[str, str, str]] = []
        inner = node.agent.netlink
        log = self.calls

        class Recording:
            def attach(self, name, prog_fd, mode, *, expected_prog_fd=None):
                log.append(("replace" if expected_prog_fd is not None else "attach", name, mode))
                return inner.attach(name, prog_fd, mode, expected_prog_fd=expected_prog_fd)

            def detach(self, name, mode, *, expected_prog_fd):
                log.append(("detach", name, mode))
                return inner.detach(name, mode, expected_prog_fd=expected_prog_fd)

            def __getattr__(self, name):
                return getattr(inner, name)

        node.agent.netlink = Recording()


def host_digest(node: Node, version: str) -> str:
    from kube_xdp_agent.kernel import CompileRequest
    return node.agent.builder.key(CompileRequest(SOURCE, "xdp_pass", {"VERSION": version}))[:12]


# --- 1. an update in a fallback mode stays atomic and settled ----------------------------
def test_update_in_fallback_mode_is_replaced_in_place_and_stays_settled():
    node = Node(eth0_modes=("generic",))          # the driver refuses native
    node.create(version="1")
    st = node.reconcile()
    first = node.entry()
    assert first["ready"] and first["mode"] == "generic"
    assert first["reason"] == reasons.DRIVER_MODE_UNSUPPORTED and "native" in first["message"]
    assert st["reason"] is None

    node.update_spec(defines={"VERSION": "2"})
    log = HookLog(node)
    node.reconcile()
    new_id = node.pin_id(host_digest(node, "2"))
    assert log.calls == [("replace", "eth0", "generic")]             # atomic, same mode, no gap
    updated = node.entry()
    assert updated["ready"] and updated["progId"] == new_id and updated["mode"] == "generic"
    assert (updated["reason"], updated["message"]) == (first["reason"], first["message"])

    writes, events = len(node.api.status_writes), len(node.api.events)
    log.calls.clear()
    for _ in range(2):                                                # resyncs
        node.reconcile()
    assert log.calls == []                                            # Keep: no reattach
    assert node.hook().skb_prog_id == new_id
    assert node.api.events[events:] == [] and len(node.api.status_writes) == writes
    assert node.entry() == updated


def test_update_with_a_new_preferred_mode_still_tries_it():
    """The carried reason is for the same modes: a spec whose mode policy changes (generic
    only -> native first) is not settled by an old outcome."""
    node = Node()
    node.create(version="1", mode="generic", fallback=())
    node.reconcile()
    assert node.entry()["mode"] == "generic" and "reason" not in node.entry()
    node.update_spec(defines={"VERSION": "2"}, mode="native", fallback=["generic"])
    node.reconcile()
    node.reconcile()
    assert node.entry()["mode"] == "native" and node.hook().drv_prog_id == node.pin_id(host_digest(node, "2"))


@pytest.mark.parametrize(
    "entry, modes, settled",
    [
        pytest.param({"mode": "generic", "reason": "DriverModeUnsupported",
                      "message": "attached in generic mode; refused: native: EOPNOTSUPP"}, ("native", "generic"), True,
                     id="same-preferred-mode"),
        pytest.param({"mode": "generic", "reason": "DriverModeUnsupported",
                      "message": "attached in generic mode; refused: native: EOPNOTSUPP"},
                     ("offload", "native", "generic"), False, id="offload-now-preferred-never-tried"),
        pytest.param({"mode": "native", "reason": "OffloadUnsupported",
                      "message": "attached in native mode; refused: offload: EINVAL"}, ("native", "generic"), False,
                     id="offload-no-longer-preferred"),
        pytest.param({"mode": "native"}, ("native", "generic"), False, id="no-fallback-reason"),
        pytest.param({"mode": "generic", "reason": "DriverModeUnsupported",
                      "message": "attached in native mode; refused: native: x"}, ("native", "generic"), False,
                     id="message-of-another-mode"),
    ],
)
def test_settled_interfaces(entry, modes, settled):
    from kube_xdp_agent.controller import settled_interfaces
    status = {"interfaces": [{"name": "eth0", "ready": True, "progId": 7, **entry},
                             {"name": "eth1", "ready": False, **entry}]}
    assert settled_interfaces(status, modes) == (frozenset({"eth0"}) if settled else frozenset())


# --- 2. "offload or fail" on a NIC that cannot offload: not rebuilt on every resync -------
def device_builds(node: Node) -> list:
    return [b for b in node.agent.builder.builds if b[1] is not None]


def test_offload_only_failure_is_not_rebuilt_on_every_resync():
    node = Node()                                     # eth0: native + generic, no offload
    node.create(mode="offload", fallback=())
    st = node.reconcile()
    assert len(device_builds(node)) == 1
    assert st["reason"] == reasons.OFFLOAD_UNSUPPORTED
    stalled = next(c for c in st["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == reasons.OFFLOAD_UNSUPPORTED
    assert not node.entry()["ready"] and "cannot offload" in node.entry()["message"]
    first, writes = copy.deepcopy(st), len(node.api.status_writes)
    for _ in range(3):                                # resyncs: same spec, same device
        node.reconcile()
    assert len(device_builds(node)) == 1
    assert node.status() == first and len(node.api.status_writes) == writes
    assert node.hook().attached is None

    # the interface recreated (a new ifindex): tried again
    node.kernel.remove_interface("eth0", netns=NETNS)
    node.kernel.add_interface("eth0", netns=NETNS, default_route=True)
    node.reconcile()
    assert len(device_builds(node)) == 2
    node.reconcile()
    assert len(device_builds(node)) == 2

    # a spec change (a new compile key): tried again
    node.update_spec(defines={"VERSION": "2"})
    node.reconcile()
    assert len(device_builds(node)) == 3 and node.status()["reason"] == reasons.OFFLOAD_UNSUPPORTED
    node.reconcile()
    assert len(device_builds(node)) == 3

    # an agent restart may try once more, then it is remembered again
    node.restart()
    node.reconcile()
    node.reconcile()
    assert len(device_builds(node)) == 1             # the new agent's builder counts from zero
    assert node.status()["reason"] == reasons.OFFLOAD_UNSUPPORTED


@pytest.mark.parametrize("fallback", [(), ("native",)], ids=["offload-or-fail", "offload-then-native"])
def test_a_device_refusing_the_offload_attach_is_not_rebuilt_on_every_resync(fallback):
    node = offload_node()
    node.agent.netlink.refuse_offload.add("eth0")
    node.create(mode="offload", fallback=fallback)
    st = node.reconcile()
    assert device_builds(node) == [(PROG, "eth0")]
    entry = node.entry()
    assert entry["reason"] == reasons.OFFLOAD_UNSUPPORTED and "XDP offload disabled in DebugFS" in entry["message"]
    assert entry["ready"] is bool(fallback)
    # the device build, refused, is not left pinned: only the host program
    assert [p.digest12 for p in node.agent.pins.open_pinned(PROG)] == [host_digest(node, "1")]
    first, writes = copy.deepcopy(st), len(node.api.status_writes)
    for _ in range(3):
        node.reconcile()
    assert device_builds(node) == [(PROG, "eth0")]
    assert node.status() == first and len(node.api.status_writes) == writes
    # a new compile key tries again (and the device still refuses)
    node.update_spec(defines={"VERSION": "2"})
    node.reconcile()
    if not fallback:
        assert device_builds(node) == [(PROG, "eth0")] * 2
    # the device comes to accept; the interface recreated: offloaded
    node.agent.netlink.refuse_offload.clear()
    node.kernel.remove_interface("eth0", netns=NETNS)
    node.kernel.add_interface("eth0", netns=NETNS, modes=("native", "generic", "offload"), default_route=True)
    node.reconcile()
    assert node.entry()["ready"] and node.entry()["mode"] == "offload" and "reason" not in node.entry()


def test_offload_failure_memory_is_per_interface_and_program():
    node = Node()
    node.kernel.add_interface("eth1", netns=NETNS, modes=("native", "generic", "offload"))
    node.create(mode="offload", fallback=(), interfaces={"names": ["eth0", "eth1"]})
    node.reconcile()
    node.reconcile()
    assert sorted(d for _, d in device_builds(node)) == ["eth0", "eth1"]   # eth1 built once, pinned
    assert node.entry("eth1")["ready"] and node.entry("eth1")["mode"] == "offload"
    assert not node.entry("eth0")["ready"]
    # the program deleted: its remembered failures go with it
    obj = node.api.objects[ATT]
    obj["metadata"]["deletionTimestamp"] = "2026-01-01T00:05:00Z"
    node.agent.cache[ATT] = copy.deepcopy(obj)
    node.agent.reconcile(ATT)
    assert node.hook("eth1").attached is None
    assert not any(k[0] == PROG for k in node.agent._offload_failures)


# --- 3. takeover / drift repair in offload mode uses the program built for the device -----
PERCPU_SOURCE = ("BPF_PERCPU_ARRAY(hits, u64, 2);\n"
                 "int xdp_pass(struct xdp_md *ctx) { return XDP_PASS + 0 * VERSION; }")


def offload_node() -> Node:
    node = Node(eth0_modes=("native", "generic", "offload"))
    node.agent.sources[source_digest(PERCPU_SOURCE)] = PERCPU_SOURCE
    return node


def device_prog_ids(node: Node) -> set[int]:
    return {pid for pid, dev in node.agent.builder.device_bound.items() if dev == "eth0"}


def test_takeover_in_offload_mode_replaces_atomically_with_the_device_program():
    node = offload_node()
    foreign = node.kernel.attach_foreign("eth0", "offload", netns=NETNS)
    node.create(mode="offload", fallback=("native",), takeOver=True)
    log = HookLog(node)
    node.reconcile()
    assert log.calls == [("replace", "eth0", "offload")]            # atomic, in the foreign's mode
    hw = node.hook().hw_prog_id
    assert hw != foreign and hw in device_prog_ids(node)
    entry = node.entry()
    assert entry["ready"] and entry["mode"] == "offload" and entry["progId"] == hw
    # the status names the device program's pin (its maps), not the host program's
    assert {p.prog_id: p.prog_path for p in node.agent.pins.open_pinned(PROG)}[hw] == entry["pinPath"]
    assert host_digest(node, "1") not in entry["pinPath"]
    assert node.api.event_reasons() == [reasons.TOOK_OVER]
    log.calls.clear()
    node.reconcile()                                                  # resync: kept
    assert log.calls == [] and node.hook().hw_prog_id == hw


def test_drift_in_offload_mode_is_repaired_atomically_with_the_device_program():
    node = offload_node()
    node.create(mode="offload", fallback=())
    node.reconcile()
    ours = node.hook().hw_prog_id
    assert ours in device_prog_ids(node) and node.entry()["ready"]
    # behind our back: ours detached, a foreign program offloaded in its place
    digest = next(p.digest12 for p in node.agent.pins.open_pinned(PROG) if p.prog_id == ours)
    with node.agent.pins.open_prog_fd(PROG, digest) as fd:
        node.kernel.netlink(NETNS).detach("eth0", "offload", expected_prog_fd=fd.fd)
    foreign = node.kernel.attach_foreign("eth0", "offload", netns=NETNS)
    log = HookLog(node)
    node.reconcile()
    assert log.calls == [("replace", "eth0", "offload")]
    assert node.hook().hw_prog_id == ours and node.entry()["ready"]
    assert node.api.event_reasons() == [reasons.DRIFT_REPAIRED]
    assert str(foreign) in node.api.events[-1]["message"]


def test_takeover_in_offload_mode_of_a_program_that_cannot_be_offloaded_is_a_conflict():
    node = offload_node()
    foreign = node.kernel.attach_foreign("eth0", "offload", netns=NETNS)
    node.create(mode="offload", fallback=("native",), takeOver=True)
    node.api.objects[ATT]["spec"]["sourceDigest"] = source_digest(PERCPU_SOURCE)
    node.agent.cache[ATT]["spec"]["sourceDigest"] = source_digest(PERCPU_SOURCE)
    log = HookLog(node)
    st = node.reconcile()
    assert log.calls == [] and node.hook().hw_prog_id == foreign     # untouched
    entry = node.entry()
    assert not entry["ready"] and entry["reason"] == reasons.CONFLICT
    assert str(foreign) in entry["message"] and "offload" in entry["message"]
    assert "hits" in entry["message"] and "per-CPU" in entry["message"]
    assert st["reason"] == reasons.CONFLICT


# --- 4. an offloaded program beside a native one is seen, and cleaned up ------------------
def test_deletion_detaches_our_offloaded_program_beside_a_foreign_native_one():
    node = offload_node()
    node.create(mode="offload", fallback=())
    node.reconcile()
    ours = node.hook().hw_prog_id
    assert ours in device_prog_ids(node)
    foreign = node.kernel.attach_foreign("eth0", "native", netns=NETNS)
    assert node.hook().attached == "multi"
    node.reconcile()                                   # resync: ours kept, the foreign one left
    assert node.hook().hw_prog_id == ours and node.entry()["ready"] and node.entry()["mode"] == "offload"
    obj = node.api.objects[ATT]
    obj["metadata"]["deletionTimestamp"] = "2026-01-01T00:05:00Z"
    node.agent.cache[ATT] = copy.deepcopy(obj)
    node.agent.reconcile(ATT)
    state = node.hook()
    assert state.hw_prog_id is None and state.drv_prog_id == foreign
    assert node.agent.pins.list_programs() == {}
    assert not node.kernel.prog_exists(ours)
    assert names.FINALIZER_AGENT not in node.api.objects[ATT]["metadata"]["finalizers"]


# --- 5. status.compile says whether this agent process compiled the program or adopted it --
def test_compile_entry_says_compiled_here_or_adopted_from_the_pin():
    node = Node()
    node.create(version="1")
    st = node.reconcile()
    key = node.agent.builder.key(__import__("kube_xdp_agent.kernel", fromlist=["CompileRequest"])
                                 .CompileRequest(SOURCE, "xdp_pass", {"VERSION": "1"}))
    assert st["compile"] == {"durationMs": 1000, "cacheHit": False, "digest": key}    # compiled by this process
    writes = len(node.api.status_writes)
    node.reconcile()
    assert len(node.api.status_writes) == writes                                        # resync: no write

    # a key-unchanged spec change in the process that compiled it: still compiled here
    node.update_spec(interfaces={"names": ["eth0"]}, priority=600)
    st = node.reconcile()
    assert st["compile"]["cacheHit"] is False and st["observedGeneration"] == 2

    # a restarted agent adopts the pinned program: it compiled nothing
    node.restart()
    st = node.reconcile()
    assert node.agent.builder.builds == []
    assert st["compile"]["cacheHit"] is True and st["compile"]["digest"] == key
    assert isinstance(st["compile"]["durationMs"], int) and 0 <= st["compile"]["durationMs"] < 1000
    writes = len(node.api.status_writes)
    for _ in range(3):
        node.reconcile()
    assert len(node.api.status_writes) == writes                                        # resyncs: no write

    # a key-unchanged spec change after the restart: still adopted
    node.update_spec(priority=700)
    st = node.reconcile()
    assert st["compile"]["cacheHit"] is True and st["observedGeneration"] == 3

    # a new key: compiled by this process
    node.update_spec(defines={"VERSION": "2"})
    st = node.reconcile()
    assert st["compile"]["cacheHit"] is False and st["compile"]["digest"] != key
    assert node.agent.builder.builds == [(PROG, None)]


def test_a_second_restart_keeps_the_adopted_entry_without_a_write():
    node = Node()
    node.create(version="1")
    node.reconcile()
    node.restart()
    first = node.reconcile()["compile"]
    assert first["cacheHit"] is True
    writes = len(node.api.status_writes)
    node.restart()
    assert node.reconcile()["compile"] == first and len(node.api.status_writes) == writes


def test_a_takeover_in_another_mode_then_the_move_to_the_preferred_one_is_no_drift():
    node = Node()
    node.kernel.attach_foreign("eth0", "generic", netns=NETNS)
    node.create(takeOver=True)
    log = HookLog(node)
    node.reconcile()
    assert log.calls == [("replace", "eth0", "generic")] and node.api.event_reasons() == [reasons.TOOK_OVER]
    node.reconcile()             # generic was the foreign program's mode, native never tried: tried now
    assert log.calls[1:] == [("detach", "eth0", "generic"), ("attach", "eth0", "native")]
    assert node.entry()["mode"] == "native"
    assert node.api.event_reasons() == [reasons.TOOK_OVER]               # no DriftRepaired


def test_a_program_detached_behind_our_back_is_drift_repaired():
    node = Node()
    node.create()
    node.reconcile()
    ours = node.hook().drv_prog_id
    with node.agent.pins.open_prog_fd(PROG, host_digest(node, "1")) as fd:
        node.kernel.netlink(NETNS).detach("eth0", "native", expected_prog_fd=fd.fd)
    node.reconcile()
    assert node.hook().drv_prog_id == ours
    assert node.api.event_reasons() == [reasons.DRIFT_REPAIRED]


# --- 6. an idle resync reads the kernel once, whatever the number of attachments ----------
class CountingReads:
    """A netlink handle or pin store that counts the calls that read the kernel."""

    READS = frozenset({"interfaces", "interface", "read_xdp", "default_route_interface", "list_programs",
                       "open_pinned"})

    def __init__(self, inner, counts: dict[str, int]) -> None:
        self.inner, self.counts = inner, counts

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if name not in self.READS:
            return attr

        def counted(*args, **kwargs):
            self.counts[name] = self.counts.get(name, 0) + 1
            return attr(*args, **kwargs)
        return counted


def count_reads(node: Node) -> dict[str, int]:
    counts: dict[str, int] = {}
    node.agent.netlink = CountingReads(node.agent.netlink, counts)
    node.agent.pins = CountingReads(node.agent.pins, counts)
    return counts


def add_attachment(node: Node, program: str, *, interfaces: dict, priority: int = 500,
                   created: str = "2026-01-01T00:00:00Z") -> str:
    name = f"{program}.{NODE}"
    spec = {"nodeName": NODE, "programRef": {"name": program, "uid": f"uid-{program}"}, "programGeneration": 1,
            "sourceDigest": source_digest(SOURCE), "entrypoint": "xdp_pass", "defines": {"VERSION": "1"},
            "interfaces": interfaces, "mode": "native", "fallback": ["generic"], "priority": priority}
    obj = {"apiVersion": names.API_VERSION, "kind": names.ATTACHMENT_KIND,
           "metadata": {"name": name, "uid": f"att-{program}", "generation": 1, "resourceVersion": "1",
                        "creationTimestamp": created, "finalizers": [names.FINALIZER_AGENT]},
           "spec": spec}
    node.api.objects[name] = obj
    node.agent.cache[name] = copy.deepcopy(obj)
    return name


def tick(node: Node) -> None:
    """One resync tick as Agent.run does it: the worker was idle, every attachment is
    queued (and orphans collected), then the queue is worked off back to back."""
    agent = node.agent
    agent.synced.set()
    agent._forget_observation()
    agent.resync()
    while not agent.queue.empty():
        agent.process(agent.queue.get_nowait())
    assert not agent._retrying, "a reconcile failed (see the log)"


def three_programs(*, primary: bool = False) -> tuple[Node, list[str]]:
    node = Node()
    node.kernel.add_interface("eth1", netns=NETNS)
    node.kernel.add_interface("eth2", netns=NETNS)
    selectors = [{"primary": True} if primary else {"names": ["eth0"]}, {"names": ["eth1"]}, {"pattern": "eth2"}]
    atts = [add_attachment(node, f"prog-{i}", interfaces=sel) for i, sel in enumerate(selectors)]
    return node, atts


def entry_of(node: Node, att: str, iface: str) -> dict:
    return next(i for i in node.api.objects[att]["status"]["interfaces"] if i["name"] == iface)


@pytest.mark.parametrize("primary", [False, True], ids=["names-and-pattern", "one-selects-primary"])
def test_an_idle_resync_reads_the_kernel_once_for_all_attachments(primary):
    node, atts = three_programs(primary=primary)
    tick(node)
    for att, iface in zip(atts, ("eth0", "eth1", "eth2")):
        assert entry_of(node, att, iface)["ready"]
    tick(node)
    writes, events = len(node.api.status_writes), len(node.api.events)
    counts = count_reads(node)
    log = HookLog(node)
    tick(node)
    # one observation shared by the orphan check and the three reconciles: the links
    # listed once, each program's pins opened once (not again to report them), the
    # default route read only because (and when) an attachment selects the primary interface
    assert counts == {"interfaces": 1, "list_programs": 1, "open_pinned": 3,
                      **({"default_route_interface": 1} if primary else {})}
    assert log.calls == [] and len(node.api.status_writes) == writes and len(node.api.events) == events


def test_drift_is_repaired_on_the_next_tick_and_the_kernel_read_again_after_the_repair():
    node, atts = three_programs()
    tick(node)
    ours = node.hook("eth1").drv_prog_id
    with node.agent.pins.open_prog_fd("prog-1", host_digest(node, "1")) as fd:
        node.kernel.netlink(NETNS).detach("eth1", "native", expected_prog_fd=fd.fd)
    counts = count_reads(node)
    tick(node)
    assert node.hook("eth1").drv_prog_id == ours and entry_of(node, atts[1], "eth1")["ready"]
    assert node.api.event_reasons() == [reasons.DRIFT_REPAIRED]
    assert counts["interfaces"] == 2          # the tick's read, and once more after the repair changed the kernel


def test_a_change_made_by_one_reconcile_is_seen_by_the_next_in_the_same_tick():
    """The higher-priority program takes eth0 over; the other one, reconciled next in the
    same tick, plans on the kernel read after that takeover: a Conflict, not a Keep of a
    program that is no longer there."""
    node = Node()
    low = add_attachment(node, "low", interfaces={"names": ["eth0"]}, priority=100)
    tick(node)
    assert entry_of(node, low, "eth0")["ready"]
    high = add_attachment(node, "high", interfaces={"names": ["eth0"]}, priority=900)
    node.agent.cache = {high: node.agent.cache[high], low: node.agent.cache[low]}    # high's reconcile first
    tick(node)
    high_id = node.hook().drv_prog_id
    assert entry_of(node, high, "eth0")["ready"] and entry_of(node, high, "eth0")["progId"] == high_id
    lost = entry_of(node, low, "eth0")
    assert not lost["ready"] and lost["reason"] == reasons.CONFLICT and str(high_id) in lost["message"]


def test_an_observation_older_than_the_max_age_is_read_again(monkeypatch):
    from kube_xdp_agent import controller
    node, _ = three_programs()
    tick(node)
    tick(node)
    counts = count_reads(node)
    monkeypatch.setattr(controller, "OBSERVATION_MAX_AGE", -1.0)      # every use is too late
    tick(node)
    assert counts["interfaces"] == 1 + 3 * 2       # orphan check; each reconcile's plan and gc


def test_the_worker_reads_the_kernel_afresh_after_idling(monkeypatch):
    """Agent.run itself: an observation never outlives an idle worker, so drift behind our
    back between two ticks is repaired on the next one (the max age made irrelevant)."""
    import threading
    import time

    from kube_xdp_agent import controller
    monkeypatch.setattr(controller, "OBSERVATION_MAX_AGE", 3600.0)
    node = Node()
    node.create()
    agent = node.agent
    agent.config.resync = 0.05
    agent._watch_loop = lambda: None             # the harness fills the cache
    agent.synced.set()

    def wait(predicate, what):
        deadline = time.monotonic() + 20
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.02)

    worker = threading.Thread(target=agent.run, daemon=True)
    worker.start()
    try:
        wait(lambda: node.hook().drv_prog_id is not None, "the attach")
        ours = node.hook().drv_prog_id
        wait(lambda: node.status().get("interfaces"), "the status")
        with agent.pins.open_prog_fd(PROG, host_digest(node, "1")) as fd:
            node.kernel.netlink(NETNS).detach("eth0", "native", expected_prog_fd=fd.fd)
        wait(lambda: node.hook().drv_prog_id == ours, "the drift repair")
    finally:
        agent.stop.set()
        agent.queue.put(None)
        worker.join(10)
    assert not worker.is_alive()


# --- 7. the agent lists and watches its own attachments, selected on spec.nodeName --------
def test_list_and_watch_select_this_nodes_attachments_by_field(monkeypatch):
    """Both requests carry the field selector spec.nodeName=<node> (a selectable field of
    the CRD) and no label selector: a label saying another node cannot route an
    attachment to this agent. What the API server does with it: tests/e2e/test_agent_watch.py."""
    node = Node()
    agent = node.agent
    requests: list[tuple[str, dict]] = []

    def list_attachments(group, version, plural, **kwargs):
        requests.append(("list", {"plural": plural, **kwargs}))
        return {"items": [], "metadata": {"resourceVersion": "7"}}

    class OneWatch:
        def stream(self, func, group, version, plural, **kwargs):
            requests.append(("watch", {"plural": plural, **kwargs}))
            agent.stop.set()                 # one round of the loop
            return iter(())

        def stop(self):
            pass

    node.api.list_cluster_custom_object = list_attachments
    monkeypatch.setattr(kubernetes.watch, "Watch", OneWatch)
    agent._watch_loop()
    assert [(kind, kw["plural"], kw.get("field_selector"), kw.get("label_selector")) for kind, kw in requests] == [
        ("list", names.ATTACHMENTS, f"spec.nodeName={NODE}", None),
        ("watch", names.ATTACHMENTS, f"spec.nodeName={NODE}", None),
    ]
    assert requests[1][1]["resource_version"] == "7"
