"""XDP hardware offload: the rules an offloaded program must follow, checked before trying,
and loading a program bound to a device. Attaching (offload first or not) is attach.place,
the one ordered-attempt function; it takes the device-bound program this module loads.

Offload in the kernel (verified on netdevsim, tests/offload/):
- An offloaded program is loaded FOR a device (`BPF_PROG_LOAD` with `prog_ifindex`,
  bcc `device=`); its maps are created on the device too (`map_ifindex`). It can only be
  attached in HW mode on that device (`XDP_FLAGS_HW_MODE`), and a program loaded for
  the host can never be attached in HW mode. So offload needs its own load per
  interface: the program attached native/generic is a different kernel object.
- The device decides which maps it holds: the kernel offloads only BPF_MAP_TYPE_ARRAY
  and BPF_MAP_TYPE_HASH (`bpf_map_offload_map_alloc`), and drivers add limits
  (netdevsim: no map flags, at most 2 entries; nfp: no flags, its own sizes). A per-CPU
  map has no meaning on a NIC and is refused at map creation (EINVAL).
- The helpers an offloading driver translates are few. The set below is what the only
  upstream offload hardware (nfp) implements; netdevsim accepts more, but a program
  that passes here but fails on a real NIC would be a lie, so this check is the strict
  one.
- The interface's ifindex (and bcc's device name) is resolved in the network namespace
  of the LOADING thread: for an interface in a named namespace the load runs in a
  thread that entered it (`netns.in_netns`).

What is checked, and where:
1. `source_problems(source)`: cheap, from the source text, before any compile: map
   declarations (bcc macros, `BPF_TABLE("type", ...)`), map flags, and calls of bpf
   helpers outside the offload set. Comments are ignored; `#if` branches are not
   evaluated (a map or call under `#if 0` still counts: it errs on the safe side).
2. `loaded_problems(prog)`: exact, from a loaded program's maps (type and flags as the
   kernel reports them), for a program already compiled for the host.
3. The device itself: a refused map or program raises ProgramNotOffloadable with bcc's
   or the kernel's text, unless a trivial program cannot be loaded for the device
   either, in which case the device cannot offload at all: OffloadUnsupported.
   Who refused is decided from outcomes, never from bcc's text. bcc's BPF() fails the
   same way (a bare Exception, the reason only printed) whether clang refused the source
   or the device refused a map at creation (EINVAL: a per-CPU map, or more entries than
   the device holds), and errno is no witness (clang's own file lookups set it). So a
   device-bound compile that fails is compared with the same request compiled for the
   host: failing there too, the error is the program's own and is raised as such;
   compiling there, the device refused what the host accepts, and the host program's
   maps are checked exactly (`loaded_problems`) before the device is asked whether it
   can offload at all. The extra host compile happens only on that failure path (a
   device's refusal is then remembered per interface: offloads.py).

Reasons: ProgramNotOffloadable (the program breaks a rule, or the device refused it),
OffloadUnsupported (the device or driver cannot offload, or refused the HW attach:
EINVAL/EOPNOTSUPP with the kernel's extended ack), DriverModeUnsupported (native/generic
refused). Both offload reasons mean "fall back per policy"; with no fallback left the
attach fails with the first reason (the preferred mode's).
"""

from __future__ import annotations

import dataclasses
import errno as errno_mod
import re
import struct
from dataclasses import dataclass
from typing import Any

from . import bpfsys
from .compile import CompileRequest, Compiler, LoadedProgram
from .errors import (
    AttachError,
    BpfSyscallError,
    CompileError,
    HeadersNotFound,
    KernelError,
    ProgramNotOffloadable,
    VerifierError,
)
from .netlink import Netlink
from .netns import in_netns

PROGRAM_NOT_OFFLOADABLE = "ProgramNotOffloadable"
OFFLOAD_UNSUPPORTED = "OffloadUnsupported"
DRIVER_MODE_UNSUPPORTED = "DriverModeUnsupported"

# Map types the kernel offloads (bpf_map_offload_map_alloc), as bcc names them in
# BPF_TABLE("<type>", ...). bcc's "histogram" is a hash (or an array for int keys).
OFFLOAD_MAP_TYPES = frozenset({"hash", "array", "histogram"})
OFFLOAD_MAP_TYPE_IDS = frozenset({bpfsys.BPF_MAP_TYPE_HASH, bpfsys.BPF_MAP_TYPE_ARRAY})

# bcc's map macros -> the bcc table type they declare.
_MACRO_TYPES = {
    "BPF_ARRAY": "array",
    "BPF_HASH": "hash",
    "BPF_HISTOGRAM": "histogram",
    "BPF_PERCPU_ARRAY": "percpu_array",
    "BPF_PERCPU_HASH": "percpu_hash",
    "BPF_LPM_TRIE": "lpm_trie",
    "BPF_PROG_ARRAY": "prog",
    "BPF_PERF_OUTPUT": "perf_output",
    "BPF_PERF_ARRAY": "perf_array",
    "BPF_RINGBUF_OUTPUT": "ringbuf",
    "BPF_STACK_TRACE": "stacktrace",
    "BPF_STACK_TRACE_BUILDID": "stacktrace",
    "BPF_CGROUP_ARRAY": "cgroup_array",
    "BPF_DEVMAP": "devmap",
    "BPF_CPUMAP": "cpumap",
    "BPF_XSKMAP": "xskmap",
    "BPF_ARRAY_OF_MAPS": "array_of_maps",
    "BPF_HASH_OF_MAPS": "hash_of_maps",
    "BPF_SK_STORAGE": "sk_storage",
    "BPF_INODE_STORAGE": "inode_storage",
    "BPF_TASK_STORAGE": "task_storage",
    "BPF_SOCKMAP": "sockmap",
    "BPF_SOCKHASH": "sockhash",
    "BPF_CGROUP_STORAGE": "cgroup_storage",
    "BPF_PERCPU_CGROUP_STORAGE": "percpu_cgroup_storage",
    "BPF_QUEUE": "queue",
    "BPF_STACK": "stack",
}
# Macros whose first argument is the table type string.
_TYPED_MACROS = ("BPF_TABLE", "BPF_F_TABLE", "BPF_TABLE_PINNED", "BPF_TABLE_PUBLIC", "BPF_TABLE_SHARED",
                 "BPF_XDP_REDIRECT_MAP", "BPF_QUEUESTACK", "BPF_QUEUESTACK_PINNED",
                 "BPF_QUEUESTACK_PUBLIC", "BPF_QUEUESTACK_SHARED")

# Helpers an offloading NIC translates (nfp's set; netdevsim accepts these and more).
OFFLOAD_HELPERS = frozenset(
    {
        "bpf_map_lookup_elem",
        "bpf_map_update_elem",
        "bpf_map_delete_elem",
        "bpf_get_prandom_u32",
        "bpf_perf_event_output",
        "bpf_xdp_adjust_head",
        "bpf_xdp_adjust_tail",
    }
)
# bcc's map method syntax -> the helpers it compiles to.
_METHOD_HELPERS = {
    "lookup": ("bpf_map_lookup_elem",),
    "lookup_or_init": ("bpf_map_lookup_elem", "bpf_map_update_elem"),
    "lookup_or_try_init": ("bpf_map_lookup_elem", "bpf_map_update_elem"),
    "update": ("bpf_map_update_elem",),
    "insert": ("bpf_map_update_elem",),
    "delete": ("bpf_map_delete_elem",),
    "increment": ("bpf_map_lookup_elem", "bpf_map_update_elem"),
    "atomic_increment": ("bpf_map_lookup_elem", "bpf_map_update_elem"),
    "perf_submit": ("bpf_perf_event_output",),
    "redirect_map": ("bpf_redirect_map",),
    "call": ("bpf_tail_call",),
    "push": ("bpf_map_push_elem",),
    "pop": ("bpf_map_pop_elem",),
    "peek": ("bpf_map_peek_elem",),
    "ringbuf_output": ("bpf_ringbuf_output",),
    "ringbuf_reserve": ("bpf_ringbuf_reserve",),
    "sk_storage_get": ("bpf_sk_storage_get",),
}
# Names that look like helpers but are bcc macros or plain C, not helper calls.
_NOT_HELPERS = frozenset({"bpf_ntohs", "bpf_htons", "bpf_ntohl", "bpf_htonl"})

_COMMENT_RE = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
_STRING_RE = re.compile(r'"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'')
_MACRO_RE = re.compile(r"\b(BPF_[A-Z_]+)\s*\(")
_CALL_RE = re.compile(r"\b(bpf_[a-z0-9_]+)\s*\(")
_METHOD_RE = re.compile(r"\b[A-Za-z_]\w*\s*\.\s*([a-z_]+)\s*\(")


@dataclass(frozen=True)
class Problem:
    """One rule of offloaded programs the program breaks."""

    kind: str  # 'map' | 'map_flags' | 'helper'
    name: str  # map name, or helper name
    detail: str  # a sentence for humans
    line: int | None = None  # 1-based line in the source, when known

    def __str__(self) -> str:
        return f"line {self.line}: {self.detail}" if self.line else self.detail


def _strip_comments(source: str) -> str:
    """Comments replaced by as many newlines as they spanned (line numbers stay right)."""
    return _COMMENT_RE.sub(lambda m: "\n" * m.group(0).count("\n") or " ", source)


def _args(text: str, open_paren: int) -> list[str] | None:
    """The top-level comma-separated arguments of the call whose '(' is at open_paren."""
    depth, start, out = 0, open_paren + 1, []
    i = open_paren
    while i < len(text):
        c = text[i]
        if c == '"':
            m = _STRING_RE.match(text, i)
            i = m.end() if m else i + 1
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0:
                out.append(text[start:i].strip())
                return out
        elif c == "," and depth == 1:
            out.append(text[start:i].strip())
            start = i + 1
        i += 1
    return None


def _line(text: str, pos: int) -> int:
    """The 1-based line of position `pos` in `text`."""
    return text.count("\n", 0, pos) + 1


def _arg(args: list[str], i: int, default: str | None = "?") -> str | None:
    return args[i] if len(args) > i else default


# The flags argument of the typed macros that have one: BPF_F_TABLE(type, key, leaf, name,
# entries, flags), BPF_TABLE_PINNED(type, key, leaf, name, entries, path, flags).
_FLAGS_ARG = {"BPF_F_TABLE": 5, "BPF_TABLE_PINNED": 6}


def _table_decl(macro: str, args: list[str]) -> tuple[str, str, str | None] | None:
    """(bcc table type, map name, flags argument or None) of a map-declaring macro call,
    or None when `macro` declares no map (or its type is not a string literal)."""
    if macro in _MACRO_TYPES:
        return _MACRO_TYPES[macro], _arg(args, 0), None
    if macro not in _TYPED_MACROS or not args or not args[0].startswith('"'):
        return None
    table_type = args[0].strip('"')
    if macro.startswith("BPF_QUEUESTACK"):          # (type, name, leaf, entries, flags)
        return table_type, _arg(args, 1), _arg(args, 4, None)
    if macro == "BPF_XDP_REDIRECT_MAP":             # (type, leaf, name, entries)
        return table_type, _arg(args, 2), None
    flags_at = _FLAGS_ARG.get(macro)                # the others: (type, key, leaf, name, ...)
    return table_type, _arg(args, 3), (_arg(args, flags_at, None) if flags_at is not None else None)


def _map_problem(macro: str, table_type: str, name: str, flags: str | None, line: int) -> Problem | None:
    """The offload rule a map declaration breaks, if any: its type, then its flags."""
    if table_type not in OFFLOAD_MAP_TYPES:
        kind = "a per-CPU map" if "percpu" in table_type else f"a {table_type} map"
        return Problem("map", name, f"map {name!r} is {kind} ({macro}): only array and hash maps can be offloaded",
                       line)
    if flags not in (None, "", "0"):
        return Problem("map_flags", name, f"map {name!r} has flags {flags}: offloaded maps take no flags", line)
    return None


def _map_problems(text: str) -> list[Problem]:
    """The map declarations of `text` (comments stripped) that break an offload rule."""
    problems = []
    for m in _MACRO_RE.finditer(text):
        if text[: m.start()].rstrip().endswith("#define"):
            continue  # a macro of the user's own, not a declaration
        args = _args(text, m.end() - 1)
        decl = _table_decl(m.group(1), args) if args is not None else None
        problem = _map_problem(m.group(1), *decl, _line(text, m.start())) if decl is not None else None
        if problem is not None:
            problems.append(problem)
    return problems


def _helper_problems(code: str) -> list[Problem]:
    """Helpers outside the offload set that `code` (comments stripped, string literals
    emptied) calls, directly or through bcc's map methods; each helper once."""
    problems: list[Problem] = []
    seen: set[str] = set()
    for m in _CALL_RE.finditer(code):
        helper = m.group(1)
        if helper in OFFLOAD_HELPERS or helper in _NOT_HELPERS or helper in seen:
            continue
        seen.add(helper)
        problems.append(Problem(
            "helper", helper,
            f"{helper}() is not in the offload helper set ({', '.join(sorted(OFFLOAD_HELPERS))})",
            _line(code, m.start()),
        ))
    for m in _METHOD_RE.finditer(code):
        for helper in _METHOD_HELPERS.get(m.group(1), ()):
            if helper in OFFLOAD_HELPERS or helper in seen:
                continue
            seen.add(helper)
            problems.append(Problem(
                "helper", helper,
                f".{m.group(1)}() compiles to {helper}(), which is not in the offload helper set",
                _line(code, m.start()),
            ))
    return problems


def source_problems(source: str) -> list[Problem]:
    """Offload rules broken by `source`, found without compiling (see the module doc):
    its map declarations, then the helpers it calls."""
    text = _strip_comments(source)
    # string literals never span lines: emptying them keeps every line number
    return _map_problems(text) + _helper_problems(_STRING_RE.sub('""', text))


def loaded_problems(prog: LoadedProgram) -> list[Problem]:
    """Offload rules broken by the maps of a program already loaded (exact types, flags)."""
    problems = []
    for name, m in sorted(prog.maps.items()):
        info = m.info
        if info.type not in OFFLOAD_MAP_TYPE_IDS:
            kind = "a per-CPU map" if info.percpu else f"a map of type {info.type}"
            problems.append(Problem("map", name, f"map {name!r} is {kind}: only array and hash maps can be offloaded"))
        elif info.flags:
            problems.append(Problem("map_flags", name, f"map {name!r} has flags {info.flags:#x}: offloaded maps take no flags"))
    return problems


def _not_offloadable(problems: list[Problem], **context: Any) -> ProgramNotOffloadable:
    listed = "; ".join(str(p) for p in problems)
    return ProgramNotOffloadable(
        f"the program cannot be offloaded: {listed}", problems=tuple(str(p) for p in problems), **context
    )


def check_source(source: str, **context: Any) -> None:
    """Raise ProgramNotOffloadable when `source` breaks an offload rule."""
    problems = source_problems(source)
    if problems:
        raise _not_offloadable(problems, **context)


def check_loaded(prog: LoadedProgram, **context: Any) -> None:
    """Raise ProgramNotOffloadable when a loaded program's maps cannot be offloaded."""
    problems = loaded_problems(prog)
    if problems:
        raise _not_offloadable(problems, **context)


# --- the trivial program ---------------------------------------------------------------------

# r0 = XDP_PASS; exit
PASS_INSNS = struct.pack("<BBhi", 0xB7, 0, 0, bpfsys.XDP_PASS) + struct.pack("<BBhi", 0x95, 0, 0, 0)


def load_pass_program(ifindex: int = 0, *, name: str = "kxdp_probe") -> bpfsys.Fd:
    """Load `return XDP_PASS` with bpf(2) (no compiler, no headers), for the host or,
    with `ifindex`, bound to that device for offload (ifindex of the calling thread's
    namespace). expected_attach_type is left 0, as bcc leaves it: a link can swap it for a
    bcc-loaded program and back (BPF_LINK_UPDATE refuses a program whose
    expected_attach_type differs: EINVAL). Raises BpfSyscallError (cmd BPF_PROG_LOAD)."""
    return bpfsys.prog_load(PASS_INSNS, name=name, ifindex=ifindex)


def bound_ifindex(prog_fd: int) -> int | None:
    """The ifindex a device-bound program is bound to (0: not bound), None when its
    device is gone (the kernel answers ENODEV for an orphaned offloaded program)."""
    info = bpfsys._ProgInfo()
    try:
        bpfsys._get_info(prog_fd, info)
    except BpfSyscallError as exc:
        if exc.errno == errno_mod.ENODEV:
            return None
        raise
    return int(info.ifindex)


def device_can_offload(netlink: Netlink, interface: str) -> tuple[bool, int | None]:
    """(True, None) when a trivial program loads bound to `interface`, else (False, errno)."""
    index = netlink.interface(interface).index
    try:
        fd = in_netns(netlink.netns, lambda: load_pass_program(index))
    except BpfSyscallError as exc:
        return False, exc.errno
    fd.close()
    return True, None


# --- loading for a device ------------------------------------------------------------------


def offload_request(req: CompileRequest, interface: str) -> CompileRequest:
    return dataclasses.replace(req, device=interface)


def load_for_offload(compiler: Compiler, netlink: Netlink, interface: str, req: CompileRequest) -> LoadedProgram:
    """Check the offload rules, then load `req` bound to `interface` (in netlink's namespace).

    Raises ProgramNotOffloadable (rules broken, or the device refused the program's maps
    or code), AttachError(OffloadUnsupported) when the device cannot offload at all, and
    lets errors of the program itself through (they would fail any mode): a source that
    does not compile for the host either (see the module docstring, point 3).
    """
    ctx = {"interface": interface, "netns": netlink.netns, "mode": "offload"}
    check_source(req.source, **ctx)
    dev_req = offload_request(req, interface)
    index = netlink.interface(interface).index
    try:
        prog = in_netns(netlink.netns, lambda: compiler.load(dev_req))
        if prog.cache_hit and bound_ifindex(prog.prog_fd) != index:
            # The compiler's cache is keyed by device NAME: a cached program may be bound to
            # a device that went away (orphaned: ENODEV) or to another one now bearing the
            # name. Load afresh for the device there is now.
            compiler.release(prog.key)
            prog = in_netns(netlink.netns, lambda: compiler.load(dev_req))
    except HeadersNotFound:
        raise
    except (CompileError, VerifierError) as exc:
        problems = _host_problems(compiler, req) if isinstance(exc, CompileError) else []
        raise _device_refusal(netlink, interface, exc, problems, ctx) from exc
    try:
        check_loaded(prog, **ctx)
    except ProgramNotOffloadable:
        compiler.release(prog.key)
        raise
    return prog


def _host_problems(compiler: Compiler, req: CompileRequest) -> list[Problem]:
    """A device-bound compile failed: the offload rules broken by the maps of `req`
    compiled for the host (exact: the kernel's map types and flags). Raises the host
    compile's error when the program does not build for the host either (its own error,
    not the device's); a host program the verifier refuses says nothing about its maps
    ([]: the native or generic attempt reports that error). The host program is released
    unless this compiler already held it."""
    host_req = dataclasses.replace(req, device=None)
    held = compiler.key(host_req) in compiler.cached_keys()
    try:
        host = compiler.load(host_req)
    except VerifierError:
        return []
    try:
        return loaded_problems(host)
    finally:
        if not held:
            compiler.release(host.key)


def _device_refusal(netlink: Netlink, interface: str, exc: CompileError | VerifierError, problems: list[Problem],
                    ctx: dict[str, Any]) -> KernelError:
    """Why the device refused a program the host takes: its maps break a rule (`problems`,
    from the host program), the device cannot offload at all (a trivial program cannot be
    loaded for it either), or the device's own limits."""
    if problems:
        return _not_offloadable(problems, **ctx)
    can, err = device_can_offload(netlink, interface)
    if not can:
        return AttachError(
            f"{interface} cannot offload XDP: loading a program bound to it fails"
            + (f" ({errno_mod.errorcode.get(err, err)})" if err else ""),
            reason=OFFLOAD_UNSUPPORTED, errno=err, **ctx,
        )
    return ProgramNotOffloadable(
        f"{interface} refused the program for offload: {exc.message}",
        problems=("the device refused the program's maps or code",), output=getattr(exc, "output", ""),
        errno=exc.errno, **ctx,
    )
