"""Compile: bcc compile+load of each example, cold, through the path the agent really
uses (SubprocessBuilder: a short-lived `python -m kube_xdp_agent.build_worker` that
compiles, loads and pins) and in-process (Compiler.load in this process); then the
cached path: what the agent does when the program is already pinned for the compile key
(compute the key, observe hooks and pins, open the pinned program: no compile)."""

from __future__ import annotations

import time

from kube_xdp_agent.build import SubprocessBuilder
from kube_xdp_agent.kernel.bpffs import PinStore
from kube_xdp_agent.kernel.compile import CompileRequest, Compiler
from kube_xdp_agent.kernel.netlink import Netlink
from kube_xdp_agent.observe import observe

from .cluster import example
from .stats import summary

EXAMPLES = ("udp-drop", "proto-count", "blocklist")


def request(name: str) -> CompileRequest:
    spec = example(name)["spec"]
    return CompileRequest(source=spec["source"]["inline"], entrypoint=spec["entrypoint"],
                          defines=dict(spec.get("defines") or {}))


def run(node, bpffs: str, reps: int = 3, cached_reps: int = 30, log=print) -> dict:
    """`node`: a rig NodeInfo (the worker enters its netns, as the node's agent does);
    `bpffs`: a bpffs mount of the benchmark's own (the node's agent would rightly remove
    pins it does not own from the node's bpffs, as orphans)."""
    compiler = Compiler()
    pins = PinStore(bpffs)
    builder = SubprocessBuilder(compiler, bpffs, node.netns)
    out: dict = {"reps": reps, "cached_reps": cached_reps, "examples": {}}
    t = time.perf_counter()
    import bcc  # noqa: F401 - timed: the first in-process compile pays for it
    out["import_bcc_ms"] = round((time.perf_counter() - t) * 1000, 1)
    netlink = Netlink(node.netns)
    try:
        for name in EXAMPLES:
            req = request(name)
            program = f"bench-compile-{name}"
            worker, inner, inproc, cached = [], [], [], []
            # interleave the two cold paths so background load hits both alike
            for _ in range(reps):
                pins.unpin(program)
                t = time.perf_counter()
                built = builder.build(req, program)
                worker.append((time.perf_counter() - t) * 1000)
                inner.append(built.duration_ms)
                t = time.perf_counter()
                loaded = compiler.load(req)
                inproc.append((time.perf_counter() - t) * 1000)
                assert not loaded.cache_hit
                compiler.release(loaded.key)
            # the cached path, exactly the agent's steps when the pin exists (controller._apply)
            for _ in range(cached_reps):
                t = time.perf_counter()
                key = builder.key(req)
                observed = observe(netlink, pins)
                hit = key[:12] in observed.pins.get(program, {})
                pinned = {p.digest12: p for p in pins.open_pinned(program)}[key[:12]]
                cached.append((time.perf_counter() - t) * 1000)
                assert hit and pinned.prog_id
            # bcc's own reuse, in one process (the agent does not use it: it builds in a worker)
            loaded = compiler.load(req)
            t = time.perf_counter()
            again = compiler.load(req)
            module_hit_ms = (time.perf_counter() - t) * 1000
            assert again.cache_hit
            compiler.release(loaded.key)
            pins.unpin(program)
            out["examples"][name] = {
                "worker_ms": [round(x, 1) for x in worker], "worker_summary": summary(worker, 1),
                "worker_inner_compile_ms": [round(x, 1) for x in inner],
                "worker_overhead_ms": summary([w - i for w, i in zip(worker, inner)], 1),
                "inprocess_ms": [round(x, 1) for x in inproc], "inprocess_summary": summary(inproc, 1),
                "cached_ms": summary(cached, 3),
                "inprocess_module_cache_hit_ms": round(module_hit_ms, 4),
            }
            e = out["examples"][name]
            log(f"    {name:<12} worker p50 {e['worker_summary']['p50']:.0f} ms (compile inside {min(inner):.0f}-{max(inner):.0f}), "
                f"in-process p50 {e['inprocess_summary']['p50']:.0f} ms, cached (pin adoption) p50 {e['cached_ms']['p50']:.2f} ms")
    finally:
        netlink.close()
        compiler.close()
        for name in EXAMPLES:
            pins.unpin(f"bench-compile-{name}")
    return out
