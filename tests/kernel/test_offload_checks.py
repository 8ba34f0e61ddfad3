"""Offload rules checked before trying, and loading for a device, on the real kernel (veth).

veth cannot offload: loading a program bound to it fails with EINVAL (and so does
creating a map bound to it). Attaching by policy with offload first (attach.place with a
device-bound program for offload) is tested in test_attach.py: offload preferred ->
native with reason OffloadUnsupported (EINVAL) or ProgramNotOffloadable (a per-CPU map,
decided from the source); offload required -> nothing attached, NoModeAttached.
The real offload path (netdevsim) is exercised in tests/offload/ inside the lab kernel.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess

import pytest

from kube_xdp_agent.kernel import CompileRequest, Compiler, Netlink
from kube_xdp_agent.kernel.errors import AttachError, CompileError, ProgramNotOffloadable
from kube_xdp_agent.kernel.netns import in_netns
from kube_xdp_agent.kernel.offload import (
    check_source,
    load_for_offload,
    loaded_problems,
    source_problems,
)

from .conftest import COUNTER_SRC

pytestmark = pytest.mark.kernel

OFFLOADABLE_SRC = r"""
BPF_ARRAY(hits, u64, 2);   /* netdevsim holds at most 2 entries per map */
int xdp_hits(struct xdp_md *ctx) {
    u32 key = 0;
    u64 *v = hits.lookup(&key);
    if (v)
        __sync_fetch_and_add(v, 1);
    return XDP_PASS;
}
"""
PASS_ONLY_SRC = "int xdp_ok(struct xdp_md *ctx) { return XDP_PASS; }"


def hook(netns: str, ifname: str):
    out = subprocess.run(["ip", "-j", "-d", "-n", netns, "link", "show", ifname],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)[0].get("xdp")


# --- the source check (pure) -------------------------------------------------------------


def test_per_cpu_map_is_found_in_the_source() -> None:
    problems = source_problems(COUNTER_SRC)
    assert [(p.kind, p.name) for p in problems] == [("map", "udp_hits")]
    line = COUNTER_SRC.splitlines().index(next(x for x in COUNTER_SRC.splitlines() if "udp_hits, u32" in x)) + 1
    assert problems[0].line == line and "per-CPU" in problems[0].detail
    with pytest.raises(ProgramNotOffloadable) as info:
        check_source(COUNTER_SRC, interface="eth0")
    assert info.value.reason == "ProgramNotOffloadable" and "udp_hits" in str(info.value)


@pytest.mark.parametrize(
    ("decl", "kind"),
    [
        ('BPF_TABLE("lru_hash", u32, u64, m, 2);', "map"),
        ('BPF_TABLE("percpu_hash", u32, u64, m, 2);', "map"),
        ("BPF_PERCPU_HASH(m, u32, u64, 2);", "map"),
        ("BPF_PROG_ARRAY(m, 4);", "map"),
        ("BPF_DEVMAP(m, 4);", "map"),
        ("BPF_LPM_TRIE(m, u64, u32, 2);", "map"),
        ('BPF_F_TABLE("hash", u32, u64, m, 2, BPF_F_NO_PREALLOC);', "map_flags"),
    ],
)
def test_map_kinds_that_cannot_be_offloaded(decl: str, kind: str) -> None:
    problems = source_problems(decl + "\nint f(struct xdp_md *ctx) { return XDP_PASS; }")
    assert [(p.kind, p.name) for p in problems] == [(kind, "m")]


def test_offloadable_sources_pass() -> None:
    assert source_problems(OFFLOADABLE_SRC) == []
    assert source_problems(PASS_ONLY_SRC) == []
    ok = r"""
    BPF_HASH(h, u32, u64, 2);
    BPF_TABLE("array", u32, u64, a, 2);
    BPF_F_TABLE("hash", u32, u64, f, 2, 0);
    // BPF_PERCPU_ARRAY(commented, u32, 2); bpf_trace_printk("x");
    /* BPF_PROG_ARRAY(also_commented, 2);
       bpf_redirect(1, 0); */
    int f(struct xdp_md *ctx) {
        u32 k = bpf_htons(1);
        h.update(&k, &k);
        u64 *v = a.lookup(&k);
        if (v) bpf_map_delete_elem(&h, &k);
        return bpf_get_prandom_u32() & 1 ? XDP_DROP : XDP_PASS;
    }
    """
    assert source_problems(ok) == []


def test_helpers_outside_the_offload_set() -> None:
    src = r"""
    BPF_DEVMAP(tx, 4);
    int f(struct xdp_md *ctx) {
        bpf_trace_printk("bpf_redirect(1, 0) in a string does not count\n");
        u64 t = bpf_ktime_get_ns();
        return tx.redirect_map(0, 0);
    }
    """
    got = {(p.kind, p.name) for p in source_problems(src)}
    assert got == {("map", "tx"), ("helper", "bpf_trace_printk"), ("helper", "bpf_ktime_get_ns"),
                   ("helper", "bpf_redirect_map")}


def test_helper_lines_count_after_string_literals() -> None:
    """A long string before a call does not move the call's reported line (strings are
    emptied before helpers are searched: the line is counted in that text)."""
    src = 'int f(struct xdp_md *ctx) {\n    bpf_trace_printk("' + "x" * 80 + '\\n");\n    u64 t =\n' \
          '        bpf_ktime_get_ns();\n    return XDP_PASS;\n}\n'
    assert [(p.name, p.line) for p in source_problems(src)] == [("bpf_trace_printk", 2), ("bpf_ktime_get_ns", 4)]


def test_loaded_maps_are_checked_exactly(counter_prog) -> None:
    problems = loaded_problems(counter_prog)
    assert [(p.kind, p.name) for p in problems] == [("map", "udp_hits")]


def test_in_netns_runs_in_that_namespace_only(netns_pair) -> None:
    here = os.readlink("/proc/thread-self/ns/net")
    there = in_netns(netns_pair.ns, lambda: os.readlink("/proc/thread-self/ns/net"))
    want = os.stat(f"/run/netns/{netns_pair.ns}").st_ino
    assert there == f"net:[{want}]" and there != here
    assert os.readlink("/proc/thread-self/ns/net") == here
    with pytest.raises(ZeroDivisionError):  # errors reach the caller
        in_netns(netns_pair.ns, lambda: 1 // 0)


# --- loading for the device, and attach by policy (veth) -----------------------------------


def test_device_bound_load_on_veth_is_offload_unsupported(netns_pair, compiler: Compiler) -> None:
    with Netlink(netns_pair.ns) as nl:
        # No maps: the program load itself is refused (EINVAL).
        with pytest.raises(AttachError) as info:
            load_for_offload(compiler, nl, netns_pair.ns_if, CompileRequest(PASS_ONLY_SRC, "xdp_ok"))
        assert info.value.reason == "OffloadUnsupported" and info.value.errno == errno.EINVAL
        # With a map: the map creation is refused first; still the device's fault.
        with pytest.raises(AttachError) as info:
            load_for_offload(compiler, nl, netns_pair.ns_if, CompileRequest(OFFLOADABLE_SRC, "xdp_hits"))
        assert info.value.reason == "OffloadUnsupported"
        assert isinstance(info.value.__cause__, CompileError)
        assert "could not open bpf map" in info.value.__cause__.output


# Who refused a device-bound compile is decided by compiling for the host, not from bcc's
# text: a source whose own clang error carries the words bcc prints for a refused map...
TEXT_BAIT_SRC = '#error "could not open bpf map: hits, error: Invalid argument"\n' + PASS_ONLY_SRC
# ...and a per-CPU map the source scan cannot see (its type behind the user's macro): the
# device refuses it at creation, the host program's map types name it.
HIDDEN_PERCPU_SRC = r"""
#define KIND "percpu_array"
BPF_TABLE(KIND, u32, u64, hits, 1);
int xdp_hidden(struct xdp_md *ctx) {
    u32 key = 0;
    u64 *v = hits.lookup(&key);
    if (v)
        *v += 1;
    return XDP_PASS;
}
"""


def test_a_source_that_does_not_compile_is_its_own_error_whatever_its_text(netns_pair, compiler: Compiler) -> None:
    with Netlink(netns_pair.ns) as nl, pytest.raises(CompileError) as info:
        load_for_offload(compiler, nl, netns_pair.ns_if, CompileRequest(TEXT_BAIT_SRC, "xdp_ok"))
    assert info.value.reason == "CompileError"                  # not OffloadUnsupported / ProgramNotOffloadable
    assert "could not open bpf map" in info.value.output       # the bait is in clang's own output


def test_a_map_the_device_refuses_is_named_from_the_host_program(netns_pair, compiler: Compiler) -> None:
    assert source_problems(HIDDEN_PERCPU_SRC) == []            # the source scan cannot see it
    held = set(compiler.cached_keys())
    with Netlink(netns_pair.ns) as nl, pytest.raises(ProgramNotOffloadable) as info:
        load_for_offload(compiler, nl, netns_pair.ns_if, CompileRequest(HIDDEN_PERCPU_SRC, "xdp_hidden"))
    assert info.value.problems == ("map 'hits' is a per-CPU map: only array and hash maps can be offloaded",)
    assert isinstance(info.value.__cause__, CompileError)      # the device-bound compile's failure
    assert set(compiler.cached_keys()) == held                 # the host program compiled to check is released
