"""The Go build of the rig's binaries, for real (go build, the module proxy's modules in the
project's cache): a truncated or stale cached binary is rebuilt, never used; a failed build
or module download is one line naming the component and its log, and leaves no binary; a
rig whose build fails starts nothing.

kxstatus stands in for every component here (it builds in seconds from the warm Go cache);
the code path is the one kube-apiserver, etcd, kubectl and helm take."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from kube_xdp_rig import gobuild
from kube_xdp_rig.cluster import rig_ports
from kube_xdp_rig.config import RigConfig
from kube_xdp_rig.controlplane import RigError
from kube_xdp_rig.rig import Rig

from .conftest import TEST_INSTANCE

GO_DIR = RigConfig().cache_dir / "go"          # the warm module and build caches


@pytest.fixture()
def build_dir(tmp_path) -> Path:
    """A copy of build/tools (kxstatus's module) that a test may break."""
    out = tmp_path / "build"
    shutil.copytree(gobuild.BUILD_DIR / "tools", out / "tools")
    return out


def _ensure(cache: Path, build_dir: Path, lines: list[str]) -> Path:
    return gobuild.ensure(["kxstatus"], cache, log=lines.append, build_dir=build_dir, go_dir=GO_DIR)["kxstatus"]


def _runs(binary: Path) -> str:
    return subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30).stdout


def test_a_build_is_cached_linked_and_not_repeated(tmp_path, build_dir):
    lines: list[str] = []
    binary = _ensure(tmp_path, build_dir, lines)
    assert "sigs.k8s.io/cli-utils v0.37.2" in _runs(binary)
    assert (tmp_path / "bin" / "kxstatus").resolve() == binary
    assert [ln.split(" built in ")[0] for ln in lines if " built in " in ln] == ["build: kxstatus v0.37.2"]
    again: list[str] = []
    assert _ensure(tmp_path, build_dir, again) == binary and again == []     # cached: nothing said, nothing built


def test_a_truncated_cached_binary_is_detected_and_rebuilt(tmp_path, build_dir):
    binary = _ensure(tmp_path, build_dir, [])
    good = binary.read_bytes()
    binary.write_bytes(good[: 1 << 20])                  # an interrupted copy
    lines: list[str] = []
    assert _ensure(tmp_path, build_dir, lines) == binary
    assert lines[0] == f"build: the cached {binary.name} does not run or reports another version: rebuilding it"
    assert "sigs.k8s.io/cli-utils v0.37.2" in _runs(binary)


def test_a_stale_binary_of_another_version_is_rebuilt_and_removed(tmp_path, build_dir):
    binary = _ensure(tmp_path, build_dir, [])
    stale = binary.with_name("kxstatus-v0.36.0-0123456789ab")
    shutil.copy2(binary, stale)
    binary.unlink()
    (tmp_path / "bin" / "kxstatus").unlink()
    (tmp_path / "bin" / "kxstatus").symlink_to(stale.name)        # what an older checkout left
    lines: list[str] = []
    assert _ensure(tmp_path, build_dir, lines) == binary
    assert any(ln.startswith("build: kxstatus v0.37.2 built in ") for ln in lines), lines
    assert not stale.exists() and (tmp_path / "bin" / "kxstatus").resolve() == binary


def test_a_binary_under_the_right_name_that_reports_another_version_is_not_used(tmp_path, build_dir):
    binary = gobuild.plan(["kxstatus"], tmp_path, _go_version(), build_dir)[0].path
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\necho 'kxstatus (sigs.k8s.io/cli-utils v0.30.1)'\n")
    binary.chmod(0o755)
    lines: list[str] = []
    assert _ensure(tmp_path, build_dir, lines) == binary
    assert lines[0].endswith("does not run or reports another version: rebuilding it")
    assert "v0.37.2" in _runs(binary)


def test_a_failed_compile_is_one_line_naming_the_component_and_its_log(tmp_path, build_dir):
    main = build_dir / "tools" / "cmd" / "kxstatus" / "main.go"
    main.write_text(main.read_text() + "\nthis is not Go\n")
    with pytest.raises(gobuild.BuildError) as err:
        _ensure(tmp_path, build_dir, [])
    log = tmp_path / "build-logs" / "kxstatus.log"
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("kxstatus: go build failed (") and message.endswith(f"; log: {log})")
    assert "syntax error" in message and "syntax error" in log.read_text()
    assert list((tmp_path / "bin").iterdir()) == []            # no binary, no temporary file, no link


def test_a_failed_module_download_is_one_line_naming_the_component_and_what_to_check(tmp_path, build_dir, monkeypatch):
    go_mod = build_dir / "tools" / "go.mod"
    go_mod.write_text(go_mod.read_text().replace("sigs.k8s.io/cli-utils v0.37.2", "sigs.k8s.io/cli-utils v0.99.0"))
    monkeypatch.setenv("GOPROXY", "off")               # nothing beyond the cache: the missing version cannot come
    with pytest.raises(gobuild.BuildError) as err:
        _ensure(tmp_path, build_dir, [])
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("kxstatus: downloading the Go modules of build/tools failed (")
    assert message.endswith(f"log: {tmp_path / 'build-logs' / 'download-tools.log'}): check access to the Go "
                            "module proxy, then rerun 'make binaries'")
    assert not (tmp_path / "bin" / "kxstatus").exists()


def test_a_rig_whose_build_fails_starts_nothing(tmp_path, monkeypatch):
    """`up` builds before it starts anything: a failed build leaves no process, namespace,
    mount or state behind, and says which component and log."""
    broken = tmp_path / "build"
    shutil.copytree(gobuild.BUILD_DIR / "k8s", broken / "k8s")
    (broken / "k8s" / "cmd" / "etcd" / "main.go").write_text("package main\n\nbroken\n")
    monkeypatch.setattr(gobuild, "BUILD_DIR", broken)
    real_ensure = gobuild.ensure
    monkeypatch.setattr(gobuild, "ensure", lambda names, cache_dir, **kw: real_ensure(names, cache_dir, go_dir=GO_DIR, **kw))
    instance = TEST_INSTANCE[:6] + "gb"
    rig = Rig(RigConfig(instance=instance, cache_dir=tmp_path / "cache", state_root=tmp_path / "run", **rig_ports()))
    with pytest.raises(RigError, match=r"^etcd: go build failed \(.*; log: .*/etcd.log\); fix that, then rerun "
                                       r"'make binaries'$"):
        rig.up(log=lambda *_: None)
    assert not any(rig.leftovers().values())


def _go_version() -> str:
    return subprocess.run([gobuild.go_binary(), "env", "GOVERSION"], capture_output=True, text=True,
                          env={**os.environ, **gobuild.go_env(GO_DIR)}).stdout.strip()
