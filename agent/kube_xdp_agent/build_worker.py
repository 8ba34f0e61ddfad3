"""The child process of SubprocessBuilder: read one build request (JSON) on stdin, compile
and load it with bcc, pin it under the agent's bpffs, print one JSON line, exit.

Runs with the agent's privileges; every field is validated again by the kernel layer
(CompileRequest, PinStore). With `netns` it first enters that network namespace, so a
device-bound (offload) load resolves the interface where the agent sees it.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys

CLONE_NEWNET = 0x40000000


def _enter_netns(name: str) -> None:
    import re
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name) or name in (".", ".."):
        raise ValueError(f"invalid network namespace name {name!r}")
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


def main() -> int:
    from .kernel.bpffs import PinStore
    from .kernel.compile import CompileRequest, Compiler
    from .kernel.errors import KernelError

    request = json.loads(sys.stdin.read())
    try:
        if request.get("netns"):
            _enter_netns(request["netns"])
        req = CompileRequest(source=request["source"], entrypoint=request["entrypoint"],
                             defines=request.get("defines") or {}, device=request.get("device"))
        compiler = Compiler()
        loaded = compiler.load(req)
        PinStore(request["bpffs"]).pin_program(request["program"], loaded.key[:12], loaded)
        reply = {"key": loaded.key, "duration_ms": loaded.duration_ms, "warnings": loaded.warnings}
    except KernelError as e:
        reply = {"error": {"class": type(e).__name__, "reason": e.reason, "message": e.message,
                           "output": getattr(e, "output", None)}}
    except (OSError, ValueError) as e:
        reply = {"error": {"class": "KernelError", "reason": "CompileError", "message": str(e)}}
    print(json.dumps(reply), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
