"""Read a program's C source from the API server.

One of the few modules of kube_xdp_api that do I/O (with compat.py and events.py; see
the package docstring): operator (to compute the source digest) and agent (to compile)
must read sources the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubernetes.client import CoreV1Api
from kubernetes.client.rest import ApiException

from . import reasons
from .spec import SpecError, check_inline_source


def read_source(core: CoreV1Api, source: Mapping[str, Any]) -> str:
    """The program text of `spec.source`. Raises SpecError(SourceNotFound) when the
    ConfigMap or its key does not exist, SpecError(InvalidSpec) when the text is not
    acceptable (size, encoding); ApiException for transient API failures."""
    if source.get("inline") is not None:
        return check_inline_source(source["inline"], "spec.source.inline")
    ref = source.get("configMapRef") or {}
    where = f"ConfigMap {ref.get('namespace')}/{ref.get('name')}"
    try:
        cm = core.read_namespaced_config_map(ref.get("name"), ref.get("namespace"))
    except ApiException as e:
        if e.status == 404:
            raise SpecError(reasons.SOURCE_NOT_FOUND, f"{where} does not exist") from e
        raise
    data = cm.data or {}
    if ref.get("key") not in data:
        keys = ", ".join(sorted(data)) or "none"
        raise SpecError(reasons.SOURCE_NOT_FOUND, f"{where} has no key {ref.get('key')!r} (keys: {keys})")
    return check_inline_source(data[ref["key"]], f"{where} key {ref['key']}")
