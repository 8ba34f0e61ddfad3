"""Fault 5: drift behind kube-xdp's back, and foreign programs.

kube-xdp holds each hook with a pinned bpf_link, so the kernel itself refuses what were
drift cases before links (then repaired within a resync, with packets mishandled meanwhile):
- 5a `ip link set dev eth0 xdp off`: refused by the kernel ("Can't replace active BPF XDP
  link"); nothing on the hook changes (same link id, same prog id), nothing mishandled, the
  agent has nothing to repair;
- 5b a foreign program atomically replacing ours through netlink: refused (EBUSY); the
  same, ours keeps every packet.

What root can still do, and what the agent does about it (every case under continuous
traffic, counted by the programs' own counters):
- 5c the program's whole pin directory removed (its digest, maps and link pins); 5c-i only
  the program's pin (its digest directory); 5c-ii only the link's pin: the agent holds its
  links open, so nothing detaches; re-pinned from the running program and the held link
  within a resync (same prog id, same maps: counters kept, same link id), Event
  PinRepaired, no packet lost;
- 5c-iii the link's pin removed while the agent is down: nothing else holds the link, so
  the kernel releases it and the hook is empty until the agent returns and attaches the
  pinned program again by a new link (Event DriftRepaired): the gap is measured;
- 5e our link detached by id (BPF_LINK_DETACH, what `bpftool link detach id N` does: the
  kernel allows it to root), then an intruder attached through netlink on the hook it left
  empty: the agent still finds it (the attachment's record says ready with our program; our
  link is defunct, the hook holds a program nobody pinned: drift), and replaces it back
  ATOMICALLY by a netlink REPLACE (attach.place; a link cannot replace a netlink-attached
  program): the program then stays attached through netlink (status attachedBy: netlink,
  no linkId, the defunct link's pin dropped), so the kernel no longer refuses `xdp off`
  there: 5e-then shows that, and the agent attaching by link again;
- 5f the same detach with the hook left empty: re-attached by a new link (Event
  DriftRepaired);
- 5d a foreign program already on a selected interface: never clobbered (Conflict naming
  its id, still attached after several resyncs) until the spec sets takeOver: true, then
  replaced atomically by a netlink REPLACE (every packet counted by exactly one of the
  two), Event TookOver; it stays attached through netlink.

The foreign program is FAULT_PROG with VERSION=-1 (it counts and passes), loaded by the
test itself with the agent's kernel layer (bcc, in this process) and attached with
netlink: kube-xdp never saw it.
"""

from __future__ import annotations

import errno
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from kube_xdp_agent.kernel import CompileRequest, Compiler, HookBusy, Netlink, XdpLinks, prog_fd_by_id
from kube_xdp_rig import workloads
from tests.e2e.kubexdp import kernel_xdp, links_of, pins_of

from .conftest import SHIPPED_RESYNC
from .faultlib import (
    FAULT_PROG,
    TABLE,
    Counter,
    Flow,
    fault_program,
    hook_link,
    ip_in_receives,
    link_device,
    mishandled,
    pinned_link_id,
    wait_until,
)

pytestmark = pytest.mark.rig

REPAIR_BOUND = 5.0
RESTART_BOUND = 30.0       # an agent's start-up (imports, credentials, first list) and first reconcile


@pytest.fixture(scope="module")
def drift(fx):
    """kxf-drift on eth0 of every node, for the drift cases (each says which node)."""
    fx.create(fault_program("kxf-drift", 9108))
    fx.wait_ready("kxf-drift")
    yield "kxf-drift"
    fx.delete("kxf-drift")
    fx.wait_gone("kxf-drift", timeout=90)


@pytest.fixture(scope="module")
def foreign():
    """Load foreign (not kube-xdp's) counting pass-through programs in this process."""
    compiler = Compiler()

    def load(port: int):
        return compiler.load(CompileRequest(FAULT_PROG, "xdp_fault", {"PORT": str(port), "VERSION": "-1"}))

    yield load
    compiler.close()


def _events(fx, att: str, reason: str, after: float) -> list:
    return [e for e in fx.events(att, reason)
            if (e.last_timestamp or e.first_timestamp).timestamp() >= after - 1]


def _linked(fx, frig, program: str, node: str, ifname: str = "eth0") -> dict:
    """The interface's status entry, after checking it is held by our link as it says."""
    st = fx.iface_status(program, node, ifname)
    assert st.get("attachedBy") == "link" and st.get("ready"), st
    assert hook_link(frig.node(node).netns, ifname) == (st["mode"], st["progId"], st["linkId"]), st
    return st


def _link_pin(node, program: str, ifname: str = "eth0") -> Path:
    return Path(node.bpffs) / "kube-xdp" / program / "links" / ifname


def _hook_empty(netns: str, ifname: str = "eth0"):
    return kernel_xdp(netns, ifname) == (None, None)


def _hook_held(netns: str, ifname: str = "eth0"):
    """(mode, prog id) once a program is on the hook, else None."""
    hook = kernel_xdp(netns, ifname)
    return hook if hook[1] is not None else None


# --- what the kernel now refuses ------------------------------------------------------------


def test_xdp_off_behind_our_back_is_refused_by_the_kernel(fx, frig, drift):
    node = frig.node("node-1")
    st = _linked(fx, frig, drift, "node-1")
    before = hook_link(node.netns, "eth0")
    counter = Counter(st["progId"])
    with Flow(node, 9108, rate=None, max_seconds=20) as flow:        # full speed
        time.sleep(1.0)
        t0 = time.time()
        off = subprocess.run(["ip", "-n", node.netns, "link", "set", "dev", "eth0", "xdp", "off"],
                             capture_output=True, text=True)
        time.sleep(1.0)
        during = hook_link(node.netns, "eth0")
        result = flow.wait()
    time.sleep(SHIPPED_RESYNC + 0.5)                                  # a resync: the agent saw nothing to do
    bad = mishandled(result, counter.delta())
    words = off.stderr.strip().splitlines()[0] if off.stderr.strip() else f"exit {off.returncode}"
    TABLE.add("5a drift: xdp off", result.sent, bad, "refused by the kernel: nothing to repair",
              f"the kernel refused `ip link set dev eth0 xdp off` ({words!r}); hook unchanged: prog id "
              f"{before[1]}, link id {before[2]}; no Event (before links: detached, repaired within a resync)")
    assert off.returncode != 0 and "BPF XDP link" in off.stderr, off.stderr
    assert during == hook_link(node.netns, "eth0") == before           # same mode, prog id, link id
    assert bad == 0 and result.reached_stack == 0 and counter.delta() == result.delivered
    after = fx.iface_status(drift, "node-1", "eth0")
    assert (after["progId"], after["linkId"], after["attachedBy"]) == (st["progId"], st["linkId"], "link")
    assert not _events(fx, f"{drift}.node-1", "DriftRepaired", t0)
    counter.close()


def test_a_foreign_program_replacing_ours_is_refused_by_the_kernel(fx, frig, drift, foreign):
    node = frig.node("node-2")
    st = _linked(fx, frig, drift, "node-2")
    ours = st["progId"]
    before = hook_link(node.netns, "eth0")
    intruder = foreign(9108)
    mine, theirs = Counter(ours), Counter(intruder.prog_id, fresh=True)
    with Flow(node, 9108, rate=None, max_seconds=20) as flow, Netlink(node.netns) as nl:
        time.sleep(1.0)
        t0 = time.time()
        with prog_fd_by_id(ours) as expected, pytest.raises(HookBusy) as refused:   # an atomic swap, as another tool would try
            nl.attach("eth0", intruder.prog_fd, "native", expected_prog_fd=expected.fd)
        time.sleep(1.0)
        during = hook_link(node.netns, "eth0")
        result = flow.wait()
    time.sleep(SHIPPED_RESYNC + 0.5)
    bad = mishandled(result, mine.delta())
    TABLE.add("5b drift: foreign program swapped in", result.sent, bad,
              "refused by the kernel: nothing to repair",
              f"the kernel refused the netlink REPLACE ({errno.errorcode[refused.value.errno]}, "
              f"{refused.value.kernel_message!r}); hook unchanged: prog id {ours}, link id {before[2]}; the "
              "intruder counted 0 (before links: swapped in, replaced back within a resync)")
    assert refused.value.errno == errno.EBUSY
    assert during == hook_link(node.netns, "eth0") == before == ("native", ours, st["linkId"])
    assert theirs.delta() == 0 and mine.delta() == result.delivered and bad == 0
    after = fx.iface_status(drift, "node-2", "eth0")
    assert (after["progId"], after["linkId"], after["attachedBy"]) == (ours, st["linkId"], "link")
    assert not _events(fx, f"{drift}.node-2", "DriftRepaired", t0)
    mine.close()
    theirs.close()


# --- pins removed ---------------------------------------------------------------------------


def test_removed_pins_are_repinned_from_the_running_program(fx, frig, drift):
    node = frig.node("node-3")
    st = _linked(fx, frig, drift, "node-3")
    before = hook_link(node.netns, "eth0")
    assert links_of(node.bpffs, drift) == ["eth0"]
    prog_dir = Path(st["pinPath"]).parent
    maps_before = {p.name for p in (prog_dir / "maps").iterdir()}
    counter = Counter(st["progId"])
    with Flow(node, 9108, max_seconds=30) as flow:
        time.sleep(1.0)
        t0 = time.time()
        shutil.rmtree(Path(node.bpffs) / "kube-xdp" / drift)
        _, repinned = wait_until(lambda: Path(st["pinPath"]).exists() and _link_pin(node, drift).exists(), 30,
                                 "the pins back", interval=0.02)
        time.sleep(1.0)
        result = flow.wait()
    events, _ = wait_until(lambda: _events(fx, f"{drift}.node-3", "PinRepaired", t0), 30, "a PinRepaired Event")
    bad = mishandled(result, counter.delta())
    TABLE.add("5c drift: pins removed", result.sent, bad, f"re-pinned in {repinned:.2f} s, Event PinRepaired",
              f"the whole directory (program, maps, link pin): nothing detached (the agent holds link "
              f"{before[2]} open); same prog id, same maps (counters kept), same link id")
    assert repinned < REPAIR_BOUND
    assert bad == 0 and result.reached_stack == 0
    assert hook_link(node.netns, "eth0") == before
    assert pins_of(node.bpffs, drift) == [prog_dir.name]
    assert {p.name for p in (prog_dir / "maps").iterdir()} == maps_before
    # the link was never released (the agent held it): pinned again, the same one
    assert pinned_link_id(_link_pin(node, drift)) == st["linkId"]
    assert fx.iface_status(drift, "node-3", "eth0")["linkId"] == st["linkId"]
    # the re-pinned map is the running program's own map: its counter kept counting
    again = Counter(st["progId"])
    assert again.read() == counter.read()
    again.close()
    counter.close()


def test_removed_program_pin_is_restored_and_the_link_untouched(fx, frig, drift):
    node = frig.node("node-3")
    st = _linked(fx, frig, drift, "node-3")
    before = hook_link(node.netns, "eth0")
    prog_dir = Path(st["pinPath"]).parent
    maps_before = {p.name for p in (prog_dir / "maps").iterdir()}
    counter = Counter(st["progId"])
    with Flow(node, 9108, max_seconds=30) as flow:
        time.sleep(1.0)
        t0 = time.time()
        shutil.rmtree(prog_dir)                    # <program>/<digest>: prog and maps; links/ stays
        _, repinned = wait_until(lambda: Path(st["pinPath"]).exists(), 30, "the program pin back", interval=0.02)
        time.sleep(1.0)
        result = flow.wait()
    wait_until(lambda: _events(fx, f"{drift}.node-3", "PinRepaired", t0), 30, "a PinRepaired Event")
    bad = mishandled(result, counter.delta())
    TABLE.add("5c-i drift: program pin removed", result.sent, bad,
              f"re-pinned in {repinned:.2f} s, Event PinRepaired",
              f"its digest directory (program and maps): re-pinned by prog id {st['progId']} with its maps "
              f"(counters kept); link {before[2]} and its pin untouched")
    assert repinned < REPAIR_BOUND
    assert bad == 0 and result.reached_stack == 0
    assert hook_link(node.netns, "eth0") == before
    assert pinned_link_id(_link_pin(node, drift)) == st["linkId"]
    assert {p.name for p in (prog_dir / "maps").iterdir()} == maps_before
    again = Counter(st["progId"])
    assert again.read() == counter.read()
    again.close()
    counter.close()


def test_removed_link_pin_is_restored_from_the_held_link(fx, frig, drift):
    node = frig.node("node-3")
    st = _linked(fx, frig, drift, "node-3")
    before = hook_link(node.netns, "eth0")
    counter = Counter(st["progId"])
    pin = _link_pin(node, drift)
    with Flow(node, 9108, max_seconds=30) as flow:
        time.sleep(1.0)
        t0 = time.time()
        pin.unlink()
        _, repinned = wait_until(pin.exists, 30, "the link pin back", interval=0.02)
        time.sleep(1.0)
        result = flow.wait()
    events, _ = wait_until(lambda: _events(fx, f"{drift}.node-3", "PinRepaired", t0), 30, "a PinRepaired Event")
    bad = mishandled(result, counter.delta())
    TABLE.add("5c-ii drift: link pin removed (agent running)", result.sent, bad,
              f"re-pinned in {repinned:.2f} s, Event PinRepaired",
              f"the agent's fd kept link {before[2]} alive: the hook never changed; the same link pinned again")
    assert repinned < REPAIR_BOUND
    assert bad == 0 and result.reached_stack == 0
    assert hook_link(node.netns, "eth0") == before
    assert pinned_link_id(pin) == st["linkId"]                       # the same link, not a new one
    assert fx.iface_status(drift, "node-3", "eth0")["linkId"] == st["linkId"]
    assert "links/eth0" in events[0].message
    counter.close()


def test_removed_link_pin_while_the_agent_is_down_is_reattached_when_it_returns(fx, frig, drift):
    node = frig.node("node-3")
    agent = workloads.agent_name("node-3")
    st = _linked(fx, frig, drift, "node-3")
    before = hook_link(node.netns, "eth0")
    counter = Counter(st["progId"])
    pin = _link_pin(node, drift)
    try:
        with Flow(node, 9108, rate=None, max_seconds=60) as flow:          # full speed: smooth
            time.sleep(1.0)
            fx.sigkill(agent)
            time.sleep(0.5)
            assert hook_link(node.netns, "eth0") == before                  # the pin holds it while the agent is down
            t0 = time.time()
            pin.unlink()                                                    # the last reference: the kernel releases it
            removed = time.monotonic()
            _, released = wait_until(lambda: _hook_empty(node.netns), 5, "the link released", interval=0.002)
            started = time.monotonic()
            workloads.start_agent(frig, "node-3", resync=SHIPPED_RESYNC)
            wait_until(lambda: _hook_held(node.netns), RESTART_BOUND + 30, "eth0 attached again", interval=0.01)
            back = time.monotonic()
            time.sleep(0.05)
            stack_at_repair = ip_in_receives(node.netns)
            time.sleep(1.0)
            result = flow.wait()
    finally:
        if not fx.pid(agent):
            workloads.start_agent(frig, "node-3", resync=SHIPPED_RESYNC)
    after_repair = ip_in_receives(node.netns) - stack_at_repair
    after = hook_link(node.netns, "eth0")
    events, _ = wait_until(lambda: _events(fx, f"{drift}.node-3", "DriftRepaired", t0), 30, "a DriftRepaired Event")
    now = wait_until(lambda: (lambda s: s if s.get("linkId") == after[2] else None)(
        fx.iface_status(drift, "node-3", "eth0")), 30, "the status naming the new link")[0]
    counted = counter.delta()
    bad = mishandled(result, counted)
    TABLE.add("5c-iii drift: link pin removed (agent down)", result.sent, bad,
              f"hook empty {back - removed:.2f} s: released {released * 1000:.0f} ms after the unpin, re-attached "
              f"{back - started:.2f} s after the agent started, Event DriftRepaired",
              f"nothing held link {before[2]}: the kernel detached it (mishandled = passed while the hook was "
              f"empty); the same prog id {st['progId']} by a new link {after[2]}")
    assert after[:2] == before[:2] and after[2] not in (None, before[2])          # same program, a new link
    assert link_device(before[2]) is None                                          # the old link is gone
    assert (now["attachedBy"], now["progId"]) == ("link", st["progId"]) and now["ready"]
    assert pinned_link_id(pin) == after[2]
    assert back - started < RESTART_BOUND
    assert result.reached_stack == result.delivered - counted == bad > 0          # the gap, seen both ways
    assert after_repair == 0
    assert "re-attached" in events[0].message
    counter.close()


# --- a foreign program found in place ---------------------------------------------------------


def test_foreign_program_is_never_clobbered_unless_the_spec_takes_over(fx, frig, programs, foreign):
    node = frig.node("node-2")
    resident = foreign(9109)
    with Netlink(node.netns) as nl:
        nl.attach("eth1", resident.prog_fd, "native")
    try:
        programs(fault_program("kxf-polite", 9109, interfaces={"names": ["eth1"]},
                               selector={"matchLabels": {"kubernetes.io/hostname": "node-2"}}))
        wait_until(lambda: fx.is_current("kxf-polite", "Stalled", "True"), 90, "kxf-polite Stalled")
        ready = fx.condition("kxf-polite", "Ready")
        assert ready["reason"] == "Conflict" and str(resident.prog_id) in ready["message"], ready
        entry = fx.iface_status("kxf-polite", "node-2", "eth1")
        assert (entry["ready"], entry["reason"]) == (False, "Conflict")
        assert f"program id {resident.prog_id}" in entry["message"] and "not managed by kube-xdp" in entry["message"]
        time.sleep(2 * SHIPPED_RESYNC + 0.5)                   # several resyncs: still never touched
        assert kernel_xdp(node.netns, "eth1") == ("native", resident.prog_id)
        theirs = Counter(resident.prog_id, fresh=True)
        with Flow(node, 9109, iface=1, rate=None, max_seconds=30) as flow:
            time.sleep(1.0)
            t0 = time.time()
            fx.patch_spec("kxf-polite", {"takeOver": True})
            _, took = wait_until(lambda: kernel_xdp(node.netns, "eth1")[1] not in (None, resident.prog_id), 60,
                                 "kxf-polite on eth1", interval=0.01)
            ours = Counter(kernel_xdp(node.netns, "eth1")[1], fresh=True)
            fx.wait_ready("kxf-polite")
            result = flow.wait()
        events, _ = wait_until(lambda: _events(fx, "kxf-polite.node-2", "TookOver", t0), 30, "a TookOver Event")
        handled = theirs.delta() + ours.delta()
        entry = fx.iface_status("kxf-polite", "node-2", "eth1")
        TABLE.add("5d foreign program present, then takeOver", result.sent, result.delivered - handled,
                  f"Conflict (id {resident.prog_id}) kept; takeOver applied in {took:.2f} s",
                  f"atomic netlink REPLACE (the foreign program passed {theirs.delta()}, then ours dropped "
                  f"{ours.delta()}); stays attachedBy {entry.get('attachedBy')}: the kernel does not defend it")
        assert handled == result.delivered                      # one program handled each packet: atomic
        assert ours.delta() > 0 and theirs.delta() > 0
        assert str(resident.prog_id) in events[0].message
        # a link cannot replace a netlink-attached program: the takeover stays on netlink
        assert (entry["attachedBy"], entry.get("linkId")) == ("netlink", None)
        assert hook_link(node.netns, "eth1") == ("native", entry["progId"], None)
        theirs.close()
        ours.close()
    finally:
        if kernel_xdp(node.netns, "eth1")[1] == resident.prog_id:
            with Netlink(node.netns) as nl:
                nl.detach("eth1", "native", expected_prog_fd=resident.prog_fd)


# --- our link detached behind our back ------------------------------------------------------


def test_our_link_detached_and_an_intruder_attached_is_replaced_back(fx, frig, drift, foreign):
    node = frig.node("node-1")
    st = _linked(fx, frig, drift, "node-1")
    ours, link_id = st["progId"], st["linkId"]
    intruder = foreign(9108)
    mine, theirs = Counter(ours), Counter(intruder.prog_id, fresh=True)
    links = XdpLinks(node.netns)
    with Flow(node, 9108, rate=None, max_seconds=20) as flow, Netlink(node.netns) as nl, \
            links.open_id(link_id) as link:
        time.sleep(1.0)
        t0 = time.time()
        links.detach(link.fd)                             # root's `bpftool link detach id N`: allowed
        nl.attach("eth0", intruder.prog_fd, "native")     # another tool, on the hook our link left empty
        intruded = time.monotonic()
        assert kernel_xdp(node.netns, "eth0") == ("native", intruder.prog_id)
        defunct = links.info(link.fd).ifindex             # our link, still held by its pin and this fd
        _, repaired = wait_until(lambda: kernel_xdp(node.netns, "eth0") == ("native", ours), 30,
                                 "ours back on eth0", interval=0.01)
        repaired = time.monotonic() - intruded
        time.sleep(0.05)
        stack_at_repair = ip_in_receives(node.netns)
        time.sleep(1.0)
        result = flow.wait()
    after_repair = ip_in_receives(node.netns) - stack_at_repair
    events, _ = wait_until(lambda: _events(fx, f"{drift}.node-1", "DriftRepaired", t0), 30, "a DriftRepaired Event")
    now = wait_until(lambda: (lambda s: s if s.get("attachedBy") == "netlink" else None)(
        fx.iface_status(drift, "node-1", "eth0")), 30, "the status saying attachedBy netlink")[0]
    hook = hook_link(node.netns, "eth0")
    bad = mishandled(result, mine.delta())
    TABLE.add("5e drift: our link detached by id, intruder attached by netlink", result.sent, bad,
              f"replaced back in {repaired:.2f} s (atomic netlink REPLACE), Event DriftRepaired",
              f"the kernel refused nothing (BPF_LINK_DETACH by id is root's): link {link_id} defunct; mishandled = "
              f"passed by the intruder ({theirs.delta()}) + met no program between the detach and the intrusion "
              f"({bad - theirs.delta()}); now attachedBy netlink, no linkId (the defunct link's pin dropped)")
    assert defunct == 0
    assert repaired < REPAIR_BOUND
    assert hook == ("native", ours, None)                                  # ours, attached through netlink
    assert (now["progId"], now.get("linkId"), now["ready"]) == (ours, None, True)
    assert links_of(node.bpffs, drift) == []                               # the defunct link's pin dropped
    wait_until(lambda: link_device(link_id) is None, 10, f"link {link_id} released")
    # every packet ours did not drop passed: the intruder's, and those that met no program
    assert bad == result.reached_stack == result.delivered - mine.delta() and theirs.delta() > 0
    assert after_repair == 0                                               # the REPLACE was atomic
    assert str(intruder.prog_id) in events[0].message and "atomically" in events[0].message
    mine.close()
    theirs.close()

    # Then: attached through netlink, the hook is no longer the kernel's to defend. xdp off
    # is accepted; the agent finds the hook empty and attaches by link again.
    counter = Counter(ours)
    with Flow(node, 9108, rate=None, max_seconds=20) as flow:
        time.sleep(1.0)
        t1 = time.time()
        off = subprocess.run(["ip", "-n", node.netns, "link", "set", "dev", "eth0", "xdp", "off"],
                             capture_output=True, text=True)
        detached = time.monotonic()
        _, relinked = wait_until(lambda: _hook_held(node.netns), 30, "eth0 attached again", interval=0.01)
        relinked = time.monotonic() - detached
        time.sleep(1.0)
        result = flow.wait()
    again = hook_link(node.netns, "eth0")
    wait_until(lambda: _events(fx, f"{drift}.node-1", "DriftRepaired", t1), 30, "a DriftRepaired Event")
    final = wait_until(lambda: (lambda s: s if s.get("attachedBy") == "link" else None)(
        fx.iface_status(drift, "node-1", "eth0")), 30, "the status saying attachedBy link")[0]
    bad = mishandled(result, counter.delta())
    TABLE.add("5e-then: xdp off on the netlink-repaired hook", result.sent, bad,
              f"re-attached by link in {relinked:.2f} s, Event DriftRepaired",
              f"the kernel accepted `xdp off` (no link held the hook); mishandled = passed while detached; "
              f"back by link {again[2]}, so refused again from then on")
    assert off.returncode == 0, off.stderr
    assert relinked < REPAIR_BOUND
    assert again[:2] == ("native", ours) and again[2] is not None
    assert (final["linkId"], final["progId"]) == (again[2], ours)
    assert bad == result.reached_stack
    counter.close()


def test_our_link_detached_with_the_hook_left_empty_is_relinked(fx, frig, drift):
    node = frig.node("node-2")
    st = _linked(fx, frig, drift, "node-2")
    ours, link_id = st["progId"], st["linkId"]
    counter = Counter(ours)
    links = XdpLinks(node.netns)
    with Flow(node, 9108, rate=None, max_seconds=20) as flow, links.open_id(link_id) as link:
        time.sleep(1.0)
        t0 = time.time()
        links.detach(link.fd)                             # root's `bpftool link detach id N`: allowed
        detached = time.monotonic()
        assert _hook_empty(node.netns)
        _, repaired = wait_until(lambda: _hook_held(node.netns), 30, "eth0 attached again", interval=0.01)
        repaired = time.monotonic() - detached
        time.sleep(0.05)
        stack_at_repair = ip_in_receives(node.netns)
        time.sleep(1.0)
        result = flow.wait()
    after_repair = ip_in_receives(node.netns) - stack_at_repair
    events, _ = wait_until(lambda: _events(fx, f"{drift}.node-2", "DriftRepaired", t0), 30, "a DriftRepaired Event")
    hook = hook_link(node.netns, "eth0")
    now = wait_until(lambda: (lambda s: s if s.get("linkId") == hook[2] else None)(
        fx.iface_status(drift, "node-2", "eth0")), 30, "the status naming the new link")[0]
    counted = counter.delta()
    bad = mishandled(result, counted)
    TABLE.add("5f drift: our link detached by id, hook left empty", result.sent, bad,
              f"re-attached by a new link in {repaired:.2f} s, Event DriftRepaired",
              f"the kernel refused nothing (BPF_LINK_DETACH by id is root's); mishandled = passed while the hook "
              f"was empty; link {link_id} (defunct) dropped, the same prog id {ours} by link {hook[2]}")
    assert repaired < REPAIR_BOUND
    assert hook[:2] == ("native", ours) and hook[2] not in (None, link_id)
    assert (now["attachedBy"], now["progId"], now["ready"]) == ("link", ours, True)
    assert pinned_link_id(_link_pin(node, drift)) == hook[2]
    wait_until(lambda: link_device(link_id) is None, 10, f"link {link_id} released")
    assert result.reached_stack == result.delivered - counted == bad
    assert after_repair == 0
    assert "re-attached" in events[0].message
    counter.close()
