"""The operator's writes to the API server: the one place its side effects live.

Every call is idempotent: creating what exists, deleting what is gone, and removing a
finalizer that is not there all succeed, so a reconcile can be repeated after a crash.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kubernetes
from kubernetes.client.rest import ApiException

from kube_xdp_api import events, names
from kube_xdp_api.fetch import read_source


class ClusterApi:
    def __init__(self, client: kubernetes.client.ApiClient):
        self.client = client
        self.custom = kubernetes.client.CustomObjectsApi(client)
        self.core = kubernetes.client.CoreV1Api(client)

    @classmethod
    def connect(cls, kubeconfig: str | None) -> "ClusterApi":
        if kubeconfig:
            return cls(kubernetes.config.new_client_from_config(config_file=kubeconfig))
        config = kubernetes.client.Configuration()
        kubernetes.config.load_incluster_config(client_configuration=config)
        return cls(kubernetes.client.ApiClient(config))

    def read_source(self, source: Mapping[str, Any]) -> str:
        return read_source(self.core, source)

    def create_attachment(self, body: Mapping[str, Any]) -> None:
        try:
            self.custom.create_cluster_custom_object(names.GROUP, names.VERSION, names.ATTACHMENTS, dict(body))
        except ApiException as e:
            if e.status != 409:       # already there: the next reconcile compares specs
                raise

    def patch_attachment(self, name: str, patch: Mapping[str, Any]) -> None:
        try:
            self.custom.patch_cluster_custom_object(names.GROUP, names.VERSION, names.ATTACHMENTS, name, dict(patch))
        except ApiException as e:
            if e.status != 404:
                raise

    def delete_attachment(self, name: str) -> None:
        self._delete(names.ATTACHMENTS, name)

    def delete_xdpnode(self, name: str, uid: str) -> None:
        """Delete the XdpNode of a Node that is gone, only if it is still the object with
        `uid` (a precondition: an agent may have published a new one meanwhile)."""
        self._delete(names.NODES, name, body=kubernetes.client.V1DeleteOptions(
            preconditions=kubernetes.client.V1Preconditions(uid=uid)))

    def _delete(self, plural: str, name: str, **kwargs: Any) -> None:
        try:
            self.custom.delete_cluster_custom_object(names.GROUP, names.VERSION, plural, name, **kwargs)
        except ApiException as e:
            if e.status not in (404, 409):    # gone already; 409: a precondition no longer holds
                raise

    def release_attachment(self, attachment: Mapping[str, Any]) -> None:
        """Drop the agent's finalizer from an attachment whose node no longer exists:
        there is no agent left to detach anything, and nothing to detach from."""
        meta = attachment.get("metadata") or {}
        finalizers = list(meta.get("finalizers") or [])
        if names.FINALIZER_AGENT not in finalizers:
            return
        finalizers.remove(names.FINALIZER_AGENT)
        patch = {"metadata": {"finalizers": finalizers, "resourceVersion": meta.get("resourceVersion")}}
        try:
            self.custom.patch_cluster_custom_object(names.GROUP, names.VERSION, names.ATTACHMENTS, meta["name"], patch)
        except ApiException as e:
            if e.status not in (404, 409):   # 409: changed meanwhile; the next reconcile retries
                raise

    def set_program_finalizer(self, program: Mapping[str, Any], *, present: bool) -> None:
        """Add or remove the operator's finalizer on an XdpProgram.

        A JSON patch that tests the current finalizers list: it fails (and the reconcile
        retries) only if someone else changed the finalizers meanwhile, not because the
        operator's own status writes moved the resourceVersion. Without a list yet, a merge
        patch guarded by the resourceVersion (the program's first reconcile)."""
        meta = program.get("metadata") or {}
        current = list(meta.get("finalizers") or [])
        wanted = [f for f in current if f != names.FINALIZER_OPERATOR] + ([names.FINALIZER_OPERATOR] if present else [])
        if wanted == current:
            return
        try:
            if current:
                ops = [{"op": "test", "path": "/metadata/finalizers", "value": current},
                       {"op": "replace", "path": "/metadata/finalizers", "value": wanted}]
                self.custom.patch_cluster_custom_object(names.GROUP, names.VERSION, names.PROGRAMS, meta["name"], ops,
                                                        _content_type="application/json-patch+json")
            else:
                patch = {"metadata": {"finalizers": wanted, "resourceVersion": meta.get("resourceVersion")}}
                self.custom.patch_cluster_custom_object(names.GROUP, names.VERSION, names.PROGRAMS, meta["name"], patch)
        except ApiException as e:
            if e.status != 404:
                raise

    def patch_program_status(self, name: str, status: Mapping[str, Any]) -> dict | None:
        """Merge-patch the program's status; returns the status now stored (None if gone)."""
        try:
            body = self.custom.patch_cluster_custom_object_status(names.GROUP, names.VERSION, names.PROGRAMS, name,
                                                                  {"status": dict(status)})
        except ApiException as e:
            if e.status != 404:
                raise
            return None
        return (body or {}).get("status") if isinstance(body, Mapping) else None

    def post_event(self, program: Mapping[str, Any], type_: str, reason: str, message: str) -> bool:
        """An Event about an XdpProgram that `kubectl describe xdpp` shows (kube_xdp_api.events)."""
        return events.post(self.core, {**program, "apiVersion": names.API_VERSION, "kind": names.PROGRAM_KIND},
                           type_, reason, message, component="kube-xdp-operator")
