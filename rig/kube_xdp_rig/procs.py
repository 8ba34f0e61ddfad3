"""Processes the rig starts and stops: daemons with pid files, found again after a crash.

A process belongs to the rig when its pid file is in the rig's state directory AND its
command line still mentions that directory (guards against pid reuse). Processes that
lost their pid file are found by the same command-line test.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import time
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Proc:
    name: str
    pid: int
    rss_kib: int


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _alive(pid: int, marker: str) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[1].split()[0] == "Z":
        return False
    return _mentions(_cmdline(pid), marker)


def _mentions(cmdline: str, marker: str) -> bool:
    """True if a command line names the directory `marker` or a path under it."""
    return marker + "/" in cmdline or (" " + marker + " ") in (" " + cmdline)


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


# Popen objects of the daemons this process started, per state directory: shared by every
# ProcTable of that directory so exit codes can be collected whichever object stops them.
_CHILDREN: dict[str, dict[str, subprocess.Popen]] = {}


class ProcTable:
    """Pid files under <state>/procs; logs under <state>/logs."""

    def __init__(self, state_dir: Path):
        self.state_dir = state_dir
        self.marker = str(state_dir)
        self.pid_dir = state_dir / "procs"
        self.log_dir = state_dir / "logs"
        self._children = _CHILDREN.setdefault(self.marker, {})

    def start(self, name: str, argv: list[str], *, env: dict | None = None, netns: str | None = None) -> int:
        """Start `argv` detached (own session) with output to logs/<name>.log.
        Its command line must mention the state directory (so it can be found again)."""
        if not any(self.marker in a for a in argv):
            raise ValueError(f"{name}: command line must reference {self.marker} to be trackable")
        self.pid_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if netns:
            argv = ["ip", "netns", "exec", netns, *argv]
        log = open(self.log_dir / f"{name}.log", "ab")
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, env=env, close_fds=True)
        finally:
            log.close()
        (self.pid_dir / f"{name}.pid").write_text(str(proc.pid))
        self.reap()
        self._children[name] = proc
        return proc.pid

    def reap(self) -> None:
        """Collect the exit status of our own children that have exited (no zombies)."""
        for name, proc in list(self._children.items()):
            if proc.poll() is not None:
                del self._children[name]

    def exited(self, name: str) -> int | None:
        """Exit code of a process this object started and that has exited, else None."""
        proc = self._children.get(name)
        return proc.poll() if proc is not None else None

    def pid(self, name: str) -> int | None:
        try:
            pid = int((self.pid_dir / f"{name}.pid").read_text())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid, self.marker) else None

    def running(self) -> list[Proc]:
        out = []
        if self.pid_dir.is_dir():
            for f in sorted(self.pid_dir.glob("*.pid")):
                pid = self.pid(f.stem)
                if pid:
                    out.append(Proc(f.stem, pid, rss_kib(pid)))
        return out

    def stop(self, name: str, timeout: float = 10.0) -> bool:
        pid = self.pid(name)
        (self.pid_dir / f"{name}.pid").unlink(missing_ok=True)
        if pid is None:
            return False
        self._terminate([pid], timeout)
        return True

    def strays(self) -> list[int]:
        """Live processes whose command line names the state directory, pid file or not."""
        out = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid() and _alive(int(entry.name), self.marker):
                out.append(int(entry.name))
        return sorted(out)

    def stop_all(self, timeout: float = 3.0) -> list[int]:
        """Stop every process of this rig: by pid file, then any stray one whose command
        line mentions the state directory (left by a crash that lost its pid file)."""
        self.reap()
        pids = {p.pid for p in self.running()} | set(self.strays())
        self._terminate(sorted(pids), timeout)
        if self.pid_dir.is_dir():
            for f in self.pid_dir.glob("*.pid"):
                f.unlink(missing_ok=True)
        return sorted(pids)


    def _terminate(self, pids: list[int], timeout: float) -> None:
        """SIGTERM, then SIGKILL after `timeout`; wait until each is gone (reaping our
        own children through their Popen objects so they leave no zombie)."""
        children = {p.pid: p for p in self._children.values()}
        for pid in pids:
            _signal(pid, signal.SIGTERM)
        if not _wait_gone(pids, children, timeout):
            for pid in pids:
                _signal(pid, signal.SIGKILL)
            _wait_gone(pids, children, 5)
        for pid in pids:
            if pid in children:
                try:
                    children[pid].wait(timeout=1)   # it is a zombie by now: collect it
                except subprocess.TimeoutExpired:
                    pass
        for n in [n for n, p in self._children.items() if p.pid in pids]:
            del self._children[n]


def _wait_gone(pids: list[int], children: dict, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        for pid in pids:
            if pid in children:
                children[pid].poll()
        if not any(_exists(p) for p in pids):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _exists(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # A zombie has exited (its parent reaps it); for our purposes it is gone.
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
