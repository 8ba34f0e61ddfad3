"""The agent's control loop: watch this node's XdpAttachments, reconcile each one.

- One list+watch with a server-side field selector (`spec.nodeName=<node>`, a selectable
  field of the XdpAttachment CRD): the agent never sees, let alone filters, other nodes'
  attachments, and the field it selects on is the one the attachment is about (a label
  could say another node).
- One worker thread runs every reconcile, so changes to the node's kernel are serial.
- Every `resync` seconds each attachment is reconciled again: drift (a program detached
  or replaced behind our back, a pin removed, an interface that appeared) is repaired.
- The kernel is read (hooks, pins, default route: observe.observe) once for the
  reconciles the worker runs back to back, a resync tick's typically, and read again as
  soon as one of them changed the kernel (an action other than Keep/Conflict, a build,
  the inventory's probes), when the worker goes idle, and after OBSERVATION_MAX_AGE: an
  idle tick reads the node once, whatever the number of attachments (`_observe`).
- Finalizer kubexdp.io/agent is added before the first side effect and removed only after
  the program is detached from every interface of this node and unpinned.
- A restart rebuilds everything from the API (desired) and from netlink + pins
  (observed): what is already right is adopted, never detached and re-attached.

API traffic: a reconcile that changes nothing reads nothing and writes nothing (sources
are cached by digest; status is patched only when it changed).
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import random
import re
import threading
import time
from collections.abc import Mapping
from typing import Any

import kubernetes
import urllib3
from kubernetes.client.rest import ApiException

from kube_xdp_api import conditions as cond
from kube_xdp_api import events, names, reasons
from kube_xdp_api.fetch import read_source
from kube_xdp_api.spec import SpecError, source_digest, validate_program_name

from .build import InProcessBuilder
from .desired import Desired, resolve_interfaces
from .execute import Executor, IfaceResult, fell_back_from
from .kernel import offload
from .kernel.compile import CompileRequest
from .kernel.errors import KernelError
from .inventory import DEFAULT_PROBE_PATTERN, interface_selector
from .nodeinfo import NodePublisher
from .observe import changes_kernel, observe
from .plan import Observed, Rank, plan_attach, plan_cleanup, plan_gc, plan_repin
from .report import attachment_status, transition_events

log = logging.getLogger("kube_xdp_agent")

TRANSIENT_RETRY = 2.0
INVENTORY_SECONDS = 60.0
WATCH_TIMEOUT = 240
# The watch's retry backoff doubles from 1 s up to this (with jitter): after an API server
# outage an agent is back within this many seconds of the server (30 s made a 60 s outage
# take ~30 s more to converge; tests/faults/test_3_apiserver_outage.py).
WATCH_BACKOFF_MAX = 8.0
# An observation shared by back-to-back reconciles is read again after this many seconds
# even if none of them changed the kernel (a long batch never plans on an old view).
OBSERVATION_MAX_AGE = 1.0
# The device's refusals of an offload build: the same key on the same device fails the same way.
OFFLOAD_REFUSALS = frozenset({reasons.OFFLOAD_UNSUPPORTED, reasons.PROGRAM_NOT_OFFLOADABLE})


@dataclasses.dataclass
class AgentConfig:
    node_name: str
    bpffs: str = names.DEFAULT_BPFFS
    netns: str | None = None           # rig only: do netlink work inside this namespace
    resync: float = 5.0
    inventory: bool = False            # publish this node's XdpNode (the CLI turns it on)
    # which interfaces the inventory probes for XDP modes (--inventory-interfaces, a
    # whole-name regex; loopback never)
    inventory_interfaces: str = DEFAULT_PROBE_PATTERN
    # attach-probe modes even where the kernel reports xdp-features (--probe-xdp-modes)
    probe_xdp_modes: bool = False


def attachment_field_selector(node_name: str) -> str:
    """The field selector of a node's XdpAttachments (served through the CRD's
    selectableFields; the full node name, no label-value shortening)."""
    return f"spec.nodeName={node_name}"


class Transient(Exception):
    """Retry soon; report Reconciling with this reason meanwhile."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class Agent:
    def __init__(self, config: AgentConfig, client: kubernetes.client.ApiClient, kernel):
        self.config = config
        self.custom = kubernetes.client.CustomObjectsApi(client)
        self.core = kubernetes.client.CoreV1Api(client)
        self.kernel = kernel
        self.pins = kernel.pin_store(config.bpffs)
        self.netlink = kernel.netlink(config.netns)
        self.builder = (kernel.builder(config.bpffs, config.netns) if hasattr(kernel, "builder")
                        else InProcessBuilder(kernel.compiler, self.pins))
        self.publisher = NodePublisher(self.custom, config.node_name, self.netlink,
                                       probe_modes=config.probe_xdp_modes,
                                       select=interface_selector(config.inventory_interfaces)) \
            if config.inventory else None
        self.selector = attachment_field_selector(config.node_name)
        self.cache: dict[str, dict] = {}
        self.sources: dict[str, str] = {}          # source digest -> text
        self.queue: queue.Queue[str] = queue.Queue()
        self.stop = threading.Event()
        self.synced = threading.Event()
        self.last_watch_ok = time.monotonic()
        self._lock = threading.Lock()
        # At most one queued reconcile and one pending retry per attachment: without this
        # every resync tick and every failure started another retry chain, so an API outage
        # grew the work (and the log) with its length (tests/faults: 60 s -> 64k log lines,
        # a deletion delayed > 90 s behind the backlog once the server was back).
        self._qlock = threading.Lock()
        self._queued: set[str] = set()
        self._retrying: set[str] = set()
        # (program, interface) -> (device compile key, ifindex, error) of an offload build the
        # device refused, or whose attach it refused (worker thread only): an unchanged spec
        # on the same device is not rebuilt on every resync (a bcc worker each time); a new
        # key or a recreated interface (new ifindex) tries again, and so does a restarted
        # agent, once.
        self._offload_failures: dict[tuple[str, str], tuple[str, int, KernelError]] = {}
        # program -> compile key -> status.compile of the pinned programs this process
        # compiled or adopted (worker thread only): stable across resyncs, so an unchanged
        # reconcile writes nothing, and true to this process after a restart.
        self._compiled: dict[str, dict[str, dict]] = {}
        # The kernel as last read (worker thread only; see _observe): shared by the
        # reconciles run back to back until one changes the kernel or the worker idles.
        self._observed: Observed | None = None
        self._observed_at = 0.0
        self._observed_primary = False        # whether its default route was read
        # program -> digest12 -> PinnedProgram as last opened (worker thread only): reused
        # while the observation shows the same prog id under each digest (a prog id's tag
        # and pin paths never change), opened again otherwise.
        self._pinned: dict[str, dict[str, Any]] = {}

    # -- the loop --------------------------------------------------------------------
    def run(self) -> None:
        watcher = threading.Thread(target=self._watch_loop, name="watch", daemon=True)
        watcher.start()
        self.synced.wait()
        next_resync = time.monotonic() + self.config.resync
        next_inventory = time.monotonic() if self.publisher is not None else float("inf")
        while not self.stop.is_set():
            if self.publisher is not None and time.monotonic() >= next_inventory:
                self._publish_inventory()
                next_inventory = time.monotonic() + INVENTORY_SECONDS
            timeout = max(0.0, min(next_resync, next_inventory) - time.monotonic())
            if self.queue.empty():
                self._forget_observation()       # idle from here on: the next work reads the kernel afresh
            try:
                name = self.queue.get(timeout=timeout)
            except queue.Empty:
                if time.monotonic() < next_resync:
                    continue
                self.resync()
                next_resync = time.monotonic() + self.config.resync
                continue
            if name is None:
                break
            self.process(name)

    def resync(self) -> None:
        """A resync tick: queue every attachment of this node, remove orphans."""
        with self._lock:
            names_ = list(self.cache)
        for n in names_:
            self._enqueue(n)
        self._collect_orphans()

    def process(self, name: str) -> None:
        """Reconcile `name`, taken from the queue."""
        with self._qlock:
            self._queued.discard(name)       # a change from now on queues it again
        self.reconcile_safely(name)

    def _publish_inventory(self) -> None:
        """The XdpNode, on this (the worker) thread: probes attach to empty hooks only and
        must not race this agent's own attaches."""
        try:
            self.publisher.refresh()
        except Exception as e:   # the inventory is informative: never stop the agent for it
            log.warning("could not publish XdpNode %s: %s", self.config.node_name, e)
        finally:
            self._forget_observation()       # its probes attached to and detached from hooks

    def reconcile_safely(self, name: str) -> None:
        try:
            self.reconcile(name)
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as e:   # the API server, most likely away
            log.warning("reconcile of %s failed (%s: %s); retrying in %.0fs", name, type(e).__name__,
                        str(e).splitlines()[0][:300] if str(e) else "", TRANSIENT_RETRY)
            self._later(name, TRANSIENT_RETRY)
        except Exception:   # one attachment's trouble never stops the agent
            log.exception("reconcile of %s failed; retrying in %.0fs", name, TRANSIENT_RETRY)
            self._later(name, TRANSIENT_RETRY)

    def _enqueue(self, name: str) -> None:
        """Queue a reconcile of `name` unless one is queued already."""
        with self._qlock:
            if name in self._queued:
                return
            self._queued.add(name)
        self.queue.put(name)

    def _later(self, name: str, delay: float) -> None:
        """Reconcile `name` again in `delay` s, unless a retry is pending already."""
        with self._qlock:
            if name in self._retrying:
                return
            self._retrying.add(name)

        def fire() -> None:
            with self._qlock:
                self._retrying.discard(name)
            self._enqueue(name)

        t = threading.Timer(delay, fire)
        t.daemon = True
        t.start()

    def _watch_loop(self) -> None:
        backoff = 1.0
        while not self.stop.is_set():
            try:
                listing = self.custom.list_cluster_custom_object(
                    names.GROUP, names.VERSION, names.ATTACHMENTS, field_selector=self.selector)
                with self._lock:
                    seen = {o["metadata"]["name"]: o for o in listing.get("items", [])}
                    self.cache = seen
                for n in seen:
                    self._enqueue(n)
                log.info("listed %d attachment(s) of this node; watching from resourceVersion %s",
                         len(seen), listing["metadata"]["resourceVersion"])
                self.synced.set()
                self.last_watch_ok = time.monotonic()
                rv = listing["metadata"]["resourceVersion"]
                backoff = 1.0
                w = kubernetes.watch.Watch()
                for event in w.stream(self.custom.list_cluster_custom_object, names.GROUP, names.VERSION,
                                      names.ATTACHMENTS, field_selector=self.selector, resource_version=rv,
                                      timeout_seconds=WATCH_TIMEOUT, allow_watch_bookmarks=True):
                    self.last_watch_ok = time.monotonic()
                    if self.stop.is_set():
                        w.stop()
                        return
                    kind, obj = event["type"], event["object"]
                    if kind == "ERROR":
                        break            # 410 Gone and friends: list again
                    if kind == "BOOKMARK":
                        continue
                    name = obj["metadata"]["name"]
                    with self._lock:
                        if kind == "DELETED":
                            self.cache.pop(name, None)
                        else:
                            self.cache[name] = obj
                    self._enqueue(name)
            except Exception as e:  # API server away: keep the datapath, retry with backoff
                delay = backoff * random.uniform(0.5, 1.0)      # jitter: agents do not retry in step
                log.warning("watch of attachments failed (%s); retrying in %.1fs", e, delay)
                self.stop.wait(delay)
                backoff = min(backoff * 2, WATCH_BACKOFF_MAX)

    # -- one attachment --------------------------------------------------------------
    def reconcile(self, name: str) -> None:
        with self._lock:
            att = self.cache.get(name)
        if att is None:
            return
        generation = int(att["metadata"].get("generation") or 0)
        try:
            desired = Desired.from_attachment(att)
        except SpecError as e:
            if att["metadata"].get("deletionTimestamp"):
                self._cleanup_unparseable(att)
            else:
                self._write_status(att, attachment_status(old=att.get("status"), generation=generation, now=cond.now(),
                                                          failure=(e.reason, e.message)))
            return
        if desired.deleting:
            self._cleanup(att, desired.program)
            return
        att = self._ensure_finalizer(att)
        if att is None:
            return
        try:
            status = self._apply(att, desired)
        except Transient as e:
            status = attachment_status(old=att.get("status"), generation=generation, now=cond.now(),
                                       failure=(e.reason, str(e)))
            self._later(name, TRANSIENT_RETRY)
        self._write_status(att, status)

    def _apply(self, att: dict, d: Desired) -> dict:
        generation, program = d.generation, d.program
        old = att.get("status")
        try:
            text = self._source(d)
        except SpecError as e:
            return attachment_status(old=old, generation=generation, now=cond.now(), failure=(e.reason, e.message))
        req = CompileRequest(source=text, entrypoint=d.spec.fields.entrypoint, defines=dict(d.spec.fields.defines))
        key = self.builder.key(req)
        digest = key[:12]
        primary = d.spec.fields.interfaces.primary
        observed = self._observe(primary=primary)
        repins = plan_repin(program=program, recorded=_recorded(old, program), observed=observed)
        if repins:
            done = self._execute(Executor(self.netlink, self.pins, program=program), repins)
            if done.repinned:
                self._event(att, "Warning", reasons.PIN_REPAIRED,
                            f"pins of {program} were removed behind kube-xdp's back; re-pinned {', '.join(done.repinned)} "
                            "from the running program (maps kept)")
            observed = self._observe(primary=primary)
        if digest not in observed.pins.get(program, {}):
            try:
                try:
                    built = self.builder.build(req, program)
                finally:
                    self._forget_observation()      # it pins (a failed build may leave a staging directory)
            except KernelError as e:
                output = getattr(e, "output", "") or ""
                message = f"{e}\n{output}".strip() if output and output not in str(e) else str(e)
                return attachment_status(old=old, generation=generation, now=cond.now(), failure=(e.reason, message),
                                         interfaces=self._still_attached(program, observed, e.reason))
            self._compiled.setdefault(program, {})[key] = {
                "durationMs": int(round(built.duration_ms)), "cacheHit": built.cache_hit, "digest": key}
            log.info("%s: compiled and pinned %s in %.0f ms", att["metadata"]["name"], digest, built.duration_ms)
            observed = self._observe(primary=primary)
        t0 = time.monotonic()
        own = self._own_pins(program, observed)
        pinned = own[digest]
        compile_info = compile_entry(self._compiled.setdefault(program, {}), key, set(own), old,
                                     adopt_ms=(time.monotonic() - t0) * 1000)

        targets, missing_reason, missing_message = resolve_interfaces(
            d.spec.fields.interfaces, sorted(observed.hooks), observed.primary)
        rank, rivals = self._ranks(att, d)
        held = frozenset(i["name"] for i in (old or {}).get("interfaces") or [] if i.get("ready") and i.get("progId"))
        # in a fallback mode because the preferred ones were tried and refused (the status says why)
        settled = settled_interfaces(old, d.modes)
        offloaded = ({t: self.builder.key(dataclasses.replace(req, device=t))[:12] for t in targets}
                     if "offload" in d.modes else {})
        actions = plan_attach(program=program, want=digest, targets=targets, modes=d.modes, observed=observed,
                              rank=rank, rivals=rivals, take_over=d.spec.fields.take_over, held=held,
                              offloaded=offloaded, settled=settled)
        executor = Executor(self.netlink, self.pins, program=program, want=digest, want_id=pinned.prog_id,
                            offload_build=self._offload_builder(program, req),
                            offload_refused=self._offload_refused(program, req))
        outcome = self._execute(executor, actions)
        # (the same observation when nothing above changed the kernel: no second read)
        self._execute(executor, plan_gc(program=program, keep=digest, observed=self._observe()))
        results = list(outcome.interfaces)
        if missing_reason and d.spec.fields.interfaces.names:
            present = set(observed.hooks)
            results += [IfaceResult(n, False, reason=missing_reason, message=f"interface {n} not found on this node")
                        for n in d.spec.fields.interfaces.names if n not in present]
        failure = (missing_reason, missing_message) if missing_reason and not results else None
        before = {i["name"]: i for i in (old or {}).get("interfaces") or []} \
            if (old or {}).get("observedGeneration") == generation else {}
        reported = {i["name"]: i for i in (old or {}).get("interfaces") or []}
        carry_fallback(results, reported, settled, d.modes)
        for r in results:
            if r.changed:
                log.info("%s: %s -> program %s in %s mode", att["metadata"]["name"], r.interface, r.prog_id, r.mode)
                was = before.get(r.interface) or {}
                if r.replaced:
                    self._takeover_event(att, r, was, rank, rivals)
                elif was.get("ready") and r.ok and not (r.swapped or r.moved):
                    # (an update in place, or a move by policy, e.g. to the preferred mode after a
                    # takeover in another one, is no repair: the program was ours and there)
                    self._event(att, "Warning", reasons.DRIFT_REPAIRED,
                                f"{r.interface}: program {was.get('progId')} was detached or replaced behind kube-xdp's back; "
                                f"re-attached program {r.prog_id} in {r.mode} mode")
        status = attachment_status(old=old, generation=generation, now=cond.now(), interfaces=results, failure=failure,
                                   compile_info=compile_info, pin_path=pinned.prog_path, tag=pinned.tag)
        if any(r.ok and r.mode == "offload" for r in results):
            # An offloaded interface runs the program built for its device (pinned under its
            # own digest): report that pin and tag, whose maps are the ones the program uses,
            # not the host program's (tests/offload/guest_controller.py).
            # Its pin can be missing right now (removed behind our back while this reconcile
            # ran): then keep what the last status said for the same program, never the host
            # program's pin, or the next pin repair would re-pin the device program under the
            # host digest and replace it (seen once in the offload lab).
            own = {p.prog_id: p for p in self.pins.open_pinned(program)}
            for entry in status["interfaces"]:
                if not (entry.get("ready") and entry.get("mode") == "offload"):
                    continue
                p = own.get(entry.get("progId"))
                was = reported.get(entry["name"]) or {}
                if p is not None:
                    entry.update(pinPath=p.prog_path, tag=p.tag)
                elif was.get("progId") == entry.get("progId") and was.get("pinPath"):
                    entry.update(pinPath=was["pinPath"], tag=was.get("tag"))
        return status

    def _ranks(self, att: dict, d: Desired) -> tuple[Rank, dict[str, Rank]]:
        """This program's rank and the other XdpPrograms' with an attachment on this node
        (plan.Rank: priority, then the older attachment, then the name)."""
        with self._lock:
            others = list(self.cache.values())
        rivals: dict[str, Rank] = {}
        for a in others:
            spec = a.get("spec") or {}
            name = (spec.get("programRef") or {}).get("name")
            if not name or name == d.program:
                continue
            priority = spec.get("priority", 500)
            rivals[name] = Rank(priority if type(priority) is int else 500,
                                str(a["metadata"].get("creationTimestamp") or ""), name)
        return Rank(d.spec.fields.priority, str(att["metadata"].get("creationTimestamp") or ""), d.program), rivals

    def _takeover_event(self, att: dict, r: IfaceResult, was: dict, rank: Rank, rivals: dict[str, Rank]) -> None:
        prog_id, owner, why = r.replaced
        whose = f"XdpProgram {owner}" if owner else "a program not managed by kube-xdp"
        if why == "drift":
            self._event(att, "Warning", reasons.DRIFT_REPAIRED,
                        f"{r.interface}: program {prog_id} ({whose}) replaced ours (program {was.get('progId', '?')}) "
                        f"behind kube-xdp's back; replaced it atomically with program {r.prog_id} in {r.mode} mode")
        elif why == "takeOver":
            self._event(att, "Normal", reasons.TOOK_OVER,
                        f"{r.interface}: took over from program {prog_id} ({whose}) as spec.takeOver allows: "
                        f"atomic replace with program {r.prog_id} in {r.mode} mode")
        else:
            rival = rivals.get(owner or "")
            self._event(att, "Normal", reasons.TOOK_OVER,
                        f"{r.interface}: took over from {whose} (program {prog_id}, priority "
                        f"{rival.priority if rival else '?'}) with priority {rank.priority}: atomic replace with "
                        f"program {r.prog_id} in {r.mode} mode")

    def _offload_builder(self, program: str, req: CompileRequest):
        """iface -> (digest12, prog id) of `req` built and pinned for offload on that
        interface's device: the offload rules are checked on the source first (no compile
        for a program that cannot be offloaded), then the worker loads it device-bound."""
        def build(iface: str) -> tuple[str, int]:
            offload.check_source(req.source, program=program, interface=iface, mode="offload")
            dreq, key = self._device_build(req, iface)
            digest = key[:12]
            pinned = {p.digest12: p for p in self.pins.open_pinned(program)}
            if digest not in pinned:
                index = self.netlink.interface(iface).index
                failed = self._offload_failures.get((program, iface))
                if failed is not None and failed[:2] == (key, index):
                    log.debug("%s: offload build for %s refused before (%s); not rebuilt", program, iface,
                              failed[2].reason)
                    raise failed[2].with_traceback(None)
                try:
                    self.builder.build(dreq, program)
                except KernelError as e:
                    if e.reason in OFFLOAD_REFUSALS:
                        self._offload_failures[(program, iface)] = (key, index, e)
                    raise
                self._offload_failures.pop((program, iface), None)
                pinned = {p.digest12: p for p in self.pins.open_pinned(program)}
            return digest, pinned[digest].prog_id
        return build

    def _offload_refused(self, program: str, req: CompileRequest):
        """(iface, error) -> remember that the device refused to attach the program built
        for it: the next reconcile reports the same refusal without building it again (the
        build is unpinned by the gc as unused). Same rules as a refused build."""
        def refused(iface: str, error: KernelError) -> None:
            _, key = self._device_build(req, iface)
            try:
                index = self.netlink.interface(iface).index
            except KernelError:
                return                          # gone meanwhile: nothing to remember
            self._offload_failures[(program, iface)] = (key, index, error)
        return refused

    def _device_build(self, req: CompileRequest, iface: str) -> tuple[CompileRequest, str]:
        """`req` built for `iface`'s device, and its compile key (with the device's ifindex,
        what identifies a build the device refused: _offload_failures)."""
        dreq = dataclasses.replace(req, device=iface)
        return dreq, self.builder.key(dreq)

    @staticmethod
    def _still_attached(program: str, observed, reason: str) -> list[IfaceResult]:
        """Interfaces still running an earlier version of `program` (a new spec that fails
        to build never disturbs the running one): reported, not ready, with the cause."""
        out = []
        for hook in observed.hooks.values():
            for prog_id, mode in hook.slots():
                owner = observed.owner(prog_id)
                if owner and owner[0] == program:
                    out.append(IfaceResult(hook.interface, False, mode, prog_id, reason=reason,
                                           message=f"the previous version (pin {owner[1]}) stays attached until the new one builds"))
                    break
        return out

    def _source(self, d: Desired) -> str:
        cached = self.sources.get(d.spec.source_digest)
        if cached is not None:
            return cached
        try:
            program = self.custom.get_cluster_custom_object(names.GROUP, names.VERSION, names.PROGRAMS, d.program)
        except ApiException as e:
            if e.status == 404:
                raise Transient(reasons.SOURCE_NOT_FOUND, f"XdpProgram {d.program} not found (being deleted?)") from e
            raise
        if program["metadata"].get("uid") != d.spec.program_uid:
            raise Transient(reasons.SOURCE_DIGEST_MISMATCH, f"XdpProgram {d.program} was replaced; waiting for the operator")
        text = read_source(self.core, program["spec"]["source"])
        if source_digest(text) != d.spec.source_digest:
            raise Transient(reasons.SOURCE_DIGEST_MISMATCH,
                            "the program's source changed after this attachment was written; waiting for the operator")
        self.sources[d.spec.source_digest] = text
        return text

    # -- the kernel, read and changed ---------------------------------------------------
    def _observe(self, *, primary: bool = False) -> Observed:
        """The kernel as read at most OBSERVATION_MAX_AGE ago and unchanged by this agent
        since (else read now); with `primary`, its default route too (read once per
        observation, only when an attachment selects the primary interface)."""
        now = time.monotonic()
        if self._observed is None or now - self._observed_at > OBSERVATION_MAX_AGE:
            self._observed = observe(self.netlink, self.pins, primary=primary)
            self._observed_at, self._observed_primary = now, primary
        elif primary and not self._observed_primary:
            self._observed = dataclasses.replace(self._observed, primary=self.netlink.default_route_interface())
            self._observed_primary = True
        return self._observed

    def _forget_observation(self) -> None:
        """The kernel may have changed (by this agent, or while it idled): read it again."""
        self._observed = None

    def _execute(self, executor: Executor, actions: list) -> Any:
        """Run `actions`; the observation is forgotten when they may have changed the kernel."""
        try:
            return executor.run(actions)
        finally:
            if changes_kernel(actions):
                self._forget_observation()

    def _own_pins(self, program: str, observed: Observed) -> dict[str, Any]:
        """digest12 -> PinnedProgram of `program`'s pins: opened again only when `observed`
        (read from the kernel) shows other digests or prog ids than those opened last."""
        ids = dict(observed.pins.get(program, {}))
        known = self._pinned.get(program)
        if known is None or {d: p.prog_id for d, p in known.items()} != ids:
            known = {p.digest12: p for p in self.pins.open_pinned(program)}
            self._pinned[program] = known
        return dict(known)

    # -- deletion --------------------------------------------------------------------
    def _cleanup(self, att: dict, program: str) -> None:
        if names.FINALIZER_AGENT not in (att["metadata"].get("finalizers") or []):
            return
        outcome = self._execute(Executor(self.netlink, self.pins, program=program),
                                plan_cleanup(program=program, observed=self._observe()))
        left = self._observe()
        still = [h.interface for h in left.hooks.values()
                 if any((left.owner(pid) or ("",))[0] == program for pid, _ in h.slots())]
        if still or program in left.pins or outcome.errors:
            message = f"still attached on {', '.join(still)}" if still else "; ".join(m for _, m in outcome.errors)
            log.warning("%s: cleanup incomplete (%s); retrying", att["metadata"]["name"], message or "pins remain")
            self._later(att["metadata"]["name"], TRANSIENT_RETRY)
            return
        self._forget(program)
        log.info("%s: detached from %s, unpinned; releasing finalizer", att["metadata"]["name"],
                 ", ".join(outcome.detached) or "no interface")
        self._set_finalizer(att, present=False)

    def _forget(self, program: str) -> None:
        """Drop what this process remembers about a program removed from the node."""
        for k in [k for k in self._offload_failures if k[0] == program]:
            del self._offload_failures[k]
        self._compiled.pop(program, None)
        self._pinned.pop(program, None)

    def _cleanup_unparseable(self, att: dict) -> None:
        program = (att.get("metadata", {}).get("labels") or {}).get(names.LABEL_PROGRAM)
        try:
            self._cleanup(att, validate_program_name(program))
        except SpecError:
            self._set_finalizer(att, present=False)   # nothing of ours can carry an invalid name

    # -- API writes ------------------------------------------------------------------
    def _ensure_finalizer(self, att: dict) -> dict | None:
        if names.FINALIZER_AGENT in (att["metadata"].get("finalizers") or []):
            return att
        return self._set_finalizer(att, present=True)

    def _set_finalizer(self, att: dict, *, present: bool) -> dict | None:
        meta = att["metadata"]
        finalizers = [f for f in meta.get("finalizers") or [] if f != names.FINALIZER_AGENT]
        if present:
            finalizers.append(names.FINALIZER_AGENT)
        patch = {"metadata": {"finalizers": finalizers, "resourceVersion": meta["resourceVersion"]}}
        try:
            new = self.custom.patch_cluster_custom_object(names.GROUP, names.VERSION, names.ATTACHMENTS, meta["name"], patch)
        except ApiException as e:
            if e.status in (404, 409):   # gone, or changed meanwhile: the watch brings the new one
                return None
            raise
        with self._lock:
            if meta["name"] in self.cache:
                self.cache[meta["name"]] = new
        return new

    def _write_status(self, att: dict, status: Mapping[str, Any]) -> None:
        if cond.status_unchanged(att.get("status") or {}, status):
            return
        for type_, reason, message in transition_events(att.get("status"), status):
            self._event(att, type_, reason, message)
        try:
            new = self.custom.patch_cluster_custom_object_status(
                names.GROUP, names.VERSION, names.ATTACHMENTS, att["metadata"]["name"], {"status": dict(status)})
        except ApiException as e:
            if e.status == 404:
                return
            raise
        with self._lock:
            if att["metadata"]["name"] in self.cache:
                self.cache[att["metadata"]["name"]] = new


    def _event(self, att: dict, type_: str, reason: str, message: str) -> None:
        """A core/v1 Event about the attachment (low volume: transitions and repairs)."""
        events.post(self.core, {**att, "apiVersion": names.API_VERSION, "kind": names.ATTACHMENT_KIND},
                    type_, reason, message, component="kube-xdp-agent", host=self.config.node_name)

    # -- orphans ---------------------------------------------------------------------
    def _collect_orphans(self) -> None:
        """Pinned programs with no attachment on this node (deleted while this agent was
        down and released by the operator's bound, or left by a crash): detach what is
        ours and unpin. Only with a complete, current listing."""
        if not self.synced.is_set():
            return
        with self._lock:
            wanted = {((a.get("spec") or {}).get("programRef") or {}).get("name") for a in self.cache.values()}
        try:
            pinned = set(self._observe().pins)
        except Exception as e:   # unreadable right now: the reconciles report it; checked again next tick
            log.warning("cannot read the pins and hooks for the orphan check: %s", e)
            return
        for program in sorted(pinned - wanted):
            outcome = self._execute(Executor(self.netlink, self.pins, program=program),
                                    plan_cleanup(program=program, observed=self._observe()))
            self._forget(program)
            log.warning("removed orphan program %s (no attachment on this node): detached from %s, unpinned %s",
                        program, ", ".join(outcome.detached) or "nothing", ", ".join(outcome.unpinned) or "nothing")


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


def settled_interfaces(status: Mapping | None, modes: tuple[str, ...]) -> frozenset[str]:
    """Interfaces whose fallback mode is the outcome of trying `modes` in order: the status
    reports them ready with a fallback reason, and its message (execute.fallback_message)
    names the same running mode and, first, the same preferred mode. A changed mode policy
    (another preferred mode) is not settled by an old outcome."""
    out = set()
    for i in (status or {}).get("interfaces") or []:
        if i.get("ready") and i.get("progId") and i.get("reason") and i.get("mode") and modes \
                and fell_back_from(str(i.get("message") or ""), i["mode"], modes[0]):
            out.add(i["name"])
    return frozenset(out)


def carry_fallback(results: list[IfaceResult], reported: Mapping[str, Mapping], settled: frozenset[str],
                   modes: tuple[str, ...]) -> None:
    """A program still in the fallback mode it settled in keeps saying why the preferred
    mode was not used: kept as it was (same program), or updated in place (an atomic
    Replace of an older version, same mode: the same modes were tried on the same hook).
    Without it the next resync would no longer count the interface as settled and would
    detach and re-attach it to try the preferred mode again."""
    for r in results:
        was = reported.get(r.interface) or {}
        if not (r.ok and not r.reason and modes and r.mode != modes[0] and r.interface in settled
                and was.get("reason") and was.get("mode") == r.mode):
            continue
        if r.swapped or (not r.changed and was.get("progId") == r.prog_id):
            r.reason, r.message = was["reason"], was.get("message", "")


def _recorded(status: Mapping | None, program: str) -> dict[int, str]:
    """prog id -> digest12 of `program` as this agent last reported them (its status)."""
    out = {}
    for entry in (status or {}).get("interfaces") or []:
        parts = str(entry.get("pinPath") or "").split("/")
        if entry.get("progId") and len(parts) >= 4 and parts[-1] == "prog" and parts[-3] == program \
                and re.fullmatch(r"[0-9a-f]{12}", parts[-2]):
            out[int(entry["progId"])] = parts[-2]
    return out
