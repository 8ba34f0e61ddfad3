"""Process cost from /proc: CPU seconds (utime+stime, own and waited-for children),
resident memory now (VmRSS) and at its peak (VmHWM, resettable per rollout)."""

from __future__ import annotations

import os
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def parse_stat(text: str) -> dict:
    """/proc/<pid>/stat -> {utime, stime, cutime, cstime} in seconds. The command name
    (field 2) may contain spaces and parentheses: split after its last ')'."""
    fields = text.rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state): utime is field 14 -> index 11
    ticks = [int(fields[i]) for i in (11, 12, 13, 14)]
    return dict(zip(("utime", "stime", "cutime", "cstime"), (t / CLK_TCK for t in ticks)))


def parse_status_kib(text: str, key: str) -> int | None:
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return None


def cpu(pid: int) -> dict | None:
    """CPU seconds of a process: own (utime+stime) and its waited-for children's."""
    try:
        s = parse_stat(Path(f"/proc/{pid}/stat").read_text())
    except (OSError, IndexError, ValueError):
        return None
    return {"self": s["utime"] + s["stime"], "children": s["cutime"] + s["cstime"]}


def memory_kib(pid: int) -> dict | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return {"rss": parse_status_kib(text, "VmRSS"), "hwm": parse_status_kib(text, "VmHWM")}


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (`echo 5 > /proc/<pid>/clear_refs`, Linux >= 4.0)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def children(pid: int) -> list[int]:
    """Direct children (from /proc/<pid>/task/*/children)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(x) for x in (task / "children").read_text().split()]
        except (OSError, ValueError):
            pass
    return out


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        for c in children(todo.pop()):
            out.append(c)
            todo.append(c)
    return out


class Sampler:
    """Samples the resident memory of processes and their descendants (build workers
    live ~1 s, too short for VmHWM to be read after they exit) every `interval` seconds
    in a thread. `peak_kib(label)` is the largest sampled RSS of one process of that
    label since the last `reset()`."""

    def __init__(self, interval: float = 0.05):
        import threading
        self.interval = interval
        self.groups: dict[str, list[int]] = {}     # label -> root pids
        self._peak: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def track(self, label: str, pids: list[int]) -> None:
        with self._lock:
            self.groups[label] = list(pids)

    def untrack(self, label: str) -> None:
        with self._lock:
            self.groups.pop(label, None)

    def start(self) -> "Sampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def reset(self) -> None:
        with self._lock:
            self._peak.clear()

    def peak_kib(self, label: str) -> int | None:
        with self._lock:
            return self._peak.get(label)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                groups = {k: list(v) for k, v in self.groups.items()}
            for label, roots in groups.items():
                for root in roots:
                    for pid in descendants(root):
                        m = memory_kib(pid)
                        if m and m["rss"]:
                            with self._lock:
                                if m["rss"] > self._peak.get(label, 0):
                                    self._peak[label] = m["rss"]


def cpu_delta(before: dict | None, after: dict | None) -> float | None:
    """CPU seconds between two `cpu()` readings, own and waited-for children together;
    None when either is missing (the process was gone)."""
    if not before or not after:
        return None
    return (after["self"] - before["self"]) + (after["children"] - before["children"])
