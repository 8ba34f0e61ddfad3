"""Compile and load XDP programs with bcc, with an in-process cache keyed by compile key.

Flow of `Compiler.load(req)`:
1. validate the request (define names/values, entrypoint, device, no NUL in the source,
   only the header names kube_xdp_api.spec.source_file_access allows)
   and raise InvalidDefine / EntrypointNotFound before bcc is called;
2. look the compile key up in the in-process cache: a hit returns a view of the same
   loaded program (same prog fd and id) with `cache_hit=True` and its lookup time;
3. otherwise `BPF(text=..., cflags=["-DNAME=VALUE", ...])` (clang; failure ->
   CompileError with clang's diagnostics), check the entrypoint is a function of the
   module (EntrypointNotFound, naming the functions that exist), `load_func(entry,
   BPF.XDP)` (failure -> VerifierError with the verifier log), then read the entry
   function's prototype back from the program's BTF and refuse anything that is not
   `int f(struct xdp_md *ctx)` (EntrypointNotXdp).

What bcc does and does not let us reuse (bcc 0.26, measured on the dev machine):
- Every `BPF(text=...)` runs clang/LLVM again, even for a byte-identical source in the
  same process: ~0.25 s for a trivial program, ~1.8-2.0 s for one that includes the
  kernel's network headers (linux/ip.h, linux/udp.h); `load_func` (the verifier) adds
  ~1 ms. bcc has no persistent or cross-process cache; the only reuse is the `BPF`
  object itself (its map fds and `funcs`), which is what this module caches: a cache
  hit costs ~0.01 ms (median of 100, max 0.1 ms). A loaded program survives a restart
  only if it is pinned (see bpffs.PinStore) or attached; the agent re-opens pins
  instead of recompiling.
- `load_func` of an already-loaded name returns bcc's cached fd (no second verifier run).

Traps handled here:
- clang diagnostics and the verifier log are printed by libbcc on file descriptor 2;
  bcc's exceptions only say "Failed to compile BPF module" / "Failed to load BPF
  program ...: Permission denied". fd 2 is redirected to a temp file around BPF() and
  load_func() (process-wide, serialized by a lock). While a compile runs, anything other
  threads write to fd 2 lands in that file, hence in the error's `output` or in
  `LoadedProgram.warnings` (also logged at DEBUG level): not lost, but misplaced.
- `BPF.__init__` registers `self.cleanup` with atexit before compiling, and a failed
  load_func registers `self.donothing`: both keep the module alive until exit. They are
  unregistered when a module is closed or fails.
- bcc auto-loads and attaches functions named `kprobe__*`, `tracepoint__*`,
  `raw_tracepoint__*`, `kfunc__*`, `lsm__*` ... found in the source. A user's XDP source
  must never attach tracing programs as root: the subclass used here disables it.
- bcc rewrites the arguments of every non-static function after the first as if it
  were a kprobe (`int f(int a, int b)` fails to compile with "member reference type
  'int' is not a pointer"): that surfaces as a CompileError.
- bcc takes the source as a C string: a NUL byte would silently truncate it, so a
  source containing one is refused.
- Offload (`device`): bcc resolves the device name in the compiler's own network
  namespace and wants it as bytes.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import dataclasses
import hashlib
import json
import logging
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from kube_xdp_api import spec as api_spec

from . import bpfsys, btf
from .errors import (
    BpfSyscallError,
    CompileError,
    EntrypointNotFound,
    EntrypointNotXdp,
    HeadersNotFound,
    InvalidDefine,
    VerifierError,
)

log = logging.getLogger(__name__)

# Defense in depth: the API server already enforces these (docs/api.md, spec.defines).
DEFINE_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
DEFINE_VALUE_RE = re.compile(r"[A-Za-z0-9_.+-]{0,128}")
MAX_DEFINES = 32
ENTRYPOINT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
DEVICE_RE = re.compile(r"[A-Za-z0-9_.:-]{1,15}")

KEY_FORMAT = 1  # bump when the canonical form of compile_key changes

_FD2_LOCK = threading.Lock()


@dataclass(frozen=True)
class CompileRequest:
    """What to compile: C source, the XDP function to load, `-D` defines, offload device."""

    source: str
    entrypoint: str
    defines: Mapping[str, str] = field(default_factory=dict)
    device: str | None = None

    def __post_init__(self) -> None:
        # A read-only copy: the key computed from it must stay true.
        object.__setattr__(self, "defines", MappingProxyType(dict(self.defines)))


def validate_defines(defines: Mapping[str, str]) -> None:
    """Raise InvalidDefine unless every define is a C identifier = a harmless value.

    Patterns are matched with `fullmatch` (a `$` anchor would accept a trailing newline).
    """
    if len(defines) > MAX_DEFINES:
        raise InvalidDefine(f"{len(defines)} defines given, at most {MAX_DEFINES} are allowed")
    for name, value in defines.items():
        if not isinstance(name, str) or not DEFINE_NAME_RE.fullmatch(name):
            raise InvalidDefine(f"define name {name!r} is not a C identifier of at most 64 characters")
        if not isinstance(value, str) or not DEFINE_VALUE_RE.fullmatch(value):
            raise InvalidDefine(
                f"define {name} has value {value!r}: only A-Z a-z 0-9 _ . + - are allowed, at most 128"
            )
        # The API's stricter rule too (kube_xdp_api.spec): '-' leads only before a digit or
        # '.', never '..'; one source of truth with the operator's validator.
        if not re.fullmatch(api_spec.DEFINE_VALUE, value) or re.search(api_spec.DEFINE_VALUE_FORBIDDEN, value):
            raise InvalidDefine(
                f"define {name} has value {value!r}: a leading '-' only before a digit or '.', and no '..'"
            )
        # nor a name or value the preprocessor could turn into _Pragma / __has_include (file reads)
        problem = api_spec.define_file_access(name, value)
        if problem:
            raise InvalidDefine(f"define {name}: {problem}")


def validate_request(req: CompileRequest) -> None:
    """Everything that can be refused without calling bcc."""
    validate_defines(req.defines)
    if not isinstance(req.entrypoint, str) or not ENTRYPOINT_RE.fullmatch(req.entrypoint):
        raise EntrypointNotFound(f"entrypoint {req.entrypoint!r} is not a C identifier of at most 64 characters")
    if req.device is not None and not DEVICE_RE.fullmatch(req.device):
        raise CompileError(f"offload device {req.device!r} is not an interface name")
    if "\0" in req.source:
        raise CompileError("the source contains a NUL byte")
    problem = api_spec.source_file_access(req.source)   # the shared rule (docs/api.md)
    if problem:
        raise CompileError(f"refused before compiling: {problem}", reason="InvalidSpec")


def compile_key(req: CompileRequest, kernel_release: str, bcc_version: str) -> str:
    """sha256 hex over everything that changes the loaded program, in a canonical form."""
    canonical = {
        "format": KEY_FORMAT,
        "source": req.source,
        "entrypoint": req.entrypoint,
        "defines": sorted(req.defines.items()),
        "device": req.device,
        "kernel": kernel_release,
        "bcc": bcc_version,
    }
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def cflags(defines: Mapping[str, str]) -> list[str]:
    """One `-DNAME=VALUE` argument per define, in a stable order."""
    return [f"-D{name}={value}" for name, value in sorted(defines.items())]


@dataclass(frozen=True)
class LoadedMap:
    name: str  # bcc's table name (full, unlike the kernel's 15-character copy)
    fd: int  # owned by the loaded module: do not close
    info: bpfsys.MapInfo

    @property
    def id(self) -> int:
        return self.info.id


@dataclass(frozen=True)
class LoadedProgram:
    """A program loaded in the kernel by this process, with its maps.

    Fds belong to the bcc module shared by every view of the same key (a cache hit is a
    new view of the same module): `close()` on any view, or `Compiler.release(key)`,
    releases the module, its prog fd and map fds. The kernel objects live on while pinned
    or attached.
    """

    key: str
    entrypoint: str
    prog_fd: int
    prog_id: int
    tag: str
    name: str  # the kernel's name (bcc truncates the function name to 15 characters)
    maps: Mapping[str, LoadedMap]
    duration_ms: float
    cache_hit: bool
    warnings: str = ""  # compiler warnings of a successful compile (trimmed)
    _module: _Module | None = field(default=None, repr=False, compare=False)

    @property
    def digest12(self) -> str:
        return self.key[:12]

    @property
    def closed(self) -> bool:
        return self._module is not None and self._module.closed

    def close(self) -> None:
        if self._module is not None:
            self._module.close()


class _Module:
    """One bcc BPF object and its cleanup, shared by the views of one compile key."""

    def __init__(self, bpf: object, on_close: object = None) -> None:
        self.bpf = bpf
        self.closed = False
        self._on_close = on_close
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
        _dispose(self.bpf)
        if callable(self._on_close):
            self._on_close()


def _dispose(bpf: object, *, half_built: bool = False) -> None:
    """Release a bcc module and undo its atexit registrations (they pin it in memory).

    `half_built`: BPF.__init__ failed part-way; cleanup may find attributes missing.
    """
    try:
        if half_built:
            with contextlib.suppress(Exception):
                bpf.cleanup()  # type: ignore[attr-defined]
        else:
            bpf.cleanup()  # type: ignore[attr-defined]
    finally:
        atexit.unregister(bpf.cleanup)  # type: ignore[attr-defined]
        atexit.unregister(bpf.donothing)  # type: ignore[attr-defined]


@contextlib.contextmanager
def _capture_fd2() -> Iterator[list[str]]:
    """Redirect file descriptor 2 to a temp file; the text is appended to the yielded list."""
    out: list[str] = []
    with _FD2_LOCK, tempfile.TemporaryFile() as tmp:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(tmp.fileno(), 2)
            try:
                yield out
            finally:
                os.dup2(saved, 2)
        finally:
            os.close(saved)
            tmp.seek(0)
            out.append(tmp.read().decode("utf-8", "replace"))


def _bcc():  # imported lazily: unit tests of pure parts run without bcc
    import bcc
    from bcc.libbcc import lib

    lib.bpf_num_tables.restype = ctypes.c_size_t
    lib.bpf_num_tables.argtypes = [ctypes.c_void_p]
    lib.bpf_table_name.restype = ctypes.c_char_p
    lib.bpf_table_name.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lib.bpf_table_fd_id.restype = ctypes.c_int
    lib.bpf_table_fd_id.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    return bcc, lib


_XDP_BPF_CLASS = None


def _xdp_bpf_class() -> type:
    """bcc's BPF without the autoload/attach of kprobe__*/tracepoint__*/... functions."""
    global _XDP_BPF_CLASS
    if _XDP_BPF_CLASS is None:
        bcc, _ = _bcc()

        class XdpOnlyBPF(bcc.BPF):
            def _trace_autoload(self) -> None:
                return None

        _XDP_BPF_CLASS = XdpOnlyBPF
    return _XDP_BPF_CLASS


def bcc_version() -> str:
    """bcc's version, read from its version.py without importing bcc: importing it maps
    libbcc (LLVM) into the process, which the agent keeps out of its own memory."""
    import importlib.util
    spec = importlib.util.find_spec("bcc")
    if spec is not None and spec.origin:
        path = os.path.join(os.path.dirname(spec.origin), "version.py")
        try:
            with open(path) as f:
                match = re.search(r"__version__\s*=\s*['\"]([^'\"]+)['\"]", f.read())
            if match:
                return match.group(1)
        except OSError:
            pass
    bcc, _ = _bcc()
    return str(bcc.__version__)


def headers_available(kernel_release: str) -> bool:
    """Whether bcc can find kernel headers (its own search order)."""
    env = os.environ.get("BCC_KERNEL_SOURCE")
    if env and os.path.isdir(env):
        return True
    return os.path.isdir(f"/lib/modules/{kernel_release}/build") or os.path.exists("/sys/kernel/kheaders.tar.xz")


def _functions(lib: object, module: object) -> tuple[str, ...]:
    n = lib.bpf_num_functions(module)  # type: ignore[attr-defined]
    return tuple(lib.bpf_function_name(module, i).decode() for i in range(n))  # type: ignore[attr-defined]


class Compiler:
    """Compiles with bcc and keeps loaded programs by compile key, in this process only.

    Thread-safe: loads are serialized (bcc and the fd-2 capture are process-wide).
    """

    def __init__(self, *, kernel_release: str | None = None, bcc_version: str | None = None) -> None:
        self.kernel_release = kernel_release or os.uname().release
        self._bcc_version = bcc_version
        self._cache: dict[str, LoadedProgram] = {}
        self._lock = threading.RLock()

    @property
    def bcc_version(self) -> str:
        if self._bcc_version is None:
            self._bcc_version = bcc_version()
        return self._bcc_version

    def key(self, req: CompileRequest) -> str:
        return compile_key(req, self.kernel_release, self.bcc_version)

    def cached_keys(self) -> list[str]:
        with self._lock:
            return list(self._cache)

    def load(self, req: CompileRequest) -> LoadedProgram:
        """Compile and load `req`, or return the cached program for its key."""
        start = time.perf_counter()
        validate_request(req)
        key = self.key(req)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and not cached.closed:
                return dataclasses.replace(
                    cached, cache_hit=True, duration_ms=round((time.perf_counter() - start) * 1000, 3)
                )
            loaded = self._load_cold(req, key, start)
            self._cache[key] = loaded
            return loaded

    def release(self, key: str) -> bool:
        """Close the module cached under `key`; False when there was none."""
        with self._lock:
            loaded = self._cache.pop(key, None)
        if loaded is None:
            return False
        loaded.close()
        return True

    def close(self) -> None:
        """Release every cached module."""
        for key in self.cached_keys():
            self.release(key)

    def _forget(self, key: str) -> None:
        with self._lock:
            self._cache.pop(key, None)

    def _load_cold(self, req: CompileRequest, key: str, start: float) -> LoadedProgram:
        if not headers_available(self.kernel_release):
            raise HeadersNotFound(
                f"no kernel headers for {self.kernel_release}: bcc needs /lib/modules/{self.kernel_release}/build "
                "(or BCC_KERNEL_SOURCE, or CONFIG_IKHEADERS)"
            )
        bcc, lib = _bcc()
        cls = _xdp_bpf_class()
        device = req.device.encode() if req.device else None
        bpf = cls.__new__(cls)  # so a failing __init__ can still be unregistered from atexit
        with _capture_fd2() as captured:
            try:
                bpf.__init__(text=req.source.encode("utf-8"), cflags=cflags(req.defines), device=device)
                compiled = True
            except Exception as exc:  # bcc raises bare Exception
                compiled = False
                cause = exc
        output = captured[0]
        if not compiled:
            _dispose(bpf, half_built=True)
            error_cls = HeadersNotFound if "Unable to find kernel headers" in output else CompileError
            raise error_cls(f"compile failed: {cause}", output=output) from cause

        module = _Module(bpf, on_close=lambda: self._forget(key))
        try:
            functions = _functions(lib, bpf.module)
            if req.entrypoint not in functions:
                raise EntrypointNotFound(
                    f"no function {req.entrypoint!r} in the compiled module "
                    f"(functions: {', '.join(functions) or 'none'}; static functions are not entrypoints)",
                    available=functions,
                )
            with _capture_fd2() as captured:
                try:
                    fn = bpf.load_func(req.entrypoint.encode(), bcc.BPF.XDP, device=device)
                    load_errno = None
                except Exception as exc:
                    fn = None
                    load_errno = ctypes.get_errno() or None
                    cause = exc
            if fn is None:
                raise VerifierError(
                    f"the kernel refused to load {req.entrypoint!r}: {cause}",
                    output=captured[0],
                    errno=load_errno,
                ) from cause
            info = bpfsys.prog_info(fn.fd)
            self._check_signature(req.entrypoint, info)
            maps = {}
            for i in range(lib.bpf_num_tables(bpf.module)):
                name = lib.bpf_table_name(bpf.module, i).decode()
                fd = lib.bpf_table_fd_id(bpf.module, i)
                maps[name] = LoadedMap(name=name, fd=fd, info=bpfsys.map_info(fd))
        except BaseException:
            module.close()
            raise
        warnings = output.strip()
        if warnings:
            log.debug("bcc output while compiling %s: %s", key[:12], warnings)
        return LoadedProgram(
            key=key,
            entrypoint=req.entrypoint,
            prog_fd=fn.fd,
            prog_id=info.id,
            tag=info.tag,
            name=info.name,
            maps=MappingProxyType(maps),
            duration_ms=round((time.perf_counter() - start) * 1000, 3),
            cache_hit=False,
            warnings=warnings[:4096],
            _module=module,
        )

    @staticmethod
    def _check_signature(entrypoint: str, info: bpfsys.ProgInfo) -> None:
        """Refuse a loaded entry function whose BTF prototype is not an XDP one.

        Skipped (logged) when the program carries no BTF func info.
        """
        if not info.btf_id or not info.func_info:
            log.info("no BTF for %s (prog id %d): entrypoint signature not checked", entrypoint, info.id)
            return
        try:
            sig = btf.entry_signature(bpfsys.btf_data(info.btf_id), info.func_info[0].type_id)
        except (btf.BtfFormatError, BpfSyscallError) as exc:
            log.warning("cannot read the BTF of %s: %s; entrypoint signature not checked", entrypoint, exc)
            return
        if not sig.is_xdp:
            raise EntrypointNotXdp(
                f"function {entrypoint!r} is not an XDP entrypoint: it is `{sig}`, "
                f"an XDP entrypoint is `int {entrypoint}(struct xdp_md *ctx)`",
                signature=str(sig),
            )
