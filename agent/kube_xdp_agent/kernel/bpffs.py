"""kube-xdp's pins in a bpffs mount: programs and their maps survive the agent.

Layout (docs/api.md):

    <root>/kube-xdp/<program>/<digest12>/prog          the loaded program
    <root>/kube-xdp/<program>/<digest12>/maps/<map>    its maps
    <root>/kube-xdp/<program>/links/<interface>        its bpf_link on that interface (link.py)

Every component is validated BEFORE the filesystem is touched (`fullmatch`, so no
trailing newline slips through): `program` is a DNS label, `digest12` 12 lowercase hex
digits, a map name a C identifier of at most 64 characters, an interface name what the
API accepts (1-15 of `A-Za-z0-9_.-`, never `.` or `..`). bpffs refuses any name with a
dot, so a link's pin name writes an interface's dots as `+` (`eth0.100` -> `eth0+100`;
`+` is not allowed in interface names, so the mapping is one to one). The resolved path
must stay under the root (a symlink planted in the bpffs cannot redirect a pin).

A link pin sits beside the program's digests, not under one: BPF_LINK_UPDATE swaps the
program a link holds (a new digest) while the link, and its pin, stay. One link per
(program, interface): the program's attachment on that interface. Unpinning the whole
program (`unpin(program)`) unpins its links too, which detaches them (asynchronously: see
link.py; attach.remove detaches first).

No half-pinned state is visible: `pin_program` pins the program and its maps inside a
staging directory `<program>/staging-<digest12>-<random>` and renames it to
`<digest12>` (bpffs supports rename; rename onto a non-empty directory fails with
ENOTEMPTY, so an existing pin is never overwritten). Staging names are never valid
digests, so readers ignore them; leftovers of a crash are swept on the next pin of the
same program. Traps: bpffs refuses any name containing a dot (EPERM, "reserved for
future extensions"), hence no `.tmp` names; each `mount -t bpf` is a separate instance.

One agent process per bpffs is assumed (the sweep would remove another writer's staging).
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import secrets
import shutil
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

from kube_xdp_api.names import PIN_SUBDIR

from . import bpfsys
from .errors import BpfSyscallError, PinError

if TYPE_CHECKING:
    from .compile import LoadedProgram

BPF_FS_MAGIC = 0xCAFE4A11

PROGRAM_RE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
DIGEST12_RE = re.compile(r"[0-9a-f]{12}")
MAP_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
INTERFACE_RE = re.compile(r"[A-Za-z0-9_.-]{1,15}")        # kube_xdp_api.spec.INTERFACE_NAME
LINK_PIN_RE = re.compile(r"[A-Za-z0-9_+-]{1,15}")         # the same, dots written as '+'
STAGING_PREFIX = "staging-"
LINKS_DIR = "links"


def validate_program(program: str) -> str:
    if not isinstance(program, str) or not PROGRAM_RE.fullmatch(program):
        raise PinError(f"program name {program!r} is not a DNS label", program=str(program))
    return program


def validate_digest12(digest12: str) -> str:
    if not isinstance(digest12, str) or not DIGEST12_RE.fullmatch(digest12):
        raise PinError(f"digest {digest12!r} is not 12 lowercase hex digits")
    return digest12


def validate_map_name(name: str) -> str:
    if not isinstance(name, str) or not MAP_NAME_RE.fullmatch(name):
        raise PinError(f"map name {name!r} is not a C identifier of at most 64 characters")
    return name


def validate_interface(name: str) -> str:
    if not isinstance(name, str) or not INTERFACE_RE.fullmatch(name) or name in (".", ".."):
        raise PinError(f"interface name {name!r} is not 1-15 of A-Za-z0-9_.- (and not '.' or '..')",
                       interface=str(name))
    return name


def link_pin_name(interface: str) -> str:
    """The pin name of an interface's link: its name with '.' written as '+' (bpffs
    refuses dots)."""
    return validate_interface(interface).replace(".", "+")


def interface_of_pin(pin_name: str) -> str | None:
    """The interface a link pin is named after, or None for a name no link pin has."""
    if not LINK_PIN_RE.fullmatch(pin_name):
        return None
    name = pin_name.replace("+", ".")
    return name if name not in (".", "..") else None


class _Statfs(ctypes.Structure):  # struct statfs (x86_64): f_type first, the rest unused here
    _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 112)]


def fs_magic(path: str) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    buf = _Statfs()
    if libc.statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return buf.f_type & 0xFFFFFFFF


@dataclass(frozen=True)
class _Walked:
    path: str         # as built under the root (what is opened and reported)
    real: str         # its realpath, checked to be under the root


@dataclass(frozen=True)
class PinnedMap:
    name: str
    path: str
    info: bpfsys.MapInfo

    @property
    def id(self) -> int:
        return self.info.id


@dataclass(frozen=True)
class PinnedLink:
    """A link pinned for (program, interface), as the kernel reports it (BPF_OBJ_GET_INFO_BY_FD).

    `ifindex` is the link's device in that device's own namespace, 0 when the device is
    gone or the link was detached: the link is `defunct`, holding its program while
    nothing runs it. A live link may still sit on another device than the interface it is
    named after (renamed, moved to another namespace): attach.link_record checks it
    against the namespace's interfaces.
    """

    program: str
    interface: str
    path: str
    link_id: int
    prog_id: int
    ifindex: int

    @property
    def defunct(self) -> bool:
        return self.ifindex == 0


@dataclass(frozen=True)
class PinnedProgram:
    program: str
    digest12: str
    path: str  # the <digest12> directory
    prog_path: str
    prog_id: int
    tag: str
    name: str
    maps: Mapping[str, PinnedMap]


class PinStore:
    """kube-xdp's pins under one bpffs mount (`root`, the agent's --bpffs)."""

    def __init__(self, root: str) -> None:
        real = os.path.realpath(root)
        try:
            magic = fs_magic(real)
        except OSError as exc:
            raise PinError(f"cannot stat bpffs root {root!r}: {exc.strerror}", pin_path=root, errno=exc.errno) from exc
        if magic != BPF_FS_MAGIC:
            raise PinError(
                f"{root!r} is not a bpffs mount (filesystem magic {magic:#x}, bpffs is {BPF_FS_MAGIC:#x}): "
                f"mount it with `mount -t bpf bpf {root}`",
                pin_path=root,
            )
        self.root = real
        self.base = os.path.join(real, PIN_SUBDIR)
        self._lock = threading.Lock()

    # --- paths (validated, nothing touched) -------------------------------------------

    def _inside(self, path: str) -> str:
        resolved = os.path.realpath(path)
        if resolved != self.root and not resolved.startswith(self.root + os.sep):
            raise PinError(f"pin path {path!r} resolves outside the bpffs root to {resolved!r}", pin_path=path)
        return path

    def program_dir(self, program: str) -> str:
        return self._inside(os.path.join(self.base, validate_program(program)))

    # The readers (every resync) walk the layout level by level instead: `_Walked` is a
    # path and its realpath; a child's realpath is its parent's joined with the name, unless
    # the child is a symlink (then resolved in full, as realpath does), so each level costs
    # one lstat instead of a realpath of the whole path; each is checked as _inside() checks
    # it (names are validated or constants: no '/', '.' or '..').
    def _walk_base(self) -> _Walked:
        return _Walked(self.base, os.path.realpath(self.base))

    def _walk(self, parent: _Walked, name: str, *, check: bool = True) -> _Walked:
        path, real = os.path.join(parent.path, name), os.path.join(parent.real, name)
        if os.path.islink(real):
            real = os.path.realpath(real)
        if check and real != self.root and not real.startswith(self.root + os.sep):
            raise PinError(f"pin path {path!r} resolves outside the bpffs root to {real!r}", pin_path=path)
        return _Walked(path, real)

    def digest_dir(self, program: str, digest12: str) -> str:
        return self._inside(os.path.join(self.program_dir(program), validate_digest12(digest12)))

    def prog_path(self, program: str, digest12: str) -> str:
        return self._inside(os.path.join(self.digest_dir(program, digest12), "prog"))

    def map_path(self, program: str, digest12: str, map_name: str) -> str:
        return self._inside(os.path.join(self.digest_dir(program, digest12), "maps", validate_map_name(map_name)))

    def links_dir(self, program: str) -> str:
        return self._inside(os.path.join(self.program_dir(program), LINKS_DIR))

    def link_path(self, program: str, interface: str) -> str:
        return self._inside(os.path.join(self.links_dir(program), link_pin_name(interface)))

    # --- writing ------------------------------------------------------------------------

    def pin_program(self, program: str, digest12: str, loaded: LoadedProgram) -> PinnedProgram:
        """Pin `loaded` and all its maps under <program>/<digest12>, all or nothing.

        Idempotent for the same program: when <digest12> already holds a pin of the
        same prog id it is returned as is; a pin of another program raises PinError.
        """
        final = self.digest_dir(program, digest12)
        names = [validate_map_name(name) for name in loaded.maps]
        with self._lock:
            if os.path.exists(final):
                existing = self._read(program, digest12)
                if existing.prog_id == loaded.prog_id:
                    return existing
                raise PinError(
                    f"{final} already pins program {existing.prog_id}, not {loaded.prog_id}: unpin it first",
                    program=program, pin_path=final,
                )
            program_dir = self.program_dir(program)
            try:
                os.makedirs(program_dir, mode=0o700, exist_ok=True)
            except OSError as exc:
                raise PinError(f"cannot create {program_dir}: {exc.strerror}", program=program,
                               pin_path=program_dir, errno=exc.errno) from exc
            self._sweep_staging(program_dir)
            staging = self._inside(os.path.join(program_dir, f"{STAGING_PREFIX}{digest12}-{secrets.token_hex(4)}"))
            path = staging
            try:
                os.mkdir(staging, 0o700)
                os.mkdir(os.path.join(staging, "maps"), 0o700)
                path = os.path.join(staging, "prog")
                bpfsys.obj_pin(loaded.prog_fd, path)
                for name in names:
                    path = os.path.join(staging, "maps", name)
                    bpfsys.obj_pin(loaded.maps[name].fd, path)
                path = final
                os.rename(staging, final)
            except (OSError, BpfSyscallError) as exc:
                shutil.rmtree(staging, ignore_errors=True)
                code = exc.errno
                text = exc.strerror if isinstance(exc, OSError) else str(exc)
                raise PinError(f"pinning {program}/{digest12} failed at {path}: {text}", program=program,
                               pin_path=path, errno=code) from exc
        return self._read(program, digest12)

    def repin(self, program: str, digest12: str, prog_id: int) -> PinnedProgram:
        """Pin a program that is running (attached) but lost its pin, with its maps, from
        the kernel's own objects (by id): map contents survive, unlike a rebuild. Maps are
        pinned under the kernel's names (at most 15 characters)."""
        from .compile import LoadedMap, LoadedProgram
        try:
            with bpfsys.prog_fd_by_id(prog_id) as fd:
                info = bpfsys.prog_info(fd.fd)
                map_fds = [bpfsys.map_fd_by_id(m) for m in info.map_ids]
                try:
                    maps = {}
                    for mfd in map_fds:
                        minfo = bpfsys.map_info(mfd.fd)
                        if MAP_NAME_RE.fullmatch(minfo.name or "") and minfo.name not in maps:
                            maps[minfo.name] = LoadedMap(minfo.name, mfd.fd, minfo)
                    loaded = LoadedProgram(key=digest12, entrypoint=info.name, prog_fd=fd.fd, prog_id=info.id,
                                           tag=info.tag, name=info.name, maps=maps, duration_ms=0.0, cache_hit=True)
                    return self.pin_program(program, digest12, loaded)
                finally:
                    for mfd in map_fds:
                        mfd.close()
        except BpfSyscallError as exc:
            raise PinError(f"cannot re-pin program {prog_id} of {program}: {exc}", program=program,
                           errno=exc.errno) from exc

    def unpin(self, program: str, digest12: str | None = None) -> bool:
        """Remove the pins of one digest, or of the whole program; False when none existed."""
        path = self.program_dir(program) if digest12 is None else self.digest_dir(program, digest12)
        with self._lock:
            if not os.path.lexists(path):
                return False
            try:
                shutil.rmtree(path)
                if digest12 is not None:
                    program_dir = self.program_dir(program)
                    if not os.listdir(program_dir):
                        os.rmdir(program_dir)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise PinError(f"unpinning {path} failed: {exc.strerror}", program=program, pin_path=path,
                               errno=exc.errno) from exc
        return True

    @staticmethod
    def _sweep_staging(program_dir: str) -> None:
        for entry in os.listdir(program_dir):
            if entry.startswith(STAGING_PREFIX):
                shutil.rmtree(os.path.join(program_dir, entry), ignore_errors=True)

    # --- reading ------------------------------------------------------------------------

    def list_programs(self) -> dict[str, list[str]]:
        """program -> sorted digests with a pinned `prog` (invalid or staging names ignored)."""
        result: dict[str, list[str]] = {}
        try:
            programs = sorted(os.listdir(self.base))
        except FileNotFoundError:
            return result
        base = self._walk_base()
        for program in programs:
            if not PROGRAM_RE.fullmatch(program):
                continue
            digests = self._digests(self._walk(base, program))
            if digests:
                result[program] = digests
        return result

    def _digests(self, program_dir: _Walked) -> list[str]:
        try:
            entries = os.listdir(program_dir.path)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(
            d for d in entries if DIGEST12_RE.fullmatch(d)
            and os.path.exists(self._walk(self._walk(program_dir, d), "prog").path)
        )

    def open_pinned(self, program: str) -> list[PinnedProgram]:
        """Every pinned digest of `program`, with the kernel's prog id, tag and maps."""
        program_dir = self._walk(self._walk_base(), validate_program(program))
        return [self._read_in(program_dir, program, digest) for digest in self._digests(program_dir)]

    def _read(self, program: str, digest12: str) -> PinnedProgram:
        return self._read_in(self._walk(self._walk_base(), validate_program(program)), program, digest12)

    def _read_in(self, program_dir: _Walked, program: str, digest12: str) -> PinnedProgram:
        digest = self._walk(program_dir, validate_digest12(digest12))
        digest_dir, prog_path = digest.path, self._walk(digest, "prog").path
        try:
            with bpfsys.obj_get(prog_path) as fd:
                info = bpfsys.prog_info(fd.fd)
        except BpfSyscallError as exc:
            raise PinError(f"cannot open pinned program {prog_path}: {exc}", program=program,
                           pin_path=prog_path, errno=exc.errno) from exc
        maps: dict[str, PinnedMap] = {}
        maps_dir = self._walk(digest, "maps", check=False)    # (checked with each map, as map_path() does)
        for name in sorted(os.listdir(maps_dir.path)) if os.path.isdir(maps_dir.path) else []:
            if not MAP_NAME_RE.fullmatch(name):
                continue
            path = self._walk(maps_dir, name).path
            try:
                with bpfsys.obj_get(path) as fd:
                    maps[name] = PinnedMap(name=name, path=path, info=bpfsys.map_info(fd.fd))
            except BpfSyscallError as exc:
                raise PinError(f"cannot open pinned map {path}: {exc}", program=program, pin_path=path,
                               errno=exc.errno) from exc
        return PinnedProgram(
            program=program,
            digest12=digest12,
            path=digest_dir,
            prog_path=prog_path,
            prog_id=info.id,
            tag=info.tag,
            name=info.name,
            maps=MappingProxyType(maps),
        )

    def open_prog_fd(self, program: str, digest12: str) -> bpfsys.Fd:
        """A new fd of the pinned program (to attach it, or as the expected fd of a replace)."""
        path = self.prog_path(program, digest12)
        try:
            return bpfsys.obj_get(path)
        except BpfSyscallError as exc:
            raise PinError(f"cannot open pinned program {path}: {exc}", program=program, pin_path=path,
                           errno=exc.errno) from exc

    def open_prog_id(self, prog_id: int) -> bpfsys.Fd:
        """A new fd of a live program by id (the expected program of a takeover, which is
        not ours and has no pin of ours)."""
        try:
            return bpfsys.prog_fd_by_id(int(prog_id))
        except BpfSyscallError as exc:
            raise PinError(f"cannot open program {prog_id}: {exc}", errno=exc.errno) from exc

    def open_map(self, program: str, digest12: str, map_name: str) -> bpfsys.BpfMap:
        """The pinned map, opened for element access (close it)."""
        path = self.map_path(program, digest12, map_name)
        try:
            return bpfsys.BpfMap.open_pinned(path)
        except BpfSyscallError as exc:
            raise PinError(f"cannot open pinned map {path}: {exc}", program=program, pin_path=path,
                           errno=exc.errno) from exc

    # --- links ------------------------------------------------------------------------

    def pin_link(self, program: str, interface: str, link_fd: int) -> PinnedLink:
        """Pin the link behind `link_fd` as (program, interface). A pin already there is
        never replaced: PinError (errno EEXIST); the caller drops a defunct one first."""
        path = self.link_path(program, interface)
        with self._lock:
            try:
                os.makedirs(self.links_dir(program), mode=0o700, exist_ok=True)
                bpfsys.obj_pin(link_fd, path)
            except (OSError, BpfSyscallError) as exc:
                text = exc.strerror if isinstance(exc, OSError) else exc.message
                raise PinError(f"pinning the link of {program} on {interface} failed: {text}", program=program,
                               interface=interface, pin_path=path, errno=exc.errno) from exc
        found = self.read_link(program, interface)
        if found is None:
            raise PinError(f"the link pinned at {path} vanished", program=program, interface=interface, pin_path=path)
        return found

    def read_link(self, program: str, interface: str) -> PinnedLink | None:
        """The link pinned for (program, interface), None when there is no pin."""
        path = self.link_path(program, interface)
        return self._read_link(program, interface, path)

    def _read_link(self, program: str, interface: str, path: str) -> PinnedLink | None:
        try:
            with bpfsys.obj_get(path) as fd:
                info = bpfsys.link_info(fd.fd)
        except BpfSyscallError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise PinError(f"cannot open pinned link {path}: {exc.message}", program=program, interface=interface,
                           pin_path=path, errno=exc.errno) from exc
        if info.type != bpfsys.BPF_LINK_TYPE_XDP:
            raise PinError(f"{path} pins a link of type {info.type}, not an XDP link", program=program,
                           interface=interface, pin_path=path)
        return PinnedLink(program=program, interface=interface, path=path, link_id=info.id, prog_id=info.prog_id,
                          ifindex=info.ifindex)

    def list_links(self, program: str | None = None) -> list[PinnedLink]:
        """Every pinned link (of `program`, or of every program), by program then interface;
        names that no link pin has are ignored, as the program readers ignore them."""
        programs = [validate_program(program)] if program is not None else sorted(self.list_program_dirs())
        found: list[PinnedLink] = []
        base = self._walk_base()
        for name in programs:
            links = self._walk(self._walk(base, name), LINKS_DIR)
            try:
                entries = sorted(os.listdir(links.path))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                interface = interface_of_pin(entry)
                if interface is None:
                    continue
                link = self._read_link(name, interface, self._walk(links, entry).path)
                if link is not None:
                    found.append(link)
        return found

    def list_program_dirs(self) -> list[str]:
        """Every program directory (a valid name), with or without a pinned digest."""
        try:
            return sorted(p for p in os.listdir(self.base) if PROGRAM_RE.fullmatch(p))
        except FileNotFoundError:
            return []

    def open_link(self, program: str, interface: str) -> bpfsys.Fd:
        """A new fd of the link pinned for (program, interface) (PinError ENOENT: none)."""
        path = self.link_path(program, interface)
        try:
            return bpfsys.obj_get(path)
        except BpfSyscallError as exc:
            raise PinError(f"cannot open pinned link {path}: {exc.message}", program=program, interface=interface,
                           pin_path=path, errno=exc.errno) from exc

    def unpin_link(self, program: str, interface: str) -> bool:
        """Remove the pin of (program, interface); False when there was none. The link is
        released when nothing else holds it (which detaches it, asynchronously)."""
        path = self.link_path(program, interface)
        with self._lock:
            try:
                os.unlink(path)
            except FileNotFoundError:
                return False
            except OSError as exc:
                raise PinError(f"unpinning {path} failed: {exc.strerror}", program=program, interface=interface,
                               pin_path=path, errno=exc.errno) from exc
            try:
                os.rmdir(self.links_dir(program))
                os.rmdir(self.program_dir(program))
            except OSError:
                pass            # not empty: other links, or the program's digests
        return True

    def move_link(self, program: str, interface: str, to_program: str) -> PinnedLink:
        """Rename the pin of `program`'s link on `interface` to `to_program`'s (atomic, the
        link untouched): how a program takes over another kube-xdp program's link after
        BPF_LINK_UPDATE put its own program in it. PinError when `to_program` already has
        a link pinned there, or `program` has none."""
        src, dst = self.link_path(program, interface), self.link_path(to_program, interface)
        with self._lock:
            try:
                os.makedirs(self.links_dir(to_program), mode=0o700, exist_ok=True)
                if os.path.lexists(dst):
                    raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst)
                os.rename(src, dst)
            except OSError as exc:
                raise PinError(f"moving the link pin {src} to {dst} failed: {exc.strerror}", program=program,
                               interface=interface, pin_path=src, errno=exc.errno) from exc
        moved = self.read_link(to_program, interface)
        if moved is None:
            raise PinError(f"the link pin moved to {dst} vanished", program=to_program, interface=interface,
                           pin_path=dst)
        return moved
