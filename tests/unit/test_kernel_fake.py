"""FakeKernel: the same surface and the same errors as the real layer.

Each behaviour here has a real-kernel twin named in fake.py's docstring.
"""

from __future__ import annotations

import errno
import inspect

import pytest

from kube_xdp_agent.kernel import (
    AttachError,
    CompileError,
    CompileRequest,
    Compiler,
    EntrypointNotFound,
    EntrypointNotXdp,
    HookBusy,
    InterfaceNotFound,
    InvalidDefine,
    Netlink,
    NetnsNotFound,
    PinError,
    PinStore,
    VerifierError,
)
from tests.fakes import FakeKernel
from kube_xdp_agent.kernel import XdpLinks, attach, place, remove
from kube_xdp_agent.kernel.errors import BpfSyscallError
from tests.fakes.kernel import FakeCompiler, FakeLinks, FakeNetlink, FakePinStore

COUNTER = """
BPF_ARRAY(counter, u64, 1);
BPF_PERCPU_ARRAY(hits, u32, 2);
int xdp_count(struct xdp_md *ctx) { return XDP_PASS + 0 * VAL; }
int helper(int x) { return x; }
"""


def req(val: str = "1", entry: str = "xdp_count") -> CompileRequest:
    return CompileRequest(COUNTER, entry, {"VAL": val})


@pytest.fixture
def kernel() -> FakeKernel:
    k = FakeKernel()
    k.add_netns("node")
    k.add_interface("eth0", netns="node", modes=("native", "generic"), default_route=True)
    k.add_interface("lo", netns="node", modes=("generic",), kind=None, driver=None)
    k.mount_bpffs("/sys/fs/bpf")
    return k


def public_methods(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in inspect.getmembers(cls, inspect.isfunction)
        if not name.startswith("_") or name in ("__enter__", "__exit__")
    }


@pytest.mark.parametrize(("real", "fake"), [(Compiler, FakeCompiler), (Netlink, FakeNetlink), (PinStore, FakePinStore),
                                            (XdpLinks, FakeLinks)])
def test_fake_has_the_real_surface(real: type, fake: type) -> None:
    real_methods, fake_methods = public_methods(real), public_methods(fake)
    missing = set(real_methods) - set(fake_methods)
    assert not missing, f"{fake.__name__} lacks {missing}"
    for name, sig in real_methods.items():
        real_params = [(p.name, p.kind, p.default) for p in sig.parameters.values()]
        fake_params = [(p.name, p.kind, p.default) for p in fake_methods[name].parameters.values()]
        assert fake_params == real_params, name


def test_load_cache_hit_and_miss(kernel: FakeKernel) -> None:
    cold = kernel.compiler.load(req())
    hit = kernel.compiler.load(req())
    miss = kernel.compiler.load(req("2"))
    assert not cold.cache_hit and hit.cache_hit and not miss.cache_hit
    assert hit.prog_id == cold.prog_id and hit.prog_fd == cold.prog_fd and miss.prog_id != cold.prog_id
    assert set(cold.maps) == {"counter", "hits"} and len(cold.tag) == 16
    assert cold.key == kernel.compiler.key(req()) and kernel.compiles == 2
    assert kernel.compiler.release(cold.key) and cold.closed and not kernel.prog_exists(cold.prog_id)


def test_load_errors(kernel: FakeKernel) -> None:
    with pytest.raises(InvalidDefine):
        kernel.compiler.load(CompileRequest(COUNTER, "xdp_count", {"VAL": "1 2"}))
    with pytest.raises(EntrypointNotFound):
        kernel.compiler.load(req(entry="nope"))
    with pytest.raises(EntrypointNotXdp):
        kernel.compiler.load(req(entry="helper"))
    kernel.fail_load("BROKEN", CompileError("compile failed", output="main.c:1:1: error: x"))
    kernel.fail_load("REJECT", VerifierError("rejected", output="invalid access to packet"))
    with pytest.raises(CompileError) as exc_info:
        kernel.compiler.load(CompileRequest(COUNTER + "BROKEN", "xdp_count", {"VAL": "1"}))
    assert "error:" in exc_info.value.output
    with pytest.raises(VerifierError):
        kernel.compiler.load(CompileRequest(COUNTER + "REJECT", "xdp_count", {"VAL": "1"}))
    assert kernel.compiler.cached_keys() == []


def test_interfaces_and_routes(kernel: FakeKernel) -> None:
    with kernel.netlink("node") as nl:
        assert [i.name for i in nl.interfaces()] == ["eth0", "lo"]
        assert nl.default_route_interface() == "eth0"
        assert nl.interface("eth0").xdp.attached is None
        with pytest.raises(InterfaceNotFound):
            nl.interface("nope0")
    with pytest.raises(NetnsNotFound):
        kernel.netlink("missing")
    kernel.set_default_route(None, netns="node")
    assert kernel.netlink("node").default_route_interface() is None


def test_hook_semantics(kernel: FakeKernel) -> None:
    a, b, c = (kernel.compiler.load(req(str(i))) for i in range(3))
    nl = kernel.netlink("node")
    state = nl.attach("eth0", a.prog_fd, "native")
    assert (state.attached, state.prog_id, state.drv_prog_id) == ("native", a.prog_id, a.prog_id)

    with pytest.raises(HookBusy) as busy:  # UPDATE_IF_NOEXIST on an occupied hook
        nl.attach("eth0", b.prog_fd, "native")
    assert (busy.value.prog_id, busy.value.errno) == (a.prog_id, errno.EBUSY)
    with pytest.raises(HookBusy) as other_mode:
        nl.attach("eth0", b.prog_fd, "generic")
    assert (other_mode.value.prog_id, other_mode.value.errno) == (a.prog_id, errno.EEXIST)
    with pytest.raises(HookBusy) as wrong:
        nl.attach("eth0", c.prog_fd, "native", expected_prog_fd=b.prog_fd)
    assert wrong.value.prog_id == a.prog_id and nl.read_xdp("eth0").prog_id == a.prog_id

    assert nl.attach("eth0", b.prog_fd, "native", expected_prog_fd=a.prog_fd).prog_id == b.prog_id
    with pytest.raises(HookBusy):
        nl.detach("eth0", "native", expected_prog_fd=a.prog_fd)
    assert nl.read_xdp("eth0").prog_id == b.prog_id
    assert nl.detach("eth0", "native", expected_prog_fd=b.prog_fd).attached is None
    assert nl.detach("eth0", "native", expected_prog_fd=b.prog_fd).attached is None  # idempotent
    with pytest.raises(AttachError) as gone:
        nl.attach("eth0", c.prog_fd, "native", expected_prog_fd=a.prog_fd)
    assert gone.value.reason == "AttachFailed" and gone.value.errno == errno.EEXIST


def test_unsupported_modes(kernel: FakeKernel) -> None:
    prog = kernel.compiler.load(req())
    nl = kernel.netlink("node")
    with pytest.raises(AttachError) as native:
        nl.attach("lo", prog.prog_fd, "native")
    assert native.value.reason == "DriverModeUnsupported" and native.value.errno == errno.EOPNOTSUPP
    with pytest.raises(AttachError) as offload:
        nl.attach("eth0", prog.prog_fd, "offload")
    assert offload.value.reason == "DriverModeUnsupported" and offload.value.errno == errno.EINVAL
    assert nl.attach("lo", prog.prog_fd, "generic").attached == "generic"


def test_foreign_program_is_never_touched(kernel: FakeKernel) -> None:
    foreign = kernel.attach_foreign("eth0", "generic", netns="node")
    prog = kernel.compiler.load(req())
    nl = kernel.netlink("node")
    with pytest.raises(HookBusy) as exc_info:
        nl.attach("eth0", prog.prog_fd, "native")
    assert exc_info.value.prog_id == foreign
    assert nl.read_xdp("eth0").skb_prog_id == foreign


def test_lifetimes_across_a_restart(kernel: FakeKernel) -> None:
    """Programs live while an fd, a pin or a hook holds them (like the kernel's refcount)."""
    pinned, attached, loose = (kernel.compiler.load(req(str(i))) for i in range(3))
    store = kernel.pin_store("/sys/fs/bpf")
    store.pin_program("pinned", pinned.digest12, pinned)
    kernel.netlink("node").attach("eth0", attached.prog_fd, "native")
    kernel.restart()
    assert pinned.closed and kernel.compiler.cached_keys() == []
    assert kernel.prog_exists(pinned.prog_id) and kernel.prog_exists(attached.prog_id)
    assert not kernel.prog_exists(loose.prog_id)

    [found] = store.open_pinned("pinned")
    assert found.prog_id == pinned.prog_id and set(found.maps) == {"counter", "hits"}
    assert kernel.netlink("node").read_xdp("eth0").prog_id == attached.prog_id
    assert store.unpin("pinned") and not kernel.prog_exists(pinned.prog_id)
    assert not store.unpin("pinned")


def test_replace_with_a_reopened_pin_after_restart(kernel: FakeKernel) -> None:
    old, new = kernel.compiler.load(req("1")), kernel.compiler.load(req("2"))
    store = kernel.pin_store("/sys/fs/bpf")
    store.pin_program("p", old.digest12, old)
    kernel.netlink("node").attach("eth0", old.prog_fd, "native")
    kernel.compiler.release(old.key)
    with store.open_prog_fd("p", old.digest12) as expected:
        state = kernel.netlink("node").attach("eth0", new.prog_fd, "native", expected_prog_fd=expected.fd)
    assert state.prog_id == new.prog_id
    assert kernel.prog_exists(old.prog_id)  # still pinned
    store.unpin("p")
    assert not kernel.prog_exists(old.prog_id)


def test_pins(kernel: FakeKernel) -> None:
    a, b = kernel.compiler.load(req("1")), kernel.compiler.load(req("2"))
    store = kernel.pin_store("/sys/fs/bpf")
    pinned = store.pin_program("counter", "0123456789ab", a)
    assert store.pin_program("counter", "0123456789ab", a) == pinned
    with pytest.raises(PinError):
        store.pin_program("counter", "0123456789ab", b)
    with pytest.raises(PinError):
        store.pin_program("../x", "0123456789ab", a)
    assert store.list_programs() == {"counter": ["0123456789ab"]}
    assert pinned.maps["counter"].path.endswith("/kube-xdp/counter/0123456789ab/maps/counter")
    with store.open_map("counter", "0123456789ab", "counter") as m:
        m.update(b"\0" * 4, b"\1" + b"\0" * 7)
        assert m.lookup(b"\0" * 4) == b"\1" + b"\0" * 7
    with pytest.raises(PinError):
        store.open_prog_fd("counter", "ba9876543210")
    with pytest.raises(PinError):
        kernel.pin_store("/tmp")


def test_removed_interface_releases_its_program(kernel: FakeKernel) -> None:
    prog = kernel.compiler.load(req())
    kernel.netlink("node").attach("eth0", prog.prog_fd, "native")
    kernel.compiler.release(prog.key)
    assert kernel.prog_exists(prog.prog_id)
    kernel.remove_interface("eth0", netns="node")
    assert not kernel.prog_exists(prog.prog_id)


# --- bpf_link (each behaviour checked on the real kernel: tests/kernel/test_link.py) -----------


def bpf_errno(fn) -> int | None:
    try:
        fn()
    except BpfSyscallError as exc:
        return exc.errno
    return None


def test_a_link_holds_the_hook_against_netlink(kernel: FakeKernel) -> None:
    a, b = kernel.compiler.load(req("1")), kernel.compiler.load(req("2"))
    nl, links = kernel.netlink("node"), kernel.links("node")
    eth0 = nl.interface("eth0")
    link = links.create(eth0.index, a.prog_fd, "native")
    info = links.info(link.fd)
    assert (info.prog_id, info.ifindex) == (a.prog_id, eth0.index) and nl.read_xdp("eth0").drv_prog_id == a.prog_id
    for call in (lambda: nl.attach("eth0", b.prog_fd, "native"),
                 lambda: nl.attach("eth0", b.prog_fd, "native", expected_prog_fd=a.prog_fd),
                 lambda: nl.detach("eth0", "native", expected_prog_fd=a.prog_fd)):
        with pytest.raises(HookBusy) as busy:
            call()
        assert busy.value.errno == errno.EBUSY and busy.value.prog_id == a.prog_id
    with pytest.raises(HookBusy) as other:
        nl.attach("eth0", b.prog_fd, "generic")
    assert other.value.errno == errno.EEXIST
    assert bpf_errno(lambda: links.create(eth0.index, b.prog_fd, "native")) == errno.EBUSY
    assert bpf_errno(lambda: links.create(eth0.index, b.prog_fd, "generic")) == errno.EEXIST
    lo = nl.interface("lo")
    assert bpf_errno(lambda: links.create(lo.index, b.prog_fd, "native")) == errno.EOPNOTSUPP
    assert bpf_errno(lambda: links.create(eth0.index, b.prog_fd, "offload")) == errno.EINVAL   # veth cannot
    link.close()
    assert nl.read_xdp("eth0").attached is None        # the last reference gone: released


def test_link_update_detach_and_defunct(kernel: FakeKernel) -> None:
    a, b, c = (kernel.compiler.load(req(str(i))) for i in range(3))
    nl, links = kernel.netlink("node"), kernel.links("node")
    eth0 = nl.interface("eth0")
    link = links.create(eth0.index, a.prog_fd, "generic")
    links.update(link.fd, b.prog_fd, old_prog_fd=a.prog_fd)
    assert nl.read_xdp("eth0").skb_prog_id == b.prog_id == links.info(link.fd).prog_id
    assert bpf_errno(lambda: links.update(link.fd, c.prog_fd, old_prog_fd=a.prog_fd)) == errno.EPERM
    other = links.open_id(links.info(link.fd).id)
    links.detach(other.fd)                       # frees the hook while `link` still holds it
    assert nl.read_xdp("eth0").attached is None and links.info(link.fd).ifindex == 0
    assert bpf_errno(lambda: links.update(link.fd, c.prog_fd)) == errno.ENOLINK
    other.close()
    link.close()
    kernel.compiler.release(b.key)
    assert not kernel.prog_exists(b.prog_id)     # nothing holds it any more


def test_link_pins_and_their_last_reference(kernel: FakeKernel) -> None:
    a = kernel.compiler.load(req("1"))
    nl, links, store = kernel.netlink("node"), kernel.links("node"), kernel.pin_store("/sys/fs/bpf")
    with links.create(nl.interface("eth0").index, a.prog_fd, "native") as link:
        pinned = store.pin_link("web", "eth0", link.fd)
        with pytest.raises(PinError):
            store.pin_link("web", "eth0", link.fd)
    assert nl.read_xdp("eth0").drv_prog_id == a.prog_id            # the pin holds it
    assert pinned.path == "/sys/fs/bpf/kube-xdp/web/links/eth0" and store.list_links() == [pinned]
    moved = store.move_link("web", "eth0", "api")
    assert moved.link_id == pinned.link_id and store.read_link("web", "eth0") is None
    assert store.unpin_link("api", "eth0") and not store.unpin_link("api", "eth0")
    assert nl.read_xdp("eth0").attached is None                    # the last reference: detached
    with pytest.raises(PinError):
        store.link_path("web", "..")


def test_removed_interface_leaves_a_defunct_link(kernel: FakeKernel) -> None:
    a = kernel.compiler.load(req("1"))
    kernel.add_interface("eth1", netns="node")
    links, store = kernel.links("node"), kernel.pin_store("/sys/fs/bpf")
    with links.create(kernel.netlink("node").interface("eth1").index, a.prog_fd, "generic") as link:
        store.pin_link("web", "eth1", link.fd)
    kernel.remove_interface("eth1", netns="node")
    assert store.read_link("web", "eth1").defunct and kernel.prog_exists(a.prog_id)
    kernel.compiler.release(a.key)
    assert kernel.prog_exists(a.prog_id)           # the defunct link still holds its program
    assert store.unpin("web") and not kernel.prog_exists(a.prog_id)


def test_place_runs_over_the_fake(kernel: FakeKernel) -> None:
    """attach.place is the real code over the fake: the paths the executor's unit tests
    will take (create, update, fallback, takeover, conflict, removal)."""
    a, b = kernel.compiler.load(req("1")), kernel.compiler.load(req("2"))
    node = kernel.node("node", "/sys/fs/bpf")

    def fd(prog):
        return lambda mode: node.pins.open_prog_id(prog.prog_id)

    placed = place(node, program="web", interface="eth0", modes=("native", "generic"), prog_fd_for=fd(a))
    assert (placed.mode, placed.attached_by, placed.prog_id) == ("native", "link", a.prog_id)
    updated = place(node, program="web", interface="eth0", modes=("native",), prog_fd_for=fd(b))
    assert (updated.link_id, updated.replaced, updated.prog_id) == (placed.link_id, a.prog_id, b.prog_id)
    on_lo = place(node, program="web", interface="lo", modes=("native", "generic"), prog_fd_for=fd(a))
    assert on_lo.mode == "generic" and on_lo.refused[0].errno == errno.EOPNOTSUPP
    assert [r.where for r in attach.link_records(node)] == ["attached", "attached"]
    assert remove(node, program="web", interface="eth0").detached_by == "link"
    assert kernel.netlink("node").read_xdp("eth0").attached is None


def test_place_takes_over_a_netlink_program_atomically(kernel: FakeKernel) -> None:
    a = kernel.compiler.load(req("1"))
    foreign = kernel.attach_foreign("eth0", "generic", netns="node")
    node = kernel.node("node", "/sys/fs/bpf")
    with pytest.raises(HookBusy):
        place(node, program="web", interface="eth0", modes=("native", "generic"),
              prog_fd_for=lambda mode: node.pins.open_prog_id(a.prog_id))
    placed = place(node, program="web", interface="eth0", modes=("native", "generic"),
                   prog_fd_for=lambda mode: node.pins.open_prog_id(a.prog_id), replace=foreign)
    assert (placed.mode, placed.attached_by, placed.netlink_cause, placed.replaced) == (
        "generic", "netlink", attach.REPLACED, foreign)
    assert not kernel.prog_exists(foreign)
