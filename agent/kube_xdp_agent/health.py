"""The agent's /healthz: alive while its watch is alive and its worker is not wedged.

- The watch: a successful list, a watch event or a bookmark within WATCH_STALE seconds.
  An idle watch ends after watch_timeout seconds (the API server closes it) and is listed
  again, so a watch that says nothing for longer is hung (a half-open connection) or
  cannot reach the API server. The datapath does not depend on it (the agent never
  detaches because the API is away), so the bound is generous: a restart only helps a
  hung client.
- The worker: it took a key, or woke up idle, within WORKER_STALE seconds. Idle, it wakes
  at every resync tick (seconds); the bound covers the longest legitimate reconcile (bcc
  builds, each bounded by build.WORKER_TIMEOUT, in a separate process).

`HealthServer` serves it over HTTP (GET /healthz: 200 "ok", or 503 with one line per
failing check), on the address and port of the agent's --health-address/--health-port
(default 127.0.0.1:8081: the agent runs with hostNetwork, and the kubelet, in the node's
network namespace, probes it there; nothing off the node reaches it). Binding fails
early, with the address in the error (`HealthServer.start` raises OSError): the agent
exits with one line instead of crash-looping silently.
"""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Callable

from .build import WORKER_TIMEOUT

WATCH_STALE = 300.0                  # > the watch's server timeout (240 s) + a relist
WORKER_STALE = 2 * WORKER_TIMEOUT    # a reconcile may run a few bounded builds
DEFAULT_ADDRESS, DEFAULT_PORT = "127.0.0.1", 8081


class Health:
    """Heartbeats of the watch and the worker, and the verdict (thread-safe: plain floats)."""

    def __init__(self, *, watch_stale: float = WATCH_STALE, worker_stale: float = WORKER_STALE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.watch_stale, self.worker_stale, self.clock = watch_stale, worker_stale, clock
        now = clock()
        self.last_watch = now            # the grace of a starting agent: its first list
        self.last_worker = now

    def watch_ok(self) -> None:
        """A list succeeded, or the watch delivered an event or a bookmark."""
        self.last_watch = self.clock()

    def worker_beat(self) -> None:
        """The worker took a key, finished one, or woke up idle."""
        self.last_worker = self.clock()

    def problems(self) -> list[str]:
        """Why the agent is not healthy (empty: healthy)."""
        now, out = self.clock(), []
        if now - self.last_watch > self.watch_stale:
            out.append(f"watch: no list, event or bookmark for {now - self.last_watch:.0f}s "
                       f"(bound {self.watch_stale:.0f}s)")
        if now - self.last_worker > self.worker_stale:
            out.append(f"worker: no key taken and no idle wake-up for {now - self.last_worker:.0f}s "
                       f"(bound {self.worker_stale:.0f}s)")
        return out


class HealthServer:
    """GET /healthz over HTTP, from a daemon thread."""

    def __init__(self, health: Health, address: str = DEFAULT_ADDRESS, port: int = DEFAULT_PORT) -> None:
        self.health, self.address, self.port = health, address, port
        self._server: http.server.ThreadingHTTPServer | None = None

    def start(self) -> HealthServer:
        """Bind and serve; OSError (e.g. EADDRINUSE) when the address cannot be bound."""
        health = self.health

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
                if self.path.split("?", 1)[0] != "/healthz":
                    self._reply(404, "not found: GET /healthz\n")
                    return
                problems = health.problems()
                self._reply(503 if problems else 200, "".join(f"{p}\n" for p in problems) or "ok\n")

            def _reply(self, code: int, text: str) -> None:
                body = text.encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:   # the kubelet probes every few seconds: not logged
                pass

        self._server = http.server.ThreadingHTTPServer((self.address, self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, name="healthz", daemon=True).start()
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
