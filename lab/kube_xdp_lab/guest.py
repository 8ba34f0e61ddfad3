"""Inside the lab guest: prepare the kernel's filesystems, then run the guest tests.

`python -m kube_xdp_lab.guest --results DIR -- [pytest args]`, run by `run_guest_tests`
through vng. Mounts debugfs (netdevsim's knobs) and bpffs if missing, points bcc at the
lab kernel's headers (vng overlays /lib/modules, so bcc's default lookup finds nothing),
checks netdevsim is there, and runs pytest on tests/offload/guest_*.py with JUnit XML
and measurements written to DIR (shared read-write with the host). Exit: pytest's.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _mounted(path: str, fstype: str) -> bool:
    with open("/proc/mounts") as f:
        return any(line.split()[1] == path and line.split()[2] == fstype for line in f)


def prepare() -> None:
    for path, fstype in (("/sys/kernel/debug", "debugfs"), ("/sys/fs/bpf", "bpf")):
        if not _mounted(path, fstype):
            subprocess.run(["mount", "-t", fstype, fstype, path], check=True)
    kernel = os.environ.get("KUBE_XDP_LAB_KERNEL")
    if kernel and "BCC_KERNEL_SOURCE" not in os.environ:
        os.environ["BCC_KERNEL_SOURCE"] = str(Path(kernel) / "headers")
    if not os.path.exists("/sys/bus/netdevsim/new_device"):
        raise SystemExit("lab guest: /sys/bus/netdevsim is missing: this kernel has no CONFIG_NETDEVSIM")
    os.makedirs("/run/netns", exist_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kube_xdp_lab.guest")
    parser.add_argument("--results", required=True, help="directory shared with the host")
    parser.add_argument("pytest_args", nargs="*")
    args = parser.parse_args(argv)
    results = Path(args.results)
    os.environ["KUBE_XDP_LAB_GUEST"] = "1"
    os.environ["KUBE_XDP_LAB_RESULTS"] = str(results)
    t0 = time.monotonic()
    prepare()
    print(f"lab guest: kernel {os.uname().release}, ready in {time.monotonic() - t0:.1f}s", flush=True)
    import pytest

    os.chdir(REPO)
    return int(pytest.main([
        GUEST_TESTS_DIR, "-o", "python_files=guest_*.py", "-p", "no:cacheprovider",
        f"--junitxml={results / 'guest-junit.xml'}", "-o", "junit_family=xunit1", "-v", "-rA",
        *args.pytest_args,
    ]))


GUEST_TESTS_DIR = "tests/offload"

if __name__ == "__main__":
    sys.exit(main())
