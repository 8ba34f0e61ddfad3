"""Timing convergence from the API server's own event stream: a list+watch of
XdpPrograms (admin identity) in a thread. A waiter is registered *before* the action it
times; after every event the watcher evaluates each pending waiter's predicate on the
current state and records the monotonic time of the first event that made it true. No
polling, so no poll interval in the measurement and no polling load on the server."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import kubernetes

from kube_xdp_api import names


class Waiter:
    def __init__(self, pred: Callable[[dict], bool]):
        self.pred = pred
        self.t: float | None = None
        self.event = threading.Event()

    def wait(self, timeout: float) -> float | None:
        """Monotonic time at which the predicate became true, or None on timeout."""
        self.event.wait(timeout)
        return self.t


class ProgramWatcher:
    def __init__(self, client: kubernetes.client.ApiClient):
        self.custom = kubernetes.client.CustomObjectsApi(client)
        self.state: dict[str, dict] = {}
        self._waiters: list[Waiter] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._thread = threading.Thread(target=self._run, name="program-watch", daemon=True)

    def start(self) -> "ProgramWatcher":
        self._thread.start()
        if not self._synced.wait(30):
            raise RuntimeError("watch of XdpPrograms did not start within 30 s")
        return self

    def stop(self) -> None:
        self._stop.set()

    def expect(self, pred: Callable[[dict], bool]) -> Waiter:
        w = Waiter(pred)
        with self._lock:
            self._waiters.append(w)
            self._check(time.monotonic())
        return w

    def _check(self, now: float) -> None:
        for w in list(self._waiters):
            try:
                ok = w.pred(self.state)
            except Exception:  # noqa: BLE001 - a predicate on a half-written object is just false
                ok = False
            if ok:
                w.t = now
                w.event.set()
                self._waiters.remove(w)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                listing = self.custom.list_cluster_custom_object(names.GROUP, names.VERSION, names.PROGRAMS)
                now = time.monotonic()
                with self._lock:
                    self.state = {o["metadata"]["name"]: o for o in listing["items"]}
                    self._check(now)
                self._synced.set()
                w = kubernetes.watch.Watch()
                for ev in w.stream(self.custom.list_cluster_custom_object, names.GROUP, names.VERSION,
                                   names.PROGRAMS, resource_version=listing["metadata"]["resourceVersion"],
                                   timeout_seconds=120):
                    now = time.monotonic()
                    if self._stop.is_set():
                        w.stop()
                        return
                    if ev["type"] == "ERROR":
                        break
                    obj = ev["object"]
                    with self._lock:
                        if ev["type"] == "DELETED":
                            self.state.pop(obj["metadata"]["name"], None)
                        else:
                            self.state[obj["metadata"]["name"]] = obj
                        self._check(now)
            except Exception:  # noqa: BLE001 - re-list and carry on
                self._stop.wait(0.5)


def ready(name: str, nodes: int, generation: int | None = None) -> Callable[[dict], bool]:
    """kstatus "Current": the program's status describes its current generation (at least
    `generation`), Ready=True, Reconciling not True (nothing still being removed), and
    every one of `nodes` selected nodes ready."""
    def pred(state: dict) -> bool:
        obj = state.get(name)
        if obj is None:
            return False
        gen = obj["metadata"]["generation"]
        st = obj.get("status") or {}
        if generation is not None and gen < generation:
            return False
        cond = {c["type"]: c for c in st.get("conditions", [])}
        return (st.get("observedGeneration") == gen and cond.get("Ready", {}).get("status") == "True"
                and cond.get("Reconciling", {}).get("status") != "True"
                and st.get("selectedNodes") == nodes and st.get("readyNodes") == nodes)
    return pred


def gone(name: str) -> Callable[[dict], bool]:
    return lambda state: name not in state
