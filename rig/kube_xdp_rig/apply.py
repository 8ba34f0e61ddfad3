"""Server-side apply of manifests (dicts or YAML files) with the Kubernetes client,
so neither the demo nor the tests depend on a kubectl binary."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import kubernetes
import yaml
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ResourceNotFoundError

FIELD_MANAGER = "kube-xdp-rig"


def load_yaml(*paths: Path) -> list[dict]:
    docs = []
    for path in paths:
        files = sorted(path.glob("*.yaml")) if path.is_dir() else [path]
        for f in files:
            docs += [d for d in yaml.safe_load_all(f.read_text()) if d]
    return docs


def apply(client: kubernetes.client.ApiClient, docs: Iterable[dict]) -> None:
    dyn = DynamicClient(client)
    for doc in docs:
        resource = _resource(dyn, doc["apiVersion"], doc["kind"])
        meta = doc["metadata"]
        resource.server_side_apply(body=doc, name=meta["name"], namespace=meta.get("namespace"),
                                   field_manager=FIELD_MANAGER, force_conflicts=True)
        if doc["kind"] == "CustomResourceDefinition":
            wait_established(client, meta["name"])
            dyn.resources.invalidate_cache() if hasattr(dyn.resources, "invalidate_cache") else None


def _resource(dyn: DynamicClient, api_version: str, kind: str):
    for attempt in range(20):
        try:
            return dyn.resources.get(api_version=api_version, kind=kind)
        except ResourceNotFoundError:
            if attempt == 19:
                raise
            dyn.invalidate_cache() if hasattr(dyn, "invalidate_cache") else None
            time.sleep(0.25)


def wait_established(client: kubernetes.client.ApiClient, name: str, timeout: float = 30) -> None:
    ext = kubernetes.client.ApiextensionsV1Api(client)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        crd = ext.read_custom_resource_definition(name)
        if any(c.type == "Established" and c.status == "True" for c in (crd.status.conditions or [])):
            return
        time.sleep(0.2)
    raise TimeoutError(f"CRD {name} not Established after {timeout:.0f}s")
