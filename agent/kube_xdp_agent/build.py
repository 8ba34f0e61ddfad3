"""Build a program into a pin: compile + load with bcc, pin it and its maps.

`SubprocessBuilder` (the agent's default) does it in a short-lived child process
(`python -m kube_xdp_agent.build_worker`): bcc maps libbcc and runs clang/LLVM in the
process that compiles, which grows it by ~120 MB that it never gives back. In a child,
that memory goes away when the child exits; the agent keeps only the pin (the hand-off)
and stays small. The compile key is computed on both sides and must agree.

`InProcessBuilder` does the same in-process, for the fake kernel in unit tests.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

from .kernel import errors
from .kernel.compile import CompileRequest
from .kernel.errors import KernelError

WORKER_TIMEOUT = 300


@dataclasses.dataclass(frozen=True)
class BuildResult:
    key: str
    duration_ms: float
    cache_hit: bool
    warnings: str = ""


class InProcessBuilder:
    def __init__(self, compiler, pins):
        self.compiler = compiler
        self.pins = pins

    def key(self, req: CompileRequest) -> str:
        return self.compiler.key(req)

    def build(self, req: CompileRequest, program: str) -> BuildResult:
        loaded = self.compiler.load(req)
        try:
            self.pins.pin_program(program, loaded.key[:12], loaded)
        finally:
            self.compiler.release(loaded.key)   # the pin keeps the program
        return BuildResult(loaded.key, loaded.duration_ms, loaded.cache_hit, loaded.warnings)


class SubprocessBuilder:
    def __init__(self, compiler, bpffs: str, netns: str | None = None):
        self.compiler = compiler        # only for key(): never loads anything here
        self.bpffs = bpffs
        self.netns = netns

    def key(self, req: CompileRequest) -> str:
        return self.compiler.key(req)

    def build(self, req: CompileRequest, program: str) -> BuildResult:
        request = {"source": req.source, "entrypoint": req.entrypoint, "defines": dict(req.defines),
                   "device": req.device, "program": program, "bpffs": self.bpffs, "netns": self.netns}
        try:
            proc = subprocess.run([sys.executable, "-m", "kube_xdp_agent.build_worker"], input=json.dumps(request),
                                  capture_output=True, text=True, timeout=WORKER_TIMEOUT,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})
        except subprocess.TimeoutExpired as e:
            raise KernelError(f"building {program} took longer than {WORKER_TIMEOUT}s", program=program,
                              reason="CompileError") from e
        try:
            reply = json.loads(proc.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise KernelError(f"build worker for {program} exited {proc.returncode} without a result: "
                              f"{proc.stderr.strip()[-2000:]}", program=program, reason="CompileError") from None
        if "error" in reply:
            raise _error(reply["error"], program)
        if reply["key"] != self.key(req):
            raise KernelError(f"build worker computed compile key {reply['key'][:12]}, agent {self.key(req)[:12]}: "
                              "agent and worker disagree on kernel release or bcc version", program=program)
        return BuildResult(reply["key"], reply["duration_ms"], False, reply.get("warnings", ""))


def _error(data: dict, program: str) -> KernelError:
    """Rebuild the worker's KernelError in the agent (only kernel-layer error classes)."""
    cls = getattr(errors, data.get("class", ""), None)
    if not (isinstance(cls, type) and issubclass(cls, KernelError)):
        cls = KernelError
    kwargs = {"program": program}
    try:
        if data.get("output") is not None and "output" in cls.__init__.__code__.co_varnames:
            err = cls(data["message"], output=data["output"], **kwargs)
        else:
            err = cls(data["message"], **kwargs)
    except TypeError:
        err = KernelError(data["message"], **kwargs)
    if data.get("reason"):
        err.reason = data["reason"]
    return err
