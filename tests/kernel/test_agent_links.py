"""The agent's decide -> execute -> record over the real kernel: attachments are pinned
bpf_links (kube_xdp_agent.decide/execute/nodeview, and the Agent's reconcile end to end
with the real build worker), on a veth in a network namespace and a bpffs of its own.

What the unit tests check on the fake kernel, checked here on the real one:
- an attach is a link pinned at <bpffs>/kube-xdp/<program>/links/<iface>, and the
  kernel refuses `ip link set dev X xdp off` while it holds the hook;
- an update is one BPF_LINK_UPDATE: same link, new program, the hook never empty;
- a restarted agent adopts the pinned link: nothing written to the hook;
- a link pin removed behind the agent's back while it holds the link open does not
  detach the program, and is pinned again (same link, same program);
- deletion detaches the link and removes every pin.
"""

from __future__ import annotations

import copy
import os
import subprocess
from unittest import mock

import kubernetes
import pytest

from kube_xdp_agent.controller import Agent, AgentConfig
from kube_xdp_agent.decide import Keep, RepinLink, Wanted, decide, repairs
from kube_xdp_agent.execute import Executor
from kube_xdp_agent.kernel import CompileRequest, HostKernel, Netlink, PinStore
from kube_xdp_agent.nodeview import NodeView
from kube_xdp_agent.record import IfaceRecord
from kube_xdp_api import names, reasons
from kube_xdp_api.spec import source_digest
from tests.unit.test_agent_controller import FakeApi

from .conftest import NS_IF, PASS_SRC

PROG = "kxt-agent"
DIGEST_A, DIGEST_B = "aaaaaaaaaaaa", "bbbbbbbbbbbb"


@pytest.fixture
def view(netns_pair, bpffs):
    v = NodeView(HostKernel(), netns=netns_pair.ns, bpffs=bpffs)
    yield v
    v.close()


def pin(view: NodeView, compiler, digest: str, version: str) -> int:
    loaded = compiler.load(CompileRequest(PASS_SRC, "xdp_pass", {"ID": f"10{version}"}))
    try:
        return view.pins.pin_program(PROG, digest, loaded).prog_id
    finally:
        compiler.release(loaded.key)


def run(view: NodeView, digest: str, record=None):
    view.forget()
    actions = decide(Wanted(PROG, digest, (NS_IF,), ("native", "generic")), view.observe(), record or {})
    return actions, Executor(view.node, program=PROG, want=digest, modes=("native", "generic"),
                             held_link=view.keeper.fd).run(actions)


def hook(netns: str):
    with Netlink(netns) as nl:
        return nl.read_xdp(NS_IF)


def test_an_attach_is_a_pinned_link_the_kernel_defends(view, netns_pair, compiler):
    prog_id = pin(view, compiler, DIGEST_A, "1")
    _, out = run(view, DIGEST_A)
    [r] = out.interfaces
    assert (r.ok, r.mode, r.prog_id, r.attached_by) == (True, "native", prog_id, "link")
    link = view.pins.read_link(PROG, NS_IF)
    assert link.link_id == r.link_id and link.prog_id == prog_id
    assert os.path.exists(view.pins.link_path(PROG, NS_IF))
    off = subprocess.run(["ip", "-n", netns_pair.ns, "link", "set", "dev", NS_IF, "xdp", "off"],
                         capture_output=True, text=True)
    assert off.returncode != 0 and "BPF XDP link" in off.stderr
    assert hook(netns_pair.ns).drv_prog_id == prog_id


def test_an_update_is_one_link_update_and_a_restart_adopts_the_link(view, netns_pair, bpffs, compiler):
    first = pin(view, compiler, DIGEST_A, "1")
    _, out = run(view, DIGEST_A)
    link_id = out.interfaces[0].link_id
    second = pin(view, compiler, DIGEST_B, "2")
    actions, out = run(view, DIGEST_B)
    [r] = out.interfaces
    assert (r.ok, r.prog_id, r.link_id, r.tried, r.changed) == (True, second, link_id, False, True)
    assert hook(netns_pair.ns).drv_prog_id == second and second != first
    # a restarted agent: a new view (no fds held), the record from its status
    view.close()
    again = NodeView(HostKernel(), netns=netns_pair.ns, bpffs=bpffs)
    try:
        record = {NS_IF: IfaceRecord(NS_IF, True, "native", "native", (), "link", link_id, second, DIGEST_B)}
        actions, out = run(again, DIGEST_B, record)
        assert actions == [Keep(NS_IF, second, "native", DIGEST_B, link_id)]
        assert [(r.ok, r.changed) for r in out.interfaces] == [(True, False)]
    finally:
        again.close()


def test_a_link_pin_removed_while_the_agent_holds_the_link_is_repinned_nothing_detached(view, netns_pair, compiler):
    prog_id = pin(view, compiler, DIGEST_A, "1")
    _, out = run(view, DIGEST_A)
    link_id = out.interfaces[0].link_id
    view.forget()
    view.observe()                                     # the agent holds the link open from now on
    os.unlink(view.pins.link_path(PROG, NS_IF))         # rm behind its back
    assert hook(netns_pair.ns).drv_prog_id == prog_id  # still attached: the agent's fd holds the link
    view.forget()
    observed = view.observe()
    [lost] = observed.links
    assert (lost.link_id, lost.pinned, lost.alive) == (link_id, False, True)
    actions = repairs(PROG, observed, {})
    assert actions == [RepinLink(PROG, NS_IF, link_id)]
    done = Executor(view.node, program=PROG, held_link=view.keeper.fd).run(actions)
    assert done.repinned == [f"{PROG}/links/{NS_IF}"] and done.errors == []
    assert view.pins.read_link(PROG, NS_IF).link_id == link_id
    assert hook(netns_pair.ns).drv_prog_id == prog_id


def test_without_the_agent_a_removed_link_pin_detaches(view, netns_pair, compiler):
    """The kernel's rule, which the agent's held fd works around while it runs."""
    pin(view, compiler, DIGEST_A, "1")
    run(view, DIGEST_A)
    view.close()                                        # no fd of the link left
    os.unlink(view.pins.link_path(PROG, NS_IF))
    import time
    deadline = time.monotonic() + 2
    while hook(netns_pair.ns).attached is not None and time.monotonic() < deadline:
        time.sleep(0.01)                                # the release is deferred (~12-15 ms)
    assert hook(netns_pair.ns).attached is None


# --- the Agent's reconcile end to end: the real build worker, bcc, links --------------------
SOURCE = "int xdp_agent(struct xdp_md *ctx) { return XDP_PASS + 0 * VERSION; }"
ATT = f"{PROG}.node-k"


def agent_on(api: FakeApi, netns: str, bpffs: str) -> Agent:
    with mock.patch.object(kubernetes.client, "CustomObjectsApi", lambda client: api), \
            mock.patch.object(kubernetes.client, "CoreV1Api", lambda client: api):
        agent = Agent(AgentConfig(node_name="node-k", bpffs=bpffs, netns=netns), kubernetes.client.ApiClient(),
                      HostKernel())
    agent.reconciler.sources.texts[source_digest(SOURCE)] = SOURCE
    for name, obj in api.objects.items():
        agent.cache.put(name, copy.deepcopy(obj))
    return agent


def test_the_agent_attaches_updates_adopts_and_removes_by_link(netns_pair, bpffs):
    api = FakeApi()
    spec = {"nodeName": "node-k", "programRef": {"name": PROG, "uid": "u"}, "programGeneration": 1,
            "sourceDigest": source_digest(SOURCE), "entrypoint": "xdp_agent", "defines": {"VERSION": "1"},
            "interfaces": {"names": [NS_IF]}, "mode": "native", "fallback": ["generic"], "priority": 500}
    api.objects[ATT] = {"apiVersion": names.API_VERSION, "kind": names.ATTACHMENT_KIND,
                        "metadata": {"name": ATT, "uid": "a", "generation": 1, "resourceVersion": "1",
                                     "creationTimestamp": "2026-01-01T00:00:00Z"}, "spec": spec}
    agent = agent_on(api, netns_pair.ns, bpffs)
    try:
        agent.reconcile(ATT)
        [entry] = api.objects[ATT]["status"]["interfaces"]
        link = PinStore(bpffs).read_link(PROG, NS_IF)
        assert entry["ready"] and entry["attachedBy"] == "link" and entry["linkId"] == link.link_id
        assert entry["progId"] == link.prog_id == hook(netns_pair.ns).drv_prog_id
        assert api.objects[ATT]["metadata"]["finalizers"] == [names.FINALIZER_AGENT]

        api.objects[ATT]["spec"]["defines"] = {"VERSION": "2"}
        api.objects[ATT]["metadata"]["generation"] = 2
        agent.cache.put(ATT, copy.deepcopy(api.objects[ATT]))
        agent.view.forget()
        agent.reconcile(ATT)
        [updated] = api.objects[ATT]["status"]["interfaces"]
        assert updated["linkId"] == entry["linkId"] and updated["progId"] != entry["progId"]
        assert hook(netns_pair.ns).drv_prog_id == updated["progId"]
        assert len(PinStore(bpffs).list_programs()[PROG]) == 1          # the old version collected
    finally:
        agent.view.close()

    again = agent_on(api, netns_pair.ns, bpffs)                         # a restart: adopted
    try:
        writes = len(api.status_writes)
        again.reconcile(ATT)
        assert api.objects[ATT]["status"]["interfaces"] == [updated]
        assert len(api.status_writes) <= writes + 1                     # status.compile only: adopted
        assert again.builder.key(CompileRequest(SOURCE, "xdp_agent", {"VERSION": "2"}))[:12] == updated["digest"]

        api.objects[ATT]["metadata"]["deletionTimestamp"] = "2026-01-01T00:05:00Z"
        again.cache.put(ATT, copy.deepcopy(api.objects[ATT]))
        again.view.forget()
        assert again.reconcile(ATT) is None
        assert hook(netns_pair.ns).attached is None
        assert PinStore(bpffs).list_program_dirs() == []
        assert api.objects[ATT]["metadata"]["finalizers"] == []
        assert reasons.DRIFT_REPAIRED not in api.event_reasons()
    finally:
        again.view.close()
