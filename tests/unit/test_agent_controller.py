"""The agent's reconcile (kube_xdp_agent.controller.Agent and its parts) over FakeKernel and
an in-memory API: sequences of reconciles (attach, spec update, resync, restart, drift,
pins removed) and what each one leaves on the hooks, in the status and as Events.

The API side is a small stand-in for the kube-apiserver: status patches are applied as
JSON merge patches (null deletes) and counted; Events are recorded. The kernel side is
the FakeKernel, whose link semantics are checked on the real kernel in
tests/kernel/test_link.py; where the real kernel refuses something the fake accepts (a
program not bound to the device in offload mode) a wrapper says so, pinned down by the
offload lab (tests/offload/guest_offload.py).
"""

from __future__ import annotations

import copy
import dataclasses
import errno
from unittest import mock

import kubernetes
import pytest

from kube_xdp_agent import nodeview
from kube_xdp_agent.build import InProcessBuilder
from kube_xdp_agent.controller import Agent, AgentConfig
from kube_xdp_agent.kernel.attach import Node as KernelNode
from kube_xdp_agent.kernel.errors import AttachError, BpfSyscallError, HookBusy
from kube_xdp_api import names, reasons
from kube_xdp_api.spec import source_digest
from tests.fakes import FakeKernel

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


class DeviceBound:
    """The fake's netlink and links, refusing in offload mode a program not bound to the
    device, as the kernel does (the driver's XDP_SETUP_PROG_HW: EINVAL), and, for devices
    in `refuse_offload`, refusing the HW attach itself (netdevsim's bpf_xdpoffload_accept=N:
    EOPNOTSUPP with its extack)."""

    KERNEL_SAYS = "netdevsim: XDP offload disabled in DebugFS"

    def __init__(self, netlink, links, kernel: FakeKernel, builder: CountingBuilder) -> None:
        self.netlink, self.links, self.kernel, self.builder = netlink, links, kernel, builder
        self.refuse_offload: set[str] = set()

    def _check(self, name: str, prog_id: int | None) -> int | None:
        """The errno the device answers, or None."""
        if name in self.refuse_offload:
            return errno.EOPNOTSUPP
        return None if self.builder.device_bound.get(prog_id) == name else errno.EINVAL

    def nl_attach(self, name, prog_fd, mode, *, expected_prog_fd=None):
        code = self._check(name, self.kernel.prog_id_of_fd(prog_fd)) if mode == "offload" else None
        if code is not None:
            raise AttachError("the driver refused XDP in offload mode", reason="DriverModeUnsupported", errno=code,
                              interface=name, mode=mode,
                              kernel_message=self.KERNEL_SAYS if code == errno.EOPNOTSUPP else None)
        return self.netlink.attach(name, prog_fd, mode, expected_prog_fd=expected_prog_fd)

    def link_create(self, ifindex, prog_fd, mode, *, interface=None):
        code = self._check(interface, self.kernel.prog_id_of_fd(prog_fd)) if mode == "offload" else None
        if code is not None:
            raise BpfSyscallError("BPF_LINK_CREATE failed", cmd="BPF_LINK_CREATE", errno=code, interface=interface)
        return self.links.create(ifindex, prog_fd, mode, interface=interface)

    def link_update(self, link_fd, new_prog_fd, *, old_prog_fd=None, interface=None):
        link = self.kernel.bpf_links[self.kernel.fds[link_fd][1]]
        if link.mode == "offload" and self._check(link.interface, self.kernel.prog_id_of_fd(new_prog_fd)):
            raise BpfSyscallError("BPF_LINK_UPDATE failed", cmd="BPF_LINK_UPDATE", errno=errno.EINVAL)
        return self.links.update(link_fd, new_prog_fd, old_prog_fd=old_prog_fd, interface=interface)


class Wrapped:
    """A handle whose methods in `overrides` are replaced (the others pass through)."""

    def __init__(self, inner, **overrides) -> None:
        self.inner, self.overrides = inner, overrides

    def __getattr__(self, name):
        return self.overrides.get(name) or getattr(self.inner, name)


class Node:
    """A FakeKernel node with one agent (restartable) and the API stand-in."""

    def __init__(self, *, eth0_modes=("native", "generic")) -> None:
        self.kernel = FakeKernel()
        self.kernel.add_netns(NETNS)
        self.kernel.add_interface("lo", netns=NETNS, modes=("generic",), kind=None, driver=None)
        self.kernel.add_interface("eth0", netns=NETNS, modes=eth0_modes, default_route=True)
        self.kernel.mount_bpffs(BPFFS)
        self.api = FakeApi()
        self.refuse_offload: set[str] = set()
        self.hook_log: list[tuple] = []
        self.agent = self.start_agent()

    def start_agent(self) -> Agent:
        builder = CountingBuilder(self.kernel, self.kernel.pin_store(BPFFS))
        kernel = self.kernel

        def node(netns, root):
            inner = FakeKernel.node(kernel, netns, root)
            bound = DeviceBound(inner.netlink, inner.links, kernel, builder)
            bound.refuse_offload = self.refuse_offload
            return KernelNode(Wrapped(inner.netlink, attach=bound.nl_attach),
                              Wrapped(inner.links, create=bound.link_create, update=bound.link_update), inner.pins)

        kernel.node = node
        kernel.builder = lambda bpffs, netns: builder
        with mock.patch.object(kubernetes.client, "CustomObjectsApi", lambda client: self.api), \
                mock.patch.object(kubernetes.client, "CoreV1Api", lambda client: self.api):
            agent = Agent(AgentConfig(node_name=NODE, bpffs=BPFFS, netns=NETNS), kubernetes.client.ApiClient(),
                          kernel)
        agent.reconciler.sources.texts[source_digest(SOURCE)] = SOURCE
        for name, obj in self.api.objects.items():
            agent.cache.put(name, copy.deepcopy(obj))
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
        self.agent.cache.put(ATT, copy.deepcopy(obj))

    def update_spec(self, **changes) -> None:
        obj = self.api.objects[ATT]
        obj["spec"].update(changes)
        obj["spec"]["programGeneration"] += 1
        obj["metadata"]["generation"] += 1
        obj["metadata"]["resourceVersion"] = str(int(obj["metadata"]["resourceVersion"]) + 1)
        self.agent.cache.put(ATT, copy.deepcopy(obj))

    def delete(self) -> None:
        obj = self.api.objects[ATT]
        obj["metadata"]["deletionTimestamp"] = "2026-01-01T00:05:00Z"
        self.agent.cache.put(ATT, copy.deepcopy(obj))

    def reconcile(self, name: str = ATT) -> dict:
        # as the worker's loop: it went idle since the last reconcile (tests change the
        # kernel in between), so the shared observation is read again
        self.agent.view.forget()
        self.agent.reconcile(name)
        return self.status()

    def status(self) -> dict:
        """A copy of the attachment's status as the API holds it now."""
        return copy.deepcopy(self.api.objects[ATT].get("status") or {})

    def entry(self, iface: str = "eth0") -> dict:
        return next(i for i in self.status()["interfaces"] if i["name"] == iface)

    def hook(self, iface: str = "eth0"):
        return self.kernel.netlink(NETNS).read_xdp(iface)

    def pin_id(self, digest: str) -> int:
        return {p.digest12: p.prog_id for p in self.agent.view.pins.open_pinned(PROG)}[digest]

    @property
    def builds(self) -> list:
        return self.agent.builder.builds

    def log_hooks(self) -> list[tuple]:
        """From now on, record every write to a hook: netlink attach/replace/detach, link
        create/update/detach (to see a detach+attach gap, or its absence)."""
        log = self.hook_log
        view = self.agent.view
        nl, links = view.node.netlink, view.node.links

        def nl_attach(name, prog_fd, mode, *, expected_prog_fd=None):
            log.append(("replace" if expected_prog_fd is not None else "attach", name, mode))
            return nl.attach(name, prog_fd, mode, expected_prog_fd=expected_prog_fd)

        def nl_detach(name, mode, *, expected_prog_fd):
            log.append(("detach", name, mode))
            return nl.detach(name, mode, expected_prog_fd=expected_prog_fd)

        def link_create(ifindex, prog_fd, mode, *, interface=None):
            log.append(("link-create", interface, mode))
            return links.create(ifindex, prog_fd, mode, interface=interface)

        def link_update(link_fd, new_prog_fd, *, old_prog_fd=None, interface=None):
            log.append(("link-update", interface, None))
            return links.update(link_fd, new_prog_fd, old_prog_fd=old_prog_fd, interface=interface)

        def link_detach(link_fd, *, interface=None):
            log.append(("link-detach", interface, None))
            return links.detach(link_fd, interface=interface)

        view.node = KernelNode(Wrapped(nl, attach=nl_attach, detach=nl_detach),
                               Wrapped(links, create=link_create, update=link_update, detach=link_detach),
                               view.node.pins)
        return log

    # -- behind kube-xdp's back ------------------------------------------------------------
    def detach_link(self, iface: str = "eth0", program: str = PROG) -> None:
        """`bpftool link detach id N`: our link defunct (its pin stays), the hook empty."""
        with self.kernel.pin_store(BPFFS).open_link(program, iface) as fd:
            self.kernel.links(NETNS).detach(fd.fd)

    def netlink_detach(self, iface: str = "eth0", mode: str = "native") -> None:
        """`ip link set dev IFACE xdp off`, as far as the fake models it."""
        state = self.hook(iface)
        with self.kernel.pin_store(BPFFS).open_prog_id(state.prog_id_for(mode)) as fd:
            self.kernel.netlink(NETNS).detach(iface, mode, expected_prog_fd=fd.fd)


def host_digest(node: Node, version: str) -> str:
    from kube_xdp_agent.kernel import CompileRequest
    return node.agent.builder.key(CompileRequest(SOURCE, "xdp_pass", {"VERSION": version}))[:12]


# --- 0. the record: what a status entry says ---------------------------------------------
def test_an_attachment_is_a_pinned_link_and_its_record_says_so():
    node = Node()
    node.create()
    st = node.reconcile()
    [link] = node.agent.view.pins.list_links(PROG)
    digest = host_digest(node, "1")
    pinned = {p.digest12: p for p in node.agent.view.pins.open_pinned(PROG)}[digest]
    assert st["interfaces"] == [{
        "name": "eth0", "ready": True, "mode": "native", "preferredMode": "native", "attachedBy": "link",
        "linkId": link.link_id, "progId": pinned.prog_id, "digest": digest, "tag": pinned.tag,
        "pinPath": pinned.prog_path}]
    assert node.hook().drv_prog_id == pinned.prog_id == link.prog_id
    with pytest.raises(HookBusy):                      # `ip link set dev eth0 xdp off`: refused by the kernel
        node.netlink_detach()
    assert st["reason"] is None and node.api.event_reasons() == []


# --- 1. an update in a fallback mode stays atomic and settled ----------------------------
def test_update_in_fallback_mode_is_an_atomic_link_update_and_stays_settled():
    node = Node(eth0_modes=("generic",))          # the driver refuses native
    node.create(version="1")
    st = node.reconcile()
    first = node.entry()
    assert first["ready"] and first["mode"] == "generic" and first["preferredMode"] == "native"
    assert [r["mode"] for r in first["refused"]] == ["native"]
    assert first["reason"] == first["refused"][0]["reason"] == reasons.DRIVER_MODE_UNSUPPORTED
    assert first["refused"][0]["errno"] == errno.EOPNOTSUPP
    assert first["message"].startswith("attached in generic mode; refused: native: ")
    assert st["reason"] is None

    node.update_spec(defines={"VERSION": "2"})
    log = node.log_hooks()
    node.reconcile()
    new_id = node.pin_id(host_digest(node, "2"))
    assert log == [("link-update", "eth0", None)]                   # atomic, same link, no gap
    updated = node.entry()
    assert updated["ready"] and updated["progId"] == new_id and updated["mode"] == "generic"
    assert updated["linkId"] == first["linkId"]
    assert {k: updated[k] for k in ("preferredMode", "refused", "reason", "message")} == \
        {k: first[k] for k in ("preferredMode", "refused", "reason", "message")}

    writes, events = len(node.api.status_writes), len(node.api.events)
    log.clear()
    for _ in range(2):                                                # resyncs
        node.reconcile()
    assert log == []                                                  # Keep: no reattach
    assert node.hook().skb_prog_id == new_id
    assert node.api.events[events:] == [] and len(node.api.status_writes) == writes
    assert node.entry() == updated


def test_update_with_a_new_preferred_mode_still_tries_it():
    """The carried refusals are for the same modes: a spec whose mode policy changes
    (generic only -> native first) is not settled by an old outcome."""
    node = Node()
    node.create(version="1", mode="generic", fallback=())
    node.reconcile()
    assert node.entry()["mode"] == "generic" and "reason" not in node.entry()
    node.update_spec(defines={"VERSION": "2"}, mode="native", fallback=["generic"])
    node.reconcile()
    node.reconcile()
    assert node.entry()["mode"] == "native" and node.hook().drv_prog_id == node.pin_id(host_digest(node, "2"))
    assert node.entry()["attachedBy"] == "link"


# --- 2. no decision reads a message or a pin path -----------------------------------------
def scramble(node: Node) -> None:
    """Every message and pinPath of the status replaced by nonsense (prose is for people)."""
    def walk(value):
        if isinstance(value, dict):
            for k in list(value):
                if k in ("message", "pinPath"):
                    value[k] = "attached in offload mode; refused: native: /sys/fs/bpf/kube-xdp/x/ffffffffffff/prog"
                else:
                    walk(value[k])
        elif isinstance(value, list):
            for v in value:
                walk(v)
    walk(node.api.objects[ATT]["status"])
    node.agent.cache.put(ATT, copy.deepcopy(node.api.objects[ATT]))


def test_decisions_are_the_same_whatever_the_messages_and_pin_paths_say():
    node = Node(eth0_modes=("generic",))
    node.create()
    node.reconcile()
    settled = copy.deepcopy(node.entry())
    scramble(node)
    log = node.log_hooks()
    node.reconcile()                                   # the fallback stays settled: no reattach
    assert log == []

    def structured(entry):
        return {k: v for k, v in entry.items() if k not in ("message", "refused")} | \
            {"refused": [{k: v for k, v in r.items() if k != "message"} for r in entry["refused"]]}
    assert structured(node.entry()) == structured(settled)     # the pin path rebuilt from the digest
    # a refusal's words are carried as they are while the fallback holds (compared by nothing)
    assert node.entry()["refused"][0]["message"].startswith("attached in offload mode")
    # pins removed behind our back: re-pinned from the record's digest, not from a path
    scramble(node)
    node.kernel.pin_store(BPFFS).unpin(PROG, host_digest(node, "1"))
    node.reconcile()
    assert log == [] and node.agent.view.pins.list_programs() == {PROG: [host_digest(node, "1")]}
    assert node.pin_id(host_digest(node, "1")) == settled["progId"]
    assert node.api.event_reasons() == [reasons.PIN_REPAIRED]


# --- 3. restart, pins removed, drift ------------------------------------------------------
def test_a_restart_adopts_the_pinned_links_without_a_write():
    node = Node()
    node.create()
    before = node.reconcile()
    node.restart()
    log = node.log_hooks()
    writes = len(node.api.status_writes)
    node.reconcile()
    assert log == []
    st = node.status()
    assert st["interfaces"] == before["interfaces"]              # same link id, same program
    assert len(node.api.status_writes) == writes + 1             # status.compile: now adopted from the pin
    assert st["compile"]["cacheHit"] is True and node.builds == []


def test_a_link_pin_removed_while_the_agent_runs_is_repinned_and_nothing_detached():
    node = Node()
    node.create()
    before = node.reconcile()
    node.reconcile()                                   # the agent holds the link open from here on
    node.kernel.pin_store(BPFFS).unpin_link(PROG, "eth0")
    assert node.hook().drv_prog_id == before["interfaces"][0]["progId"]     # still attached: the agent's fd
    log = node.log_hooks()
    st = node.reconcile()
    assert log == []
    [link] = node.agent.view.pins.list_links(PROG)
    assert link.link_id == before["interfaces"][0]["linkId"]
    assert st["interfaces"] == before["interfaces"]
    assert node.api.event_reasons() == [reasons.PIN_REPAIRED]


def test_the_whole_program_directory_removed_is_repinned_same_program_same_link():
    node = Node()
    node.create()
    before = node.reconcile()
    node.reconcile()
    node.kernel.pin_store(BPFFS).unpin(PROG)          # rm -r <bpffs>/kube-xdp/drop-udp: digests and links
    log = node.log_hooks()
    st = node.reconcile()
    assert log == [] and node.builds == [(PROG, None)]           # nothing rebuilt, nothing re-attached
    assert st["interfaces"] == before["interfaces"]
    assert node.agent.view.pins.list_programs() == {PROG: [host_digest(node, "1")]}
    assert [v.link_id for v in node.agent.view.pins.list_links(PROG)] == [before["interfaces"][0]["linkId"]]


def test_a_link_pin_removed_while_the_agent_is_down_detaches_and_the_agent_attaches_again():
    node = Node()
    node.create()
    before = node.reconcile()
    node.kernel.restart()                               # the agent dies: its fds close
    node.kernel.pin_store(BPFFS).unpin_link(PROG, "eth0")
    assert node.hook().attached is None                 # the kernel released the link: detached
    node.agent = node.start_agent()
    st = node.reconcile()
    entry = st["interfaces"][0]
    assert entry["ready"] and entry["progId"] == before["interfaces"][0]["progId"]
    assert entry["linkId"] != before["interfaces"][0]["linkId"]
    assert node.api.event_reasons() == [reasons.DRIFT_REPAIRED]


def test_a_link_detached_behind_our_back_is_drift_repaired_with_a_new_link():
    node = Node()
    node.create()
    before = node.reconcile()
    node.detach_link()                                  # bpftool link detach: the pin stays, defunct
    assert node.hook().attached is None
    st = node.reconcile()
    entry = st["interfaces"][0]
    assert entry["ready"] and entry["attachedBy"] == "link" and entry["linkId"] != before["interfaces"][0]["linkId"]
    assert node.hook().drv_prog_id == before["interfaces"][0]["progId"]
    assert node.api.event_reasons() == [reasons.DRIFT_REPAIRED]


def test_an_intruder_where_our_link_was_removed_is_replaced_atomically_and_kept():
    node = Node()
    node.create()
    before = node.reconcile()
    node.detach_link()
    foreign = node.kernel.attach_foreign("eth0", "native", netns=NETNS)
    log = node.log_hooks()
    st = node.reconcile()
    assert log == [("link-detach", "eth0", None), ("replace", "eth0", "native")]   # the defunct link dropped
    entry = st["interfaces"][0]
    assert entry["ready"] and entry["progId"] == before["interfaces"][0]["progId"]
    assert entry["attachedBy"] == "netlink" and "linkId" not in entry   # an atomic REPLACE stays on netlink
    assert node.api.event_reasons() == [reasons.DRIFT_REPAIRED]
    assert str(foreign) in node.api.events[-1]["message"]
    log.clear()
    node.reconcile()
    assert log == [] and node.entry() == entry          # ours by its pin: kept, no flapping


def test_links_refused_by_the_kernel_attach_through_netlink():
    """A kernel before 5.9 (BPF_LINK_CREATE refused with EINVAL): netlink, as before."""
    node = Node()
    view = node.agent.view
    refuse = lambda *a, **kw: (_ for _ in ()).throw(  # noqa: E731
        BpfSyscallError("BPF_LINK_CREATE failed", cmd="BPF_LINK_CREATE", errno=errno.EINVAL))
    view.node = dataclasses.replace(view.node, links=Wrapped(view.node.links, create=refuse))
    node.create(version="1")
    node.reconcile()
    entry = node.entry()
    assert entry["ready"] and entry["attachedBy"] == "netlink" and "linkId" not in entry
    assert "refused" not in entry                       # links refused is not a mode refused
    node.update_spec(defines={"VERSION": "2"})
    log = node.log_hooks()
    node.reconcile()
    assert log == [("replace", "eth0", "native")]       # an update is an atomic netlink REPLACE
    log.clear()
    node.reconcile()
    assert log == []


# --- 4. "offload or fail" on a NIC that cannot offload: not rebuilt on every resync -------
def device_builds(node: Node) -> list:
    return [b for b in node.builds if b[1] is not None]


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
    node.refuse_offload.add("eth0")
    node.create(mode="offload", fallback=fallback)
    st = node.reconcile()
    assert device_builds(node) == [(PROG, "eth0")]
    entry = node.entry()
    assert entry["reason"] == reasons.OFFLOAD_UNSUPPORTED and DeviceBound.KERNEL_SAYS in entry["message"]
    assert entry["ready"] is bool(fallback)
    assert entry["refused"][0]["mode"] == "offload" and entry["refused"][0]["errno"] == errno.EOPNOTSUPP
    # the device build, refused, is not left pinned: only the host program
    assert [p.digest12 for p in node.agent.view.pins.open_pinned(PROG)] == [host_digest(node, "1")]
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
    node.refuse_offload.clear()
    node.kernel.remove_interface("eth0", netns=NETNS)
    node.kernel.add_interface("eth0", netns=NETNS, modes=("native", "generic", "offload"), default_route=True)
    node.reconcile()
    assert node.entry()["ready"] and node.entry()["mode"] == "offload" and "reason" not in node.entry()
    assert node.entry()["attachedBy"] == "link"


def test_offload_failure_memory_is_per_interface_and_program():
    node = Node()
    node.kernel.add_interface("eth1", netns=NETNS, modes=("native", "generic", "offload"))
    node.create(mode="offload", fallback=(), interfaces={"names": ["eth0", "eth1"]})
    node.reconcile()
    node.reconcile()
    assert sorted(d for _, d in device_builds(node)) == ["eth0", "eth1"]   # eth1 built once, pinned
    assert node.entry("eth1")["ready"] and node.entry("eth1")["mode"] == "offload"
    assert not node.entry("eth0")["ready"]
    assert node.agent.reconciler.offloads.remembered(PROG) == ["eth0"]
    # the program deleted: its remembered failures go with it
    node.delete()
    node.agent.reconcile(ATT)
    assert node.hook("eth1").attached is None
    assert node.agent.reconciler.offloads.remembered(PROG) == []


# --- 5. takeover / drift repair in offload mode uses the program built for the device -----
PERCPU_SOURCE = ("BPF_PERCPU_ARRAY(hits, u64, 2);\n"
                 "int xdp_pass(struct xdp_md *ctx) { return XDP_PASS + 0 * VERSION; }")


def offload_node() -> Node:
    node = Node(eth0_modes=("native", "generic", "offload"))
    node.agent.reconciler.sources.texts[source_digest(PERCPU_SOURCE)] = PERCPU_SOURCE
    return node


def device_prog_ids(node: Node) -> set[int]:
    return {pid for pid, dev in node.agent.builder.device_bound.items() if dev == "eth0"}


def test_an_offloaded_program_is_held_by_a_link_and_updated_in_place():
    node = offload_node()
    node.create(mode="offload", fallback=())
    node.reconcile()
    first = node.entry()
    assert first["attachedBy"] == "link" and first["progId"] in device_prog_ids(node)
    node.update_spec(defines={"VERSION": "2"})
    log = node.log_hooks()
    node.reconcile()
    assert log == [("link-update", "eth0", None)]
    assert node.entry()["linkId"] == first["linkId"] and node.entry()["progId"] in device_prog_ids(node)
    assert node.entry()["progId"] != first["progId"] and node.hook().hw_prog_id == node.entry()["progId"]


def test_takeover_in_offload_mode_replaces_atomically_with_the_device_program():
    node = offload_node()
    foreign = node.kernel.attach_foreign("eth0", "offload", netns=NETNS)
    node.create(mode="offload", fallback=("native",), takeOver=True)
    log = node.log_hooks()
    node.reconcile()
    assert log == [("replace", "eth0", "offload")]                   # atomic, in the foreign's mode
    hw = node.hook().hw_prog_id
    assert hw != foreign and hw in device_prog_ids(node)
    entry = node.entry()
    assert entry["ready"] and entry["mode"] == "offload" and entry["progId"] == hw
    # the status names the device program's pin (its maps), not the host program's
    pinned = {p.prog_id: p for p in node.agent.view.pins.open_pinned(PROG)}[hw]
    assert (entry["pinPath"], entry["digest"]) == (pinned.prog_path, pinned.digest12)
    assert host_digest(node, "1") not in entry["pinPath"]
    assert node.api.event_reasons() == [reasons.TOOK_OVER]
    log.clear()
    node.reconcile()                                                  # resync: kept
    assert log == [] and node.hook().hw_prog_id == hw


def test_drift_in_offload_mode_is_repaired_atomically_with_the_device_program():
    node = offload_node()
    node.create(mode="offload", fallback=())
    node.reconcile()
    ours = node.hook().hw_prog_id
    assert ours in device_prog_ids(node) and node.entry()["ready"]
    # behind our back: our link detached, a foreign program offloaded in its place
    node.detach_link()
    foreign = node.kernel.attach_foreign("eth0", "offload", netns=NETNS)
    log = node.log_hooks()
    node.reconcile()
    assert [c for c in log if c[0] != "link-detach"] == [("replace", "eth0", "offload")]
    assert node.hook().hw_prog_id == ours and node.entry()["ready"]
    assert node.api.event_reasons() == [reasons.DRIFT_REPAIRED]
    assert str(foreign) in node.api.events[-1]["message"]


def test_takeover_in_offload_mode_of_a_program_that_cannot_be_offloaded_is_a_conflict():
    node = offload_node()
    foreign = node.kernel.attach_foreign("eth0", "offload", netns=NETNS)
    node.create(mode="offload", fallback=("native",), takeOver=True)
    node.api.objects[ATT]["spec"]["sourceDigest"] = source_digest(PERCPU_SOURCE)
    node.agent.cache.put(ATT, copy.deepcopy(node.api.objects[ATT]))
    log = node.log_hooks()
    st = node.reconcile()
    assert log == [] and node.hook().hw_prog_id == foreign           # untouched
    entry = node.entry()
    assert not entry["ready"] and entry["reason"] == reasons.CONFLICT
    assert str(foreign) in entry["message"] and "offload" in entry["message"]
    assert "hits" in entry["message"] and "per-CPU" in entry["message"]
    assert st["reason"] == reasons.CONFLICT


# --- 6. an offloaded program beside a native one is seen, and cleaned up ------------------
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
    node.delete()
    node.agent.reconcile(ATT)
    state = node.hook()
    assert state.hw_prog_id is None and state.drv_prog_id == foreign
    assert node.agent.view.pins.list_programs() == {} and node.agent.view.pins.list_links() == []
    assert not node.kernel.prog_exists(ours)
    assert names.FINALIZER_AGENT not in node.api.objects[ATT]["metadata"]["finalizers"]


def test_deletion_of_a_program_whose_link_pin_was_removed_detaches_it():
    node = Node()
    node.create()
    node.reconcile()
    node.reconcile()
    node.kernel.pin_store(BPFFS).unpin(PROG)          # everything unpinned; the agent's fd holds the link
    node.delete()
    node.reconcile()
    assert node.hook().attached is None and node.agent.view.pins.list_program_dirs() == []
    assert names.FINALIZER_AGENT not in node.api.objects[ATT]["metadata"]["finalizers"]


# --- 7. status.compile says whether this agent process compiled the program or adopted it --
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
    assert node.builds == []
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
    assert node.builds == [(PROG, None)]


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
    log = node.log_hooks()
    node.reconcile()
    assert log == [("replace", "eth0", "generic")] and node.api.event_reasons() == [reasons.TOOK_OVER]
    assert node.entry()["attachedBy"] == "netlink"
    node.reconcile()             # generic was the foreign program's mode, native never tried: tried now
    assert log[1:] == [("detach", "eth0", "generic"), ("link-create", "eth0", "native")]
    assert node.entry()["mode"] == "native" and node.entry()["attachedBy"] == "link"
    assert node.api.event_reasons() == [reasons.TOOK_OVER]               # no DriftRepaired


# --- 8. an idle resync reads the kernel once, whatever the number of attachments ----------
class CountingReads:
    """A netlink handle or pin store that counts the calls that read the kernel."""

    READS = frozenset({"interfaces", "interface", "read_xdp", "default_route_interface", "list_programs",
                       "open_pinned", "list_links", "read_link"})

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
    view = node.agent.view
    view.node = KernelNode(CountingReads(view.node.netlink, counts), view.node.links,
                           CountingReads(view.node.pins, counts))
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
    node.agent.cache.put(name, copy.deepcopy(obj))
    return name


def tick(node: Node) -> None:
    """One resync tick as Agent.run does it: the worker was idle, every attachment is
    queued (and orphans collected), then the queue is worked off back to back."""
    from kube_xdp_api.workqueue import process
    agent = node.agent
    agent.synced.set()
    agent.view.forget()
    agent.resync()
    failed = []
    while len(agent.queue):
        process(agent.queue, agent.queue.get(timeout=0), agent.reconcile, lambda *a: failed.append(a))
    assert not failed, f"a reconcile failed: {failed}"


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
    log = node.log_hooks()
    counts = count_reads(node)
    tick(node)
    # one observation shared by the orphan check and the three reconciles: the interfaces
    # and the links listed once, each program's pins opened once (not again to report
    # them), the default route read only because (and when) an attachment selects the
    # primary interface
    assert counts == {"interfaces": 1, "list_programs": 1, "open_pinned": 3, "list_links": 1,
                      **({"default_route_interface": 1} if primary else {})}
    assert log == [] and len(node.api.status_writes) == writes and len(node.api.events) == events


def test_drift_is_repaired_on_the_next_tick_and_the_kernel_read_again_after_the_repair():
    node, atts = three_programs()
    tick(node)
    ours = node.hook("eth1").drv_prog_id
    node.detach_link("eth1", "prog-1")
    counts = count_reads(node)
    tick(node)
    assert node.hook("eth1").drv_prog_id == ours and entry_of(node, atts[1], "eth1")["ready"]
    assert node.api.event_reasons() == [reasons.DRIFT_REPAIRED]
    assert counts["interfaces"] == 2          # the tick's read, and once more after the repair changed the kernel


def test_a_change_made_by_one_reconcile_is_seen_by_the_next_in_the_same_tick():
    """The higher-priority program takes eth0 over (its link updated and renamed); the other
    one, reconciled next in the same tick, decides on the kernel read after that takeover:
    a Conflict, not a Keep of a program that is no longer there."""
    node = Node()
    low = add_attachment(node, "low", interfaces={"names": ["eth0"]}, priority=100)
    tick(node)
    assert entry_of(node, low, "eth0")["ready"]
    low_link = entry_of(node, low, "eth0")["linkId"]
    high = add_attachment(node, "high", interfaces={"names": ["eth0"]}, priority=900)
    objects = {n: node.agent.cache.get(n) for n in (high, low)}
    node.agent.cache.replace(objects)                                # high's reconcile first
    tick(node)
    high_id = node.hook().drv_prog_id
    won = entry_of(node, high, "eth0")
    assert won["ready"] and won["progId"] == high_id
    assert won["linkId"] == low_link and won["attachedBy"] == "link"   # the same link, now high's (atomic)
    assert [v.program for v in node.agent.view.pins.list_links()] == ["high"]
    lost = entry_of(node, low, "eth0")
    assert not lost["ready"] and lost["reason"] == reasons.CONFLICT and str(high_id) in lost["message"]
    assert node.api.event_reasons() == [reasons.TOOK_OVER, reasons.CONFLICT]     # the winner's, the loser's Stalled


def test_an_observation_older_than_the_max_age_is_read_again(monkeypatch):
    node, _ = three_programs()
    tick(node)
    tick(node)
    counts = count_reads(node)
    monkeypatch.setattr(nodeview, "OBSERVATION_MAX_AGE", -1.0)      # every use is too late
    tick(node)
    assert counts["interfaces"] == 1 + 3 * 3       # orphan check; each reconcile's repair, decision and collection


def test_the_worker_reads_the_kernel_afresh_after_idling(monkeypatch):
    """Agent.run itself: an observation never outlives an idle worker, so drift behind our
    back between two ticks is repaired on the next one (the max age made irrelevant)."""
    import threading
    import time

    monkeypatch.setattr(nodeview, "OBSERVATION_MAX_AGE", 3600.0)
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
        node.detach_link()
        wait(lambda: node.hook().drv_prog_id == ours, "the drift repair")
        assert agent.health.problems() == []
    finally:
        agent.shutdown()
        worker.join(10)
        agent.close()
    assert not worker.is_alive()


# --- 9. the work queue: a failed reconcile is retried with backoff, not by every resync ----
def test_a_failing_reconcile_backs_off_and_the_resync_leaves_it_to_its_timer():
    from kube_xdp_api.workqueue import process

    node = Node()
    node.create()
    agent = node.agent
    agent.synced.set()
    boom = RuntimeError("the API server went away")
    with mock.patch.object(agent.reconciler, "reconcile", side_effect=boom):
        agent.queue.add(ATT)
        failures = []
        process(agent.queue, agent.queue.get(timeout=0), agent.reconcile, lambda *a: failures.append(a))
    assert [(k, e) for k, e, _ in failures] == [(ATT, boom)] and 0 <= failures[0][2] < 1.0
    assert agent.queue.retries(ATT) == 1 and agent.queue.depth().delayed == 1
    agent.resync()                                    # not added again: its backoff timer will
    assert len(agent.queue) == 0
    agent.queue.forget(ATT)
    agent.resync()
    assert len(agent.queue) == 1


def test_a_transient_cause_is_looked_at_again_after_a_delay():
    node = Node()
    node.create()
    node.agent.reconciler.sources.texts.clear()
    node.agent.reconciler.sources.custom = mock.Mock(get_cluster_custom_object=mock.Mock(
        side_effect=kubernetes.client.rest.ApiException(status=404)))
    assert node.agent.reconcile(ATT) == 2.0
    assert node.status()["reason"] == reasons.SOURCE_NOT_FOUND


# --- 10. the agent lists and watches its own attachments, selected on spec.nodeName --------
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
            agent.stopping.set()                 # one round of the loop
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
