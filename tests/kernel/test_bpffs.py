"""Pins in a real bpffs: layout, survival across processes, all-or-nothing, validation."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import subprocess
import sys
import time
from types import MappingProxyType

import pytest

from kube_xdp_agent.kernel import (
    CompileRequest,
    Compiler,
    LoadedMap,
    LoadedProgram,
    PinError,
    PinStore,
    bpfsys,
)

pytestmark = pytest.mark.kernel

DIGEST = "0123456789ab"


def tree(root: str) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            found.append(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(found)


def test_refuses_non_bpffs(tmp_path) -> None:
    with pytest.raises(PinError) as exc_info:
        PinStore(str(tmp_path))
    assert exc_info.value.reason == "PinFailed"
    assert "not a bpffs mount" in str(exc_info.value)
    with pytest.raises(PinError):
        PinStore(str(tmp_path / "missing"))


def test_pin_program_and_maps(bpffs: str, counter_prog: LoadedProgram) -> None:
    store = PinStore(bpffs)
    pinned = store.pin_program("counter", DIGEST, counter_prog)
    assert pinned.prog_id == counter_prog.prog_id and pinned.tag == counter_prog.tag
    assert pinned.prog_path == os.path.join(bpffs, "kube-xdp", "counter", DIGEST, "prog")
    assert {name: m.id for name, m in pinned.maps.items()} == {name: m.id for name, m in counter_prog.maps.items()}
    assert pinned.maps["by_port"].path == store.map_path("counter", DIGEST, "by_port")
    assert [p for p in tree(bpffs) if p.startswith("kube-xdp")] == [
        "kube-xdp",
        "kube-xdp/counter",
        f"kube-xdp/counter/{DIGEST}",
        f"kube-xdp/counter/{DIGEST}/maps",
        f"kube-xdp/counter/{DIGEST}/maps/by_port",
        f"kube-xdp/counter/{DIGEST}/maps/counter",
        f"kube-xdp/counter/{DIGEST}/maps/udp_hits",
        f"kube-xdp/counter/{DIGEST}/prog",
    ]
    assert store.list_programs() == {"counter": [DIGEST]}
    assert store.open_pinned("counter") == [pinned]
    with store.open_prog_fd("counter", DIGEST) as fd:
        assert bpfsys.prog_info(fd.fd).id == counter_prog.prog_id


OPEN_IN_CHILD = """
import json, sys
from kube_xdp_agent.kernel import PinStore
pinned = PinStore(sys.argv[1]).open_pinned(sys.argv[2])
print(json.dumps([{"digest": p.digest12, "prog_id": p.prog_id, "tag": p.tag,
                   "maps": {n: m.id for n, m in p.maps.items()}} for p in pinned]))
"""


def test_pin_survives_the_loading_process(bpffs: str, counter_request: CompileRequest) -> None:
    loader = Compiler()
    defines = {**counter_request.defines, "DROP_PORT": "2"}
    loaded = loader.load(CompileRequest(counter_request.source, "xdp_count", defines))
    PinStore(bpffs).pin_program("survivor", loaded.digest12, loaded)
    prog_id, tag, maps = loaded.prog_id, loaded.tag, {n: m.id for n, m in loaded.maps.items()}
    loader.close()  # the loader lets go; only the pins hold the program and maps now

    child = subprocess.run(
        [sys.executable, "-c", OPEN_IN_CHILD, bpffs, "survivor"], check=True, capture_output=True, text=True, timeout=60
    )
    assert json.loads(child.stdout) == [{"digest": loaded.digest12, "prog_id": prog_id, "tag": tag, "maps": maps}]
    PinStore(bpffs).unpin("survivor")
    with pytest.raises(bpfsys.BpfSyscallError) as exc_info:  # the pin was the last holder
        bpfsys.prog_fd_by_id(prog_id).close()
    assert exc_info.value.errno == errno.ENOENT


def test_pin_twice(bpffs: str, pass_progs) -> None:
    store = PinStore(bpffs)
    first, second, _ = pass_progs
    pinned = store.pin_program("twice", DIGEST, first)
    assert store.pin_program("twice", DIGEST, first) == pinned  # idempotent
    with pytest.raises(PinError) as exc_info:
        store.pin_program("twice", DIGEST, second)
    assert str(first.prog_id) in str(exc_info.value)
    assert store.open_pinned("twice")[0].prog_id == first.prog_id


def test_no_half_pinned_state(bpffs: str, counter_prog: LoadedProgram) -> None:
    store = PinStore(bpffs)
    # The last map to pin is not a BPF object: the kernel refuses it after the program
    # and the other maps were pinned.
    with open("/dev/null", "rb") as not_bpf:
        bogus = LoadedMap(name="zz_broken", fd=not_bpf.fileno(), info=counter_prog.maps["counter"].info)
        broken = dataclasses.replace(counter_prog, maps=MappingProxyType({**counter_prog.maps, "zz_broken": bogus}))
        with pytest.raises(PinError) as exc_info:
            store.pin_program("broken", DIGEST, broken)
    assert exc_info.value.errno == errno.EINVAL
    assert exc_info.value.pin_path.endswith("/maps/zz_broken")
    # Neither the digest directory nor the staging directory is left behind.
    assert tree(os.path.join(bpffs, "kube-xdp", "broken")) == []
    assert store.list_programs() == {}
    assert store.open_pinned("broken") == []


def test_stale_staging_is_ignored_then_swept(bpffs: str, pass_progs) -> None:
    store = PinStore(bpffs)
    os.makedirs(os.path.join(store.base, "sweep", f"staging-{DIGEST}-deadbeef", "maps"))
    assert store.list_programs() == {}
    store.pin_program("sweep", DIGEST, pass_progs[0])
    assert os.listdir(os.path.join(store.base, "sweep")) == [DIGEST]


def test_unpin_removes_everything(bpffs: str, pass_progs, counter_prog: LoadedProgram) -> None:
    store = PinStore(bpffs)
    store.pin_program("gone", DIGEST, counter_prog)
    store.pin_program("gone", "ba9876543210", pass_progs[1])
    store.pin_program("kept", DIGEST, pass_progs[2])
    assert store.unpin("gone", DIGEST)
    assert store.list_programs() == {"gone": ["ba9876543210"], "kept": [DIGEST]}
    assert store.unpin("gone")
    assert not store.unpin("gone") and not store.unpin("gone", DIGEST)  # idempotent
    assert store.list_programs() == {"kept": [DIGEST]}
    assert [p for p in tree(bpffs) if p.startswith("kube-xdp/gone")] == []
    assert store.unpin("kept", DIGEST)
    assert tree(store.base) == []


BAD_PROGRAMS = ["..", ".", "a/b", "../etc", "Upper", "", "ñame", "a\n", "-a", "a-", "a" * 64, "a.b", "a b"]
BAD_DIGESTS = ["..", "ABCDEF012345", "0123456789a", "0123456789abc", "../../../..", "0123456789a\n", "01234567890g"]
BAD_MAPS = ["..", "a/b", "1abc", "a.b", "a" * 65, "", "ñ", "a\n"]


@pytest.mark.parametrize("program", BAD_PROGRAMS)
def test_bad_program_names_rejected_before_touching_bpffs(bpffs: str, pass_progs, program: str) -> None:
    store = PinStore(bpffs)
    before = tree(bpffs)
    for call in (
        lambda: store.pin_program(program, DIGEST, pass_progs[0]),
        lambda: store.unpin(program),
        lambda: store.open_pinned(program),
        lambda: store.prog_path(program, DIGEST),
    ):
        with pytest.raises(PinError):
            call()
    assert tree(bpffs) == before


@pytest.mark.parametrize("digest", BAD_DIGESTS)
def test_bad_digests_rejected(bpffs: str, pass_progs, digest: str) -> None:
    store = PinStore(bpffs)
    before = tree(bpffs)
    with pytest.raises(PinError):
        store.pin_program("prog", digest, pass_progs[0])
    with pytest.raises(PinError):
        store.unpin("prog", digest)
    assert tree(bpffs) == before


@pytest.mark.parametrize("name", BAD_MAPS)
def test_bad_map_names_rejected(bpffs: str, pass_progs, name: str) -> None:
    store = PinStore(bpffs)
    with pytest.raises(PinError):
        store.map_path("prog", DIGEST, name)
    prog = pass_progs[0]
    bad_map = LoadedMap(name=name, fd=0, info=None)  # type: ignore[arg-type]
    bogus = dataclasses.replace(prog, maps=MappingProxyType({name: bad_map}))
    before = tree(bpffs)
    with pytest.raises(PinError):
        store.pin_program("prog", DIGEST, bogus)
    assert tree(bpffs) == before


def test_symlink_cannot_redirect_pins(bpffs: str, tmp_path, pass_progs) -> None:
    os.symlink(str(tmp_path), os.path.join(bpffs, "kube-xdp"))
    store = PinStore(bpffs)
    with pytest.raises(PinError) as exc_info:
        store.pin_program("escape", DIGEST, pass_progs[0])
    assert "outside the bpffs root" in str(exc_info.value)
    assert os.listdir(tmp_path) == []


# --- link pins ------------------------------------------------------------------------------


def test_link_pins(bpffs: str, netns_pair, pass_progs) -> None:
    """A link pinned as (program, interface) beside the program's digests: read back with
    the kernel's link id, prog id and ifindex; listed; renamed to another program (the link
    untouched); unpinned (which, as the last reference, detaches it). An interface name
    with a dot is pinned with '+' (bpffs refuses dots)."""
    from kube_xdp_agent.kernel import Netlink, XdpLinks

    store = PinStore(bpffs)
    store.pin_program("web", DIGEST, pass_progs[0])
    links = XdpLinks(netns_pair.ns)
    with Netlink(netns_pair.ns) as nl:
        iface = nl.interface(netns_pair.ns_if)
        assert store.read_link("web", iface.name) is None
        with links.create(iface.index, pass_progs[0].prog_fd, "generic") as link:
            pinned = store.pin_link("web", iface.name, link.fd)
            info = links.info(link.fd)
            with pytest.raises(PinError) as exc_info:       # never replaced
                store.pin_link("web", iface.name, link.fd)
            assert exc_info.value.errno == errno.EEXIST
        assert pinned.path == os.path.join(bpffs, "kube-xdp", "web", "links", iface.name)
        assert (pinned.link_id, pinned.prog_id, pinned.ifindex) == (info.id, pass_progs[0].prog_id, iface.index)
        assert not pinned.defunct and store.read_link("web", iface.name) == pinned
        assert tree(os.path.join(bpffs, "kube-xdp")) == ["web", f"web/{DIGEST}", f"web/{DIGEST}/maps",
                                                          f"web/{DIGEST}/prog", "web/links", f"web/links/{iface.name}"]
        assert store.list_programs() == {"web": [DIGEST]}          # "links" is not a digest
        assert store.list_links() == [pinned] == store.list_links("web")
        moved = store.move_link("web", iface.name, "api")
        assert (moved.program, moved.link_id) == ("api", pinned.link_id)
        assert store.read_link("web", iface.name) is None and not os.path.exists(pinned.path)
        assert nl.read_xdp(iface.name).skb_prog_id == pass_progs[0].prog_id      # the move touched nothing
        assert store.unpin_link("api", iface.name) and not store.unpin_link("api", iface.name)
        for _ in range(200):       # released asynchronously (test_link.py)
            if nl.read_xdp(iface.name).attached is None:
                break
            time.sleep(0.005)
        assert nl.read_xdp(iface.name).attached is None
        assert not os.path.exists(os.path.join(bpffs, "kube-xdp", "api"))      # emptied dirs go
        # A dotted name (as VLANs have): pinned with '+', listed under its real name.
        subprocess.run(["ip", "-n", netns_pair.ns, "link", "add", "veth0.7", "type", "veth", "peer", "name",
                        "veth0.8"], check=True)
        vlan = nl.interface("veth0.7")
        with links.create(vlan.index, pass_progs[1].prog_fd, "generic") as link:
            dotted = store.pin_link("web", "veth0.7", link.fd)
        assert os.path.basename(dotted.path) == "veth0+7"
        assert [x.interface for x in store.list_links("web")] == ["veth0.7"]
        with store.open_link("web", "veth0.7") as fd:
            links.detach(fd.fd)
        assert store.read_link("web", "veth0.7").defunct
        assert store.unpin_link("web", "veth0.7")


@pytest.mark.parametrize("interface", ["", ".", "..", "a/b", "sixteen-chars-xx", "eth0\n", "eth 0", "eth+0"])
def test_bad_interface_names_rejected(bpffs: str, interface: str) -> None:
    store = PinStore(bpffs)
    with pytest.raises(PinError):
        store.link_path("web", interface)
    assert not os.path.exists(os.path.join(bpffs, "kube-xdp"))
