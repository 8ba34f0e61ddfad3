"""The Go build of the rig's binaries, its pure parts: versions from go.mod, the linker
flags, the cache key and the plan (which file each binary is cached as)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kube_xdp_rig import gobuild

GO_MOD = """module kube-xdp.local/build/k8s

go 1.26.0

require (
\tgo.etcd.io/etcd/server/v3 v3.7.0
\tk8s.io/kubernetes v1.37.2
)

require (
\tk8s.io/api v0.0.0 // indirect
)

replace (
\tk8s.io/api => k8s.io/api v0.37.2
)
"""


def test_required_version_reads_require_blocks_and_skips_replacements():
    assert gobuild.required_version(GO_MOD, "k8s.io/kubernetes") == "v1.37.2"
    assert gobuild.required_version(GO_MOD, "go.etcd.io/etcd/server/v3") == "v3.7.0"
    assert gobuild.required_version(GO_MOD, "k8s.io/api") == "v0.0.0"      # the require line, not the replace
    assert gobuild.required_version("require helm.sh/helm/v4 v4.3.2\n", "helm.sh/helm/v4") == "v4.3.2"


def test_required_version_of_a_module_go_mod_does_not_name_is_an_error():
    with pytest.raises(gobuild.BuildError, match=r"^go.mod does not require k8s.io/nothing$"):
        gobuild.required_version(GO_MOD, "k8s.io/nothing")


def test_the_shipped_build_modules_name_every_component_version():
    for comp in gobuild.COMPONENTS.values():
        go_mod = (comp.module_dir() / "go.mod").read_text()
        assert gobuild.required_version(go_mod, comp.version_module).startswith("v")
    k8s = (gobuild.BUILD_DIR / "k8s" / "go.mod").read_text()
    # Kubernetes 1.37: the project's one tested version; every staging module at its release
    assert gobuild.required_version(k8s, "k8s.io/kubernetes").startswith("v1.37.")
    replaced = [ln.split() for ln in k8s.splitlines() if "=>" in ln]
    assert replaced and all(r[0] == r[2] and r[3] == "v0.37.2" for r in replaced), replaced


def test_kubernetes_ldflags_stamp_the_version_into_both_version_packages():
    flags = gobuild.ldflags(gobuild.COMPONENTS["kube-apiserver"], "v1.37.2")
    assert flags[:2] == ["-s", "-w"]                            # stripped
    settings = dict(f.split("=", 1) for f in flags[2:] if f != "-X")
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        assert settings[f"{pkg}.gitVersion"] == "v1.37.2"
        assert settings[f"{pkg}.gitMajor"] == "1" and settings[f"{pkg}.gitMinor"] == "37"
        assert settings[f"{pkg}.buildDate"] == "1970-01-01T00:00:00Z"     # reproducible
    assert gobuild.ldflags(gobuild.COMPONENTS["etcd"], "v3.7.0") == ["-s", "-w"]


def _key(**change):
    comp = gobuild.COMPONENTS["kxstatus"]
    args = dict(component=comp, version="v0.37.2", go_version="go1.26.8",
                inputs={"go.mod": b"module x", "go.sum": b"", "cmd/kxstatus/main.go": b"package main"})
    args.update(change)
    return gobuild.build_key(**args)


def test_the_cache_key_changes_with_every_input_that_decides_the_binary():
    base = _key()
    assert _key() == base and len(base) == 12
    changed = [
        _key(version="v0.37.3"),
        _key(go_version="go1.27.3"),
        _key(inputs={"go.mod": b"module x", "go.sum": b"h1:abc", "cmd/kxstatus/main.go": b"package main"}),
        _key(inputs={"go.mod": b"module x", "go.sum": b"", "cmd/kxstatus/main.go": b"package main // v2"}),
        _key(inputs={"go.mod": b"module x", "go.sum": b"", "cmd/kxstatus/other.go": b"package main"}),
        _key(component=gobuild.COMPONENTS["helm"]),
    ]
    assert base not in changed and len(set(changed)) == len(changed)


def test_plan_names_each_binary_by_component_version_and_key(tmp_path):
    planned = gobuild.plan(["kube-apiserver", "kxstatus"], tmp_path, "go1.26.8")
    api, kx = planned
    assert api.path.parent == tmp_path / "bin" and kx.path.parent == tmp_path / "bin"
    assert api.path.name.startswith(f"kube-apiserver-{api.version}-") and api.version.startswith("v1.37.")
    assert kx.path.name.startswith(f"kxstatus-{kx.version}-")
    # the same inputs give the same file; another Go gives another
    assert gobuild.plan(["kxstatus"], tmp_path, "go1.26.8")[0].path == kx.path
    assert gobuild.plan(["kxstatus"], tmp_path, "go1.26.9")[0].path != kx.path


def test_plan_refuses_an_unknown_component(tmp_path):
    with pytest.raises(gobuild.BuildError, match=r"^unknown component 'kubelet-x'; known: kube-apiserver, "):
        gobuild.plan(["kubelet-x"], tmp_path, "go1.26.8")


def test_module_inputs_are_go_mod_go_sum_and_the_module_s_own_go_sources(tmp_path):
    (tmp_path / "cmd" / "x").mkdir(parents=True)
    for name, text in (("go.mod", "module x"), ("go.sum", ""), ("cmd/x/main.go", "package main"),
                       ("README.md", "not an input"), ("tools.go", "package tools")):
        (tmp_path / name).write_text(text)
    assert sorted(gobuild.module_inputs(tmp_path)) == ["cmd/x/main.go", "go.mod", "go.sum", "tools.go"]


def test_go_env_keeps_modules_and_builds_in_the_project_cache_and_go_sum_read_only(tmp_path):
    env = gobuild.go_env(tmp_path)
    assert env["GOMODCACHE"] == str(tmp_path / "mod") and env["GOCACHE"] == str(tmp_path / "build")
    assert "-mod=readonly" in env["GOFLAGS"] and "-trimpath" in env["GOFLAGS"]
    assert env["GOTOOLCHAIN"] == "local" and env["CGO_ENABLED"] == "0"


def test_the_last_line_of_a_failed_build_is_its_error(tmp_path: Path):
    log = tmp_path / "x.log"
    log.write_text("k8s.io/a\nk8s.io/b\n# kube-xdp.local/build/tools/cmd/kxstatus\n"
                   "cmd/kxstatus/main.go:3:1: syntax error: non-declaration statement outside function body\n")
    assert gobuild._last_line(log) == ("cmd/kxstatus/main.go:3:1: syntax error: non-declaration statement "
                                       "outside function body")
    assert gobuild._last_line(tmp_path / "missing.log") == "no log"
