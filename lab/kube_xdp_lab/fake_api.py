"""An in-memory Kubernetes API, to run the agent's control loop where there is no API server.

The lab guest has no kube-apiserver (and could not run one cheaply under TCG), but the
agent's controller (`kube_xdp_agent.controller.Agent`) reaches Kubernetes only through a
`kubernetes.client.ApiClient`. `FakeApiServer.client()` returns a real ApiClient whose
urllib3 pool manager is this object: everything above HTTP is the real client (the
generated CustomObjectsApi and CoreV1Api, serialization, the Content-Type it picks,
ApiException, `kubernetes.watch.Watch`), and the fake answers the requests with the API
server's semantics for them:

- cluster-scoped custom resources, `/apis/<group>/<version>/<plural>[/<name>[/status]]`,
  and namespaced core ones, `/api/v1/namespaces/<ns>/<plural>[/<name>]`;
- GET, list (`labelSelector` of `k=v`, `k==v`, `k!=v` terms, `fieldSelector` of the same
  terms on a dotted path such as `spec.nodeName`, the agent's; `resourceVersion` of the
  list in its metadata), watch (`watch=true`: one JSON event per line from
  `resourceVersion` on, ADDED for every object first when there is none or "0"; ends
  after `timeoutSeconds` or at `end_watches()`), POST (`generateName`), DELETE;
- PATCH as JSON merge patch (RFC 7386: null removes a key) and nothing else (415); custom
  resources have the status subresource: a patch of the object ignores `status`, a patch
  of `/status` applies only `status`; `metadata.resourceVersion` in a patch is a
  precondition (409 when stale); a patch that changes nothing changes no resourceVersion
  and sends no event;
- metadata kept by the server: uid, resourceVersion (one counter), generation (+1 when
  the spec changes), creationTimestamp; deletion with finalizers sets
  deletionTimestamp and the object goes when its last finalizer does; no new finalizer
  on an object being deleted (422).

Not modelled: authentication, admission, schema validation and defaulting (write specs
in the canonical form the operator writes), strategic merge and JSON patch, server-side
apply, list paging, bookmarks, 410 Gone.
"""

from __future__ import annotations

import copy
import datetime
import itertools
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import kubernetes
import urllib3

_CUSTOM = re.compile(r"^(?P<coll>/apis/[^/]+/[^/]+/[^/]+)(?:/(?P<name>[^/]+)(?P<status>/status)?)?$")
_CORE = re.compile(r"^(?P<coll>/api/v1/namespaces/[^/]+/[^/]+)(?:/(?P<name>[^/]+)(?P<status>/status)?)?$")
MERGE_PATCH = "application/merge-patch+json"


def custom_path(group: str, version: str, plural: str) -> str:
    """The collection path of a cluster-scoped custom resource."""
    return f"/apis/{group}/{version}/{plural}"


def core_path(namespace: str, plural: str) -> str:
    """The collection path of a namespaced core/v1 resource."""
    return f"/api/v1/namespaces/{namespace}/{plural}"


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class _HttpError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


def _terms(text: str | None, kind: str) -> list[tuple[str, bool, str]]:
    terms = []
    for term in filter(None, (t.strip() for t in (text or "").split(","))):
        m = re.fullmatch(r"([^=!]+?)\s*(==|=|!=)\s*([^=!]*)", term)
        if not m:
            raise _HttpError(400, "BadRequest", f"{kind} selector term {term!r} is not supported by the fake API")
        terms.append((m.group(1), m.group(2) != "!=", m.group(3)))
    return terms


def _field(obj: dict, path: str) -> str | None:
    """The value at a dotted path (`spec.nodeName`), as a field selector compares it."""
    for part in path.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else None
    return obj if isinstance(obj, str) else None


def _selector(labels_text: str | None, fields_text: str | None = None) -> Callable[[dict], bool]:
    label_terms, field_terms = _terms(labels_text, "label"), _terms(fields_text, "field")

    def match(obj: dict) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return (all((labels.get(k) == v) == equal for k, equal, v in label_terms)
                and all((_field(obj, k) == v) == equal for k, equal, v in field_terms))
    return match


class _WatchResponse:
    """The streamed body of a watch, as the kubernetes client reads it (`stream()`)."""

    status = 200
    reason = "OK"

    def __init__(self, server: "FakeApiServer", collection: str, match: Callable[[dict], bool],
                 start: int, initial: list[dict], timeout: float) -> None:
        self.server, self.collection, self.match = server, collection, match
        self.start, self.initial = start, initial
        self.deadline = time.monotonic() + timeout
        self.epoch = server._epoch
        self.closed = False
        self.headers = urllib3.HTTPHeaderDict({"Content-Type": "application/json"})

    def stream(self, amt=None, decode_content=None) -> Iterator[bytes]:
        for obj in self.initial:
            yield (json.dumps({"type": "ADDED", "object": obj}) + "\n").encode()
        server = self.server
        with server._cond:
            pos = next((i for i, e in enumerate(server._log) if e[0] > self.start), len(server._log))
        while True:
            with server._cond:
                while not self._over() and pos >= len(server._log):
                    server._cond.wait(min(0.5, max(0.0, self.deadline - time.monotonic())))
                if pos >= len(server._log) or self.closed or server._epoch != self.epoch:
                    return
                entries, pos = server._log[pos:], len(server._log)
            for _, collection, type_, obj in entries:
                if collection == self.collection and self.match(obj):
                    yield (json.dumps({"type": type_, "object": obj}) + "\n").encode()

    def _over(self) -> bool:
        return self.closed or self.server._epoch != self.epoch or time.monotonic() >= self.deadline

    def close(self) -> None:
        self.closed = True

    def release_conn(self) -> None:
        pass

    def getheaders(self):
        return self.headers


class FakeApiServer:
    """See the module docstring. Thread-safe: one lock around the store."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._rv = itertools.count(1)
        self._last_rv = 0
        self._store: dict[str, dict[str, dict]] = {}
        self._log: list[tuple[int, str, str, dict]] = []      # (rv, collection, type, object)
        self._epoch = 0
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # (method, path, query)

    # -- the client side ---------------------------------------------------------------
    def client(self) -> kubernetes.client.ApiClient:
        """A real kubernetes ApiClient that talks to this fake."""
        api = kubernetes.client.ApiClient(kubernetes.client.Configuration(host="http://fake-apiserver.invalid"))
        api.rest_client.pool_manager = self
        return api

    def clear(self) -> None:           # urllib3 PoolManager API (ApiClient.close)
        pass

    def request(self, method: str, url: str, body=None, fields=None, headers=None, timeout=None,
                preload_content: bool = True, **_: Any):
        """urllib3 PoolManager.request: one API request, answered from the store."""
        parts = urlsplit(url)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        with self._cond:
            self.requests.append((method, parts.path, query))
        try:
            code, obj = self._handle(method, parts.path, query, body, dict(headers or {}))
        except _HttpError as e:
            code, obj = e.code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": e.code,
                                 "reason": e.reason, "message": e.message}
        if isinstance(obj, _WatchResponse):
            return obj
        return urllib3.HTTPResponse(body=json.dumps(obj).encode(), status=code, reason=_REASONS.get(code, ""),
                                    headers={"Content-Type": "application/json"}, preload_content=False)

    # -- the test side -----------------------------------------------------------------
    def create(self, collection: str, obj: dict) -> dict:
        with self._cond:
            return copy.deepcopy(self._create(collection, copy.deepcopy(obj)))

    def get(self, collection: str, name: str) -> dict | None:
        with self._cond:
            obj = self._store.get(collection, {}).get(name)
            return copy.deepcopy(obj) if obj is not None else None

    def list(self, collection: str) -> list[dict]:
        with self._cond:
            return [copy.deepcopy(o) for o in self._store.get(collection, {}).values()]

    def patch(self, collection: str, name: str, patch: dict) -> dict:
        """A merge patch of the object (not its status), as a user or the operator would."""
        with self._cond:
            return copy.deepcopy(self._patch(collection, name, patch, status=False))

    def delete(self, collection: str, name: str) -> dict:
        with self._cond:
            return copy.deepcopy(self._delete(collection, name))

    def end_watches(self) -> None:
        """End every watch open now (as an API server restart would); clients list again."""
        with self._cond:
            self._epoch += 1
            self._cond.notify_all()

    def count(self, method: str, path: str) -> int:
        with self._cond:
            return sum(1 for m, p, _ in self.requests if m == method and p == path)

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float) -> Any:
        """Poll `check()` until it returns something true; AssertionError naming `what` after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            got = check()
            if got:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(0.1)

    # -- the server side (called with the lock held, except _handle) -------------------
    def _handle(self, method: str, path: str, query: dict[str, str], body, headers: dict[str, str]):
        m = _CUSTOM.match(path) or _CORE.match(path)
        if m is None:
            raise _HttpError(404, "NotFound", f"the fake API serves no {path}")
        collection, name, status = m.group("coll"), m.group("name"), bool(m.group("status"))
        custom = path.startswith("/apis/")
        if status and not custom:
            raise _HttpError(404, "NotFound", f"no status subresource at {path}")
        data = json.loads(body) if body else None
        with self._cond:
            if method == "GET" and name is None:
                match = _selector(query.get("labelSelector"), query.get("fieldSelector"))
                if query.get("watch") in ("true", "True", "1"):
                    rv = query.get("resourceVersion")
                    initial = [] if rv not in (None, "", "0") else [
                        copy.deepcopy(o) for o in self._store.get(collection, {}).values() if match(o)]
                    start = int(rv) if rv not in (None, "", "0") else self._last_rv
                    return 200, _WatchResponse(self, collection, match, start, initial,
                                               float(query.get("timeoutSeconds") or 3600))
                items = [copy.deepcopy(o) for o in self._store.get(collection, {}).values() if match(o)]
                return 200, {"kind": "List", "apiVersion": "v1", "items": items,
                             "metadata": {"resourceVersion": str(self._last_rv)}}
            if method == "GET":
                return 200, copy.deepcopy(self._get(collection, name))
            if method == "POST" and name is None:
                return 201, copy.deepcopy(self._create(collection, data or {}))
            if method == "PATCH" and name is not None:
                if headers.get("Content-Type") != MERGE_PATCH:
                    raise _HttpError(415, "UnsupportedMediaType",
                                     f"the fake API takes {MERGE_PATCH} only, not {headers.get('Content-Type')}")
                return 200, copy.deepcopy(self._patch(collection, name, data or {}, status=status and custom,
                                                      subresource=custom))
            if method == "DELETE" and name is not None:
                return 200, copy.deepcopy(self._delete(collection, name))
        raise _HttpError(405, "MethodNotAllowed", f"{method} {path} is not served by the fake API")

    def _get(self, collection: str, name: str) -> dict:
        obj = self._store.get(collection, {}).get(name)
        if obj is None:
            raise _HttpError(404, "NotFound", f"{collection.rsplit('/', 1)[-1]} {name!r} not found")
        return obj

    def _bump(self, collection: str, type_: str, obj: dict) -> None:
        rv = next(self._rv)
        self._last_rv = rv
        obj["metadata"]["resourceVersion"] = str(rv)
        self._log.append((rv, collection, type_, copy.deepcopy(obj)))
        self._cond.notify_all()

    def _create(self, collection: str, obj: dict) -> dict:
        meta = obj.setdefault("metadata", {})
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise _HttpError(422, "Invalid", "metadata.name or metadata.generateName is required")
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if meta["name"] in self._store.get(collection, {}):
            raise _HttpError(409, "AlreadyExists", f"{meta['name']!r} already exists")
        for key in ("resourceVersion", "deletionTimestamp"):
            meta.pop(key, None)
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
        self._store.setdefault(collection, {})[meta["name"]] = obj
        self._bump(collection, "ADDED", obj)
        return obj

    def _patch(self, collection: str, name: str, patch: dict, *, status: bool, subresource: bool = True) -> dict:
        cur = self._get(collection, name)
        if not isinstance(patch, dict):
            raise _HttpError(400, "BadRequest", "a merge patch must be an object")
        want_rv = (patch.get("metadata") or {}).get("resourceVersion")
        if want_rv is not None and want_rv != cur["metadata"]["resourceVersion"]:
            raise _HttpError(409, "Conflict", f"the object has been modified (resourceVersion {want_rv} is stale)")
        if status:
            new = merge_patch(cur, {"status": patch["status"]}) if "status" in patch else copy.deepcopy(cur)
        else:
            patch = {k: v for k, v in patch.items() if not (subresource and k == "status")}
            new = merge_patch(cur, patch)
            meta = new.setdefault("metadata", {})
            for key in ("name", "uid", "creationTimestamp", "generation", "deletionTimestamp", "resourceVersion"):
                if key in cur["metadata"]:
                    meta[key] = cur["metadata"][key]
                else:
                    meta.pop(key, None)
            added = set(meta.get("finalizers") or []) - set(cur["metadata"].get("finalizers") or [])
            if cur["metadata"].get("deletionTimestamp") and added:
                raise _HttpError(422, "Invalid", f"no new finalizers can be added if the object is being deleted, "
                                                 f"found new finalizers {sorted(added)}")
            if new.get("spec") != cur.get("spec"):
                meta["generation"] = int(cur["metadata"].get("generation") or 1) + 1
        if new == cur:
            return cur
        self._store[collection][name] = new
        self._bump(collection, "MODIFIED", new)
        return self._finalize(collection, new)

    def _delete(self, collection: str, name: str) -> dict:
        cur = self._get(collection, name)
        if cur["metadata"].get("finalizers"):
            if not cur["metadata"].get("deletionTimestamp"):
                cur["metadata"]["deletionTimestamp"] = _now()
                cur["metadata"]["deletionGracePeriodSeconds"] = 0
                self._bump(collection, "MODIFIED", cur)
            return cur
        return self._finalize(collection, cur, now=True)

    def _finalize(self, collection: str, obj: dict, *, now: bool = False) -> dict:
        meta = obj["metadata"]
        if now or (meta.get("deletionTimestamp") and not meta.get("finalizers")):
            del self._store[collection][meta["name"]]
            self._bump(collection, "DELETED", obj)
        return obj


_REASONS = {200: "OK", 201: "Created", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            409: "Conflict", 415: "Unsupported Media Type", 422: "Unprocessable Entity"}
