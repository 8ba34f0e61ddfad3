"""The offload lab: the agent's offload tests run on a kernel with netdevsim, under QEMU.

Neither the dev/CI kernel nor Debian's kernel image has CONFIG_NETDEVSIM, the kernel's
simulated NIC with real XDP hardware offload (device-bound programs and maps, the offload
verifier callbacks, HW-mode attach, debugfs knobs to make it refuse). So:

- `scripts/build-offload-kernel.sh` builds a small kernel from Debian's `linux` source
  package, cached under $KUBE_XDP_CACHE/offload-kernel/<id>/ (bzImage + headers for bcc);
- `run_guest(...)` boots it with virtme-ng (`vng --run bzImage --disable-kvm`: QEMU TCG,
  the host's own root filesystem read-only, a host directory shared read-write for
  results) and runs one command in it;
- `run_guest_tests(...)` runs pytest on tests/offload/guest_*.py in the guest (entry:
  `python -m kube_xdp_lab.guest`) and returns each guest test's outcome, read from the
  JUnit XML the guest wrote into the shared directory.

The host-side test tests/offload/test_offload_lab.py boots the guest once per session.
CLI: `python -m kube_xdp_lab` (what `make offload-lab` runs): build or locate the kernel,
run the guest tests, print one line per guest test and the timings; exit 1 on any failure.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "scripts" / "build-offload-kernel.sh"
GUEST_TESTS = "tests/offload"
KERNEL_BUILD_TIMEOUT = 3600
GUEST_TIMEOUT = int(os.environ.get("KUBE_XDP_LAB_TIMEOUT", "900"))


# vng mounts the host's root over 9p without a cache mode (cache=none): every stat and
# read of Python's imports goes to the host, which under TCG made `import bcc` take 32 s
# and importing the agent + pytest 35 s. The root is read-only in the guest and nothing
# the guest reads changes during a run, so cache=loose is safe: 80 s -> 23 s for that
# measurement. The later rootflags= wins over vng's own; --force-9p keeps them valid
# (vng would switch to virtiofs if it found virtiofsd, and these flags are 9p's).
ROOTFLAGS_9P = "rootflags=version=9p2000.L,trans=virtio,access=any,msize=524288,cache=loose"


class LabError(Exception):
    """The lab could not run (missing tool, kernel build failed, guest did not boot)."""


def _vng() -> str:
    here = Path(sys.executable).parent / "vng"
    found = str(here) if here.exists() else shutil.which("vng")
    if not found:
        raise LabError("vng (virtme-ng) is not installed: run scripts/install-lab-deps.sh")
    return found


def missing_tools() -> list[str]:
    """What the lab needs on the host and does not find (empty when ready)."""
    missing = []
    try:
        _vng()
    except LabError:
        missing.append("vng (pip: virtme-ng)")
    if not shutil.which("qemu-system-x86_64"):
        missing.append("qemu-system-x86_64 (Debian: qemu-system-x86)")
    return missing


def kernel_dir() -> Path:
    """Where the lab kernel is (or will be) cached."""
    out = subprocess.run(["bash", str(BUILD_SCRIPT), "--path"], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip())


def kernel_cached() -> bool:
    return subprocess.run(["bash", str(BUILD_SCRIPT), "--check"], capture_output=True).returncode == 0


def ensure_kernel(*, log=None) -> Path:
    """Build the lab kernel if it is not cached; return its directory."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    proc = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, env=env,
                          timeout=KERNEL_BUILD_TIMEOUT)
    if log is not None:
        log(proc.stderr.strip())
    if proc.returncode != 0:
        raise LabError(f"building the lab kernel failed: {proc.stderr.strip()[-2000:]}")
    path = Path(proc.stdout.strip().splitlines()[-1])
    if not (path / "bzImage").is_file():
        raise LabError(f"the build script reported {path}, which has no bzImage")
    return path


def run_guest(command: str, *, kernel: Path, rwdir: Path, timeout: int = GUEST_TIMEOUT,
              memory: str = "2G", cpus: int = 2) -> subprocess.CompletedProcess[str]:
    """Boot the lab kernel with vng and run `command` (a shell command line) in it.

    The guest sees the host's filesystem read-only (writes go to an overlay that is
    thrown away), except `rwdir`, shared read-write. The returned output is the guest's
    console (kernel log included: vng --verbose).

    Trap: vng returns the command's exit status only when the guest's udev has made the
    /dev/virtio-ports/virtme.* links; hosts without udevd (this one: no systemd-udevd)
    fall back to the console and vng exits 255 whatever the command did. So the exit
    status is NOT used: `run_guest_tests` has the guest write its results and exit code
    into `rwdir`.
    """
    vng = _vng()
    env = {**os.environ, "PATH": f"{Path(vng).parent}:{os.environ.get('PATH', '')}"}
    argv = [
        vng, "--verbose", "--run", str(kernel / "bzImage"), "--disable-kvm", "--memory", memory,
        "--cpus", str(cpus), "--rwdir", str(rwdir), "--cwd", str(REPO),
        "--force-9p", "--append", ROOTFLAGS_9P, "--exec", command,
    ]
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              env=env)
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stderr or b"")[-3000:]
        raise LabError(f"the guest did not finish within {timeout}s; console tail: {tail!r}") from exc


@dataclasses.dataclass(frozen=True)
class GuestTest:
    nodeid: str
    outcome: str  # 'passed' | 'failed' | 'error' | 'skipped'
    seconds: float
    message: str = ""


@dataclasses.dataclass(frozen=True)
class GuestRun:
    returncode: int
    wall_seconds: float  # boot + tests + shutdown, measured on the host
    pytest_seconds: float | None  # inside the guest
    tests: tuple[GuestTest, ...]
    measurements: dict = dataclasses.field(repr=False)
    output: str = dataclasses.field(repr=False)  # the guest's log and console, for failures

    @property
    def failed(self) -> list[GuestTest]:
        return [t for t in self.tests if t.outcome in ("failed", "error")]


def parse_junit(path: Path) -> tuple[list[GuestTest], float | None]:
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    tests, total = [], None
    for suite in suites:
        total = (total or 0.0) + float(suite.get("time", 0) or 0)
        for case in suite.iter("testcase"):
            outcome, message = "passed", ""
            for tag in ("failure", "error", "skipped"):
                el = case.find(tag)
                if el is not None:
                    outcome = {"failure": "failed"}.get(tag, tag)
                    message = (el.get("message") or "") + ("\n" + el.text if el.text else "")
                    break
            name = f"{case.get('classname', '')}::{case.get('name', '')}".strip(":")
            tests.append(GuestTest(name, outcome, float(case.get("time", 0) or 0), message.strip()))
    return tests, total


def run_guest_tests(pytest_args: list[str] | None = None, *, kernel: Path | None = None,
                    workdir: Path | None = None) -> GuestRun:
    """Boot the guest once and run pytest on tests/offload/guest_*.py inside it."""
    kernel = kernel or ensure_kernel()
    own = workdir is None
    work = Path(tempfile.mkdtemp(prefix="kube-xdp-lab-")) if own else workdir
    try:
        inner = " ".join(shlex.quote(a) for a in [
            "env", f"PYTHONPATH={REPO / 'lab'}:{REPO / 'agent'}:{REPO / 'api'}",
            "PYTHONDONTWRITEBYTECODE=1", f"KUBE_XDP_LAB_KERNEL={kernel}",
            sys.executable, "-m", "kube_xdp_lab.guest", "--results", str(work), "--",
            *(pytest_args or []),
        ])
        log, code = work / "guest.log", work / "exit-code"
        guest_cmd = f"{inner} >{shlex.quote(str(log))} 2>&1; echo $? >{shlex.quote(str(code))}"
        start = time.monotonic()
        proc = run_guest(guest_cmd, kernel=kernel, rwdir=work)
        wall = time.monotonic() - start
        guest_log = log.read_text(errors="replace") if log.exists() else ""
        output = guest_log + "\n--- console ---\n" + proc.stdout + proc.stderr
        if not code.exists():
            raise LabError(f"the guest command did not finish (no exit code written); guest log and console:\n"
                           f"{output[-6000:]}")
        returncode = int(code.read_text().strip() or 255)
        junit = work / "guest-junit.xml"
        if not junit.exists():
            raise LabError(f"the guest wrote no test results (exit {returncode}); guest log:\n{output[-6000:]}")
        tests, pytest_seconds = parse_junit(junit)
        measurements = {}
        mfile = work / "measurements.json"
        if mfile.exists():
            measurements = json.loads(mfile.read_text())
        return GuestRun(returncode, round(wall, 1), pytest_seconds, tuple(tests), measurements, output)
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)
