"""core/v1 Events about kube-xdp's cluster-scoped objects, posted the way kubectl finds them.

Every kube-xdp resource is cluster-scoped. An Event must still live in a namespace
("default", as the kubelet and the controller-manager do for Nodes), but its
involvedObject has no namespace: `kubectl describe xdpp NAME` lists the events whose
involvedObject.namespace is empty. (kopf's own kopf.event() writes "default" there for
cluster-scoped objects, so describe showed none of them.)
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping
from typing import Any

from kube_xdp_api import reasons

EVENT_NAMESPACE = "default"
MAX_MESSAGE = 1024

log = logging.getLogger(__name__)


def event_body(obj: Mapping[str, Any], type_: str, reason: str, message: str, *, component: str,
               host: str | None = None, now: datetime.datetime | None = None) -> dict[str, Any]:
    """The Event (pure): `obj` is the cluster-scoped object it is about. A reason that is
    not in reasons.CATALOGUE raises ValueError."""
    if type_ not in ("Normal", "Warning"):
        raise ValueError(f"an Event's type is Normal or Warning, not {type_!r}")
    reasons.require(reason)
    meta = obj.get("metadata") or {}
    now = now or datetime.datetime.now(datetime.timezone.utc)
    source = {"component": component, **({"host": host} if host else {})}
    return {
        "metadata": {"generateName": f"{meta['name']}.", "namespace": EVENT_NAMESPACE},
        "involvedObject": {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"),
                           "name": meta["name"], "uid": meta.get("uid"),
                           **({"resourceVersion": meta["resourceVersion"]} if meta.get("resourceVersion") else {})},
        "type": type_, "reason": reason, "message": message[:MAX_MESSAGE],
        "source": source, "reportingComponent": component, **({"reportingInstance": host} if host else {}),
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
    }


def post(core: Any, obj: Mapping[str, Any], type_: str, reason: str, message: str, *, component: str,
         host: str | None = None) -> bool:
    """Post an Event through a kubernetes CoreV1Api; never raises for the API's trouble (an
    Event is never worth failing a reconcile for: the status is the record). Returns
    whether it was posted. A reason not in the catalogue is a bug, not trouble: ValueError."""
    body = event_body(obj, type_, reason, message, component=component, host=host)
    try:
        core.create_namespaced_event(EVENT_NAMESPACE, body)
        return True
    except Exception as e:
        name = (obj.get("metadata") or {}).get("name")
        log.warning("could not post Event %s for %s %s: %s", reason, obj.get("kind"), name,
                    str(e).splitlines()[0][:300] if str(e) else type(e).__name__)
        return False
