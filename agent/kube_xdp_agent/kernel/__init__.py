"""The agent's kernel layer: compile/load (bcc), the XDP hook (netlink), pins (bpffs).

What this layer may touch: bcc/libbcc, the bpf(2) syscall, rtnetlink, bpffs. What it
may not: the Kubernetes API, the agent's desired state, the clock beyond bounded
retries. The control loop uses it through three factories, real (`HostKernel`) or
in-memory (`FakeKernel`):

- `kernel.compiler.load(CompileRequest(source, entrypoint, defines)) -> LoadedProgram`
  (cached in-process by compile key; `.release(key)`, `.key(req)`);
- `kernel.netlink(netns) -> Netlink`: `interfaces()`, `interface(name)`,
  `default_route_interface()`, `read_xdp(name)`, `attach(name, prog_fd, mode, *,
  expected_prog_fd=None)`, `detach(name, mode, *, expected_prog_fd)`;
- `kernel.pin_store(root) -> PinStore`: `pin_program`, `open_pinned`, `list_programs`,
  `unpin`, `open_prog_fd`, `open_map`, path builders.

Errors (errors.py) carry a stable `reason` from kube_xdp_api.reasons. Modules:
errors, bpfsys (bpf(2) via ctypes), btf (entry signature), compile, netlink, bpffs,
host, fake.
"""

import importlib
from typing import TYPE_CHECKING, Any

# Names -> the submodule that defines them, imported on first use (PEP 562): the build
# worker imports kernel.compile only, and importing every submodule eagerly cost it
# ~90 ms of pyroute2 (netlink) per build, and ~5 s under the offload lab's TCG.
_WHERE = {
    "bpffs": ("BPF_FS_MAGIC", "PinnedMap", "PinnedProgram", "PinStore"),
    "bpfsys": ("BpfMap", "Fd", "MapInfo", "ProgInfo", "TestRunResult", "prog_fd_by_id", "prog_info", "prog_test_run"),
    "compile": ("CompileRequest", "Compiler", "LoadedMap", "LoadedProgram", "compile_key", "validate_defines"),
    "errors": ("AttachError", "BpfSyscallError", "CompileError", "EntrypointNotFound", "EntrypointNotXdp",
               "HeadersNotFound", "HookBusy", "InterfaceNotFound", "InvalidDefine", "KernelError", "NetnsNotFound",
               "PinError", "VerifierError"),
    "fake": ("FakeKernel",),
    "host": ("HostKernel",),
    "netlink": ("MODES", "Interface", "Netlink", "XdpState"),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:   # for type checkers and readers: the same names, eagerly
    from .bpffs import BPF_FS_MAGIC, PinnedMap, PinnedProgram, PinStore
    from .bpfsys import BpfMap, Fd, MapInfo, ProgInfo, TestRunResult, prog_fd_by_id, prog_info, prog_test_run
    from .compile import CompileRequest, Compiler, LoadedMap, LoadedProgram, compile_key, validate_defines
    from .errors import (
        AttachError,
        BpfSyscallError,
        CompileError,
        EntrypointNotFound,
        EntrypointNotXdp,
        HeadersNotFound,
        HookBusy,
        InterfaceNotFound,
        InvalidDefine,
        KernelError,
        NetnsNotFound,
        PinError,
        VerifierError,
    )
    from .fake import FakeKernel
    from .host import HostKernel
    from .netlink import MODES, Interface, Netlink, XdpState

__all__ = [
    "BPF_FS_MAGIC",
    "MODES",
    "AttachError",
    "BpfMap",
    "BpfSyscallError",
    "CompileError",
    "CompileRequest",
    "Compiler",
    "EntrypointNotFound",
    "EntrypointNotXdp",
    "FakeKernel",
    "Fd",
    "HeadersNotFound",
    "HookBusy",
    "HostKernel",
    "Interface",
    "InterfaceNotFound",
    "InvalidDefine",
    "KernelError",
    "LoadedMap",
    "LoadedProgram",
    "MapInfo",
    "Netlink",
    "NetnsNotFound",
    "PinError",
    "PinStore",
    "PinnedMap",
    "PinnedProgram",
    "ProgInfo",
    "TestRunResult",
    "VerifierError",
    "XdpState",
    "compile_key",
    "prog_fd_by_id",
    "prog_info",
    "prog_test_run",
    "validate_defines",
]
