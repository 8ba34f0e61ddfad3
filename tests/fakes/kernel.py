"""An in-memory kernel with the same surface as the real layer, for the agent's unit tests.

A test double: it lives in tests/, never in the product package. (bench/hollow.py imports
it too, for the hollow agents of the scale benchmark: the real agent control code needs a
kernel that behaves, and a second copy of this model in bench/ would drift from it.)

`FakeKernel` hands out a compiler (`.compiler`, like `Compiler`), netlink handles
(`.netlink(netns)`, like `Netlink`), link handles (`.links(netns)`, like `XdpLinks`), pin
stores (`.pin_store(root)`, like `PinStore`) and `attach.Node`s (`.node(netns, root)`),
all backed by one model of kernel objects: programs with ids and reference counts (held
by fds, pins, XDP hooks and links, freed when none is left), maps, bpf_links (held by fds
and pins), namespaces with interfaces and their XDP hooks, and bpffs mounts. It returns
the real data classes (LoadedProgram, XdpState, Interface, PinnedProgram, PinnedLink,
LinkInfo) and raises the real errors; validation is the real code
(compile.validate_request, bpffs.validate_*), and so is attach.place, which runs over it.

Each faked behaviour, and the real-kernel test (tests/kernel/) that pins it down:

- load reads back prog id, tag, maps; a cache hit is the same program, a define
  change a miss: test_compile.py::test_load_counter_reads_back_id_and_tag,
  ::test_cache_hit_same_key_miss_on_define_change
- invalid defines refused before compiling: real code (compile.validate_request),
  tests/unit/test_kernel_compile.py::test_invalid_defines_rejected_before_bcc
- missing entrypoint -> EntrypointNotFound; a non-XDP function -> EntrypointNotXdp:
  test_compile.py::test_missing_entrypoint, ::test_non_xdp_function_refused
- injected failures (fail_load) stand for: test_compile.py::test_invalid_c_is_compile_error,
  ::test_verifier_rejection
- attach reads back the mode and prog id:
  test_netlink.py::test_attach_reads_back_mode_and_prog_id[native|generic]
- UPDATE_IF_NOEXIST on an occupied hook -> HookBusy(prog id), hook untouched:
  test_netlink.py::test_attach_on_occupied_hook_is_hook_busy
- the other of native/generic active -> HookBusy (EEXIST):
  test_netlink.py::test_other_mode_active_is_hook_busy
- REPLACE with the expected fd swaps: test_netlink.py::test_atomic_replace
- REPLACE with a wrong expected fd -> HookBusy; on an empty hook -> AttachFailed:
  test_netlink.py::test_replace_with_wrong_expected_fd, ::test_replace_on_empty_hook
- detach with a wrong expected fd -> HookBusy, program left; detach of nothing is
  idempotent: test_netlink.py::test_detach_wrong_expected_leaves_foreign,
  ::test_detach_is_idempotent
- a mode the device lacks -> DriverModeUnsupported (EOPNOTSUPP native, EINVAL
  offload): test_netlink.py::test_unsupported_modes
- unknown interface / namespace: test_netlink.py::test_unknown_interface_and_netns
- default route interface: test_netlink.py::test_default_route_interface
- a program lives while an fd, a pin or a hook holds it:
  test_netlink.py::test_attached_program_outlives_loader,
  test_bpffs.py::test_pin_survives_the_loading_process,
  test_compile.py::test_cache_hit_same_key_miss_on_define_change (release frees it)
- pinning a digest twice: same program idempotent, another -> PinError:
  test_bpffs.py::test_pin_twice
- unpin removes everything and is idempotent: test_bpffs.py::test_unpin_removes_everything
- a root that is not a bpffs -> PinError: test_bpffs.py::test_refuses_non_bpffs
- path validation: real code (bpffs.validate_*), test_bpffs.py::test_bad_*,
  tests/unit/test_kernel_bpffs_paths.py
- bpf_link (tests/kernel/test_link.py):
  - a link create reads back as an attach in its mode, with link info (id, prog id,
    ifindex): ::test_link_holds_the_hook_and_reads_back;
  - netlink attach, REPLACE and detach in the link's mode -> HookBusy (EBUSY), the link
    untouched: ::test_netlink_cannot_touch_a_link;
  - a link create on an occupied hook -> EBUSY (same mode, a netlink program or a link),
    EEXIST (the other of native/generic): ::test_link_create_on_an_occupied_hook;
  - a mode the device lacks -> EOPNOTSUPP (native), EINVAL (offload):
    ::test_link_create_in_a_mode_the_device_lacks;
  - BPF_LINK_UPDATE swaps atomically; a wrong expected program -> EPERM:
    ::test_link_update_is_atomic_and_checks_the_old_program;
  - BPF_LINK_DETACH frees the hook at once while other fds hold the link, which turns
    defunct (ifindex 0); update of a defunct link -> ENOLINK:
    ::test_link_detach_with_another_fd_open;
  - the last reference gone (pins and fds) detaches: ::test_unpinning_the_last_reference_detaches;
  - the interface removed: its links turn defunct: ::test_removed_interface_leaves_a_defunct_link;
  - link pins (pin, read, list, move, unpin; dots in interface names): test_bpffs.py::test_link_pins.
- xdp-features (netdev family): native <-> basic, none on lo, from the modes an interface
  was made with; None for a kernel without the family (netdev_family=False):
  tests/kernel/test_netdev.py::test_features_of_a_namespaces_devices,
  ::test_the_features_say_what_the_kernel_then_does; the 6.1 lab guest (no family):
  tests/offload/guest_inventory.py::test_a_kernel_without_the_netdev_family_is_probed.

Not modelled: compile time (reported as `compile_ms`, no sleep), the asynchronous hook
release (EBUSY retry; the fake releases a link's hook at once, the kernel ~12-15 ms
later), map values written by programs, verifier logs (injected text), expected_attach_type,
interfaces moved between namespaces or renamed.
"""

from __future__ import annotations

import copy
import dataclasses
import errno
import hashlib
import os
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from kube_xdp_api.names import PIN_SUBDIR

from kube_xdp_agent.kernel import bpfsys
from kube_xdp_agent.kernel.attach import Node
from kube_xdp_agent.kernel.bpffs import (
    DIGEST12_RE,
    LINKS_DIR,
    MAP_NAME_RE,
    PROGRAM_RE,
    PinnedLink,
    PinnedMap,
    PinnedProgram,
    interface_of_pin,
    link_pin_name,
    validate_digest12,
    validate_map_name,
    validate_program,
)
from kube_xdp_agent.kernel.compile import CompileRequest, LoadedMap, LoadedProgram, compile_key, validate_request
from kube_xdp_agent.kernel.errors import (
    AttachError,
    BpfSyscallError,
    EntrypointNotFound,
    EntrypointNotXdp,
    HookBusy,
    InterfaceNotFound,
    KernelError,
    NetnsNotFound,
    PinError,
)
from kube_xdp_agent.kernel.netdev import DeviceFeatures, features_of
from kube_xdp_agent.kernel.netlink import MODES, Interface, XdpState, _check_mode

_MAP_DECL_RE = re.compile(r"\bBPF_(HASH|ARRAY|PERCPU_ARRAY|PERCPU_HASH|LRU_HASH|LRU_PERCPU_HASH)\s*\(\s*(\w+)")
_MAP_TYPES = {
    "HASH": bpfsys.BPF_MAP_TYPE_HASH,
    "ARRAY": bpfsys.BPF_MAP_TYPE_ARRAY,
    "PERCPU_HASH": bpfsys.BPF_MAP_TYPE_PERCPU_HASH,
    "PERCPU_ARRAY": bpfsys.BPF_MAP_TYPE_PERCPU_ARRAY,
    "LRU_HASH": bpfsys.BPF_MAP_TYPE_LRU_HASH,
    "LRU_PERCPU_HASH": bpfsys.BPF_MAP_TYPE_LRU_PERCPU_HASH,
}
_MODE_SLOT = {"native": "drv", "generic": "skb", "offload": "hw"}


@dataclass
class _Prog:
    id: int
    tag: str
    name: str
    map_ids: dict[str, int]
    holders: set[object] = field(default_factory=set)  # fds, pin keys, hook keys


@dataclass
class _Iface:
    name: str
    index: int
    mac: str
    modes: frozenset[str]
    kind: str | None
    driver: str | None
    oper_state: str
    hooks: dict[str, int] = field(default_factory=dict)  # mode -> prog id
    links: dict[str, int] = field(default_factory=dict)  # mode -> link id, where a link holds the hook


@dataclass
class _Link:
    id: int
    prog_id: int
    netns: str | None
    interface: str | None        # None: defunct (detached, or its interface removed)
    ifindex: int
    mode: str
    holders: set[object] = field(default_factory=set)  # fds, pin keys


class FakeKernel:
    """The model. Configure it (interfaces, modes, failures), then hand out its parts."""

    def __init__(
        self,
        *,
        kernel_release: str = "6.18.0-fake",
        bcc_version: str = "0.26.0",
        compile_ms: float = 1000.0,
        netdev_family: bool = True,
    ) -> None:
        self.kernel_release = kernel_release
        self.netdev_family = netdev_family        # False: a kernel before 6.3 (no xdp-features)
        self.bcc_version = bcc_version
        self.compile_ms = compile_ms
        self.lock = threading.RLock()
        self.programs: dict[int, _Prog] = {}
        self.map_values: dict[int, dict[bytes, bytes]] = {}
        self.map_infos: dict[int, bpfsys.MapInfo] = {}
        self.fds: dict[int, tuple[str, int]] = {}  # fd -> ('prog'|'map'|'link', id)
        self.bpf_links: dict[int, _Link] = {}
        self.link_pins: dict[str, dict[tuple[str, str], int]] = {}   # bpffs root -> (program, interface) -> link id
        self.namespaces: dict[str | None, dict[str, _Iface]] = {None: {}}
        self.default_routes: dict[str | None, str] = {}
        self.bpffs: dict[str, dict[tuple[str, str], tuple[int, dict[str, int]]]] = {}
        self.load_failures: list[tuple[str, KernelError]] = []
        self.compiles = 0  # cold loads done (cache misses)
        self._next = {"prog": 100, "map": 50, "fd": 1000, "ifindex": 1, "link": 10}
        self.compiler = FakeCompiler(self)

    # --- configuration ----------------------------------------------------------------

    def add_netns(self, name: str) -> None:
        with self.lock:
            self.namespaces.setdefault(name, {})

    def add_interface(
        self,
        name: str,
        *,
        netns: str | None = None,
        modes: Sequence[str] = ("native", "generic"),
        kind: str | None = "veth",
        driver: str | None = "veth",
        oper_state: str = "up",
        default_route: bool = False,
    ) -> Interface:
        """Create an interface that accepts XDP in `modes` (generic is what every device has)."""
        for mode in modes:
            _check_mode(mode)
        with self.lock:
            ifaces = self.namespaces.setdefault(netns, {})
            index = self._new("ifindex")
            ifaces[name] = _Iface(
                name=name,
                index=index,
                mac=f"02:00:00:00:{index >> 8 & 0xFF:02x}:{index & 0xFF:02x}",
                modes=frozenset(modes),
                kind=kind,
                driver=driver,
                oper_state=oper_state,
            )
            if default_route:
                self.default_routes[netns] = name
        return self.netlink(netns).interface(name)

    def remove_interface(self, name: str, *, netns: str | None = None) -> None:
        """Delete an interface; the kernel drops its hooks' references, its links turn defunct."""
        with self.lock:
            iface = self.namespaces[netns].pop(name)
            for link_id in iface.links.values():
                self.bpf_links[link_id].interface, self.bpf_links[link_id].ifindex = None, 0
            for mode, prog_id in iface.hooks.items():
                self._drop(prog_id, ("hook", netns, name, mode))
            if self.default_routes.get(netns) == name:
                del self.default_routes[netns]

    def set_default_route(self, name: str | None, *, netns: str | None = None) -> None:
        with self.lock:
            if name is None:
                self.default_routes.pop(netns, None)
            else:
                self.default_routes[netns] = name

    def mount_bpffs(self, root: str) -> None:
        with self.lock:
            self.bpffs.setdefault(os.path.normpath(root), {})
            self.link_pins.setdefault(os.path.normpath(root), {})

    def fail_load(self, source_contains: str, error: KernelError) -> None:
        """Make loads whose source contains `source_contains` raise a copy of `error`."""
        self.load_failures.append((source_contains, error))

    def attach_foreign(self, name: str, mode: str, *, netns: str | None = None) -> int:
        """Put a program kube-xdp does not own on a hook (another tool's); return its id."""
        with self.lock:
            iface = self._iface(netns, name)
            prog_id = self._new_prog("foreign", {})
            self.programs[prog_id].holders.add(("hook", netns, name, mode))
            iface.hooks[mode] = prog_id
            return prog_id

    def restart(self) -> None:
        """The agent process dies: every fd it held closes; pins and hooks keep programs."""
        with self.lock:
            for loaded in list(self.compiler._cache.values()):
                loaded.close()
            for fd in list(self.fds):
                self.close_fd(fd)

    # --- parts ------------------------------------------------------------------------

    def netlink(self, netns: str | None = None) -> FakeNetlink:
        return FakeNetlink(self, netns)

    def links(self, netns: str | None = None) -> FakeLinks:
        return FakeLinks(self, netns)

    def pin_store(self, root: str) -> FakePinStore:
        return FakePinStore(self, root)

    def node(self, netns: str | None, root: str) -> Node:
        return Node(self.netlink(netns), self.links(netns), self.pin_store(root))

    # --- the model ----------------------------------------------------------------------

    def prog_exists(self, prog_id: int) -> bool:
        with self.lock:
            return prog_id in self.programs

    def _new(self, what: str) -> int:
        self._next[what] += 1
        return self._next[what]

    def _new_prog(self, name: str, maps: Mapping[str, int]) -> int:
        prog_id = self._new("prog")
        tag = hashlib.sha256(f"{name}/{prog_id}".encode()).hexdigest()[:16]
        self.programs[prog_id] = _Prog(id=prog_id, tag=tag, name=name[:15], map_ids=dict(maps))
        return prog_id

    def _open_fd(self, kind: str, obj_id: int) -> int:
        fd = self._new("fd")
        self.fds[fd] = (kind, obj_id)
        if kind == "prog":
            self.programs[obj_id].holders.add(("fd", fd))
        return fd

    def close_fd(self, fd: int) -> None:
        with self.lock:
            entry = self.fds.pop(fd, None)
            if entry and entry[0] == "prog":
                self._drop(entry[1], ("fd", fd))
            elif entry and entry[0] == "link":
                self._drop_link(entry[1], ("fd", fd))

    def _open_link_fd(self, link_id: int) -> int:
        fd = self._new("fd")
        self.fds[fd] = ("link", link_id)
        self.bpf_links[link_id].holders.add(("fd", fd))
        return fd

    def _drop_link(self, link_id: int, holder: object) -> None:
        """The link loses a reference; with none left it is released: detached, its program dropped."""
        link = self.bpf_links.get(link_id)
        if link is None:
            return
        link.holders.discard(holder)
        if not link.holders:
            self._detach_link(link)
            del self.bpf_links[link_id]
            self._drop(link.prog_id, ("link", link_id))

    def _detach_link(self, link: _Link) -> None:
        if link.interface is not None:
            iface = self.namespaces.get(link.netns, {}).get(link.interface)
            if iface is not None and iface.links.get(link.mode) == link.id:
                del iface.links[link.mode]
                del iface.hooks[link.mode]
                self._drop(link.prog_id, ("hook", link.netns, link.interface, link.mode))
        link.interface, link.ifindex = None, 0

    def _drop(self, prog_id: int, holder: object) -> None:
        prog = self.programs.get(prog_id)
        if prog is None:
            return
        prog.holders.discard(holder)
        if not prog.holders:
            del self.programs[prog_id]

    def prog_id_of_fd(self, fd: int) -> int | None:
        entry = self.fds.get(fd)
        if entry is None or entry[0] != "prog" or entry[1] not in self.programs:
            return None
        return entry[1]

    def _iface(self, netns: str | None, name: str) -> _Iface:
        if netns not in self.namespaces:
            raise NetnsNotFound(f"network namespace {netns!r} does not exist", netns=netns)
        iface = self.namespaces[netns].get(name)
        if iface is None:
            raise InterfaceNotFound(f"no interface {name!r}", interface=name, netns=netns)
        return iface


class _FakeModule:
    """Stands for a bcc module: owns the fds of one cold load."""

    def __init__(self, kernel: FakeKernel, fds: list[int], key: str) -> None:
        self.kernel, self.fds, self.key, self.closed = kernel, fds, key, False

    def close(self) -> None:
        with self.kernel.lock:
            if self.closed:
                return
            self.closed = True
            for fd in self.fds:
                self.kernel.close_fd(fd)
            self.kernel.compiler._cache.pop(self.key, None)


class FakeCompiler:
    """`Compiler` over the model: same validation, cache and errors; no clang."""

    def __init__(self, kernel: FakeKernel) -> None:
        self._kernel = kernel
        self._cache: dict[str, LoadedProgram] = {}
        self.kernel_release = kernel.kernel_release

    @property
    def bcc_version(self) -> str:
        return self._kernel.bcc_version

    def key(self, req: CompileRequest) -> str:
        return compile_key(req, self.kernel_release, self.bcc_version)

    def cached_keys(self) -> list[str]:
        with self._kernel.lock:
            return list(self._cache)

    def load(self, req: CompileRequest) -> LoadedProgram:
        validate_request(req)
        key = self.key(req)
        k = self._kernel
        with k.lock:
            cached = self._cache.get(key)
            if cached is not None and not cached.closed:
                return dataclasses.replace(cached, cache_hit=True, duration_ms=0.01)
            for needle, error in k.load_failures:
                if needle in req.source:
                    raise copy.copy(error)
            entry = req.entrypoint
            if not re.search(rf"\b{entry}\s*\(", req.source):
                raise EntrypointNotFound(f"no function {entry!r} in the compiled module")
            if not re.search(rf"\b{entry}\s*\(\s*(const\s+)?struct\s+xdp_md\s*\*\s*\w*\s*\)", req.source):
                raise EntrypointNotXdp(
                    f"function {entry!r} is not an XDP entrypoint", signature=f"? {entry}(?)"
                )
            k.compiles += 1
            maps: dict[str, LoadedMap] = {}
            fds: list[int] = []
            for kind, name in _MAP_DECL_RE.findall(req.source):
                map_id = k._new("map")
                info = bpfsys.MapInfo(id=map_id, type=_MAP_TYPES[kind], key_size=4, value_size=8,
                                      max_entries=1024, flags=0, name=name[:15])
                k.map_infos[map_id] = info
                k.map_values[map_id] = {}
                fd = k._open_fd("map", map_id)
                fds.append(fd)
                maps[name] = LoadedMap(name=name, fd=fd, info=info)
            prog_id = k._new_prog(entry, {name: m.id for name, m in maps.items()})
            prog_fd = k._open_fd("prog", prog_id)
            fds.append(prog_fd)
            prog = k.programs[prog_id]
            loaded = LoadedProgram(
                key=key,
                entrypoint=entry,
                prog_fd=prog_fd,
                prog_id=prog_id,
                tag=prog.tag,
                name=prog.name,
                maps=MappingProxyType(maps),
                duration_ms=k.compile_ms,
                cache_hit=False,
                _module=_FakeModule(k, fds, key),
            )
            self._cache[key] = loaded
            return loaded

    def release(self, key: str) -> bool:
        with self._kernel.lock:
            loaded = self._cache.pop(key, None)
        if loaded is None:
            return False
        loaded.close()
        return True

    def close(self) -> None:
        for key in self.cached_keys():
            self.release(key)


class FakeNetlink:
    """`Netlink` over the model (same hook semantics, errnos and read-back)."""

    def __init__(self, kernel: FakeKernel, netns: str | None = None) -> None:
        if netns not in kernel.namespaces:
            raise NetnsNotFound(f"network namespace {netns!r} does not exist", netns=netns)
        self._kernel = kernel
        self.netns = netns

    def close(self) -> None:
        pass

    def __enter__(self) -> FakeNetlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _state(iface: _Iface) -> XdpState:
        hooks = iface.hooks
        attached_modes = [m for m in MODES if m in hooks]
        if not attached_modes:
            attached = None
        elif len(attached_modes) > 1:
            attached = "multi"
        else:
            attached = attached_modes[0]
        return XdpState(
            attached=attached,
            prog_id=hooks[attached_modes[0]] if len(attached_modes) == 1 else None,
            drv_prog_id=hooks.get("native"),
            skb_prog_id=hooks.get("generic"),
            hw_prog_id=hooks.get("offload"),
        )

    def _public(self, iface: _Iface) -> Interface:
        return Interface(
            name=iface.name,
            index=iface.index,
            mac=iface.mac,
            oper_state=iface.oper_state,
            kind=iface.kind,
            driver=iface.driver,
            xdp=self._state(iface),
        )

    def interfaces(self) -> list[Interface]:
        with self._kernel.lock:
            ifaces = self._kernel.namespaces[self.netns].values()
            return sorted((self._public(i) for i in ifaces), key=lambda i: i.index)

    def interface(self, name: str) -> Interface:
        with self._kernel.lock:
            return self._public(self._kernel._iface(self.netns, name))

    def read_xdp(self, name: str) -> XdpState:
        with self._kernel.lock:
            return self._state(self._kernel._iface(self.netns, name))

    def default_route_interface(self) -> str | None:
        with self._kernel.lock:
            return self._kernel.default_routes.get(self.netns)

    def xdp_features(self) -> dict[int, DeviceFeatures] | None:
        """As the netdev family reports them, from the modes each interface was made with:
        native -> basic (+ redirect, rx-sg, as veth says), offload -> hw-offload."""
        with self._kernel.lock:
            if not self._kernel.netdev_family:
                return None
            found = {}
            for iface in self._kernel.namespaces[self.netns].values():
                mask = (1 | 2 | 32 if "native" in iface.modes else 0) | (16 if "offload" in iface.modes else 0)
                found[iface.index] = DeviceFeatures(iface.index, mask, features_of(mask))
            return found

    def attach(self, name: str, prog_fd: int, mode: str, *, expected_prog_fd: int | None = None) -> XdpState:
        _check_mode(mode)
        k = self._kernel
        ctx: dict[str, Any] = {"interface": name, "netns": self.netns, "mode": mode}
        with k.lock:
            iface = k._iface(self.netns, name)
            new_id = k.prog_id_of_fd(prog_fd)
            if new_id is None:
                raise AttachError(f"fd {prog_fd} is not a BPF program", errno=errno.EBADF, **ctx)
            expected_id = None
            if expected_prog_fd is not None:
                expected_id = k.prog_id_of_fd(expected_prog_fd)
                if expected_id is None:
                    raise AttachError("attach failed: Bad file descriptor", errno=errno.EBADF, **ctx)
            current = iface.hooks.get(mode)
            if mode in iface.links:
                self._refuse(iface, errno.EBUSY, "Can't replace active BPF XDP link", ctx)
            if expected_prog_fd is not None and current != expected_id:
                self._refuse(iface, errno.EEXIST, "Active program does not match expected", ctx)
            if expected_prog_fd is None and current is not None:
                self._refuse(iface, errno.EBUSY, "XDP program already attached", ctx)
            other = {"native": "generic", "generic": "native"}.get(mode)
            if other and other in iface.hooks:
                self._refuse(iface, errno.EEXIST, "Native and generic XDP can't be active at the same time", ctx)
            if mode not in iface.modes:
                code = errno.EINVAL if mode == "offload" else errno.EOPNOTSUPP
                raise AttachError(f"the driver refused XDP in {mode} mode", reason="DriverModeUnsupported",
                                  errno=code, **ctx)
            hook = ("hook", self.netns, name, mode)
            k.programs[new_id].holders.add(hook)
            iface.hooks[mode] = new_id
            if current is not None and current != new_id:
                k._drop(current, hook)
            return self._state(iface)

    def _refuse(self, iface: _Iface, code: int, kmsg: str, ctx: dict[str, Any]) -> None:
        state = self._state(iface)
        occupant, occ_mode = state.occupant
        if occupant is None:
            raise AttachError("the program to replace is no longer on the hook (it is empty)",
                              errno=code, kernel_message=kmsg, **ctx)
        raise HookBusy(
            f"the XDP hook holds program {occupant} ({occ_mode}), which is not ours to replace",
            prog_id=occupant, attached_mode=occ_mode, errno=code, kernel_message=kmsg, **ctx,
        )

    def detach(self, name: str, mode: str, *, expected_prog_fd: int) -> XdpState:
        _check_mode(mode)
        k = self._kernel
        ctx: dict[str, Any] = {"interface": name, "netns": self.netns, "mode": mode}
        with k.lock:
            iface = k._iface(self.netns, name)
            expected_id = k.prog_id_of_fd(expected_prog_fd)
            if expected_id is None:
                raise AttachError("detach failed: Bad file descriptor", reason="DetachFailed",
                                  errno=errno.EBADF, **ctx)
            current = iface.hooks.get(mode)
            if mode in iface.links:
                raise HookBusy(
                    f"the XDP hook holds program {current} ({mode}) through a bpf_link: the kernel refuses a "
                    "netlink detach", prog_id=current, attached_mode=mode, errno=errno.EBUSY,
                    kernel_message="Can't replace active BPF XDP link", **ctx,
                )
            if current is None:
                return self._state(iface)
            if current != expected_id:
                raise HookBusy(
                    f"the XDP hook holds program {current} ({mode}), not ours: left in place",
                    prog_id=current, attached_mode=mode, errno=errno.EEXIST, **ctx,
                )
            del iface.hooks[mode]
            k._drop(current, ("hook", self.netns, name, mode))
            return self._state(iface)


class FakeLinks:
    """`XdpLinks` over the model: BPF_LINK_CREATE/UPDATE/DETACH, link info, with the
    kernel's errnos (BpfSyscallError)."""

    def __init__(self, kernel: FakeKernel, netns: str | None = None) -> None:
        self._kernel = kernel
        self.netns = netns

    def _fail(self, cmd: str, code: int, **context: Any) -> BpfSyscallError:
        return BpfSyscallError(f"{cmd} failed: {os.strerror(code)}", cmd=cmd, errno=code, netns=self.netns,
                               **{k: v for k, v in context.items() if v is not None})

    def _link_of(self, fd: int, cmd: str) -> _Link:
        entry = self._kernel.fds.get(fd)
        if entry is None or entry[0] != "link":
            raise self._fail(cmd, errno.EBADF if entry is None else errno.EINVAL)
        return self._kernel.bpf_links[entry[1]]

    def create(self, ifindex: int, prog_fd: int, mode: str, *, interface: str | None = None) -> FakeFd:
        _check_mode(mode)
        k, cmd = self._kernel, "BPF_LINK_CREATE"
        with k.lock:
            prog_id = k.prog_id_of_fd(prog_fd)
            if prog_id is None:
                raise self._fail(cmd, errno.EBADF, interface=interface, mode=mode)
            iface = next((i for i in k.namespaces.get(self.netns, {}).values() if i.index == ifindex), None)
            if iface is None:
                raise self._fail(cmd, errno.ENODEV, interface=interface, mode=mode)
            other = {"native": "generic", "generic": "native"}.get(mode)
            if mode in iface.hooks:
                raise self._fail(cmd, errno.EBUSY, interface=iface.name, mode=mode)
            if other and other in iface.hooks:
                raise self._fail(cmd, errno.EEXIST, interface=iface.name, mode=mode)
            if mode not in iface.modes:
                raise self._fail(cmd, errno.EINVAL if mode == "offload" else errno.EOPNOTSUPP,
                                 interface=iface.name, mode=mode)
            link = _Link(id=k._new("link"), prog_id=prog_id, netns=self.netns, interface=iface.name,
                         ifindex=iface.index, mode=mode)
            k.bpf_links[link.id] = link
            k.programs[prog_id].holders.update({("link", link.id), ("hook", self.netns, iface.name, mode)})
            iface.hooks[mode], iface.links[mode] = prog_id, link.id
            return FakeFd(k, k._open_link_fd(link.id))

    def update(self, link_fd: int, new_prog_fd: int, *, old_prog_fd: int | None = None,
               interface: str | None = None) -> None:
        k, cmd = self._kernel, "BPF_LINK_UPDATE"
        with k.lock:
            link = self._link_of(link_fd, cmd)
            new_id = k.prog_id_of_fd(new_prog_fd)
            if new_id is None:
                raise self._fail(cmd, errno.EBADF, interface=interface)
            if old_prog_fd is not None and k.prog_id_of_fd(old_prog_fd) != link.prog_id:
                raise self._fail(cmd, errno.EPERM, interface=interface)
            if link.interface is None:
                raise self._fail(cmd, errno.ENOLINK, interface=interface)
            iface = k.namespaces[link.netns][link.interface]
            hook = ("hook", link.netns, link.interface, link.mode)
            k.programs[new_id].holders.update({("link", link.id), hook})
            iface.hooks[link.mode] = new_id
            old, link.prog_id = link.prog_id, new_id
            if old != new_id:
                k._drop(old, hook)
                k._drop(old, ("link", link.id))

    def detach(self, link_fd: int, *, interface: str | None = None) -> None:
        with self._kernel.lock:
            self._kernel._detach_link(self._link_of(link_fd, "BPF_LINK_DETACH"))

    def info(self, link_fd: int) -> bpfsys.LinkInfo:
        with self._kernel.lock:
            link = self._link_of(link_fd, "BPF_OBJ_GET_INFO_BY_FD")
            return bpfsys.LinkInfo(id=link.id, type=bpfsys.BPF_LINK_TYPE_XDP, prog_id=link.prog_id,
                                   ifindex=link.ifindex)

    def open_id(self, link_id: int) -> FakeFd:
        with self._kernel.lock:
            if link_id not in self._kernel.bpf_links:
                raise self._fail("BPF_LINK_GET_FD_BY_ID", errno.ENOENT)
            return FakeFd(self._kernel, self._kernel._open_link_fd(link_id))

    def prog_id(self, prog_fd: int) -> int:
        with self._kernel.lock:
            prog_id = self._kernel.prog_id_of_fd(prog_fd)
            if prog_id is None:
                raise self._fail("BPF_OBJ_GET_INFO_BY_FD", errno.EBADF)
            return prog_id

    def open_prog(self, prog_id: int) -> FakeFd:
        with self._kernel.lock:
            if prog_id not in self._kernel.programs:
                raise self._fail("BPF_PROG_GET_FD_BY_ID", errno.ENOENT)
            return FakeFd(self._kernel, self._kernel._open_fd("prog", prog_id))

    def xdp_links(self) -> Iterator[bpfsys.LinkInfo]:
        with self._kernel.lock:
            links = [bpfsys.LinkInfo(id=link.id, type=bpfsys.BPF_LINK_TYPE_XDP, prog_id=link.prog_id,
                                     ifindex=link.ifindex) for _, link in sorted(self._kernel.bpf_links.items())]
        return iter(links)

    def holding(self, ifindex: int, prog_id: int) -> bpfsys.LinkInfo | None:
        return next((i for i in self.xdp_links() if i.ifindex == ifindex and i.prog_id == prog_id), None)


class FakeFd(bpfsys.Fd):
    """An fd of the model: closing it drops the model's reference."""

    __slots__ = ("_kernel",)

    def __init__(self, kernel: FakeKernel, fd: int) -> None:
        super().__init__(fd)
        self._kernel = kernel

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            self._kernel.close_fd(fd)


class FakeBpfMap:
    """`bpfsys.BpfMap` over the model's in-memory values (not per-CPU aware)."""

    def __init__(self, kernel: FakeKernel, map_id: int) -> None:
        self._kernel = kernel
        self.info = kernel.map_infos[map_id]
        self._values = kernel.map_values[map_id]

    def lookup(self, key: bytes) -> bytes | None:
        return self._values.get(bytes(key))

    def update(self, key: bytes, value: bytes, flags: int = bpfsys.BPF_ANY) -> None:
        self._values[bytes(key)] = bytes(value)

    def delete(self, key: bytes) -> bool:
        return self._values.pop(bytes(key), None) is not None

    def keys(self) -> Iterator[bytes]:
        return iter(list(self._values))

    def close(self) -> None:
        pass

    def __enter__(self) -> FakeBpfMap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FakePinStore:
    """`PinStore` over the model: same validation, layout, idempotence and errors."""

    def __init__(self, kernel: FakeKernel, root: str) -> None:
        real = os.path.normpath(root)
        if real not in kernel.bpffs:
            raise PinError(f"{root!r} is not a bpffs mount: mount it with `mount -t bpf bpf {root}`",
                           pin_path=root)
        self._kernel = kernel
        self.root = real
        self.base = os.path.join(real, PIN_SUBDIR)
        self._pins = kernel.bpffs[real]
        self._links = kernel.link_pins.setdefault(real, {})

    def program_dir(self, program: str) -> str:
        return os.path.join(self.base, validate_program(program))

    def digest_dir(self, program: str, digest12: str) -> str:
        return os.path.join(self.program_dir(program), validate_digest12(digest12))

    def prog_path(self, program: str, digest12: str) -> str:
        return os.path.join(self.digest_dir(program, digest12), "prog")

    def map_path(self, program: str, digest12: str, map_name: str) -> str:
        return os.path.join(self.digest_dir(program, digest12), "maps", validate_map_name(map_name))

    def links_dir(self, program: str) -> str:
        return os.path.join(self.program_dir(program), LINKS_DIR)

    def link_path(self, program: str, interface: str) -> str:
        return os.path.join(self.links_dir(program), link_pin_name(interface))

    def pin_program(self, program: str, digest12: str, loaded: LoadedProgram) -> PinnedProgram:
        final = self.digest_dir(program, digest12)
        names = [validate_map_name(n) for n in loaded.maps]
        k = self._kernel
        with k.lock:
            existing = self._pins.get((program, digest12))
            if existing is not None:
                if existing[0] == loaded.prog_id:
                    return self._read(program, digest12)
                raise PinError(f"{final} already pins program {existing[0]}, not {loaded.prog_id}: unpin it first",
                               program=program, pin_path=final)
            if k.prog_id_of_fd(loaded.prog_fd) is None:
                raise PinError(f"pinning {program}/{digest12} failed: Bad file descriptor", program=program,
                               pin_path=self.prog_path(program, digest12), errno=errno.EBADF)
            k.programs[loaded.prog_id].holders.add(("pin", self.root, program, digest12))
            self._pins[(program, digest12)] = (loaded.prog_id, {n: loaded.maps[n].id for n in names})
        return self._read(program, digest12)

    def repin(self, program: str, digest12: str, prog_id: int) -> PinnedProgram:
        """As PinStore.repin: pin a live program and its maps (kernel names) by id."""
        final = self.digest_dir(program, digest12)
        k = self._kernel
        with k.lock:
            prog = k.programs.get(prog_id)
            if prog is None:
                raise PinError(f"cannot re-pin program {prog_id} of {program}: No such file or directory",
                               program=program, errno=errno.ENOENT)
            if (program, digest12) in self._pins:
                if self._pins[(program, digest12)][0] == prog_id:
                    return self._read(program, digest12)
                raise PinError(f"{final} already pins another program: unpin it first", program=program,
                               pin_path=final)
            maps = {k.map_infos[m].name: m for m in prog.map_ids.values() if MAP_NAME_RE.fullmatch(k.map_infos[m].name)}
            prog.holders.add(("pin", self.root, program, digest12))
            self._pins[(program, digest12)] = (prog_id, maps)
        return self._read(program, digest12)

    def unpin(self, program: str, digest12: str | None = None) -> bool:
        validate_program(program)
        if digest12 is not None:
            validate_digest12(digest12)
        k = self._kernel
        with k.lock:
            keys = [key for key in self._pins if key[0] == program and digest12 in (None, key[1])]
            for key in keys:
                prog_id, _ = self._pins.pop(key)
                k._drop(prog_id, ("pin", self.root, *key))
            links = [key for key in self._links if key[0] == program] if digest12 is None else []
            for key in links:       # the whole program directory goes, its link pins with it
                k._drop_link(self._links.pop(key), ("linkpin", self.root, *key))
            return bool(keys or links)

    def list_programs(self) -> dict[str, list[str]]:
        with self._kernel.lock:
            result: dict[str, list[str]] = {}
            for program, digest in sorted(self._pins):
                result.setdefault(program, []).append(digest)
            return result

    def open_pinned(self, program: str) -> list[PinnedProgram]:
        validate_program(program)
        with self._kernel.lock:
            digests = sorted(d for p, d in self._pins if p == program)
            return [self._read(program, d) for d in digests]

    def _read(self, program: str, digest12: str) -> PinnedProgram:
        prog_id, map_ids = self._pins[(program, digest12)]
        prog = self._kernel.programs[prog_id]
        maps = {
            name: PinnedMap(name=name, path=self.map_path(program, digest12, name),
                            info=self._kernel.map_infos[map_id])
            for name, map_id in sorted(map_ids.items())
            if MAP_NAME_RE.fullmatch(name)
        }
        assert PROGRAM_RE.fullmatch(program) and DIGEST12_RE.fullmatch(digest12)
        return PinnedProgram(
            program=program,
            digest12=digest12,
            path=self.digest_dir(program, digest12),
            prog_path=self.prog_path(program, digest12),
            prog_id=prog_id,
            tag=prog.tag,
            name=prog.name,
            maps=MappingProxyType(maps),
        )

    def open_prog_fd(self, program: str, digest12: str) -> bpfsys.Fd:
        path = self.prog_path(program, digest12)
        with self._kernel.lock:
            pin = self._pins.get((program, digest12))
            if pin is None:
                raise PinError(f"cannot open pinned program {path}: No such file or directory",
                               program=program, pin_path=path, errno=errno.ENOENT)
            return FakeFd(self._kernel, self._kernel._open_fd("prog", pin[0]))

    def open_prog_id(self, prog_id: int) -> bpfsys.Fd:
        with self._kernel.lock:
            if prog_id not in self._kernel.programs:
                raise PinError(f"cannot open program {prog_id}: No such file or directory", errno=errno.ENOENT)
            return FakeFd(self._kernel, self._kernel._open_fd("prog", prog_id))

    def open_map(self, program: str, digest12: str, map_name: str) -> FakeBpfMap:
        path = self.map_path(program, digest12, map_name)
        with self._kernel.lock:
            pin = self._pins.get((program, digest12))
            if pin is None or map_name not in pin[1]:
                raise PinError(f"cannot open pinned map {path}: No such file or directory",
                               program=program, pin_path=path, errno=errno.ENOENT)
            return FakeBpfMap(self._kernel, pin[1][map_name])

    # --- links ------------------------------------------------------------------------

    def pin_link(self, program: str, interface: str, link_fd: int) -> PinnedLink:
        path = self.link_path(program, interface)
        k = self._kernel
        with k.lock:
            entry = k.fds.get(link_fd)
            if entry is None or entry[0] != "link":
                raise PinError(f"pinning the link of {program} on {interface} failed: Bad file descriptor",
                               program=program, interface=interface, pin_path=path, errno=errno.EBADF)
            if (program, interface) in self._links:
                raise PinError(f"pinning the link of {program} on {interface} failed: File exists",
                               program=program, interface=interface, pin_path=path, errno=errno.EEXIST)
            k.bpf_links[entry[1]].holders.add(("linkpin", self.root, program, interface))
            self._links[(program, interface)] = entry[1]
            return self._read_link(program, interface)

    def _read_link(self, program: str, interface: str) -> PinnedLink:
        link = self._kernel.bpf_links[self._links[(program, interface)]]
        return PinnedLink(program=program, interface=interface, path=self.link_path(program, interface),
                          link_id=link.id, prog_id=link.prog_id, ifindex=link.ifindex)

    def read_link(self, program: str, interface: str) -> PinnedLink | None:
        self.link_path(program, interface)            # the real validation
        with self._kernel.lock:
            return self._read_link(program, interface) if (program, interface) in self._links else None

    def list_links(self, program: str | None = None) -> list[PinnedLink]:
        if program is not None:
            validate_program(program)
        with self._kernel.lock:
            return [self._read_link(p, i) for p, i in sorted(self._links) if program in (None, p)
                    and interface_of_pin(link_pin_name(i)) == i]

    def list_program_dirs(self) -> list[str]:
        with self._kernel.lock:
            return sorted({p for p, _ in self._pins} | {p for p, _ in self._links})

    def open_link(self, program: str, interface: str) -> bpfsys.Fd:
        path = self.link_path(program, interface)
        with self._kernel.lock:
            link_id = self._links.get((program, interface))
            if link_id is None:
                raise PinError(f"cannot open pinned link {path}: No such file or directory", program=program,
                               interface=interface, pin_path=path, errno=errno.ENOENT)
            return FakeFd(self._kernel, self._kernel._open_link_fd(link_id))

    def unpin_link(self, program: str, interface: str) -> bool:
        self.link_path(program, interface)
        with self._kernel.lock:
            link_id = self._links.pop((program, interface), None)
            if link_id is None:
                return False
            self._kernel._drop_link(link_id, ("linkpin", self.root, program, interface))
            return True

    def move_link(self, program: str, interface: str, to_program: str) -> PinnedLink:
        src, dst = self.link_path(program, interface), self.link_path(to_program, interface)
        k = self._kernel
        with k.lock:
            if (to_program, interface) in self._links or (program, interface) not in self._links:
                code = errno.EEXIST if (to_program, interface) in self._links else errno.ENOENT
                raise PinError(f"moving the link pin {src} to {dst} failed: {os.strerror(code)}", program=program,
                               interface=interface, pin_path=src, errno=code)
            link_id = self._links.pop((program, interface))
            holders = k.bpf_links[link_id].holders
            holders.discard(("linkpin", self.root, program, interface))
            holders.add(("linkpin", self.root, to_program, interface))
            self._links[(to_program, interface)] = link_id
            return self._read_link(to_program, interface)
