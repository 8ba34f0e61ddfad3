"""Reading pins (list_programs, open_pinned: every resync) in a real bpffs never follows a
symlink planted in it out of the root, at any level of the layout: a program or digest
directory, a `prog`, a map. The target here is a real pin of another bpffs mount, so a read that
followed the link would succeed and report a program that is not ours."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest

from kube_xdp_agent.kernel import LoadedProgram, PinError, PinStore

from .conftest import PREFIX, run

pytestmark = pytest.mark.kernel

DIGEST, OTHER = "0123456789ab", "ba9876543210"


@pytest.fixture
def elsewhere() -> Iterator[str]:
    """A second bpffs instance: outside the first one's root."""
    path = tempfile.mkdtemp(prefix=f"{PREFIX}-bpffs-other-")
    run("mount", "-t", "bpf", "bpf", path)
    try:
        yield path
    finally:
        if run("umount", path, check=False).returncode != 0:
            run("umount", "-l", path, check=False)
        os.rmdir(path)


@pytest.mark.parametrize("level", ["program", "digest", "prog", "map"])
def test_reads_refuse_a_symlink_out_of_the_root(bpffs: str, elsewhere: str, pass_progs,
                                                counter_prog: LoadedProgram, level: str) -> None:
    victim = PinStore(elsewhere).pin_program("victim", DIGEST, counter_prog)
    store = PinStore(bpffs)
    ours = store.pin_program("app", DIGEST, counter_prog)
    assert store.list_programs() == {"app": [DIGEST]}
    app = os.path.dirname(ours.path)
    name = "app"
    if level == "program":
        name = "evil"
        os.symlink(os.path.dirname(victim.path), os.path.join(bpffs, "kube-xdp", name))
    elif level == "digest":
        os.symlink(victim.path, os.path.join(app, OTHER))
    elif level == "prog":
        os.mkdir(os.path.join(app, OTHER))
        os.symlink(victim.prog_path, os.path.join(app, OTHER, "prog"))
    else:
        os.symlink(victim.maps["counter"].path, os.path.join(ours.path, "maps", "stolen"))
    if level != "map":                     # listing checks the digest and its prog, not the maps
        with pytest.raises(PinError) as listed:
            store.list_programs()
        assert "outside the bpffs root" in str(listed.value)
    with pytest.raises(PinError) as opened:
        store.open_pinned(name)
    assert "outside the bpffs root" in str(opened.value)


def test_symlinks_inside_the_root_are_followed_as_before(bpffs: str, counter_prog: LoadedProgram) -> None:
    """A link that stays under the root is no escape: read as the path it names."""
    store = PinStore(bpffs)
    ours = store.pin_program("app", DIGEST, counter_prog)
    os.symlink(ours.path, os.path.join(os.path.dirname(ours.path), OTHER))
    assert store.list_programs() == {"app": [DIGEST, OTHER]}
    pinned = {p.digest12: p for p in store.open_pinned("app")}
    assert pinned[OTHER].prog_id == pinned[DIGEST].prog_id == counter_prog.prog_id
    assert set(pinned[OTHER].maps) == set(counter_prog.maps)
