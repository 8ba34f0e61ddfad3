"""Fault 5: drift behind kube-xdp's back, and foreign programs.

kube-xdp holds each hook with a pinned bpf_link, so the kernel itself refuses what were
drift cases before links (then repaired within a resync, with packets mishandled meanwhile):
- `ip link set dev eth0 xdp off`: refused by the kernel ("Can't replace active BPF XDP
  link"); the program never leaves, nothing mishandled;
- a foreign program atomically replacing ours through netlink: refused (HookBusy, EBUSY);
  ours keeps every packet;
- the program's pins removed (its digest and its link pin): the agent holds its links
  open, so nothing detaches; re-pinned from the running program within 5 s (same prog
  id, same map: counters kept, same link), Event PinRepaired, no packet lost;
- a foreign program already on a selected interface: never clobbered (Conflict naming its
  id, still attached after several resyncs) until the spec sets takeOver: true, then
  replaced atomically (every packet counted by exactly one of the two), Event TookOver.

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

from kube_xdp_agent.kernel import CompileRequest, Compiler, HookBusy, Netlink, prog_fd_by_id
from tests.e2e.kubexdp import kernel_xdp, links_of, pins_of

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


def test_xdp_off_behind_our_back_is_refused_by_the_kernel(fx, frig, drift):
    node = frig.node("node-1")
    prog_id = fx.iface_status(drift, "node-1", "eth0")["progId"]
    assert fx.iface_status(drift, "node-1", "eth0")["attachedBy"] == "link"
    counter = Counter(prog_id)
    with Flow(node, 9108, rate=None, max_seconds=20) as flow:        # full speed
        time.sleep(1.0)
        t0 = time.time()
        off = subprocess.run(["ip", "-n", node.netns, "link", "set", "dev", "eth0", "xdp", "off"],
                             capture_output=True, text=True)
        time.sleep(1.0)
        result = flow.wait()
    bad = mishandled(result, counter.delta())
    TABLE.add("5a drift: xdp off", result.sent, bad, "refused by the kernel (bpf_link): nothing to repair",
              "before links: detached, repaired within a resync")
    assert off.returncode != 0 and "BPF XDP link" in off.stderr, off.stderr
    assert kernel_xdp(node.netns, "eth0") == ("native", prog_id)        # never left
    assert bad == 0 and result.reached_stack == 0
    assert not _events(fx, f"{drift}.node-1", "DriftRepaired", t0)
    counter.close()


def test_a_foreign_program_replacing_ours_is_refused_by_the_kernel(fx, frig, drift, foreign):
    node = frig.node("node-2")
    ours = fx.iface_status(drift, "node-2", "eth0")["progId"]
    intruder = foreign(9108)
    mine, theirs = Counter(ours), Counter(intruder.prog_id, fresh=True)
    with Flow(node, 9108, rate=None, max_seconds=20) as flow, Netlink(node.netns) as nl:
        time.sleep(1.0)
        with prog_fd_by_id(ours) as expected, pytest.raises(HookBusy) as refused:   # an atomic swap, as another tool would try
            nl.attach("eth0", intruder.prog_fd, "native", expected_prog_fd=expected.fd)
        time.sleep(1.0)
        result = flow.wait()
    bad = mishandled(result, mine.delta())
    TABLE.add("5b drift: foreign program swapped in", result.sent, bad,
              "refused by the kernel (bpf_link, EBUSY): nothing to repair",
              "before links: swapped in, replaced back within a resync")
    assert refused.value.errno == errno.EBUSY
    assert kernel_xdp(node.netns, "eth0") == ("native", ours)
    assert theirs.delta() == 0 and mine.delta() == result.delivered and bad == 0
    mine.close()
    theirs.close()


def test_removed_pins_are_repinned_from_the_running_program(fx, frig, drift):
    node = frig.node("node-3")
    st = fx.iface_status(drift, "node-3", "eth0")
    assert links_of(node.bpffs, drift) == ["eth0"]
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
    # the link was never released (the agent held it): pinned again, the same one
    wait_until(lambda: links_of(node.bpffs, drift) == ["eth0"], 30, "the link pin back", interval=0.02)
    assert fx.iface_status(drift, "node-3", "eth0")["linkId"] == st["linkId"]
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
