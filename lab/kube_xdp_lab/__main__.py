"""`python -m kube_xdp_lab [pytest args...]`: build/locate the lab kernel, run the offload
tests in the guest once, print each guest test's outcome and the timings. Exit 1 when a
guest test failed or the lab could not run."""

from __future__ import annotations

import sys
import time

from . import LabError, ensure_kernel, missing_tools, run_guest_tests


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    missing = missing_tools()
    if missing:
        print(f"offload-lab: missing {', '.join(missing)}: run scripts/install-lab-deps.sh", file=sys.stderr)
        return 1
    try:
        t0 = time.monotonic()
        kernel = ensure_kernel(log=lambda text: print(text, file=sys.stderr) if text else None)
        print(f"offload-lab: kernel {kernel} ready in {time.monotonic() - t0:.0f}s", file=sys.stderr)
        run = run_guest_tests(args, kernel=kernel)
    except LabError as exc:
        print(f"offload-lab: {exc}", file=sys.stderr)
        return 1
    for test in run.tests:
        print(f"{test.outcome.upper():8} {test.nodeid} ({test.seconds:.1f}s)")
        if test.outcome in ("failed", "error"):
            print("    " + test.message.replace("\n", "\n    ")[:3000])
    for name, value in sorted(run.measurements.items()):
        print(f"measured {name}: {value}")
    print(f"offload-lab: guest wall time {run.wall_seconds}s (pytest in guest {run.pytest_seconds}s), "
          f"guest exit {run.returncode}")
    passed = sum(t.outcome == "passed" for t in run.tests)
    print(f"offload-lab: {passed} passed, {len(run.failed)} failed")
    if run.failed or run.returncode != 0 or not run.tests:
        if run.returncode != 0 and not run.failed:
            print(run.output[-4000:], file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
