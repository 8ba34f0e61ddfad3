"""The offload lab from the host: build (or find) the lab kernel, boot it ONCE under QEMU
with virtme-ng, run tests/offload/guest_*.py inside, and report each guest test.

The first run on a fresh machine builds the kernel (scripts/build-offload-kernel.sh,
~9 minutes on 2 cores); later runs use the cache. Missing tools (vng, qemu) skip this
test on a developer's machine and fail it under CI (CI=true), so CI cannot pass without
running the lab. KUBE_XDP_OFFLOAD_LAB=skip skips it explicitly.
KUBE_XDP_LAB_PYTEST_ARGS (e.g. "-k offload_preferred -x") is passed to the guest's pytest;
with a selection the check that every guest file ran fails, as it should.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest

import kube_xdp_lab

pytestmark = pytest.mark.kernel

GUEST_FILES = sorted(p.name for p in Path(__file__).parent.glob("guest_*.py"))


@pytest.fixture(scope="session")
def lab_run(request):
    if os.environ.get("KUBE_XDP_OFFLOAD_LAB") == "skip":
        pytest.skip("KUBE_XDP_OFFLOAD_LAB=skip")
    missing = kube_xdp_lab.missing_tools()
    if missing:
        msg = f"offload lab needs {', '.join(missing)}: run scripts/install-lab-deps.sh"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    kernel = kube_xdp_lab.ensure_kernel()
    args = shlex.split(os.environ.get("KUBE_XDP_LAB_PYTEST_ARGS", ""))
    run = kube_xdp_lab.run_guest_tests(args, kernel=kernel)
    request.config._kube_xdp_lab_run = run  # for the terminal summary (conftest)
    return run


def test_guest_tests_pass(lab_run) -> None:
    for t in lab_run.tests:
        print(f"guest {t.outcome:7} {t.nodeid} ({t.seconds:.1f}s)")
    failed = lab_run.failed
    detail = "\n\n".join(f"{t.nodeid}: {t.message[:2000]}" for t in failed)
    assert not failed, f"{len(failed)} guest test(s) failed:\n{detail}"
    assert lab_run.returncode == 0, f"guest pytest exited {lab_run.returncode}:\n{lab_run.output[-3000:]}"


def test_every_guest_file_ran_and_nothing_skipped(lab_run) -> None:
    ran = {t.nodeid.split("::")[0].rsplit(".", 1)[-1] + ".py" for t in lab_run.tests}
    assert ran == set(GUEST_FILES), f"guest files that ran: {sorted(ran)}, expected {GUEST_FILES}"
    skipped = [t.nodeid for t in lab_run.tests if t.outcome == "skipped"]
    assert not skipped, f"guest tests skipped (the lab must run them all): {skipped}"
    assert len(lab_run.tests) >= 12
