"""Fault 5: drift behind kube-xdp's back, and foreign programs.

- `ip link set dev eth0 xdp off`: re-attached within 5 s, Event DriftRepaired;
- a foreign program atomically replacing ours: replaced back (atomically) within 5 s,
  Event DriftRepaired naming the foreign program;
- the program's pins removed: re-pinned from the running program within 5 s (same prog
  id, same map: counters kept), Event PinRepaired, no packet lost;
- a foreign program already on a selected interface: never clobbered (Conflict naming its
  id, still attached after several resyncs) until the spec sets takeOver: true, then
  replaced atomically (every packet counted by exactly one of the two), Event TookOver.

The foreign program is FAULT_PROG with VERSION=-1 (it counts and passes), loaded by the
test itself with the agent's kernel layer (bcc, in this process) and attached with
netlink: kube-xdp never saw it.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from kube_xdp_agent.kernel import CompileRequest, Compiler, Netlink, prog_fd_by_id
from tests.e2e.kubexdp import kernel_xdp, pins_of

from .conftest import SHIPPED_RESYNC
from .faultlib import FAULT_PROG, TABLE, Counter, Flow, fault_program, ip_in_receives, mishandled, wait_until

pytestmark = pytest.mark.rig

REPAIR_BOUND = 5.0


@pytest.fixture(scope="module")
def drift(fx):
    """kxf-drift on eth0 of every node, for the three drift cases (one node each)."""
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


def test_detached_behind_our_back_is_reattached_within_5s(fx, frig, drift):
    node = frig.node("node-1")
    prog_id = fx.iface_status(drift, "node-1", "eth0")["progId"]
    counter = Counter(prog_id)
    with Flow(node, 9108, rate=None, max_seconds=20) as flow:        # full speed: no gap between bursts
        time.sleep(1.0)
        t0 = time.time()
        subprocess.run(["ip", "-n", node.netns, "link", "set", "dev", "eth0", "xdp", "off"], check=True)
        detached = time.monotonic()
        _, repaired = wait_until(lambda: kernel_xdp(node.netns, "eth0")[1] is not None, 30, "eth0 re-attached",
                                 interval=0.01)
        time.sleep(0.05)
        stack_at_repair = ip_in_receives(node.netns)
        time.sleep(1.0)
        result = flow.wait()
    after_repair = ip_in_receives(node.netns) - stack_at_repair
    events, seen = wait_until(lambda: _events(fx, f"{drift}.node-1", "DriftRepaired", t0), 30, "a DriftRepaired Event")
    bad = mishandled(result, counter.delta())
    TABLE.add("5a drift: xdp off", result.sent, bad, f"re-attached in {repaired:.2f} s, Event DriftRepaired",
              "mishandled = passed while detached (the drift itself)")
    assert repaired < REPAIR_BOUND
    assert kernel_xdp(node.netns, "eth0") == ("native", prog_id)        # the same pinned program, back
    assert result.reached_stack == result.delivered - counter.delta()   # the two views agree
    assert after_repair == 0                                            # only the gap's packets
    assert "re-attached" in events[0].message and time.monotonic() - detached < 30
    counter.close()


def test_foreign_program_replacing_ours_is_replaced_back_within_5s(fx, frig, drift, foreign):
    node = frig.node("node-2")
    ours = fx.iface_status(drift, "node-2", "eth0")["progId"]
    intruder = foreign(9108)
    mine, theirs = Counter(ours), Counter(intruder.prog_id, fresh=True)
    with Flow(node, 9108, rate=None, max_seconds=20) as flow, Netlink(node.netns) as nl:
        time.sleep(1.0)
        t0 = time.time()
        with prog_fd_by_id(ours) as expected:                # an atomic swap, as another tool would do
            nl.attach("eth0", intruder.prog_fd, "native", expected_prog_fd=expected.fd)
        assert kernel_xdp(node.netns, "eth0") == ("native", intruder.prog_id)
        _, repaired = wait_until(lambda: kernel_xdp(node.netns, "eth0") == ("native", ours), 30,
                                 "ours back on eth0", interval=0.01)
        time.sleep(0.05)
        stack_at_repair = ip_in_receives(node.netns)
        time.sleep(1.0)
        result = flow.wait()
    after_repair = ip_in_receives(node.netns) - stack_at_repair
    events, _ = wait_until(lambda: _events(fx, f"{drift}.node-2", "DriftRepaired", t0), 30, "a DriftRepaired Event")
    bad = mishandled(result, mine.delta())
    TABLE.add("5b drift: foreign program swapped in", result.sent, bad,
              f"replaced back in {repaired:.2f} s, Event DriftRepaired",
              f"mishandled = passed by the intruder ({theirs.delta()}); swaps atomic both ways")
    assert repaired < REPAIR_BOUND
    assert mine.delta() + theirs.delta() == result.delivered            # atomic both ways: no packet unseen
    assert bad == theirs.delta() == result.reached_stack
    assert after_repair == 0                                            # nothing passed once repaired
    assert str(intruder.prog_id) in events[0].message
    mine.close()
    theirs.close()


def test_removed_pins_are_repinned_from_the_running_program(fx, frig, drift):
    node = frig.node("node-3")
    st = fx.iface_status(drift, "node-3", "eth0")
    prog_dir = Path(st["pinPath"]).parent
    maps_before = {p.name for p in (prog_dir / "maps").iterdir()}
    counter = Counter(st["progId"])
    with Flow(node, 9108, max_seconds=30) as flow:
        time.sleep(1.0)
        t0 = time.time()
        shutil.rmtree(Path(node.bpffs) / "kube-xdp" / drift)
        _, repinned = wait_until(lambda: Path(st["pinPath"]).exists(), 30, "the pin back", interval=0.02)
        time.sleep(1.0)
        result = flow.wait()
    events, _ = wait_until(lambda: _events(fx, f"{drift}.node-3", "PinRepaired", t0), 30, "a PinRepaired Event")
    bad = mishandled(result, counter.delta())
    TABLE.add("5c drift: pins removed", result.sent, bad, f"re-pinned in {repinned:.2f} s, Event PinRepaired",
              "same prog id, same maps (counters kept)")
    assert repinned < REPAIR_BOUND
    assert bad == 0
    assert kernel_xdp(node.netns, "eth0") == ("native", st["progId"])
    assert pins_of(node.bpffs, drift) == [prog_dir.name]
    assert {p.name for p in (prog_dir / "maps").iterdir()} == maps_before
    # the re-pinned map is the running program's own map: its counter kept counting
    again = Counter(st["progId"])
    assert again.read() == counter.read()
    again.close()
    counter.close()


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
        TABLE.add("5d foreign program present, then takeOver", result.sent, result.delivered - handled,
                  f"Conflict (id {resident.prog_id}) kept; takeOver applied in {took:.2f} s",
                  f"before: the foreign program passed {theirs.delta()}; after: ours dropped {ours.delta()}")
        assert handled == result.delivered                      # one program handled each packet: atomic
        assert ours.delta() > 0 and theirs.delta() > 0
        assert str(resident.prog_id) in events[0].message
        theirs.close()
        ours.close()
    finally:
        if kernel_xdp(node.netns, "eth1")[1] == resident.prog_id:
            with Netlink(node.netns) as nl:
                nl.detach("eth1", "native", expected_prog_fd=resident.prog_fd)
