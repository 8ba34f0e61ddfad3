"""A thin ctypes wrapper over the bpf(2) syscall, for what bcc and pyroute2 do not give.

Commands: BPF_PROG_LOAD (raw instructions: the probe programs), BPF_OBJ_PIN, BPF_OBJ_GET,
BPF_PROG_GET_FD_BY_ID, BPF_MAP_GET_FD_BY_ID, BPF_BTF_GET_FD_BY_ID, BPF_OBJ_GET_INFO_BY_FD
(program, map, BTF, link), the map element commands (LOOKUP, UPDATE, DELETE,
GET_NEXT_KEY), BPF_PROG_TEST_RUN, and the bpf_link commands (BPF_LINK_CREATE,
BPF_LINK_UPDATE, BPF_LINK_DETACH, BPF_LINK_GET_FD_BY_ID, BPF_LINK_GET_NEXT_ID) that
link.py builds XDP links on.

Layouts follow `union bpf_attr` and the `bpf_*_info` structs of the kernel UAPI
(include/uapi/linux/bpf.h). Each command passes only its own member of the union, with
that member's size: the kernel zero-extends a shorter attr and refuses non-zero bytes it
does not know, so a smaller struct is always valid.

Every fd this module opens is returned inside an `Fd`, which closes it (context manager,
`close()`, or garbage collection as a last resort). Failures raise `BpfSyscallError`
with the command name and errno.

Per-CPU maps: the kernel copies one value per *possible* CPU, each rounded up to 8
bytes (`/sys/devices/system/cpu/possible`). `BpfMap.lookup` returns a list with one
value per possible CPU for those maps, a single `bytes` value otherwise.

x86_64 only (syscall number 321), like the rest of the project.
"""

from __future__ import annotations

import ctypes
import errno as errno_mod
import functools
import os
import platform
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import BpfSyscallError

_NR_BPF = {"x86_64": 321}

# enum bpf_cmd
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_PROG_LOAD = 5
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_PROG_TEST_RUN = 10
BPF_PROG_GET_FD_BY_ID = 13
BPF_MAP_GET_FD_BY_ID = 14
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_BTF_GET_FD_BY_ID = 19
BPF_LINK_CREATE = 28
BPF_LINK_UPDATE = 29
BPF_LINK_GET_FD_BY_ID = 30
BPF_LINK_GET_NEXT_ID = 31
BPF_LINK_DETACH = 34

_CMD_NAMES = {
    BPF_MAP_LOOKUP_ELEM: "BPF_MAP_LOOKUP_ELEM",
    BPF_MAP_UPDATE_ELEM: "BPF_MAP_UPDATE_ELEM",
    BPF_MAP_DELETE_ELEM: "BPF_MAP_DELETE_ELEM",
    BPF_MAP_GET_NEXT_KEY: "BPF_MAP_GET_NEXT_KEY",
    BPF_PROG_LOAD: "BPF_PROG_LOAD",
    BPF_OBJ_PIN: "BPF_OBJ_PIN",
    BPF_OBJ_GET: "BPF_OBJ_GET",
    BPF_PROG_TEST_RUN: "BPF_PROG_TEST_RUN",
    BPF_PROG_GET_FD_BY_ID: "BPF_PROG_GET_FD_BY_ID",
    BPF_MAP_GET_FD_BY_ID: "BPF_MAP_GET_FD_BY_ID",
    BPF_OBJ_GET_INFO_BY_FD: "BPF_OBJ_GET_INFO_BY_FD",
    BPF_BTF_GET_FD_BY_ID: "BPF_BTF_GET_FD_BY_ID",
    BPF_LINK_CREATE: "BPF_LINK_CREATE",
    BPF_LINK_UPDATE: "BPF_LINK_UPDATE",
    BPF_LINK_GET_FD_BY_ID: "BPF_LINK_GET_FD_BY_ID",
    BPF_LINK_GET_NEXT_ID: "BPF_LINK_GET_NEXT_ID",
    BPF_LINK_DETACH: "BPF_LINK_DETACH",
}

# map update flags
BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2

# enum bpf_prog_type / bpf_map_type (the ones this project names)
BPF_PROG_TYPE_XDP = 6
BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_LRU_HASH = 9
BPF_MAP_TYPE_LRU_PERCPU_HASH = 10
BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE = 21
PERCPU_MAP_TYPES = frozenset(
    {
        BPF_MAP_TYPE_PERCPU_HASH,
        BPF_MAP_TYPE_PERCPU_ARRAY,
        BPF_MAP_TYPE_LRU_PERCPU_HASH,
        BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE,
    }
)

# enum bpf_attach_type / bpf_link_type (the XDP ones), and BPF_LINK_UPDATE's flag
BPF_XDP = 37
BPF_LINK_TYPE_XDP = 6
BPF_F_REPLACE = 1 << 2

# XDP verdicts (enum xdp_action)
XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT = range(5)

BPF_OBJ_NAME_LEN = 16
BPF_TAG_SIZE = 8

_u32 = ctypes.c_uint32
_u64 = ctypes.c_uint64


# --- union bpf_attr members -------------------------------------------------------------


class _MapElemAttr(ctypes.Structure):  # BPF_MAP_*_ELEM, BPF_MAP_GET_NEXT_KEY
    _fields_ = [
        ("map_fd", _u32),
        ("key", _u64),  # __aligned_u64: ctypes aligns it at offset 8
        ("value", _u64),  # union { value; next_key; }
        ("flags", _u64),
    ]


class _ObjAttr(ctypes.Structure):  # BPF_OBJ_PIN, BPF_OBJ_GET
    _fields_ = [("pathname", _u64), ("bpf_fd", _u32), ("file_flags", _u32)]


class _GetIdAttr(ctypes.Structure):  # BPF_*_GET_FD_BY_ID
    _fields_ = [("id", _u32), ("next_id", _u32), ("open_flags", _u32)]


class _InfoAttr(ctypes.Structure):  # BPF_OBJ_GET_INFO_BY_FD
    _fields_ = [("bpf_fd", _u32), ("info_len", _u32), ("info", _u64)]


class _ProgLoadAttr(ctypes.Structure):  # BPF_PROG_LOAD (up to expected_attach_type)
    _fields_ = [
        ("prog_type", _u32),
        ("insn_cnt", _u32),
        ("insns", _u64),
        ("license", _u64),
        ("log_level", _u32),
        ("log_size", _u32),
        ("log_buf", _u64),
        ("kern_version", _u32),
        ("prog_flags", _u32),
        ("prog_name", ctypes.c_char * BPF_OBJ_NAME_LEN),
        ("prog_ifindex", _u32),
        ("expected_attach_type", _u32),
    ]


class _LinkCreateAttr(ctypes.Structure):  # BPF_LINK_CREATE (the fields before the per-type union)
    _fields_ = [
        ("prog_fd", _u32),
        ("target_ifindex", _u32),  # union with target_fd
        ("attach_type", _u32),
        ("flags", _u32),  # for XDP: the XDP_FLAGS_*_MODE bit, nothing else
    ]


class _LinkUpdateAttr(ctypes.Structure):  # BPF_LINK_UPDATE
    _fields_ = [("link_fd", _u32), ("new_prog_fd", _u32), ("flags", _u32), ("old_prog_fd", _u32)]


class _LinkDetachAttr(ctypes.Structure):  # BPF_LINK_DETACH
    _fields_ = [("link_fd", _u32)]


class _TestRunAttr(ctypes.Structure):  # BPF_PROG_TEST_RUN
    _fields_ = [
        ("prog_fd", _u32),
        ("retval", _u32),
        ("data_size_in", _u32),
        ("data_size_out", _u32),
        ("data_in", _u64),
        ("data_out", _u64),
        ("repeat", _u32),
        ("duration", _u32),
        ("ctx_size_in", _u32),
        ("ctx_size_out", _u32),
        ("ctx_in", _u64),
        ("ctx_out", _u64),
        ("flags", _u32),
        ("cpu", _u32),
        ("batch_size", _u32),
    ]


# --- info structs ---------------------------------------------------------------------


class _ProgInfo(ctypes.Structure):  # struct bpf_prog_info (232 bytes)
    _fields_ = [
        ("type", _u32),
        ("id", _u32),
        ("tag", ctypes.c_uint8 * BPF_TAG_SIZE),
        ("jited_prog_len", _u32),
        ("xlated_prog_len", _u32),
        ("jited_prog_insns", _u64),
        ("xlated_prog_insns", _u64),
        ("load_time", _u64),
        ("created_by_uid", _u32),
        ("nr_map_ids", _u32),
        ("map_ids", _u64),
        ("name", ctypes.c_char * BPF_OBJ_NAME_LEN),
        ("ifindex", _u32),
        ("gpl_compatible", _u32),  # bitfield :1 + 31 bits of padding
        ("netns_dev", _u64),
        ("netns_ino", _u64),
        ("nr_jited_ksyms", _u32),
        ("nr_jited_func_lens", _u32),
        ("jited_ksyms", _u64),
        ("jited_func_lens", _u64),
        ("btf_id", _u32),
        ("func_info_rec_size", _u32),
        ("func_info", _u64),
        ("nr_func_info", _u32),
        ("nr_line_info", _u32),
        ("line_info", _u64),
        ("jited_line_info", _u64),
        ("nr_jited_line_info", _u32),
        ("line_info_rec_size", _u32),
        ("jited_line_info_rec_size", _u32),
        ("nr_prog_tags", _u32),
        ("prog_tags", _u64),
        ("run_time_ns", _u64),
        ("run_cnt", _u64),
        ("recursion_misses", _u64),
        ("verified_insns", _u32),
        ("attach_btf_obj_id", _u32),
        ("attach_btf_id", _u32),
        ("_pad", _u32),
    ]


class _MapInfo(ctypes.Structure):  # struct bpf_map_info (88 bytes)
    _fields_ = [
        ("type", _u32),
        ("id", _u32),
        ("key_size", _u32),
        ("value_size", _u32),
        ("max_entries", _u32),
        ("map_flags", _u32),
        ("name", ctypes.c_char * BPF_OBJ_NAME_LEN),
        ("ifindex", _u32),
        ("btf_vmlinux_value_type_id", _u32),
        ("netns_dev", _u64),
        ("netns_ino", _u64),
        ("btf_id", _u32),
        ("btf_key_type_id", _u32),
        ("btf_value_type_id", _u32),
        ("_pad", _u32),
        ("map_extra", _u64),
    ]


class _BtfInfo(ctypes.Structure):  # struct bpf_btf_info (32 bytes)
    _fields_ = [
        ("btf", _u64),
        ("btf_size", _u32),
        ("id", _u32),
        ("name", _u64),
        ("name_len", _u32),
        ("kernel_btf", _u32),
    ]


class _LinkInfo(ctypes.Structure):  # struct bpf_link_info (aligned(8)): type, id, prog_id, a per-type union
    # The union holds __aligned_u64 members (raw_tracepoint.tp_name, cgroup.cgroup_id), so
    # it starts at offset 16, not 12: for BPF_LINK_TYPE_XDP it is `struct { __u32 ifindex; }
    # xdp`, the u32 at offset 16 (checked on the real kernel: tests/kernel/test_link.py).
    # The union's other members are larger (pointers and lengths the kernel fills only when
    # given a buffer); 64 zeroed bytes cover them, and the kernel accepts a struct longer
    # than its own when the tail is zero (bpf_check_uarg_tail_zero).
    _fields_ = [
        ("type", _u32),
        ("id", _u32),
        ("prog_id", _u32),
        ("_hole", _u32),
        ("ifindex", _u32),  # union: xdp.ifindex
        ("_union_rest", ctypes.c_uint8 * 60),
    ]


class _FuncInfo(ctypes.Structure):  # struct bpf_func_info
    _fields_ = [("insn_off", _u32), ("type_id", _u32)]


# --- the syscall ----------------------------------------------------------------------


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def _sys_bpf(cmd: int, attr: ctypes.Structure, **context: Any) -> int:
    """Call bpf(cmd, &attr, sizeof(attr)); return the result or raise BpfSyscallError."""
    nr = _NR_BPF.get(platform.machine())
    if nr is None:
        raise BpfSyscallError(
            f"bpf(2) is wired for x86_64 only, not {platform.machine()}", cmd=_CMD_NAMES[cmd]
        )
    ret = _libc().syscall(
        ctypes.c_long(nr), ctypes.c_int(cmd), ctypes.byref(attr), ctypes.c_uint(ctypes.sizeof(attr))
    )
    if ret < 0:
        err = ctypes.get_errno()
        name = _CMD_NAMES[cmd]
        raise BpfSyscallError(
            f"{name} failed: {os.strerror(err)}", cmd=name, errno=err, **context
        )
    return int(ret)


def _addr(buf: ctypes.Array | ctypes.Structure | None) -> int:
    return 0 if buf is None else ctypes.addressof(buf)


class Fd:
    """An owned file descriptor: closed by `close()`, by `with`, or (last resort) on GC."""

    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    @property
    def fd(self) -> int:
        if self._fd is None:
            raise ValueError("fd is closed")
        return self._fd

    def fileno(self) -> int:
        return self.fd

    @property
    def closed(self) -> bool:
        return self._fd is None

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> Fd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except OSError:
            pass

    def __repr__(self) -> str:
        return f"Fd({self._fd if self._fd is not None else 'closed'})"


# --- objects: pin, get, by id --------------------------------------------------------


def obj_pin(fd: int, path: str) -> None:
    """BPF_OBJ_PIN: pin the program/map behind `fd` at `path` (inside a bpffs)."""
    cpath = ctypes.create_string_buffer(os.fsencode(path))
    attr = _ObjAttr(pathname=_addr(cpath), bpf_fd=fd)
    _sys_bpf(BPF_OBJ_PIN, attr, pin_path=path)


def obj_get(path: str, *, flags: int = 0) -> Fd:
    """BPF_OBJ_GET: open the object pinned at `path` (flags: BPF_F_RDONLY/BPF_F_WRONLY)."""
    cpath = ctypes.create_string_buffer(os.fsencode(path))
    attr = _ObjAttr(pathname=_addr(cpath), file_flags=flags)
    return Fd(_sys_bpf(BPF_OBJ_GET, attr, pin_path=path))


def prog_fd_by_id(prog_id: int) -> Fd:
    """BPF_PROG_GET_FD_BY_ID (ENOENT when no program has that id)."""
    return Fd(_sys_bpf(BPF_PROG_GET_FD_BY_ID, _GetIdAttr(id=prog_id)))


def map_fd_by_id(map_id: int) -> Fd:
    """BPF_MAP_GET_FD_BY_ID (ENOENT when no map has that id)."""
    return Fd(_sys_bpf(BPF_MAP_GET_FD_BY_ID, _GetIdAttr(id=map_id)))


def btf_fd_by_id(btf_id: int) -> Fd:
    """BPF_BTF_GET_FD_BY_ID."""
    return Fd(_sys_bpf(BPF_BTF_GET_FD_BY_ID, _GetIdAttr(id=btf_id)))


def link_fd_by_id(link_id: int) -> Fd:
    """BPF_LINK_GET_FD_BY_ID (ENOENT when no link has that id)."""
    return Fd(_sys_bpf(BPF_LINK_GET_FD_BY_ID, _GetIdAttr(id=link_id)))


def link_ids() -> Iterator[int]:
    """Every link id of the system, ascending (BPF_LINK_GET_NEXT_ID; links of every
    network namespace: ids are global)."""
    current = 0
    while True:
        attr = _GetIdAttr(id=current)
        try:
            _sys_bpf(BPF_LINK_GET_NEXT_ID, attr)
        except BpfSyscallError as exc:
            if exc.errno == errno_mod.ENOENT:
                return
            raise
        current = attr.next_id
        yield current


# --- programs and links ------------------------------------------------------------------


def prog_load(insns: bytes, *, prog_type: int = BPF_PROG_TYPE_XDP, license: str = "GPL", name: str = "",
              ifindex: int = 0, expected_attach_type: int = 0) -> Fd:
    """BPF_PROG_LOAD of raw instructions (8 bytes each), no BTF, no log. `ifindex` binds
    the program to that device for offload (an index in the calling thread's network
    namespace). bcc leaves `expected_attach_type` 0 for XDP programs; libbpf sets BPF_XDP."""
    code = ctypes.create_string_buffer(bytes(insns), len(insns))
    lic = ctypes.create_string_buffer(license.encode())
    attr = _ProgLoadAttr(prog_type=prog_type, insn_cnt=len(insns) // 8, insns=_addr(code), license=_addr(lic),
                         prog_name=name.encode()[: BPF_OBJ_NAME_LEN - 1], prog_ifindex=ifindex,
                         expected_attach_type=expected_attach_type)
    return Fd(_sys_bpf(BPF_PROG_LOAD, attr))


def link_create(prog_fd: int, target_ifindex: int, attach_type: int, flags: int = 0) -> Fd:
    """BPF_LINK_CREATE: a link of `prog_fd` to the target (for XDP: an ifindex of the calling
    thread's network namespace, `flags` one XDP_FLAGS_*_MODE bit). The link lives while an
    fd or a pin holds it; its last reference gone, the kernel detaches it."""
    attr = _LinkCreateAttr(prog_fd=prog_fd, target_ifindex=target_ifindex, attach_type=attach_type, flags=flags)
    return Fd(_sys_bpf(BPF_LINK_CREATE, attr))


def link_update(link_fd: int, new_prog_fd: int, *, old_prog_fd: int | None = None) -> None:
    """BPF_LINK_UPDATE: swap the link's program for `new_prog_fd`, atomically. With
    `old_prog_fd` (BPF_F_REPLACE) only if the link still holds that program."""
    attr = _LinkUpdateAttr(link_fd=link_fd, new_prog_fd=new_prog_fd,
                           flags=BPF_F_REPLACE if old_prog_fd is not None else 0,
                           old_prog_fd=old_prog_fd if old_prog_fd is not None else 0)
    _sys_bpf(BPF_LINK_UPDATE, attr)


def link_detach(link_fd: int) -> None:
    """BPF_LINK_DETACH: detach the link from its target now, whatever else holds it (other
    fds, pins); the link object stays, defunct, until its last reference goes."""
    _sys_bpf(BPF_LINK_DETACH, _LinkDetachAttr(link_fd=link_fd))


# --- info -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FuncInfo:
    insn_off: int
    type_id: int


@dataclass(frozen=True)
class ProgInfo:
    id: int
    tag: str  # 16 hex digits, as `bpftool prog` prints it
    name: str  # the kernel's copy, at most 15 characters
    type: int
    map_ids: tuple[int, ...]
    btf_id: int
    func_info: tuple[FuncInfo, ...]
    run_cnt: int
    run_time_ns: int


@dataclass(frozen=True)
class MapInfo:
    id: int
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    name: str  # the kernel's copy, at most 15 characters

    @property
    def percpu(self) -> bool:
        return self.type in PERCPU_MAP_TYPES


def _get_info(fd: int, info: ctypes.Structure) -> None:
    attr = _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=_addr(info))
    _sys_bpf(BPF_OBJ_GET_INFO_BY_FD, attr)


def prog_info(fd: int) -> ProgInfo:
    """BPF_OBJ_GET_INFO_BY_FD on a program: id, tag, name, type, map ids, BTF func info."""
    first = _ProgInfo()
    _get_info(fd, first)
    # Second pass for the arrays: a fresh struct with only the wanted arrays requested
    # (a non-zero count with a NULL pointer would make the kernel fault).
    n_maps, n_funcs = first.nr_map_ids, first.nr_func_info
    map_ids = (_u32 * max(n_maps, 1))()
    funcs = (_FuncInfo * max(n_funcs, 1))()
    second = _ProgInfo(
        nr_map_ids=n_maps,
        map_ids=_addr(map_ids) if n_maps else 0,
        nr_func_info=n_funcs,
        func_info_rec_size=ctypes.sizeof(_FuncInfo) if n_funcs else 0,
        func_info=_addr(funcs) if n_funcs else 0,
    )
    _get_info(fd, second)
    n_maps = min(n_maps, second.nr_map_ids)
    n_funcs = min(n_funcs, second.nr_func_info)
    return ProgInfo(
        id=second.id,
        tag=bytes(second.tag).hex(),
        name=second.name.decode("utf-8", "replace"),
        type=second.type,
        map_ids=tuple(map_ids[i] for i in range(n_maps)),
        btf_id=second.btf_id,
        func_info=tuple(FuncInfo(funcs[i].insn_off, funcs[i].type_id) for i in range(n_funcs)),
        run_cnt=second.run_cnt,
        run_time_ns=second.run_time_ns,
    )


def map_info(fd: int) -> MapInfo:
    """BPF_OBJ_GET_INFO_BY_FD on a map."""
    info = _MapInfo()
    _get_info(fd, info)
    return MapInfo(
        id=info.id,
        type=info.type,
        key_size=info.key_size,
        value_size=info.value_size,
        max_entries=info.max_entries,
        flags=info.map_flags,
        name=info.name.decode("utf-8", "replace"),
    )


def btf_data(btf_id: int) -> bytes:
    """The raw BTF blob (header, types, strings) of a loaded BTF object."""
    with btf_fd_by_id(btf_id) as fd:
        info = _BtfInfo()
        _get_info(fd.fd, info)
        size = info.btf_size
        buf = ctypes.create_string_buffer(size)
        info = _BtfInfo(btf=_addr(buf), btf_size=size)
        _get_info(fd.fd, info)
        return buf.raw[: info.btf_size]


@dataclass(frozen=True)
class LinkInfo:
    """BPF_OBJ_GET_INFO_BY_FD on a link. `ifindex` is meaningful for XDP links only: the
    device's index in its own network namespace, 0 once the device is gone (the link is
    then defunct: it holds the program but nothing runs it)."""

    id: int
    type: int
    prog_id: int
    ifindex: int


def link_info(fd: int) -> LinkInfo:
    """BPF_OBJ_GET_INFO_BY_FD on a link."""
    info = _LinkInfo()
    _get_info(fd, info)
    return LinkInfo(id=info.id, type=info.type, prog_id=info.prog_id,
                    ifindex=info.ifindex if info.type == BPF_LINK_TYPE_XDP else 0)


# --- maps -------------------------------------------------------------------------------


@functools.cache
def possible_cpus() -> int:
    """Number of possible CPUs (entries of /sys/devices/system/cpu/possible, e.g. "0-3")."""
    with open("/sys/devices/system/cpu/possible", encoding="ascii") as f:
        return parse_cpu_list(f.read())


def parse_cpu_list(text: str) -> int:
    """Count the CPUs in a kernel CPU list such as "0-3,8,10-11"."""
    count = 0
    for part in text.strip().split(","):
        if not part:
            continue
        low, _, high = part.partition("-")
        count += (int(high) - int(low) + 1) if high else 1
    return count


def _round8(n: int) -> int:
    return (n + 7) & ~7


class BpfMap:
    """A map opened by fd (owned): element access with the sizes the kernel reported.

    Keys and values are raw bytes of exactly key_size / value_size. For per-CPU maps
    `lookup` returns a list with one value per possible CPU, and `update` takes either
    such a list or one value that is written to every CPU.
    """

    def __init__(self, fd: Fd, info: MapInfo | None = None) -> None:
        self._fd = fd
        self.info = info if info is not None else map_info(fd.fd)

    @classmethod
    def open_pinned(cls, path: str) -> BpfMap:
        return cls(obj_get(path))

    @classmethod
    def open_id(cls, map_id: int) -> BpfMap:
        return cls(map_fd_by_id(map_id))

    @property
    def fd(self) -> int:
        return self._fd.fd

    def close(self) -> None:
        self._fd.close()

    def __enter__(self) -> BpfMap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _value_buffer(self) -> tuple[ctypes.Array, int]:
        if self.info.percpu:
            stride = _round8(self.info.value_size)
            return ctypes.create_string_buffer(stride * possible_cpus()), stride
        return ctypes.create_string_buffer(self.info.value_size), self.info.value_size

    def _key(self, key: bytes) -> ctypes.Array:
        if len(key) != self.info.key_size:
            raise ValueError(f"key is {len(key)} bytes, map {self.info.name!r} wants {self.info.key_size}")
        return ctypes.create_string_buffer(bytes(key), len(key))

    def lookup(self, key: bytes) -> bytes | list[bytes] | None:
        """The value for `key`, or None when absent (ENOENT)."""
        ckey = self._key(key)
        value, stride = self._value_buffer()
        attr = _MapElemAttr(map_fd=self.fd, key=_addr(ckey), value=_addr(value))
        try:
            _sys_bpf(BPF_MAP_LOOKUP_ELEM, attr)
        except BpfSyscallError as exc:
            if exc.errno == errno_mod.ENOENT:
                return None
            raise
        raw = value.raw
        if self.info.percpu:
            size = self.info.value_size
            return [raw[i * stride : i * stride + size] for i in range(possible_cpus())]
        return raw

    def update(self, key: bytes, value: bytes | Sequence[bytes], flags: int = BPF_ANY) -> None:
        """Set `key` to `value` (flags: BPF_ANY, BPF_NOEXIST, BPF_EXIST)."""
        ckey = self._key(key)
        size = self.info.value_size
        if self.info.percpu:
            ncpu = possible_cpus()
            values = [value] * ncpu if isinstance(value, (bytes, bytearray)) else list(value)
            if len(values) != ncpu:
                raise ValueError(f"per-CPU map {self.info.name!r} wants {ncpu} values, got {len(values)}")
            stride = _round8(size)
            data = b"".join(bytes(v).ljust(stride, b"\0") for v in values if len(v) == size)
            if len(data) != stride * ncpu:
                raise ValueError(f"every per-CPU value must be {size} bytes")
        else:
            if not isinstance(value, (bytes, bytearray)) or len(value) != size:
                raise ValueError(f"value must be {size} bytes for map {self.info.name!r}")
            data = bytes(value)
        cvalue = ctypes.create_string_buffer(data, len(data))
        attr = _MapElemAttr(map_fd=self.fd, key=_addr(ckey), value=_addr(cvalue), flags=flags)
        _sys_bpf(BPF_MAP_UPDATE_ELEM, attr)

    def delete(self, key: bytes) -> bool:
        """Delete `key`; False when it was absent. Arrays refuse deletes (EINVAL)."""
        ckey = self._key(key)
        attr = _MapElemAttr(map_fd=self.fd, key=_addr(ckey))
        try:
            _sys_bpf(BPF_MAP_DELETE_ELEM, attr)
        except BpfSyscallError as exc:
            if exc.errno == errno_mod.ENOENT:
                return False
            raise
        return True

    def keys(self) -> Iterator[bytes]:
        """Iterate the keys (BPF_MAP_GET_NEXT_KEY from a NULL key)."""
        size = self.info.key_size
        current: ctypes.Array | None = None
        while True:
            nxt = ctypes.create_string_buffer(size)
            attr = _MapElemAttr(map_fd=self.fd, key=_addr(current), value=_addr(nxt))
            try:
                _sys_bpf(BPF_MAP_GET_NEXT_KEY, attr)
            except BpfSyscallError as exc:
                if exc.errno == errno_mod.ENOENT:
                    return
                raise
            yield nxt.raw
            current = nxt


# --- test run ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TestRunResult:
    retval: int  # for XDP: the verdict (XDP_DROP=1, XDP_PASS=2, ...)
    duration_ns: int  # mean time per run, as the kernel measured it
    data_out: bytes  # the packet after the program (it may rewrite it)

    __test__ = False  # not a pytest test class


def prog_test_run(prog_fd: int, data: bytes, *, repeat: int = 1) -> TestRunResult:
    """BPF_PROG_TEST_RUN: run the program on `data` (a whole frame for XDP) `repeat` times."""
    data_in = ctypes.create_string_buffer(bytes(data), len(data))
    out_size = len(data) + 256  # room for an XDP program that grows the packet (adjust_head)
    data_out = ctypes.create_string_buffer(out_size)
    attr = _TestRunAttr(
        prog_fd=prog_fd,
        data_size_in=len(data),
        data_size_out=out_size,
        data_in=_addr(data_in),
        data_out=_addr(data_out),
        repeat=repeat,
    )
    _sys_bpf(BPF_PROG_TEST_RUN, attr)
    return TestRunResult(
        retval=attr.retval,
        duration_ns=attr.duration,
        data_out=data_out.raw[: min(attr.data_size_out, out_size)],
    )
