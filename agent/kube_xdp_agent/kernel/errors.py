"""Errors of the kernel layer: one class per failure the control loop must tell apart.

Every error carries the context that locates it (program, interface, netns, pin path,
errno) and a stable CamelCase `reason` taken from `kube_xdp_api.reasons` so the control
loop can copy it into a condition unchanged. Causes are chained with `raise ... from`.

Reasons used here (all in the API's catalogue, except the internal `BpfSyscallFailed` and,
until the catalogue gains them, the offload pair `ProgramNotOffloadable` / `OffloadUnsupported`):

| class                | reason                                  | permanent? |
|----------------------|-----------------------------------------|------------|
| CompileError         | CompileError                            | yes        |
| HeadersNotFound      | HeadersNotFound                         | yes        |
| VerifierError        | VerifierRejected                        | yes        |
| EntrypointNotFound   | EntrypointNotFound                      | yes        |
| EntrypointNotXdp     | EntrypointNotFound (signature is wrong) | yes        |
| InvalidDefine        | InvalidDefine                           | yes        |
| InterfaceNotFound    | InterfaceNotFound (also NetnsNotFound)  | yes        |
| HookBusy             | HookBusy                                | yes        |
| AttachError          | DriverModeUnsupported / AttachFailed / DetachFailed | fallback / retry |
|                      | OffloadUnsupported (offload refused by the device, offload.py) | fallback |
| ProgramNotOffloadable| ProgramNotOffloadable (offload.py)      | fallback, else yes |
| PinError             | PinFailed                               | retry      |
| BpfSyscallError      | BpfSyscallFailed                        | caller decides |

Nothing here touches the kernel; the module is pure.
"""

from __future__ import annotations

import errno as _errno
from typing import Any

# Tool output (compiler diagnostics, verifier log) is trimmed to this many UTF-8 bytes:
# it ends up in a Kubernetes status message (docs/api.md: "trimmed to 4 KiB").
OUTPUT_LIMIT = 4096


class KernelError(Exception):
    """Base of every error raised by the kernel layer.

    `message` is a human sentence; `str(err)` appends the context fields that are set,
    e.g. ``attach failed (interface=eth0, netns=kxt-1, mode=native, errno=EBUSY)``.
    """

    reason = "KernelError"

    def __init__(
        self,
        message: str,
        *,
        program: str | None = None,
        interface: str | None = None,
        netns: str | None = None,
        pin_path: str | None = None,
        errno: int | None = None,
        mode: str | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.program = program
        self.interface = interface
        self.netns = netns
        self.pin_path = pin_path
        self.errno = errno
        self.mode = mode
        if reason is not None:
            self.reason = reason

    def context(self) -> dict[str, object]:
        """The context fields that are set (errno rendered as its symbolic name)."""
        fields: dict[str, object] = {}
        for name in ("program", "interface", "netns", "mode", "pin_path"):
            value = getattr(self, name)
            if value is not None:
                fields[name] = value
        if self.errno is not None:
            # errorcode maps 95 to ENOTSUP; the kernel (and its docs) call it EOPNOTSUPP.
            name = "EOPNOTSUPP" if self.errno == _errno.EOPNOTSUPP else _errno.errorcode.get(self.errno)
            fields["errno"] = name or str(self.errno)
        return fields

    def __str__(self) -> str:
        fields = self.context()
        if not fields:
            return self.message
        rendered = ", ".join(f"{key}={value}" for key, value in fields.items())
        return f"{self.message} ({rendered})"


class CompileError(KernelError):
    """bcc/clang could not compile the source. `output` holds clang's diagnostics."""

    reason = "CompileError"

    def __init__(self, message: str, *, output: str = "", **context: Any) -> None:
        super().__init__(message, **context)
        self.output = trim_head(output)


class HeadersNotFound(CompileError):
    """bcc found no kernel headers (/lib/modules/<release>/build, BCC_KERNEL_SOURCE, kheaders)."""

    reason = "HeadersNotFound"


class VerifierError(KernelError):
    """The kernel refused to load the program. `output` is the verifier log's tail.

    The log is trimmed to OUTPUT_LIMIT bytes keeping the first line (bcc's summary,
    e.g. "bpf: Failed to load program: Permission denied") and the LAST lines, where the
    verifier names the faulting instruction and the rule it broke.
    """

    reason = "VerifierRejected"

    def __init__(self, message: str, *, output: str = "", **context: Any) -> None:
        super().__init__(message, **context)
        self.output = trim_verifier_log(output)


class EntrypointNotFound(KernelError):
    """The compiled module has no (non-static) function named like the entrypoint."""

    reason = "EntrypointNotFound"

    def __init__(self, message: str, *, available: tuple[str, ...] = (), **context: Any) -> None:
        super().__init__(message, **context)
        self.available = available


class EntrypointNotXdp(EntrypointNotFound):
    """The entrypoint exists but is not an XDP function (`int f(struct xdp_md *ctx)`).

    `signature` is the signature read from the program's BTF, e.g. ``int helper(int)``.
    Same reason as EntrypointNotFound: there is no XDP entrypoint by that name.
    """

    def __init__(self, message: str, *, signature: str = "", **context: Any) -> None:
        super().__init__(message, **context)
        self.signature = signature


class InvalidDefine(KernelError):
    """A define's name or value breaks the rules (checked before bcc is called)."""

    reason = "InvalidDefine"


class InterfaceNotFound(KernelError):
    """No interface by that name (or index) in the namespace."""

    reason = "InterfaceNotFound"


class NetnsNotFound(InterfaceNotFound):
    """The named network namespace does not exist (so neither do its interfaces)."""


class HookBusy(KernelError):
    """The XDP hook holds a program that is not the one we expected (EBUSY/EEXIST).

    `prog_id` is the id of the program found on the hook (read back after the error),
    `attached_mode` the mode it is attached in, `link_id` the bpf_link holding it when a
    link does (the kernel then refuses every netlink replace or detach of it). It is never
    replaced or removed.
    """

    reason = "HookBusy"

    def __init__(
        self,
        message: str,
        *,
        prog_id: int | None = None,
        attached_mode: str | None = None,
        kernel_message: str | None = None,
        link_id: int | None = None,
        **context: Any,
    ) -> None:
        super().__init__(message, **context)
        self.prog_id = prog_id
        self.attached_mode = attached_mode
        self.kernel_message = kernel_message
        self.link_id = link_id


class AttachError(KernelError):
    """The kernel refused an attach/detach (reason DriverModeUnsupported, AttachFailed, DetachFailed).

    `kernel_message` is the kernel's extended-ack text when it sent one (informative
    only: code branches on `errno`, never on this text).
    """

    reason = "AttachFailed"

    def __init__(self, message: str, *, kernel_message: str | None = None, **context: Any) -> None:
        super().__init__(message, **context)
        self.kernel_message = kernel_message


class ProgramNotOffloadable(KernelError):
    """The program breaks a rule of offloaded programs (map types, map flags, helpers), or
    the device refused its maps or code while a trivial program loads on it fine.

    `problems` lists what was found (one sentence each); `output` is bcc's or the
    kernel's text when the device itself refused. The caller falls back per policy.
    """

    reason = "ProgramNotOffloadable"

    def __init__(self, message: str, *, problems: tuple[str, ...] = (), output: str = "", **context: Any) -> None:
        super().__init__(message, **context)
        self.problems = tuple(problems)
        self.output = trim_head(output)


class PinError(KernelError):
    """A bpffs operation failed, or a pin path component is invalid."""

    reason = "PinFailed"


class BpfSyscallError(KernelError):
    """A bpf(2) command failed. `cmd` is the command name, `errno` the error."""

    reason = "BpfSyscallFailed"

    def __init__(self, message: str, *, cmd: str, **context: Any) -> None:
        super().__init__(message, **context)
        self.cmd = cmd


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


def trim_head(text: str, limit: int = OUTPUT_LIMIT) -> str:
    """Keep the first lines of `text` within `limit` UTF-8 bytes (compilers: first error first)."""
    text = text.rstrip()
    if _utf8_len(text) <= limit:
        return text
    lines = text.splitlines()
    marker = "\n... ({n} more lines trimmed)"
    kept: list[str] = []
    size = 0
    for line in lines:
        extra = _utf8_len(line) + 1
        if size + extra + _utf8_len(marker.format(n=len(lines))) > limit:
            break
        kept.append(line)
        size += extra
    return "\n".join(kept) + marker.format(n=len(lines) - len(kept))


def trim_verifier_log(text: str, limit: int = OUTPUT_LIMIT) -> str:
    """Keep the first line and the last lines of a verifier log within `limit` UTF-8 bytes."""
    text = text.strip("\n")
    if _utf8_len(text) <= limit:
        return text
    lines = text.splitlines()
    head = lines[0][:200]
    marker = "... ({n} lines trimmed)"
    budget = limit - _utf8_len(head) - _utf8_len(marker.format(n=len(lines))) - 2
    tail: list[str] = []
    for line in reversed(lines[1:]):
        extra = _utf8_len(line) + 1
        if extra > budget:
            if not tail:  # one huge last line: keep its end, where the error is
                tail.append(line.encode("utf-8")[-(budget - 1) :].decode("utf-8", "ignore"))
            break
        tail.append(line)
        budget -= extra
    tail.reverse()
    trimmed = len(lines) - 1 - len(tail)
    return "\n".join([head, marker.format(n=trimmed), *tail])
