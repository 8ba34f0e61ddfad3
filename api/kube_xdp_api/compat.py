"""Which Kubernetes versions kube-xdp supports, and the check both controllers run at start.

The minimum is 1.32: the first release where everything kube-xdp relies on is GA, so no
cluster can have it switched off by a feature gate:
- CRD validation rules (`x-kubernetes-validations`) with `reason`, `fieldPath` and
  `messageExpression` (GA 1.30): the API server refuses bad specs with the rule's message;
- ValidatingAdmissionPolicy v1 (GA 1.30): each agent may write only its own node's objects;
- the node name in pod-bound ServiceAccount tokens (`authentication.kubernetes.io/node-name`,
  ServiceAccountTokenPodNodeInfo, GA 1.32): what that policy compares with;
- CRD `selectableFields` (CustomResourceFieldSelectors, GA 1.32): each agent watches its
  node's XdpAttachments with a field selector on `spec.nodeName`.
Tested: 1.37 (the rig's). The chart's `kubeVersion` says the same (a unit test checks).

`check` is pure; `require_supported` reads /version once at start-up.
"""

from __future__ import annotations

import logging
import re

MIN_KUBERNETES = (1, 32)
TESTED_KUBERNETES = "1.37"

_MINOR_RE = re.compile(r"^(\d+)")


class UnsupportedKubernetes(RuntimeError):
    """The API server is older than kube-xdp supports; the message says what to do."""


def server_version(major: str, minor: str) -> tuple[int, int] | None:
    """(major, minor) from /version's fields; providers write minor as e.g. "32+". None when
    unreadable (a development build): the caller then does not refuse."""
    ma, mi = _MINOR_RE.match(major or ""), _MINOR_RE.match(minor or "")
    if not ma or not mi:
        return None
    return int(ma.group(1)), int(mi.group(1))


def check(major: str, minor: str, git_version: str, *, component: str) -> None:
    """Raise UnsupportedKubernetes when the server is older than MIN_KUBERNETES."""
    version = server_version(major, minor)
    if version is None or version >= MIN_KUBERNETES:
        return
    need = ".".join(map(str, MIN_KUBERNETES))
    raise UnsupportedKubernetes(
        f"{component}: the API server runs Kubernetes {git_version or '.'.join(map(str, version))}, and kube-xdp "
        f"needs {need} or later (CRD validation rules and field selectors, ValidatingAdmissionPolicy, node names "
        f"in pod-bound ServiceAccount tokens; tested on {TESTED_KUBERNETES}): upgrade the cluster, or use a "
        f"kube-xdp release that supports it")


def require_supported(client, *, component: str) -> None:
    """Read the server's /version with `client` (a kubernetes ApiClient) and raise
    UnsupportedKubernetes if it is too old. An API server that cannot be reached now is
    not a verdict: that is logged and the controller's own retries take over."""
    import json

    import kubernetes
    try:
        # Raw JSON: the client's VersionInfo model refuses a /version that omits any field
        # (some distributions do), and only major, minor and gitVersion matter here.
        response = kubernetes.client.VersionApi(client).get_code_with_http_info(_preload_content=False)
        info = json.loads(response.data)
    except Exception as e:      # noqa: BLE001 - any failure to read /version is "unknown", not "too old"
        logging.getLogger(component).warning("could not read the API server's version (%s); not checked", e)
        return
    check(str(info.get("major", "")), str(info.get("minor", "")), str(info.get("gitVersion", "")),
          component=component)
