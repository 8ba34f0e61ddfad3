"""The agent's kernel layer: compile/load (bcc), the XDP hook (bpf_link, netlink), pins (bpffs),
interface capabilities (the netdev family).

What this layer may touch: bcc/libbcc, the bpf(2) syscall, rtnetlink and generic netlink,
bpffs. What it may not: the Kubernetes API, the agent's desired state, the clock beyond
bounded retries. The control loop uses it through factories, real (`HostKernel`) or
in-memory (`FakeKernel`, a test double in tests/fakes/, not part of this package):

- `kernel.compiler.load(CompileRequest(source, entrypoint, defines)) -> LoadedProgram`
  (cached in-process by compile key; `.release(key)`, `.key(req)`);
- `kernel.netlink(netns) -> Netlink`: `interfaces()`, `interface(name)`,
  `default_route_interface()`, `read_xdp(name)`; `attach`/`detach` are for attach.py only;
- `kernel.links(netns) -> XdpLinks` (link.py): bpf_link create/update/detach/info;
- `kernel.pin_store(root) -> PinStore`: `pin_program`, `open_pinned`, `list_programs`,
  `unpin`, `open_prog_fd`, `open_map`, the link pins (`pin_link`, `read_link`,
  `list_links`, `unpin_link`, `move_link`), path builders;
- `kernel.node(netns, root) -> attach.Node`: the three above for one node. Changing a hook
  is `attach.place` / `attach.remove` (the one ordered-attempt function), nothing else.

Errors (errors.py) carry a stable `reason` from kube_xdp_api.reasons. Modules:
errors, bpfsys (bpf(2) via ctypes), btf (entry signature), compile, netlink, netns, link,
attach, netdev (xdp-features), bpffs, offload, host.
"""

import importlib
from typing import TYPE_CHECKING, Any

# Names -> the submodule that defines them, imported on first use (PEP 562): the build
# worker imports kernel.compile only, and importing every submodule eagerly cost it
# ~90 ms of pyroute2 (netlink) per build, and ~5 s under the offload lab's TCG.
_WHERE = {
    "attach": ("LinkRecord", "Node", "NoModeAttached", "Placement", "Refusal", "Removal", "link_records", "place",
               "remove"),
    "bpffs": ("BPF_FS_MAGIC", "PinnedLink", "PinnedMap", "PinnedProgram", "PinStore"),
    "bpfsys": ("BpfMap", "Fd", "MapInfo", "ProgInfo", "TestRunResult", "prog_fd_by_id", "prog_info", "prog_test_run"),
    "compile": ("CompileRequest", "Compiler", "LoadedMap", "LoadedProgram", "compile_key", "validate_defines"),
    "errors": ("AttachError", "BpfSyscallError", "CompileError", "EntrypointNotFound", "EntrypointNotXdp",
               "HeadersNotFound", "HookBusy", "InterfaceNotFound", "InvalidDefine", "KernelError", "NetnsNotFound",
               "PinError", "VerifierError"),
    "host": ("HostKernel",),
    "link": ("XdpLinks",),
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
    from .attach import (
        LinkRecord,
        Node,
        NoModeAttached,
        Placement,
        Refusal,
        Removal,
        link_records,
        place,
        remove,
    )
    from .bpffs import BPF_FS_MAGIC, PinnedLink, PinnedMap, PinnedProgram, PinStore
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
    from .host import HostKernel
    from .link import XdpLinks
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
    "Fd",
    "HeadersNotFound",
    "HookBusy",
    "HostKernel",
    "Interface",
    "InterfaceNotFound",
    "InvalidDefine",
    "KernelError",
    "LoadedMap",
    "LinkRecord",
    "LoadedProgram",
    "MapInfo",
    "NoModeAttached",
    "Node",
    "Netlink",
    "NetnsNotFound",
    "PinError",
    "PinStore",
    "PinnedLink",
    "PinnedMap",
    "Placement",
    "PinnedProgram",
    "ProgInfo",
    "Refusal",
    "Removal",
    "TestRunResult",
    "VerifierError",
    "XdpLinks",
    "XdpState",
    "compile_key",
    "link_records",
    "place",
    "prog_fd_by_id",
    "prog_info",
    "prog_test_run",
    "remove",
    "validate_defines",
]
