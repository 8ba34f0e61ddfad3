"""Processes the rig starts and stops: daemons with pid files, found again after a crash.

Only processes the rig started are ever signalled:
- a pid file <state>/procs/NAME.pid holds "PID STARTTIME" (the kernel's start time of the
  process, /proc/PID/stat field 22, which survives exec and never repeats for a reused
  pid): the pid counts only while that process, with that start time, is alive;
- every process the rig starts carries KUBE_XDP_RIG_PROC=<state dir>:<name> in its
  environment (inherited by what it starts in turn). A process that lost its pid file
  (a crash between start and write) is found by that tag, never by its command line:
  a person's `tail -f <state>/logs/etcd.log` or `kubectl --kubeconfig
  <state>/admin.kubeconfig get -w` names the state directory but is not the rig's.
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


ENV_TAG = "KUBE_XDP_RIG_PROC"


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name: [state, ppid, ...]; None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def _start_of(fields: list[str] | None) -> int | None:
    return int(fields[19]) if fields and len(fields) > 19 else None


def starttime(pid: int) -> int | None:
    """The process's start time in clock ticks after boot (stat field 22), None if gone."""
    return _start_of(_stat_fields(pid))


def parse_pid_file(text: str) -> tuple[int, int | None]:
    """'PID STARTTIME' (or a bare 'PID' written by an older rig) -> (pid, starttime)."""
    parts = text.split()
    if not 1 <= len(parts) <= 2:
        raise ValueError(f"pid file: expected 'PID [STARTTIME]', got {text!r}")
    return int(parts[0]), (int(parts[1]) if len(parts) == 2 else None)


def _alive(pid: int, start: int | None, marker: str) -> bool:
    """The process of a pid file is still the one the rig started: alive (not a zombie)
    with the recorded start time. A pid file of an older rig (no start time, no tag in
    its processes) falls back to that rig's own test: the command line names the state
    directory (so `down` with this code still stops a rig started before it)."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] == "Z":
        return False
    if start is not None:
        return _start_of(fields) == start
    return tagged(_environ(pid), marker) or _mentions(_cmdline(pid), marker)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _mentions(cmdline: str, marker: str) -> bool:
    """True if a command line names the directory `marker` or a path under it."""
    return marker + "/" in cmdline or (" " + marker + " ") in (" " + cmdline)


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def tag_value(marker: str, name: str) -> str:
    return f"{marker}:{name}"


def tagged(environ: bytes, marker: str) -> bool:
    """True if a NUL-separated environment carries the rig's tag for state dir `marker`."""
    prefix = f"{ENV_TAG}={marker}:".encode()
    return any(entry.startswith(prefix) for entry in environ.split(b"\0"))


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
        """Start `argv` detached (own session) with output to logs/<name>.log, tagged with
        the rig's environment variable, and record "PID STARTTIME" in procs/<name>.pid."""
        self.pid_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if netns:
            argv = ["ip", "netns", "exec", netns, *argv]
        env = {**(os.environ if env is None else env), ENV_TAG: tag_value(self.marker, name)}
        log = open(self.log_dir / f"{name}.log", "ab")
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, env=env, close_fds=True)
        finally:
            log.close()
        # the child exists now (it may not have exec'd yet: the start time is the fork's)
        (self.pid_dir / f"{name}.pid").write_text(f"{proc.pid} {starttime(proc.pid) or ''}".strip() + "\n")
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
            pid, start = parse_pid_file((self.pid_dir / f"{name}.pid").read_text())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid, start, self.marker) else None

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
        """Live processes the rig started (its environment tag), pid file or not; never
        this process or its ancestors."""
        mine = _ancestors(os.getpid())
        out = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in mine:
                continue
            pid = int(entry.name)
            fields = _stat_fields(pid)
            if fields and fields[0] != "Z" and tagged(_environ(pid), self.marker):
                out.append(pid)
        return sorted(out)

    def stop_all(self, timeout: float = 3.0) -> list[int]:
        """Stop every process of this rig: by pid file, then any stray one the rig started
        (its environment tag: left by a crash that lost its pid file)."""
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


def _ancestors(pid: int) -> set[int]:
    out = set()
    while pid > 1 and pid not in out:
        out.add(pid)
        fields = _stat_fields(pid)
        if not fields:
            break
        pid = int(fields[1])
    return out


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
