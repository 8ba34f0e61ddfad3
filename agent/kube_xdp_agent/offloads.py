"""Offload builds: the program built for an interface's device, and the refusals to remember.

Offload attaches a program loaded FOR the device (kernel/offload.py): one build per
interface, pinned under its own digest (the compile key with the device). Building it
costs a bcc worker, so a device's refusal is remembered per (program, interface): an
unchanged spec on the same device (same compile key, same ifindex) is not rebuilt on
every resync. A new key or a recreated interface (new ifindex) tries again, and so does a
restarted agent, once. Worker thread only.
"""

from __future__ import annotations

import dataclasses
import logging

from kube_xdp_api import reasons

from .kernel import offload
from .kernel.compile import CompileRequest
from .kernel.errors import AttachError, KernelError
from .record import Refused

log = logging.getLogger("kube_xdp_agent.offloads")

# The device's refusals of an offload build: the same key on the same device fails the same way.
BUILD_REFUSALS = frozenset({reasons.OFFLOAD_UNSUPPORTED, reasons.PROGRAM_NOT_OFFLOADABLE})


@dataclasses.dataclass(frozen=True)
class _Refusal:
    key: str              # the device build's compile key
    ifindex: int
    error: KernelError


class OffloadBuilds:
    def __init__(self, builder, view) -> None:
        self.builder = builder          # build.SubprocessBuilder / InProcessBuilder
        self.view = view                # nodeview.NodeView: pins, interface indexes
        self._refused: dict[tuple[str, str], _Refusal] = {}

    def device_request(self, req: CompileRequest, interface: str) -> tuple[CompileRequest, str]:
        """`req` built for `interface`'s device, and its compile key."""
        dreq = dataclasses.replace(req, device=interface)
        return dreq, self.builder.key(dreq)

    def digests(self, req: CompileRequest, interfaces) -> dict[str, str]:
        """interface -> digest12 of the program to build for its device (nothing built)."""
        return {i: self.device_request(req, i)[1][:12] for i in interfaces}

    def builder_for(self, program: str, req: CompileRequest):
        """iface -> digest12 of `req` built and pinned for offload on that interface's
        device: the offload rules are checked on the source first (no compile for a
        program that cannot be offloaded), a remembered refusal is raised again, else the
        worker loads it device-bound. Raises the refusal (ProgramNotOffloadable,
        AttachError(OffloadUnsupported)), which attach.place takes as the mode refused."""
        def build(iface: str) -> str:
            offload.check_source(req.source, program=program, interface=iface, mode="offload")
            dreq, key = self.device_request(req, iface)
            digest = key[:12]
            if digest in {p.digest12 for p in self.view.pins.open_pinned(program)}:
                return digest
            index = self.view.ifindex(iface)
            known = self._refused.get((program, iface))
            if known is not None and (known.key, known.ifindex) == (key, index):
                log.debug("%s: offload build for %s refused before (%s); not rebuilt", program, iface,
                          known.error.reason)
                raise known.error.with_traceback(None)
            try:
                self.builder.build(dreq, program)
            except KernelError as e:
                if e.reason in BUILD_REFUSALS and index is not None:
                    self._refused[(program, iface)] = _Refusal(key, index, e)
                raise
            finally:
                self.view.forget()               # it pinned, or may have left a staging directory
            self._refused.pop((program, iface), None)
            return digest
        return build

    def refused_for(self, program: str, req: CompileRequest):
        """(iface, refusal) -> remember that the device refused to attach the program built
        for it: the next reconcile reports the same refusal without building it again (the
        build is unpinned by the collection as unused). Same rules as a refused build."""
        def refused(iface: str, refusal: Refused) -> None:
            index = self.view.ifindex(iface)
            if index is None:
                return                          # gone meanwhile: nothing to remember
            _, key = self.device_request(req, iface)
            # raised again as it was refused: attach.place records the same refusal (its
            # sentence is the kernel_message, already part of the message: nothing added)
            error = AttachError(refusal.message, reason=refusal.reason, errno=refusal.errno,
                                kernel_message=refusal.message, interface=iface, mode="offload")
            self._refused[(program, iface)] = _Refusal(key, index, error)
        return refused

    def forget(self, program: str) -> None:
        for k in [k for k in self._refused if k[0] == program]:
            del self._refused[k]

    def remembered(self, program: str) -> list[str]:
        """The interfaces whose refusal is remembered for `program` (for tests and logs)."""
        return sorted(i for p, i in self._refused if p == program)
