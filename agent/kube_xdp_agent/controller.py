"""The agent's loop: watch this node's XdpAttachments, and reconcile each one from the
one work queue (kube_xdp_api.workqueue).

- One list+watch with a server-side field selector (`spec.nodeName=<node>`, a selectable
  field of the XdpAttachment CRD): the agent never sees, let alone filters, other nodes'
  attachments, and the field it selects on is the one the attachment is about (a label
  could say another node). Every event adds the attachment's key to the queue.
- One worker thread takes keys from the queue and runs every reconcile, so changes to the
  node's kernel are serial (the queue never hands a key to two workers anyway). A
  reconcile that must look again returns a delay (`add_after`); one that fails is retried
  with the queue's per-key backoff with full jitter (1 s doubling to RETRY_MAX).
- Every `resync` seconds the worker adds every attachment's key (drift behind our back, a
  pin removed, an interface that appeared are repaired) except those waiting out a
  failure's backoff, and removes orphans; every INVENTORY_SECONDS it refreshes the
  node's XdpNode.
- The kernel is observed once per batch of back-to-back reconciles (nodeview.NodeView);
  the worker forgets the observation whenever it goes idle.
- `health` is what /healthz reports (health.py): the watch's and the worker's heartbeats.

The reconcile itself is reconcile.Reconciler (desired + observed + record -> decide ->
execute -> report); its parts: nodeview (the kernel), writer (the API), offloads (device
builds), build (compiles).
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time

import kubernetes
import urllib3
from kubernetes.client.rest import ApiException

from kube_xdp_api import names
from kube_xdp_api.workqueue import Backoff, ShutDown, WorkQueue, process

from .build import InProcessBuilder
from .health import Health
from .inventory import DEFAULT_PROBE_PATTERN, interface_selector
from .nodeinfo import NodePublisher
from .nodeview import NodeView
from .offloads import OffloadBuilds
from .reconcile import Reconciler, Sources
from .writer import ApiWriter, AttachmentCache

log = logging.getLogger("kube_xdp_agent")

INVENTORY_SECONDS = 60.0
WATCH_TIMEOUT = 240
# The watch's retry backoff doubles from 1 s up to this (with jitter): after an API server
# outage an agent is back within this many seconds of the server (30 s made a 60 s outage
# take ~30 s more to converge; tests/faults/test_3_apiserver_outage.py).
WATCH_BACKOFF_MAX = 8.0
# A failed reconcile is retried after a random delay in [0, min(RETRY_MAX, 2**n)) s.
RETRY_MAX = 30.0


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


class Agent:
    def __init__(self, config: AgentConfig, client: kubernetes.client.ApiClient, kernel):
        self.config = config
        self.custom = kubernetes.client.CustomObjectsApi(client)
        self.core = kubernetes.client.CoreV1Api(client)
        self.selector = attachment_field_selector(config.node_name)
        self.cache = AttachmentCache()
        self.view = NodeView(kernel, netns=config.netns, bpffs=config.bpffs)
        self.builder = (kernel.builder(config.bpffs, config.netns) if hasattr(kernel, "builder")
                        else InProcessBuilder(kernel.compiler, self.view.pins))
        self.writer = ApiWriter(self.custom, self.core, self.cache, config.node_name)
        self.reconciler = Reconciler(view=self.view, builder=self.builder,
                                     offloads=OffloadBuilds(self.builder, self.view), writer=self.writer,
                                     cache=self.cache, sources=Sources(self.custom, self.core))
        self.publisher = NodePublisher(self.custom, config.node_name, self.view.netlink,
                                       probe_modes=config.probe_xdp_modes,
                                       select=interface_selector(config.inventory_interfaces)) \
            if config.inventory else None
        self.queue: WorkQueue[str] = WorkQueue(backoff=Backoff(base=1.0, cap=RETRY_MAX))
        self.health = Health()
        self.synced = threading.Event()
        self.stopping = threading.Event()

    # -- the loop --------------------------------------------------------------------
    def run(self) -> None:
        """Watch (a thread) and work (this thread) until `shutdown`."""
        threading.Thread(target=self._watch_loop, name="watch", daemon=True).start()
        while not self.synced.wait(0.5):
            self.health.worker_beat()                 # waiting for the first list is not wedged
            if self.stopping.is_set():
                return
        next_resync = time.monotonic() + self.config.resync
        next_inventory = time.monotonic() if self.publisher is not None else float("inf")
        while True:
            if time.monotonic() >= next_inventory:
                self._publish_inventory()
                next_inventory = time.monotonic() + INVENTORY_SECONDS
            if time.monotonic() >= next_resync:
                self.resync()
                next_resync = time.monotonic() + self.config.resync
            if not len(self.queue):
                self.view.forget()                    # idle from here on: the next work reads the kernel afresh
            try:
                key = self.queue.get(timeout=max(0.0, min(next_resync, next_inventory) - time.monotonic()))
            except ShutDown:
                break
            self.health.worker_beat()
            if key is not None:
                process(self.queue, key, self.reconcile, self._failed)
                self.health.worker_beat()

    def shutdown(self) -> None:
        """Stop: the worker leaves its loop (after the reconcile it runs), the watch ends."""
        self.stopping.set()
        self.queue.shutdown()

    def close(self) -> None:
        """Release the kernel handles (the links held open, netlink) once `run` returned.
        Call it from the thread that made the Agent: pyroute2's rtnetlink socket has an
        event loop of that thread, which another thread cannot close."""
        self.view.close()

    def reconcile(self, name: str) -> float | None:
        """Reconcile `name`; None when done, else the seconds after which to look again."""
        return self.reconciler.reconcile(name)

    def resync(self) -> None:
        """A resync tick: add every attachment's key (but those backing off), remove orphans."""
        for name in self.cache.names():
            if not self.queue.retries(name):
                self.queue.add(name)
        if not self.synced.is_set():
            return
        wanted = {((a.get("spec") or {}).get("programRef") or {}).get("name") for a in self.cache.values()}
        try:
            self.reconciler.collect_orphans({w for w in wanted if w})
        except Exception as e:   # unreadable right now: the reconciles report it; checked again next tick
            log.warning("orphan check failed: %s", e)

    def _failed(self, name: str, e: Exception, delay: float) -> None:
        if isinstance(e, (ApiException, urllib3.exceptions.HTTPError, OSError)):   # the API server, most likely away
            log.warning("reconcile of %s failed (%s: %s); retrying in %.1fs", name, type(e).__name__,
                        str(e).splitlines()[0][:300] if str(e) else "", delay)
        else:   # one attachment's trouble never stops the agent
            log.error("reconcile of %s failed; retrying in %.1fs", name, delay, exc_info=e)

    def _publish_inventory(self) -> None:
        """The XdpNode, on this (the worker) thread: probes (opt-in) attach to empty hooks
        only and must not race this agent's own attaches."""
        try:
            self.publisher.refresh()
        except Exception as e:   # the inventory is informative: never stop the agent for it
            log.warning("could not publish XdpNode %s: %s", self.config.node_name, e)
        finally:
            self.view.forget()

    # -- the watch -------------------------------------------------------------------
    def _watch_loop(self) -> None:
        backoff = 1.0
        while not self.stopping.is_set():
            try:
                rv = self._list()
                backoff = 1.0
                self._stream(rv)
            except Exception as e:  # API server away: keep the datapath, retry with backoff
                delay = backoff * random.uniform(0.5, 1.0)      # jitter: agents do not retry in step
                log.warning("watch of attachments failed (%s); retrying in %.1fs", e, delay)
                self.stopping.wait(delay)
                backoff = min(backoff * 2, WATCH_BACKOFF_MAX)

    def _list(self) -> str:
        """List this node's attachments into the cache, queue them all; the resourceVersion."""
        listing = self.custom.list_cluster_custom_object(names.GROUP, names.VERSION, names.ATTACHMENTS,
                                                         field_selector=self.selector)
        seen = {o["metadata"]["name"]: o for o in listing.get("items", [])}
        self.cache.replace(seen)
        for name in seen:
            self.queue.add(name)
        rv = listing["metadata"]["resourceVersion"]
        log.info("listed %d attachment(s) of this node; watching from resourceVersion %s", len(seen), rv)
        self.synced.set()
        self.health.watch_ok()
        return rv

    def _stream(self, rv: str) -> None:
        """Watch from `rv` until the server ends the watch (or an ERROR: list again). A
        connection silent for longer than the server's timeout is a hung one: the read
        timeout ends it, and the loop lists again."""
        w = kubernetes.watch.Watch()
        for event in w.stream(self.custom.list_cluster_custom_object, names.GROUP, names.VERSION,
                              names.ATTACHMENTS, field_selector=self.selector, resource_version=rv,
                              timeout_seconds=WATCH_TIMEOUT, allow_watch_bookmarks=True,
                              _request_timeout=(10, WATCH_TIMEOUT + 30)):
            self.health.watch_ok()
            if self.stopping.is_set():
                w.stop()
                return
            kind, obj = event["type"], event["object"]
            if kind == "ERROR":
                return               # 410 Gone and friends: list again
            if kind == "BOOKMARK":
                continue
            name = obj["metadata"]["name"]
            if kind == "DELETED":
                self.cache.pop(name)
            else:
                self.cache.put(name, obj)
            self.queue.add(name)
