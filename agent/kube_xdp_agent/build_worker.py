"""The child process of SubprocessBuilder: read one build request (JSON) on stdin, compile
and load it with bcc, pin it under the agent's bpffs, print one JSON line, exit.

Runs with the agent's privileges; every field is validated again by the kernel layer
(CompileRequest, PinStore). With `netns` it first enters that network namespace, so a
device-bound (offload) load resolves the interface where the agent sees it.

The user's source is compiled in a confined grandchild (`_compile_confined`), which hands
the loaded program and its maps back as file descriptors (SCM_RIGHTS); this process pins
them. The confinement closes two ways a source could reach outside its own program:
- bcc's pinned tables (`BPF_TABLE_PINNED`, or any map whose section name carries
  ":<path>", however the macros build it) open or create pins at a path taken from the
  source, in any bpffs the agent sees: a seccomp filter makes BPF_OBJ_PIN and BPF_OBJ_GET
  fail with EPERM in the grandchild, so such a source fails to compile (CompileError)
  and nothing outside kube-xdp's own pin directory is ever opened or created;
- clang searches the working directory for `#include <...>` (with `/` as the working
  directory, `#include <etc/passwd>` reads /etc/passwd): the grandchild works in a new,
  empty directory, so a relative header name reaches only the include directories.
Only a program of type XDP is pinned (checked on the fd, from the kernel's prog info).
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import shutil
import signal
import socket
import struct
import sys
import tempfile

CLONE_NEWNET = 0x40000000
BPF_PROG_TYPE_XDP = 6
BPF_OBJ_PIN, BPF_OBJ_GET = 6, 7
_MAX_FDS = 253          # SCM_MAX_FD


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


# --- seccomp: bpf(BPF_OBJ_PIN | BPF_OBJ_GET) -> EPERM -----------------------------------
class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


_LD_W_ABS, _JEQ_K, _RET_K = 0x20, 0x15, 0x06
_RET_ALLOW, _RET_EPERM = 0x7FFF0000, 0x00050000 | 1
# (audit arch, bpf syscall numbers) per machine; x86_64 also covers x32 and i386 entry.
_ARCHES = {
    "x86_64": [(0xC000003E, (321, 321 | 0x40000000)), (0x40000003, (357,))],
    "aarch64": [(0xC00000B7, (280,))],
}


def seccomp_filter(machine: str) -> list[tuple[int, int, int, int]]:
    """A classic-BPF seccomp program: bpf(2) with cmd BPF_OBJ_PIN or BPF_OBJ_GET fails with
    EPERM; every other call is allowed; a call from an unknown architecture fails."""
    arches = _ARCHES.get(machine)
    if arches is None:
        raise OSError(f"no seccomp filter for machine {machine!r}")
    prog: list[tuple[int, int, int, int]] = [(_LD_W_ABS, 0, 0, 4)]          # seccomp_data.arch
    blocks = []
    for arch, nrs in arches:
        block = [(_LD_W_ABS, 0, 0, 0)]                                     # seccomp_data.nr
        for i, nr in enumerate(nrs):                                       # -> the cmd check
            block.append((_JEQ_K, len(nrs) - i, 0, nr))
        block.append((_RET_K, 0, 0, _RET_ALLOW))
        block += [(_LD_W_ABS, 0, 0, 16),                                   # args[0] (low half)
                  (_JEQ_K, 2, 0, BPF_OBJ_PIN), (_JEQ_K, 1, 0, BPF_OBJ_GET),
                  (_RET_K, 0, 0, _RET_ALLOW), (_RET_K, 0, 0, _RET_EPERM)]
        blocks.append((arch, block))
    # arch dispatch: one jeq per arch, jumping over the blocks before its own
    dispatch_len = len(blocks) + 1
    offsets, at = [], 0
    for _, block in blocks:
        offsets.append(at)
        at += len(block)
    for i, (arch, _) in enumerate(blocks):
        prog.append((_JEQ_K, (dispatch_len - 1 - i - 1) + 1 + offsets[i], 0, arch))
    prog.append((_RET_K, 0, 0, _RET_EPERM))                                # unknown arch
    for _, block in blocks:
        prog += block
    return prog


def _install_seccomp() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    insns = seccomp_filter(platform.machine())
    array = (_SockFilter * len(insns))(*[_SockFilter(*i) for i in insns])
    fprog = _SockFprog(len(insns), array)
    if libc.prctl(38, 1, 0, 0, 0) != 0:                                    # PR_SET_NO_NEW_PRIVS
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    if libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) != 0:                   # PR_SET_SECCOMP, FILTER
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP) failed")


# --- the confined compile ---------------------------------------------------------------
def _compile_confined(request: dict) -> tuple[dict, list[int]]:
    """Compile + load in a confined child; returns (reply, fds) where fds are the loaded
    program's fd then its maps' fds, in the order of reply['maps']."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    workdir = tempfile.mkdtemp(prefix="kube-xdp-build-")
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:                                                           # the grandchild
        code = 0
        try:
            parent.close()
            ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)            # PR_SET_PDEATHSIG
            os.chdir(workdir)
            _install_seccomp()
            reply, fds = _compile_here(request)
            data = json.dumps(reply).encode()
            socket.send_fds(child, [data[:1]], fds)
            child.sendall(data[1:])
        except BaseException as e:  # noqa: BLE001  anything: report it, never run on
            code = 1
            try:
                child.sendall(json.dumps({"error": {"class": "KernelError", "reason": "CompileError",
                                                    "message": f"confined compile failed: {e}"}}).encode())
            except OSError:
                pass
        finally:
            child.close()
            os._exit(code)
    child.close()
    try:
        data, fds, _, _ = socket.recv_fds(parent, 65536, _MAX_FDS)
        while True:
            more = parent.recv(65536)
            if not more:
                break
            data += more
    finally:
        parent.close()
        os.waitpid(pid, 0)
        shutil.rmtree(workdir, ignore_errors=True)
    if not data:
        raise OSError("the confined compile exited without a result")
    return json.loads(data), list(fds)


def _compile_here(request: dict) -> tuple[dict, list[int]]:
    from .kernel.compile import CompileRequest, Compiler
    from .kernel.errors import KernelError

    try:
        req = CompileRequest(source=request["source"], entrypoint=request["entrypoint"],
                             defines=request.get("defines") or {}, device=request.get("device"))
        if req.device:
            # device-bound, for offload: rules checked, refusals classified (kernel/offload.py)
            from .kernel.netlink import Netlink
            from .kernel.offload import load_for_offload
            with Netlink(request.get("netns")) as netlink:
                loaded = load_for_offload(Compiler(), netlink, req.device, req)
        else:
            loaded = Compiler().load(req)
    except KernelError as e:
        return {"error": {"class": type(e).__name__, "reason": e.reason, "message": e.message,
                          "output": getattr(e, "output", None)}}, []
    names = list(loaded.maps)
    reply = {"key": loaded.key, "duration_ms": loaded.duration_ms, "warnings": loaded.warnings,
             "entrypoint": loaded.entrypoint, "maps": names}
    return reply, [loaded.prog_fd, *(loaded.maps[n].fd for n in names)]


def _pin(request: dict, reply: dict, fds: list[int]) -> None:
    from .kernel import bpfsys
    from .kernel.bpffs import PinStore
    from .kernel.compile import LoadedMap, LoadedProgram
    from .kernel.errors import KernelError

    if len(fds) != 1 + len(reply["maps"]):
        raise KernelError(f"the confined compile handed over {len(fds)} fds for {len(reply['maps'])} maps",
                          reason="CompileError")
    info = bpfsys.prog_info(fds[0])
    if info.type != BPF_PROG_TYPE_XDP:
        raise KernelError(f"the loaded program has type {info.type}, not XDP ({BPF_PROG_TYPE_XDP}): refused",
                          reason="EntrypointNotFound")
    maps = {name: LoadedMap(name=name, fd=fd, info=bpfsys.map_info(fd)) for name, fd in zip(reply["maps"], fds[1:])}
    loaded = LoadedProgram(key=reply["key"], entrypoint=reply["entrypoint"], prog_fd=fds[0], prog_id=info.id,
                           tag=info.tag, name=info.name, maps=maps, duration_ms=reply["duration_ms"], cache_hit=False,
                           warnings=reply.get("warnings", ""))
    PinStore(request["bpffs"]).pin_program(request["program"], loaded.key[:12], loaded)


def main() -> int:
    from .kernel.errors import KernelError

    request = json.loads(sys.stdin.read())
    fds: list[int] = []
    try:
        if request.get("netns"):
            _enter_netns(request["netns"])
        reply, fds = _compile_confined(request)
        if "error" not in reply:
            _pin(request, reply, fds)
            reply = {"key": reply["key"], "duration_ms": reply["duration_ms"], "warnings": reply.get("warnings", "")}
    except KernelError as e:
        reply = {"error": {"class": type(e).__name__, "reason": e.reason, "message": e.message,
                           "output": getattr(e, "output", None)}}
    except (OSError, ValueError, struct.error) as e:
        reply = {"error": {"class": "KernelError", "reason": "CompileError", "message": str(e)}}
    finally:
        for fd in fds:
            os.close(fd)
    print(json.dumps(reply), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
