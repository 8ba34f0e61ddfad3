"""One XdpAttachment, reconciled: read desired (the attachment), observed (the node view)
and the record (its status) -> decide -> execute -> report.

`Reconciler.reconcile(name)` returns None when done, or the seconds after which to look
again (a transient cause: the source not caught up, a cleanup not finished); an
exception (the API server away, most likely) is the work queue's to retry with backoff.

API traffic: a reconcile that changes nothing reads nothing and writes nothing (sources
are cached by digest; status is patched only when it changed).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from kubernetes.client.rest import ApiException

from kube_xdp_api import conditions as cond
from kube_xdp_api import names, reasons
from kube_xdp_api.fetch import read_source
from kube_xdp_api.spec import SpecError, source_digest, validate_program_name

from . import decide as dec
from .desired import Desired, resolve_interfaces
from .execute import Executor, IfaceResult, Outcome, catalogued
from .kernel.compile import CompileRequest
from .kernel.errors import KernelError
from .observe import Observed, Owner
from .record import IfaceRecord, fallback_message, from_status
from .report import Report, attachment_status

log = logging.getLogger("kube_xdp_agent")

TRANSIENT_RETRY = 2.0


class Transient(Exception):
    """Look again soon; report Reconciling with this reason meanwhile."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class Sources:
    """Program sources by digest: fetched from the XdpProgram (or its ConfigMap) once."""

    def __init__(self, custom, core) -> None:
        self.custom, self.core = custom, core
        self.texts: dict[str, str] = {}            # source digest -> text

    def text(self, d: Desired) -> str:
        cached = self.texts.get(d.spec.source_digest)
        if cached is not None:
            return cached
        try:
            program = self.custom.get_cluster_custom_object(names.GROUP, names.VERSION, names.PROGRAMS, d.program)
        except ApiException as e:
            if e.status == 404:
                raise Transient(reasons.SOURCE_NOT_FOUND, f"XdpProgram {d.program} not found (being deleted?)") from e
            raise
        if program["metadata"].get("uid") != d.spec.program_uid:
            raise Transient(reasons.SOURCE_DIGEST_MISMATCH,
                            f"XdpProgram {d.program} was replaced; waiting for the operator")
        text = read_source(self.core, program["spec"]["source"])
        if source_digest(text) != d.spec.source_digest:
            raise Transient(reasons.SOURCE_DIGEST_MISMATCH,
                            "the program's source changed after this attachment was written; waiting for the operator")
        self.texts[d.spec.source_digest] = text
        return text


class Reconciler:
    def __init__(self, *, view, builder, offloads, writer, cache, sources: Sources) -> None:
        self.view = view              # nodeview.NodeView
        self.builder = builder        # build.SubprocessBuilder / InProcessBuilder
        self.offloads = offloads      # offloads.OffloadBuilds
        self.writer = writer          # writer.ApiWriter
        self.cache = cache            # writer.AttachmentCache
        self.sources = sources
        # program -> compile key -> status.compile of the pinned programs this process
        # compiled or adopted: stable across resyncs, so an unchanged reconcile writes
        # nothing, and true to this process after a restart.
        self.compiled: dict[str, dict[str, dict]] = {}

    # -- one attachment ----------------------------------------------------------------
    def reconcile(self, name: str) -> float | None:
        att = self.cache.get(name)
        if att is None:
            return None
        generation = int(att["metadata"].get("generation") or 0)
        try:
            desired = Desired.from_attachment(att)
        except SpecError as e:
            if att["metadata"].get("deletionTimestamp"):
                return self._remove_unparseable(att)
            self.writer.status(att, attachment_status(old=att.get("status"), generation=generation, now=cond.now(),
                                                      failure=(e.reason, e.message)))
            return None
        if desired.deleting:
            return self.remove(att, desired.program)
        att = self.writer.finalizer(att, present=True)
        if att is None:
            return None
        again = None
        try:
            report = self._apply(att, desired)
        except Transient as e:
            report = attachment_status(old=att.get("status"), generation=generation, now=cond.now(),
                                       failure=(e.reason, str(e)))
            again = TRANSIENT_RETRY
        self.writer.status(att, report)
        return again

    def _apply(self, att: dict, d: Desired) -> Report:
        old, program = att.get("status"), d.program
        record = from_status(old)
        try:
            text = self.sources.text(d)
        except SpecError as e:
            return attachment_status(old=old, generation=d.generation, now=cond.now(), failure=(e.reason, e.message))
        req = CompileRequest(source=text, entrypoint=d.spec.fields.entrypoint, defines=dict(d.spec.fields.defines))
        key = self.builder.key(req)
        primary = d.spec.fields.interfaces.primary
        observed = self._repair(att, program, record, primary=primary)
        observed, failure = self._build(att, program, req, key, observed, primary=primary)
        if failure is not None:
            return attachment_status(old=old, generation=d.generation, now=cond.now(), failure=failure,
                                     interfaces=_still_attached(program, observed, failure[0]))
        t0 = time.monotonic()
        own = self.view.own_pins(program, observed)
        compile_info = compile_entry(self.compiled.setdefault(program, {}), key, set(own), old,
                                     adopt_ms=(time.monotonic() - t0) * 1000)
        wanted, unresolved = self._wanted(att, d, key[:12], req, observed)
        outcome = self._attach(wanted, observed, record, req)
        self._events(att, d, outcome, record, wanted)
        own = self.view.own_pins(program, self.view.observe(primary=primary))
        records = [interface_record(r, modes=wanted.modes, was=record.get(r.interface), pins=self.view.pins, own=own,
                                    program=program) for r in outcome.interfaces]
        if unresolved is not None and d.spec.fields.interfaces.names:
            records += [IfaceRecord(n, False, preferred_mode=wanted.modes[0], reason=unresolved[0],
                                    message=f"interface {n} not found on this node")
                        for n in d.spec.fields.interfaces.names if n not in observed.hooks]
        return attachment_status(old=old, generation=d.generation, now=cond.now(), interfaces=records,
                                 failure=unresolved if unresolved and not records else None,
                                 compile_info=compile_info)

    # -- its steps ---------------------------------------------------------------------
    def _repair(self, att: dict, program: str, record: Mapping[str, IfaceRecord], *, primary: bool) -> Observed:
        """Pins removed behind our back restored from the record and the links held open."""
        observed = self.view.observe(primary=primary)
        actions = dec.repairs(program, observed, record)
        if not actions:
            return observed
        done = self._run(Executor(self.view.node, program=program, held_link=self.view.keeper.fd), actions)
        if done.repinned:
            self.writer.event(att, "Warning", reasons.PIN_REPAIRED,
                              f"pins of {program} were removed behind kube-xdp's back; re-pinned "
                              f"{', '.join(done.repinned)} from the running program (maps kept)")
        return self.view.observe(primary=primary)

    def _build(self, att: dict, program: str, req: CompileRequest, key: str, observed: Observed, *,
               primary: bool) -> tuple[Observed, tuple[str, str] | None]:
        """The wanted program built and pinned unless it is; (observation, failure)."""
        if key[:12] in observed.pins.get(program, {}):
            return observed, None
        try:
            try:
                built = self.builder.build(req, program)
            finally:
                self.view.forget()      # it pins (a failed build may leave a staging directory)
        except KernelError as e:
            output = getattr(e, "output", "") or ""
            message = f"{e}\n{output}".strip() if output and output not in str(e) else str(e)
            return observed, (catalogued(e.reason, reasons.COMPILE_ERROR), message)
        self.compiled.setdefault(program, {})[key] = {
            "durationMs": int(round(built.duration_ms)), "cacheHit": built.cache_hit, "digest": key}
        log.info("%s: compiled and pinned %s in %.0f ms", att["metadata"]["name"], key[:12], built.duration_ms)
        return self.view.observe(primary=primary), None

    def _wanted(self, att: dict, d: Desired, digest: str, req: CompileRequest,
                observed: Observed) -> tuple[dec.Wanted, tuple[str, str] | None]:
        """The spec resolved against the node, and why not every selected interface is
        there (None: every one is)."""
        targets, reason, message = resolve_interfaces(d.spec.fields.interfaces, sorted(observed.hooks),
                                                      observed.primary)
        rank, rivals = self._ranks(att, d)
        offloaded = self.offloads.digests(req, targets) if "offload" in d.modes else {}
        wanted = dec.Wanted(program=d.program, digest=digest, targets=tuple(targets), modes=d.modes, rank=rank,
                            rivals=rivals, take_over=d.spec.fields.take_over, offloaded=offloaded)
        return wanted, ((reason, message) if reason else None)

    def _attach(self, wanted: dec.Wanted, observed: Observed, record: Mapping[str, IfaceRecord],
                req: CompileRequest) -> Outcome:
        """decide -> execute, then collect the old versions no longer used."""
        program = wanted.program
        executor = Executor(self.view.node, program=program, want=wanted.digest, modes=wanted.modes,
                            device_build=self.offloads.builder_for(program, req),
                            device_refused=self.offloads.refused_for(program, req), held_link=self.view.keeper.fd)
        outcome = self._run(executor, dec.decide(wanted, observed, record))
        keep = {wanted.digest} | {wanted.offloaded[r.interface] for r in outcome.interfaces
                                  if r.ok and r.mode == "offload" and r.interface in wanted.offloaded}
        # (the same observation when nothing above changed the kernel: no second read)
        self._run(executor, dec.collect(program, keep, self.view.observe()))
        return outcome

    def _run(self, executor: Executor, actions: list) -> Outcome:
        try:
            return executor.run(actions)
        finally:
            self.view.changed(actions)

    def _ranks(self, att: dict, d: Desired) -> tuple[dec.Rank, dict[str, dec.Rank]]:
        """This program's rank and the other XdpPrograms' with an attachment on this node
        (decide.Rank: priority, then the older attachment, then the name)."""
        rivals: dict[str, dec.Rank] = {}
        for a in self.cache.values():
            spec = a.get("spec") or {}
            name = (spec.get("programRef") or {}).get("name")
            if not name or name == d.program:
                continue
            priority = spec.get("priority", 500)
            rivals[name] = dec.Rank(priority if type(priority) is int else 500,
                                    str(a["metadata"].get("creationTimestamp") or ""), name)
        return dec.Rank(d.spec.fields.priority, str(att["metadata"].get("creationTimestamp") or ""), d.program), rivals

    def _events(self, att: dict, d: Desired, outcome: Outcome, record: Mapping[str, IfaceRecord],
                wanted: dec.Wanted) -> None:
        """Repairs and hand-overs, one Event each (a mode change by policy is none)."""
        same_generation = (att.get("status") or {}).get("observedGeneration") == d.generation
        for r in outcome.interfaces:
            if not (r.ok and r.changed):
                continue
            was = record.get(r.interface) if same_generation else None
            if r.replaced:
                self.writer.event(att, *takeover_event(r, was, wanted))
            elif was is not None and was.ready and r.tried and not r.moved:
                self.writer.event(att, "Warning", reasons.DRIFT_REPAIRED,
                                  f"{r.interface}: program {was.prog_id} was detached or replaced behind kube-xdp's "
                                  f"back; re-attached program {r.prog_id} in {r.mode} mode")

    # -- deletion --------------------------------------------------------------------
    def remove(self, att: dict, program: str) -> float | None:
        """Detach `program` everywhere, unpin it, then release the finalizer."""
        if names.FINALIZER_AGENT not in (att["metadata"].get("finalizers") or []):
            return None
        outcome = self.remove_program(program)
        left = self.view.observe()
        still = [h.interface for h in left.hooks.values()
                 if any((left.hook_owner(h.interface, pid, mode) or Owner("", None)).program == program
                        for pid, mode in h.slots())]
        if still or program in left.programs() or outcome.errors:
            message = f"still attached on {', '.join(still)}" if still else "; ".join(m for _, m in outcome.errors)
            log.warning("%s: cleanup incomplete (%s); retrying", att["metadata"]["name"], message or "pins remain")
            return TRANSIENT_RETRY
        log.info("%s: detached from %s, unpinned; releasing finalizer", att["metadata"]["name"],
                 ", ".join(outcome.detached) or "no interface")
        self.writer.finalizer(att, present=False)
        return None

    def remove_program(self, program: str) -> Outcome:
        """Every trace of `program` removed from the node (decide.cleanup), and forgotten."""
        outcome = self._run(Executor(self.view.node, program=program, held_link=self.view.keeper.fd),
                            dec.cleanup(program, self.view.observe()))
        self.offloads.forget(program)
        self.compiled.pop(program, None)
        self.view.drop_program(program)
        return outcome

    def _remove_unparseable(self, att: dict) -> float | None:
        program = (att.get("metadata", {}).get("labels") or {}).get(names.LABEL_PROGRAM)
        try:
            return self.remove(att, validate_program_name(program))
        except SpecError:
            self.writer.finalizer(att, present=False)   # nothing of ours can carry an invalid name
            return None

    def collect_orphans(self, wanted: set[str]) -> None:
        """Programs pinned or linked on this node with no attachment here (deleted while
        this agent was down and released by the operator's bound, or left by a crash):
        detached and unpinned."""
        for program in sorted(self.view.observe().programs() - wanted):
            outcome = self.remove_program(program)
            log.warning("removed orphan program %s (no attachment on this node): detached from %s, unpinned %s",
                        program, ", ".join(outcome.detached) or "nothing", ", ".join(outcome.unpinned) or "nothing")


# -- pure helpers ------------------------------------------------------------------------
def interface_record(r: IfaceResult, *, modes: tuple[str, ...], was: IfaceRecord | None, pins,
                     own: Mapping[str, Any], program: str) -> IfaceRecord:
    """The record of one interface after an action. A result that did not try the modes
    (kept, updated in place, taken over) carries the fallback its record explains while
    the mode is the same and still the outcome of trying the modes in order; otherwise a
    result's own refusals are the record's. Tag and pin path are the pinned program's
    (in offload mode the one built for the interface's device, whose maps it uses)."""
    if not r.ok:
        return IfaceRecord(r.interface, False, preferred_mode=modes[0], refused=r.refused,
                           reason=r.reason or reasons.ATTACH_FAILED, message=r.message)
    fields = _located(r, was, pins, own, program)
    carried = _carried(r, was, modes)
    if carried is not None and carried.legacy:
        return IfaceRecord(r.interface, True, **fields, reason=carried.reason, legacy=True,
                           message=f"attached in {r.mode} mode, a fallback mode an earlier agent chose")
    refused = carried.refused if carried is not None else (r.refused if r.tried else ())
    return IfaceRecord(r.interface, True, preferred_mode=modes[0], refused=refused, **fields,
                       reason=refused[0].reason if refused else None,
                       message=fallback_message(r.mode or "", refused) if refused else "")


def _carried(r: IfaceResult, was: IfaceRecord | None, modes: tuple[str, ...]) -> IfaceRecord | None:
    """The record whose fallback still explains `r`: same mode, not the preferred one, the
    modes not tried again, and settled under the same policy."""
    if was is None or r.tried or r.mode == modes[0] or was.mode != r.mode:
        return None
    return was if was.settled(modes) else None


def _located(r: IfaceResult, was: IfaceRecord | None, pins, own: Mapping[str, Any], program: str) -> dict[str, Any]:
    """Where `r`'s program is: the result's fields, its digest (the record's when the
    same program's pin is missing right now), its pin's tag and path."""
    same = was if was is not None and was.prog_id == r.prog_id else None
    digest = r.digest or (same.digest if same else None)
    pinned = own.get(digest) if digest else None
    return dict(mode=r.mode, attached_by=r.attached_by, link_id=r.link_id, prog_id=r.prog_id, digest=digest,
                tag=pinned.tag if pinned else (same.tag if same else None),
                pin_path=pinned.prog_path if pinned else (pins.prog_path(program, digest) if digest else None))


def _still_attached(program: str, observed: Observed, reason: str) -> list[IfaceRecord]:
    """Interfaces still running an earlier version of `program` (a new spec that fails to
    build never disturbs the running one): reported, not ready, with the cause."""
    out = []
    for hook in observed.hooks.values():
        for prog_id, mode in hook.slots():
            owner = observed.hook_owner(hook.interface, prog_id, mode)
            if owner is not None and owner.program == program:
                out.append(IfaceRecord(
                    hook.interface, False, mode=mode, prog_id=prog_id, digest=owner.digest,
                    attached_by="link" if owner.link else "netlink", link_id=owner.link.link_id if owner.link else None,
                    reason=reason, message=f"the previous version ({owner.digest or 'unpinned'}) stays attached until "
                                           "the new one builds"))
                break
    return out


def takeover_event(r: IfaceResult, was: IfaceRecord | None, wanted: dec.Wanted) -> tuple[str, str, str]:
    """(type, reason, message) of the Event for a program taken over."""
    prog_id, owner, why = r.replaced
    whose = f"XdpProgram {owner}" if owner else "a program not managed by kube-xdp"
    if why == "drift":
        return ("Warning", reasons.DRIFT_REPAIRED,
                f"{r.interface}: program {prog_id} ({whose}) replaced ours (program "
                f"{was.prog_id if was and was.prog_id else '?'}) behind kube-xdp's back; replaced it atomically with "
                f"program {r.prog_id} in {r.mode} mode")
    if why == "takeOver":
        return ("Normal", reasons.TOOK_OVER,
                f"{r.interface}: took over from program {prog_id} ({whose}) as spec.takeOver allows: "
                f"atomic replace with program {r.prog_id} in {r.mode} mode")
    rival = wanted.rivals.get(owner or "")
    rank = wanted.rank.priority if wanted.rank else "?"
    return ("Normal", reasons.TOOK_OVER,
            f"{r.interface}: took over from {whose} (program {prog_id}, priority "
            f"{rival.priority if rival else '?'}) with priority {rank}: atomic replace with "
            f"program {r.prog_id} in {r.mode} mode")


def compile_entry(memory: dict[str, dict], key: str, pinned: set[str], old: Mapping | None, *,
                  adopt_ms: float) -> dict:
    """status.compile for the program of compile `key`, now pinned: what `memory` (this
    process's: key -> entry) says, recorded when this process compiled it; else adopted
    from the pin (cacheHit true, the adoption's duration), recorded so that resyncs report
    the same. An adoption the last status already reports is kept as it was (no write
    after every restart). Keys whose pins are gone are forgotten."""
    for k in [k for k in memory if k[:12] not in pinned]:
        del memory[k]
    if key not in memory:
        was = (old or {}).get("compile") or {}
        if was.get("digest") == key and was.get("cacheHit") is True and type(was.get("durationMs")) is int:
            memory[key] = dict(was)
        else:
            memory[key] = {"durationMs": int(round(adopt_ms)), "cacheHit": True, "digest": key}
    return memory[key]
