"""The agent's controller on a netdevsim port, end to end (runs in the lab guest).

guest_offload.py proves offload at the kernel layer. Here the agent's own control loop
(`kube_xdp_agent.controller.Agent.run`: list+watch of this node's XdpAttachments, the
work queue, finalizer, decide -> execute (attach.place: pinned bpf_links) -> read back ->
report, status and Events) runs
as a real agent does, with the real `HostKernel` (bcc in the confined build worker,
netlink, bpffs), and takes an XdpAttachment whose program prefers offload. The guest has
no API server: `kube_xdp_lab.fake_api.FakeApiServer` stands in for it under a real
kubernetes ApiClient (merge-patch status, resourceVersion preconditions, finalizers and
deletion, watch events), and the tests write what the operator would (an XdpProgram and
the node's XdpAttachment) and read back what the agent reported.

Cases: (a) offload preferred on a netdevsim port; its pins removed behind its back;
(d) a restart adopting it, then deletion; (b) a per-CPU map with offload preferred, then
the policy made offload-only; (c) offload or fail with that program from the start;
(e) the device refusing the HW attach (netdevsim's bpf_xdpoffload_accept=N): native by
policy with reason OffloadUnsupported and the kernel's own message, or, offload required,
nothing attached and Stalled with that reason and message (no rebuild on resync).

Every status claim is checked against the kernel: the hook read back by netlink and by
iproute2, netdevsim's own `bpf_offloaded_id`, the pins, the maps through bpf(2).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kube_xdp_agent.controller import Agent, AgentConfig
from kube_xdp_agent.kernel import CompileRequest, HostKernel, Netlink, PinStore, bpfsys
from kube_xdp_api import names, reasons
from kube_xdp_api.spec import AttachmentSpec, ProgramSpec, source_digest
from kube_xdp_lab.fake_api import FakeApiServer, core_path, custom_path

from .conftest import del_nsim, make_nsim
from .guest_offload import OFFLOADABLE_SRC, PERCPU_SRC, iproute_xdp

NODE = "lab-node"
PROGRAMS = custom_path(names.GROUP, names.VERSION, names.PROGRAMS)
ATTACHMENTS = custom_path(names.GROUP, names.VERSION, names.ATTACHMENTS)
EVENTS = core_path("default", "events")
RESYNC = 1.0            # seconds: several no-op resyncs happen during each test
CONVERGE = 180.0        # seconds: two bcc builds under TCG take ~10-25 s; slack for a loaded host

# The offloadable program of guest_offload.py under its own entrypoint (a compile of its own).
CTL_SRC = OFFLOADABLE_SRC.replace("xdp_hits", "xdp_ctl")


# -- what the operator would write ------------------------------------------------------------


def deploy(api: FakeApiServer, program: str, source: str, entrypoint: str, iface: str, mode: str,
           fallback: list[str]) -> str:
    """An XdpProgram and this node's XdpAttachment, in the canonical form the operator writes.
    Returns the attachment's name."""
    spec = ProgramSpec.from_dict({"source": {"inline": source}, "entrypoint": entrypoint,
                                  "interfaces": {"names": [iface]}, "mode": mode, "fallback": fallback})
    prog = api.create(PROGRAMS, {"apiVersion": names.API_VERSION, "kind": names.PROGRAM_KIND,
                                 "metadata": {"name": program}, "spec": spec.to_dict()})
    att_spec = AttachmentSpec(node_name=NODE, program_name=program, program_uid=prog["metadata"]["uid"],
                              program_generation=1, source_digest=source_digest(source), fields=spec.fields)
    name = names.attachment_name(program, NODE)
    api.create(ATTACHMENTS, {
        "apiVersion": names.API_VERSION, "kind": names.ATTACHMENT_KIND,
        "metadata": {"name": name, "labels": {names.LABEL_PROGRAM: program,
                                              names.LABEL_NODE: names.node_label_value(NODE),
                                              names.LABEL_MANAGED_BY: names.MANAGED_BY}},
        "spec": att_spec.to_dict()})
    return name


def set_policy(api: FakeApiServer, program: str, mode: str, fallback: list[str]) -> int:
    """spec.mode/fallback changed on the XdpProgram and its attachment (as the operator
    would copy it); returns the attachment's new generation."""
    api.patch(PROGRAMS, program, {"spec": {"mode": mode, "fallback": fallback}})
    att = api.patch(ATTACHMENTS, names.attachment_name(program, NODE), {"spec": {"mode": mode, "fallback": fallback}})
    return att["metadata"]["generation"]


def condition(status: dict, type_: str) -> dict:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


def settled(api: FakeApiServer, name: str, generation: int = 1) -> dict:
    """The attachment's status once the agent has reported on `generation`: Ready or Stalled."""
    def check():
        status = (api.get(ATTACHMENTS, name) or {}).get("status") or {}
        if status.get("observedGeneration") == generation and (
                condition(status, "Ready").get("status") == "True" or condition(status, "Stalled").get("status") == "True"):
            return status
        return None
    return api.wait_for(f"{name} to report generation {generation}", check, CONVERGE)


def events_of(api: FakeApiServer, name: str) -> list[tuple[str, str, str]]:
    return [(e["type"], e["reason"], e["message"]) for e in api.list(EVENTS)
            if e["involvedObject"]["name"] == name]


# -- an agent, as `kube-xdp-agent --node-name lab-node --bpffs <dir>` runs it ----------------


class _Failures(logging.Handler):
    """Reconciles that raised: the agent logs them and retries, which a status check alone
    might not notice."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("reconcile of"):
            self.messages.append(self.format(record))


class RunningAgent:
    """`Agent.run()` in a thread, with spies: which builds it ran and how many reconciles
    it finished (the build worker is the real one; the spies only count), and the
    reconciles that failed (`failures`)."""

    def __init__(self, api: FakeApiServer, bpffs: str, compiler) -> None:
        self.api = api
        self._failures = _Failures()
        logging.getLogger("kube_xdp_agent").addHandler(self._failures)
        self.stopped = False
        self.agent = Agent(AgentConfig(node_name=NODE, bpffs=bpffs, resync=RESYNC), api.client(),
                           HostKernel(compiler=compiler))
        self.builds: list[tuple[str, str | None]] = []      # (program, device) per build worker run
        self.reconciled = 0
        build, reconcile = self.agent.builder.build, self.agent.reconcile

        def counting_build(req: CompileRequest, program: str):
            self.builds.append((program, req.device))
            return build(req, program)

        def counting_reconcile(name: str) -> None:
            reconcile(name)
            self.reconciled += 1

        self.agent.builder.build = counting_build
        self.agent.reconcile = counting_reconcile
        self.thread = threading.Thread(target=self.agent.run, name="lab-agent", daemon=True)
        self.thread.start()

    @property
    def failures(self) -> list[str]:
        return list(self._failures.messages)

    def stop(self) -> None:
        """What SIGTERM does (__main__.stop), then the watch ends as the process would."""
        if self.stopped:
            return
        self.stopped = True
        logging.getLogger("kube_xdp_agent").removeHandler(self._failures)
        self.agent.shutdown()
        self.api.end_watches()
        self.thread.join(timeout=120)
        assert not self.thread.is_alive(), "the agent did not stop"
        self.agent.close()             # in the thread that made it (pyroute2's event loop)

    def wait_reconciled(self, more: int, timeout: float = CONVERGE) -> None:
        target = self.reconciled + more
        self.api.wait_for(f"{more} more reconcile(s)", lambda: self.reconciled >= target, timeout)


@contextlib.contextmanager
def bpffs_mount() -> Iterator[str]:
    """A bpffs instance of its own: this agent's pins and nothing else."""
    path = tempfile.mkdtemp(prefix="kxlab-ctl-bpffs-")
    subprocess.run(["mount", "-t", "bpf", "bpf", path], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", path], check=False)
        os.rmdir(path)


def pinned_ids(bpffs: str, program: str) -> dict[str, int]:
    return {p.digest12: p.prog_id for p in PinStore(bpffs).open_pinned(program)}


# -- (a) offload preferred on a netdevsim port, pins repaired, then (d) restart and deletion -----


@pytest.fixture(scope="module")
def offloaded(compiler):
    """One agent that put `ctl-offload` (offload preferred, fallback native, generic) on a
    netdevsim device of its own (the session port's fixture empties its hook per test).
    The tests after (a) build on it, in file order: pins removed and repaired, then (d)
    (restart, deletion); whatever is left is removed here."""
    port = make_nsim()
    api = FakeApiServer()
    try:
        with bpffs_mount() as bpffs:
            t0 = time.monotonic()
            name = deploy(api, "ctl-offload", CTL_SRC, "xdp_ctl", port.ifname, "offload", ["native", "generic"])
            state = {"api": api, "bpffs": bpffs, "port": port, "name": name,
                     "agent": RunningAgent(api, bpffs, compiler)}
            try:
                state["status"] = settled(api, name)
                state["seconds"] = round(time.monotonic() - t0, 1)
                yield state
            finally:
                state["agent"].stop()
    finally:
        del_nsim(port)


def test_offload_preferred_is_attached_offloaded_and_reported(offloaded, measure) -> None:
    api, bpffs, port, name, running = (offloaded[k] for k in ("api", "bpffs", "port", "name", "agent"))
    measure("controller_offload_converge_s (deploy -> Ready, 2 builds)", offloaded["seconds"])
    status = offloaded["status"]
    assert condition(status, "Ready")["status"] == "True", status
    assert condition(status, "Ready")["reason"] == reasons.ATTACHED
    assert condition(status, "Ready")["message"] == f"{port.ifname}=offload"
    assert condition(status, "Stalled")["status"] == "False" and condition(status, "Reconciling")["status"] == "False"
    assert "reason" not in status and "message" not in status   # the merge patch removed them
    [entry] = status["interfaces"]
    assert entry["name"] == port.ifname and entry["ready"] is True and entry["mode"] == "offload"
    assert "reason" not in entry and "refused" not in entry   # offload is the preferred mode: nothing to explain
    # held by a pinned bpf_link (the 6.1 kernel takes HW mode by link: guest_offload.py)
    [link] = PinStore(bpffs).list_links("ctl-offload")
    assert entry["attachedBy"] == "link" and entry["linkId"] == link.link_id and link.prog_id == entry["progId"]
    assert entry["preferredMode"] == "offload" and entry["digest"] == Path(entry["pinPath"]).parent.name

    # The mode and id are the kernel's: netlink, iproute2 and netdevsim agree.
    with Netlink() as nl:
        hook = nl.read_xdp(port.ifname)
    assert hook.attached == "offload" and hook.hw_prog_id == entry["progId"]
    assert hook.drv_prog_id is None and hook.skb_prog_id is None
    assert iproute_xdp(port.ifname)["mode"] == 3                       # XDP_ATTACHED_HW
    assert int(port.knob("bpf_offloaded_id")) == entry["progId"]

    # Two builds by the real build worker: the host program, then the device-bound one.
    assert running.builds == [("ctl-offload", None), ("ctl-offload", port.ifname)]
    assert status["compile"]["cacheHit"] is False and status["compile"]["durationMs"] > 0
    host_key = running.agent.builder.key(CompileRequest(CTL_SRC, "xdp_ctl"))
    assert status["compile"]["digest"] == host_key

    # Pins: both objects pinned; the reported pin is the program on the hook, and its maps
    # are the device's, read and written from user space.
    pins = pinned_ids(bpffs, "ctl-offload")
    assert len(pins) == 2 and host_key[:12] in pins and entry["progId"] in pins.values()
    pin_path = Path(entry["pinPath"])
    assert pin_path.is_relative_to(Path(bpffs) / names.PIN_SUBDIR / "ctl-offload")
    with bpfsys.obj_get(str(pin_path)) as fd:
        info = bpfsys.prog_info(fd.fd)
    assert info.id == entry["progId"], f"status pinPath {pin_path} holds program {info.id}, not the offloaded {entry['progId']}"
    assert entry["tag"] == info.tag
    with bpfsys.BpfMap.open_pinned(str(pin_path.parent / "maps" / "hits")) as hits:
        assert hits.info.id in info.map_ids and not hits.info.percpu and hits.info.max_entries == 2
        hits.update(struct.pack("I", 1), struct.pack("Q", 41))
        assert struct.unpack("Q", hits.lookup(struct.pack("I", 1)))[0] == 41
        assert struct.unpack("Q", hits.lookup(struct.pack("I", 0)))[0] == 0

    # The agent's finalizer is on; no Warning Event.
    att = api.get(ATTACHMENTS, name)
    assert att["metadata"]["finalizers"] == [names.FINALIZER_AGENT]
    assert [e for e in events_of(api, name) if e[0] == "Warning"] == []

    # Resyncs that find everything in place change nothing, in the kernel or in the API.
    patches = api.count("PATCH", f"{ATTACHMENTS}/{name}/status")
    running.wait_reconciled(2)
    with Netlink() as nl:
        assert nl.read_xdp(port.ifname) == hook
    assert api.count("PATCH", f"{ATTACHMENTS}/{name}/status") == patches
    assert len(running.builds) == 2
    assert not running.failures


def test_pins_removed_behind_its_back_are_repaired_without_touching_the_hook(offloaded) -> None:
    """The status is what the agent re-pins from when pins vanish (its progId and digest):
    the offloaded program is re-pinned from the kernel under its own digest, maps and
    contents kept, and its link (held open by the agent, so its removed pin did not detach
    it) is pinned again; the host program (referenced by its pin only) is built again; the
    hook is never touched."""
    api, bpffs, port, name, running = (offloaded[k] for k in ("api", "bpffs", "port", "name", "agent"))
    entry = offloaded["status"]["interfaces"][0]
    prog_id, pin_path = entry["progId"], Path(entry["pinPath"])
    before = pinned_ids(bpffs, "ctl-offload")
    with bpfsys.BpfMap.open_pinned(str(pin_path.parent / "maps" / "hits")) as hits:
        hits.update(struct.pack("I", 0), struct.pack("Q", 7))
    builds = len(running.builds)
    # Gone at once (a rename), then deleted: the agent never sees a half-removed directory.
    os.rename(Path(bpffs) / names.PIN_SUBDIR / "ctl-offload", Path(bpffs) / "removed-behind-its-back")
    shutil.rmtree(Path(bpffs) / "removed-behind-its-back")

    api.wait_for("a PinRepaired Event", lambda: [e for e in events_of(api, name) if e[1] == reasons.PIN_REPAIRED],
                 CONVERGE)
    api.wait_for("the host program built again", lambda: len(pinned_ids(bpffs, "ctl-offload")) == 2, CONVERGE)
    running.wait_reconciled(1)
    after = pinned_ids(bpffs, "ctl-offload")
    assert after[pin_path.parent.name] == prog_id                       # re-pinned, same program
    assert set(after) == set(before) and after != before                # the host one is new
    assert running.builds[builds:] == [("ctl-offload", None)]
    with Netlink() as nl:
        assert nl.read_xdp(port.ifname).hw_prog_id == prog_id
    assert int(port.knob("bpf_offloaded_id")) == prog_id
    with bpfsys.BpfMap.open_pinned(str(pin_path.parent / "maps" / "hits")) as hits:
        assert struct.unpack("Q", hits.lookup(struct.pack("I", 0)))[0] == 7
    assert not [e for e in events_of(api, name) if e[1] == reasons.DRIFT_REPAIRED]
    status = api.get(ATTACHMENTS, name)["status"]
    assert status["interfaces"] == offloaded["status"]["interfaces"]         # the same link id too
    assert [v.link_id for v in PinStore(bpffs).list_links("ctl-offload")] == [status["interfaces"][0]["linkId"]]
    assert condition(status, "Ready")["status"] == "True"
    offloaded["status"] = status
    # (A reconcile that was between reading the pins and opening them may have failed and
    # been retried: that is the agent's way, so running.failures is not checked here.)


def test_restart_adopts_the_offloaded_program_and_deletion_removes_it(offloaded, compiler, measure) -> None:
    api, bpffs, port, name = (offloaded[k] for k in ("api", "bpffs", "port", "name"))
    prog_id = offloaded["status"]["interfaces"][0]["progId"]
    pins_before = pinned_ids(bpffs, "ctl-offload")
    events_before = events_of(api, name)
    offloaded["agent"].stop()

    # A new agent process on the same bpffs: adopts what the pins and the hook show.
    before = api.get(ATTACHMENTS, name)["status"]
    meta_writes = api.count("PATCH", f"{ATTACHMENTS}/{name}")
    status_writes = api.count("PATCH", f"{ATTACHMENTS}/{name}/status")
    t0 = time.monotonic()
    again = offloaded["agent"] = RunningAgent(api, bpffs, compiler)
    again.wait_reconciled(2)        # the first sync, then a resync
    measure("controller_restart_adopt_s (2 reconciles)", round(time.monotonic() - t0, 1))
    assert again.builds == [], "the restarted agent compiled instead of adopting its pins"
    with Netlink() as nl:
        assert nl.read_xdp(port.ifname).hw_prog_id == prog_id
    assert int(port.knob("bpf_offloaded_id")) == prog_id
    assert pinned_ids(bpffs, "ctl-offload") == pins_before
    status = api.get(ATTACHMENTS, name)["status"]
    assert status["interfaces"][0]["progId"] == prog_id and status["interfaces"][0]["mode"] == "offload"
    assert condition(status, "Ready")["status"] == "True"
    # One write only: status.compile now says the running program was adopted from its pin
    # (cacheHit true, the adoption's duration; README "Compile cache, honestly"), not compiled by this
    # process. Nothing else changed: no finalizer write, no condition transition, no Event
    # (a DriftRepaired would mean it detached and attached again).
    assert api.count("PATCH", f"{ATTACHMENTS}/{name}") == meta_writes
    assert api.count("PATCH", f"{ATTACHMENTS}/{name}/status") == status_writes + 1
    assert before["compile"]["cacheHit"] is False
    assert status["compile"]["cacheHit"] is True and status["compile"]["digest"] == before["compile"]["digest"]
    assert {k: v for k, v in status.items() if k != "compile"} == {k: v for k, v in before.items() if k != "compile"}
    assert events_of(api, name) == events_before

    # Restarted again: the adoption is already reported, so nothing at all is written.
    again.stop()
    again = offloaded["agent"] = RunningAgent(api, bpffs, compiler)
    again.wait_reconciled(2)
    assert again.builds == []
    assert api.count("PATCH", f"{ATTACHMENTS}/{name}") == meta_writes
    assert api.count("PATCH", f"{ATTACHMENTS}/{name}/status") == status_writes + 1
    assert api.get(ATTACHMENTS, name)["status"] == status
    assert events_of(api, name) == events_before

    # Deletion: the agent detaches, unpins and releases its finalizer; the object goes.
    t0 = time.monotonic()
    api.delete(ATTACHMENTS, name)
    assert api.get(ATTACHMENTS, name)["metadata"]["deletionTimestamp"]
    api.wait_for(f"{name} to be gone", lambda: api.get(ATTACHMENTS, name) is None, CONVERGE)
    measure("controller_offload_delete_s", round(time.monotonic() - t0, 1))
    with Netlink() as nl:
        assert nl.read_xdp(port.ifname).attached is None
    assert iproute_xdp(port.ifname) is None
    assert int(port.knob("bpf_offloaded_id")) == 0
    assert not (Path(bpffs) / names.PIN_SUBDIR / "ctl-offload").exists()
    assert PinStore(bpffs).list_programs() == {}
    assert again.builds == [] and not again.failures


# -- (b) a per-CPU map with offload preferred, (c) offload or fail -----------------------------
# The offload decision is the agent's, from the source (offload.check_source in
# offloads.OffloadBuilds.builder_for), before any device-bound build: the only build is the
# host program's.


@pytest.fixture
def agent_on(compiler) -> Iterator:
    """start(api) -> a RunningAgent on a bpffs of its own, stopped at
    the end of the test, which fails if any of its reconciles raised."""
    with bpffs_mount() as bpffs:
        started: list[RunningAgent] = []

        def start(api: FakeApiServer) -> RunningAgent:
            started.append(RunningAgent(api, bpffs, compiler))
            return started[-1]
        start.bpffs = bpffs  # type: ignore[attr-defined]
        try:
            yield start
        finally:
            for running in started:
                running.stop()
        for running in started:
            assert not running.failures, f"reconciles failed: {running.failures}"


def test_per_cpu_program_falls_back_to_native_with_the_reason(nsim, agent_on) -> None:
    api = FakeApiServer()
    name = deploy(api, "ctl-pcpu", PERCPU_SRC, "xdp_pcpu", nsim.ifname, "offload", ["native", "generic"])
    running = agent_on(api)
    status = settled(api, name)
    # A fallback within the policy is success, with the reason the preferred mode was not used.
    assert condition(status, "Ready")["status"] == "True", status
    assert condition(status, "Ready")["message"] == f"{nsim.ifname}=native"
    assert "reason" not in status
    [entry] = status["interfaces"]
    assert entry["ready"] is True and entry["mode"] == "native"
    assert entry["reason"] == reasons.PROGRAM_NOT_OFFLOADABLE
    assert entry["message"].startswith("attached in native mode; refused: offload: ")
    assert "'hits' is a per-CPU map" in entry["message"]
    with Netlink() as nl:
        hook = nl.read_xdp(nsim.ifname)
    assert hook.attached == "native" and hook.drv_prog_id == entry["progId"]
    assert iproute_xdp(nsim.ifname)["mode"] == 1                        # XDP_ATTACHED_DRV
    assert int(nsim.knob("bpf_offloaded_id")) == 0                     # nothing went to the device
    assert running.builds == [("ctl-pcpu", None)]                      # the host program only
    with bpfsys.obj_get(entry["pinPath"]) as fd:
        assert bpfsys.prog_info(fd.fd).id == entry["progId"]
    with bpfsys.BpfMap.open_pinned(str(Path(entry["pinPath"]).parent / "maps" / "hits")) as hits:
        assert hits.info.percpu

    # Resyncs keep it in native with the reason (offload was tried and refused) and write nothing.
    patches = api.count("PATCH", f"{ATTACHMENTS}/{name}/status")
    running.wait_reconciled(2)
    assert api.count("PATCH", f"{ATTACHMENTS}/{name}/status") == patches
    with Netlink() as nl:
        assert nl.read_xdp(nsim.ifname) == hook

    # The policy becomes "offload or fail": the native program goes, nothing takes its place.
    generation = set_policy(api, "ctl-pcpu", "offload", [])
    status = settled(api, name, generation)
    assert condition(status, "Stalled")["status"] == "True" and condition(status, "Ready")["status"] == "False"
    assert status["reason"] == reasons.PROGRAM_NOT_OFFLOADABLE
    [entry] = status["interfaces"]
    assert entry["ready"] is False and entry["reason"] == reasons.PROGRAM_NOT_OFFLOADABLE and "mode" not in entry
    with Netlink() as nl:
        assert nl.read_xdp(nsim.ifname).attached is None
    assert int(nsim.knob("bpf_offloaded_id")) == 0
    assert running.builds == [("ctl-pcpu", None)]


def assert_offload_or_fail_stalled(status: dict, nsim, reason: str) -> str:
    """Offload required and not possible: Ready False, Stalled True with `reason`, not
    Reconciling; the one interface entry not ready with that reason; nothing attached in
    any mode and nothing bound to the device. Returns the interface's message."""
    assert condition(status, "Ready")["status"] == "False"
    assert condition(status, "Stalled")["status"] == "True"
    assert condition(status, "Stalled")["reason"] == reason
    assert condition(status, "Reconciling")["status"] == "False"
    assert status["reason"] == reason
    [entry] = status["interfaces"]
    assert entry == {"name": nsim.ifname, "ready": False, "preferredMode": "offload", "refused": entry["refused"],
                     "reason": reason, "message": entry["message"]}
    assert [(r["mode"], r["reason"]) for r in entry["refused"]] == [("offload", reason)]
    assert entry["message"].startswith(f"no allowed mode attached on {nsim.ifname}: offload: "), entry["message"]
    with Netlink() as nl:
        assert nl.read_xdp(nsim.ifname).attached is None
    assert iproute_xdp(nsim.ifname) is None
    assert int(nsim.knob("bpf_offloaded_id")) == 0
    return entry["message"]


def test_offload_or_fail_with_an_unoffloadable_program(nsim, agent_on) -> None:
    api = FakeApiServer()
    name = deploy(api, "ctl-must-offload", PERCPU_SRC.replace("xdp_pcpu", "xdp_must"), "xdp_must", nsim.ifname,
                  "offload", [])
    running = agent_on(api)
    status = settled(api, name)
    # Failed and Stalled (a human must change the program or the policy), with the reason.
    message = assert_offload_or_fail_stalled(status, nsim, reasons.PROGRAM_NOT_OFFLOADABLE)
    assert "'hits' is a per-CPU map" in message and "only array and hash" in message
    assert running.builds == [("ctl-must-offload", None)]
    assert [e[:2] for e in events_of(api, name)] == [("Warning", reasons.PROGRAM_NOT_OFFLOADABLE)]

    # Resyncs try again (the cause may go away) and write nothing while nothing changes.
    patches = api.count("PATCH", f"{ATTACHMENTS}/{name}/status")
    running.wait_reconciled(2)
    assert api.count("PATCH", f"{ATTACHMENTS}/{name}/status") == patches
    assert len(events_of(api, name)) == 1

    # Deleting it removes the only trace (the host program's pins) and the finalizer.
    api.delete(ATTACHMENTS, name)
    api.wait_for(f"{name} to be gone", lambda: api.get(ATTACHMENTS, name) is None, CONVERGE)
    assert PinStore(agent_on.bpffs).list_programs() == {}


# -- (e) the device refuses offload (netdevsim's bpf_xdpoffload_accept=N) ----------------------
# The program is offloadable and the device takes it bound (bpf_bind_accept=Y): the refusal
# comes at the HW attach (EOPNOTSUPP with netdevsim's extack). The agent's path: the build
# worker loads the device-bound program (kernel/offload.load_for_offload), the executor
# attaches it in offload mode (attach.place, through execute.Executor), the refusal is classified
# OffloadUnsupported with the kernel's own words, and the next allowed mode is tried.

REFUSED_SRC = OFFLOADABLE_SRC.replace("xdp_hits", "xdp_refused")
KERNEL_SAYS = "XDP offload disabled in DebugFS"     # netdevsim's extack (prefixed "netdevsim: ")


def test_device_refusing_offload_falls_back_to_native_with_the_kernel_message(nsim, agent_on) -> None:
    assert nsim.knob("bpf_xdpoffload_accept", "N") == "N"
    api = FakeApiServer()
    name = deploy(api, "ctl-refused", REFUSED_SRC, "xdp_refused", nsim.ifname, "offload", ["native"])
    running = agent_on(api)
    status = settled(api, name)
    # A fallback within the policy: Ready, native, and the interface says why not offload.
    assert condition(status, "Ready")["status"] == "True", status
    assert condition(status, "Ready")["message"] == f"{nsim.ifname}=native"
    assert condition(status, "Stalled")["status"] == "False"
    assert "reason" not in status and "message" not in status
    [entry] = status["interfaces"]
    assert entry["name"] == nsim.ifname and entry["ready"] is True and entry["mode"] == "native"
    assert entry["reason"] == reasons.OFFLOAD_UNSUPPORTED, entry
    assert entry["message"].startswith("attached in native mode; refused: offload: "), entry["message"]
    assert KERNEL_SAYS in entry["message"], f"the kernel's message is not in the status: {entry['message']!r}"

    # The kernel agrees: native, the reported program; nothing offloaded to the device.
    with Netlink() as nl:
        hook = nl.read_xdp(nsim.ifname)
    assert hook.attached == "native" and hook.drv_prog_id == entry["progId"] and hook.hw_prog_id is None
    assert iproute_xdp(nsim.ifname)["mode"] == 1                        # XDP_ATTACHED_DRV
    assert int(nsim.knob("bpf_offloaded_id")) == 0
    # Offload was really tried: the host program, then the device-bound one (which the
    # device took; it refused the attach). Only the host program stays pinned.
    assert running.builds == [("ctl-refused", None), ("ctl-refused", nsim.ifname)]
    host_key = running.agent.builder.key(CompileRequest(REFUSED_SRC, "xdp_refused"))
    assert pinned_ids(agent_on.bpffs, "ctl-refused") == {host_key[:12]: entry["progId"]}
    with bpfsys.obj_get(entry["pinPath"]) as fd:
        assert bpfsys.prog_info(fd.fd).id == entry["progId"]
    assert [e for e in events_of(api, name) if e[0] == "Warning"] == []

    # Resyncs keep it native (offload was tried and refused): no build, no write, hook as is.
    patches = api.count("PATCH", f"{ATTACHMENTS}/{name}/status")
    running.wait_reconciled(2)
    assert api.count("PATCH", f"{ATTACHMENTS}/{name}/status") == patches
    assert len(running.builds) == 2
    with Netlink() as nl:
        assert nl.read_xdp(nsim.ifname) == hook


def test_offload_required_on_a_device_refusing_offload(nsim, agent_on) -> None:
    assert nsim.knob("bpf_xdpoffload_accept", "N") == "N"
    api = FakeApiServer()
    source = REFUSED_SRC.replace("xdp_refused", "xdp_refmust")
    name = deploy(api, "ctl-refused-must", source, "xdp_refmust", nsim.ifname, "offload", [])
    running = agent_on(api)
    status = settled(api, name)
    # Offload or fail: failed, Stalled (a human must change the device or the policy), with
    # the reason and the kernel's message on the conditions, the status and the interface.
    message = assert_offload_or_fail_stalled(status, nsim, reasons.OFFLOAD_UNSUPPORTED)
    assert KERNEL_SAYS in condition(status, "Stalled")["message"]
    assert KERNEL_SAYS in status["message"] and KERNEL_SAYS in message
    assert running.builds[:2] == [("ctl-refused-must", None), ("ctl-refused-must", nsim.ifname)]
    [warning] = [e for e in events_of(api, name) if e[0] == "Warning"]
    assert warning[1] == reasons.OFFLOAD_UNSUPPORTED and KERNEL_SAYS in warning[2]

    # Resyncs report the same refusal (the agent remembers it for this build on this device)
    # without building the device program again, and write nothing while nothing changes.
    patches = api.count("PATCH", f"{ATTACHMENTS}/{name}/status")
    builds = len(running.builds)
    running.wait_reconciled(2)
    assert api.count("PATCH", f"{ATTACHMENTS}/{name}/status") == patches
    assert len(events_of(api, name)) == 1
    with Netlink() as nl:
        assert nl.read_xdp(nsim.ifname).attached is None
    rebuilt = running.builds[builds:]
    assert rebuilt == [], f"resyncs rebuilt the device-bound program: {rebuilt}"

    # Deleting it removes the pins and the finalizer.
    api.delete(ATTACHMENTS, name)
    api.wait_for(f"{name} to be gone", lambda: api.get(ATTACHMENTS, name) is None, CONVERGE)
    assert PinStore(agent_on.bpffs).list_programs() == {}
