"""The agent's writes to the API: an attachment's status (only when it changed), its
finalizer, and Events. Every write goes through here; nothing here reads the kernel.

The attachment cache (`cache`: name -> object, the watch's) is updated with what each
write returned, so the next reconcile starts from the object as it is now.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from kubernetes.client.rest import ApiException

from kube_xdp_api import conditions as cond
from kube_xdp_api import events, names

from .report import Report, transition_events

log = logging.getLogger("kube_xdp_agent.writer")


class AttachmentCache:
    """name -> the XdpAttachment as last seen (the watch thread and the worker share it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[str, dict] = {}

    def replace(self, objects: Mapping[str, dict]) -> None:
        with self._lock:
            self._objects = dict(objects)

    def put(self, name: str, obj: dict) -> None:
        with self._lock:
            self._objects[name] = obj

    def update(self, name: str, obj: dict) -> None:
        """Replace `name` with a newer copy, unless the watch removed it meanwhile."""
        with self._lock:
            if name in self._objects:
                self._objects[name] = obj

    def pop(self, name: str) -> None:
        with self._lock:
            self._objects.pop(name, None)

    def get(self, name: str) -> dict | None:
        with self._lock:
            return self._objects.get(name)

    def names(self) -> list[str]:
        with self._lock:
            return list(self._objects)

    def values(self) -> list[dict]:
        with self._lock:
            return list(self._objects.values())


class ApiWriter:
    def __init__(self, custom, core, cache: AttachmentCache, node_name: str) -> None:
        self.custom, self.core = custom, core
        self.cache = cache
        self.node_name = node_name

    def status(self, att: dict, report: Report) -> None:
        """Patch the status when it changed (a merge patch: nulls remove old fields), after
        the Events of its condition transitions."""
        old = att.get("status") or {}
        if cond.status_unchanged(old, report.status):
            return
        for type_, reason, message in transition_events(old, report):
            self.event(att, type_, reason, message)
        try:
            new = self.custom.patch_cluster_custom_object_status(
                names.GROUP, names.VERSION, names.ATTACHMENTS, att["metadata"]["name"], {"status": dict(report.status)})
        except ApiException as e:
            if e.status == 404:
                return
            raise
        self.cache.update(att["metadata"]["name"], new)

    def finalizer(self, att: dict, *, present: bool) -> dict | None:
        """The agent's finalizer added or removed; the object as now, None when it is gone
        or changed meanwhile (the watch brings the new one)."""
        meta = att["metadata"]
        if (names.FINALIZER_AGENT in (meta.get("finalizers") or [])) is present:
            return att
        finalizers = [f for f in meta.get("finalizers") or [] if f != names.FINALIZER_AGENT]
        if present:
            finalizers.append(names.FINALIZER_AGENT)
        patch = {"metadata": {"finalizers": finalizers, "resourceVersion": meta["resourceVersion"]}}
        try:
            new = self.custom.patch_cluster_custom_object(names.GROUP, names.VERSION, names.ATTACHMENTS, meta["name"],
                                                          patch)
        except ApiException as e:
            if e.status in (404, 409):
                return None
            raise
        self.cache.update(meta["name"], new)
        return new

    def event(self, att: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """A core/v1 Event about the attachment (low volume: transitions and repairs)."""
        events.post(self.core, {**att, "apiVersion": names.API_VERSION, "kind": names.ATTACHMENT_KIND},
                    type_, reason, message, component="kube-xdp-agent", host=self.node_name)
