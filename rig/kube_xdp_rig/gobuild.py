"""The rig's Go binaries, built from the project's own Go build modules and cached.

Components (COMPONENTS): kube-apiserver and kubectl from `build/k8s` (k8s.io/kubernetes at
the version its go.mod names, every staging module replaced by its release), etcd from the
same module (the etcd server release that Kubernetes version is built against), and from
`build/tools` the helm v4 CLI and kxstatus (kstatus over objects read from the API server).

Each binary is cached as `<cache>/bin/<name>-<version>-<key>`, where `key` is a digest of
everything that decides its bytes (the module's go.mod and go.sum, the module's own Go
sources, the Go version and the build flags), and linked as `<cache>/bin/<name>`. A cached
binary is used only if its file name matches the current key and it runs and reports the
expected version; otherwise it is rebuilt, and other builds of the same name are removed.
Builds are atomic (a temporary file renamed into place), print a progress line about every
30 seconds and the time taken, and a failure raises one BuildError line naming the
component, the step and the log file.

    python -m kube_xdp_rig.gobuild [NAME ...]     # build what is missing (all by default)
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD_DIR = REPO / "build"
PROGRESS_EVERY = 30.0


class BuildError(RuntimeError):
    """A Go build failed; the message is one line naming the component and the log."""


@dataclasses.dataclass(frozen=True)
class Component:
    name: str                       # the binary's name
    module: str                     # the build module, a folder of build/
    package: str                    # the Go package built
    version_module: str             # the module whose required version is the binary's version
    version_args: tuple[str, ...]   # how the binary prints its version
    ldflags: tuple[str, ...] = ()   # -X settings; "{version}" is replaced
    tags: tuple[str, ...] = ()
    estimate: str = ""              # how long a cold build took on the 2-core VM

    def module_dir(self, build_dir: Path = BUILD_DIR) -> Path:
        return build_dir / self.module


def _k8s_version_ldflags() -> tuple[str, ...]:
    """What Kubernetes' hack/lib/version.sh stamps in, for both version packages (the API
    server's /version and kubectl's client version read them). The build date is fixed so
    that a build is reproducible."""
    out = []
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        out += [f"{pkg}.gitVersion={{version}}", f"{pkg}.gitMajor={{major}}", f"{pkg}.gitMinor={{minor}}",
                f"{pkg}.gitTreeState=clean", f"{pkg}.buildDate=1970-01-01T00:00:00Z"]
    return tuple(out)


COMPONENTS: dict[str, Component] = {c.name: c for c in (
    # providerless: without the in-tree cloud providers' SDKs, which the rig never uses.
    Component("kube-apiserver", "k8s", "k8s.io/kubernetes/cmd/kube-apiserver", "k8s.io/kubernetes",
              ("--version",), _k8s_version_ldflags(), ("providerless",), "about 5 minutes"),
    Component("kubectl", "k8s", "k8s.io/kubernetes/cmd/kubectl", "k8s.io/kubernetes",
              ("version", "--client"), _k8s_version_ldflags(), ("providerless",), "about 2 minutes"),
    Component("etcd", "k8s", "./cmd/etcd", "go.etcd.io/etcd/server/v3", ("--version",),
              estimate="about 1 minute"),
    Component("helm", "tools", "helm.sh/helm/v4/cmd/helm", "helm.sh/helm/v4", ("version", "--short"),
              ("helm.sh/helm/v4/internal/version.version={version}",
               "helm.sh/helm/v4/internal/version.gitTreeState=clean"), estimate="about 2 minutes"),
    Component("kxstatus", "tools", "./cmd/kxstatus", "sigs.k8s.io/cli-utils", ("--version",),
              ("main.cliUtilsVersion={version}",), estimate="about 1 minute"),
)}


# --- pure: versions and keys ---------------------------------------------------------------
_REQUIRE_RE = re.compile(r"^\s*(?:require\s+)?(\S+)\s+(v\S+)(?:\s*//.*)?$")


def required_version(go_mod: str, module: str) -> str:
    """The version go.mod requires of `module` (from a require line or block)."""
    for line in go_mod.splitlines():
        m = _REQUIRE_RE.match(line)
        if m and m.group(1) == module and "=>" not in line:
            return m.group(2)
    raise BuildError(f"go.mod does not require {module}")


def ldflags(component: Component, version: str) -> list[str]:
    major, minor = (version.lstrip("v").split(".") + ["", ""])[:2]
    flags = ["-s", "-w"]
    for setting in component.ldflags:
        flags += ["-X", setting.format(version=version, major=major, minor=minor)]
    return flags


def build_key(component: Component, version: str, go_version: str, inputs: dict[str, bytes]) -> str:
    """A digest of everything that decides the binary's bytes: the module's files (path ->
    content), the Go version, the package, tags and linker flags."""
    h = hashlib.sha256()
    for part in (component.package, version, go_version, " ".join(component.tags),
                 " ".join(ldflags(component, version))):
        h.update(part.encode() + b"\0")
    for path in sorted(inputs):
        h.update(path.encode() + b"\0" + hashlib.sha256(inputs[path]).digest())
    return h.hexdigest()[:12]


def module_inputs(module_dir: Path) -> dict[str, bytes]:
    """go.mod, go.sum and the module's own Go sources, by path relative to the module."""
    files = [module_dir / "go.mod", module_dir / "go.sum", *sorted(module_dir.rglob("*.go"))]
    return {str(f.relative_to(module_dir)): f.read_bytes() for f in files if f.is_file()}


# --- side effects: the go command, the cache ------------------------------------------------
def go_binary() -> str:
    found = shutil.which("go") or ("/usr/local/go/bin/go" if os.access("/usr/local/go/bin/go", os.X_OK) else None)
    if not found:
        raise BuildError("the go command is not installed (Go 1.26 or later is needed to build the rig's "
                         "Kubernetes binaries): install Go, then rerun 'make binaries'")
    return found


def go_env(go_dir: Path) -> dict[str, str]:
    """Module and build caches under the project's cache; go.sum must already hold every
    module (-mod=readonly: a build never changes what it depends on); no toolchain switch."""
    return {**os.environ, "GOMODCACHE": str(go_dir / "mod"), "GOCACHE": str(go_dir / "build"),
            "GOFLAGS": "-mod=readonly -trimpath -buildvcs=false", "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"}


def _go_version(go: str) -> str:
    out = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True)
    if out.returncode != 0 or not out.stdout.strip():
        raise BuildError(f"'{go} env GOVERSION' failed: {out.stderr.strip()[-300:]}")
    return out.stdout.strip()


def reports_version(binary: Path, component: Component, version: str) -> bool:
    """The binary runs and prints the version it should have."""
    if not binary.is_file():
        return False
    try:
        out = subprocess.run([str(binary), *component.version_args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and version.lstrip("v") in (out.stdout + out.stderr)


@dataclasses.dataclass(frozen=True)
class Planned:
    component: Component
    version: str
    path: Path          # <cache>/bin/<name>-<version>-<key>


def plan(names: list[str], cache_dir: Path, go_version: str, build_dir: Path = BUILD_DIR) -> list[Planned]:
    out = []
    for name in names:
        if name not in COMPONENTS:
            raise BuildError(f"unknown component {name!r}; known: {', '.join(COMPONENTS)}")
        comp = COMPONENTS[name]
        mod_dir = comp.module_dir(build_dir)
        version = required_version((mod_dir / "go.mod").read_text(), comp.version_module)
        key = build_key(comp, version, go_version, module_inputs(mod_dir))
        out.append(Planned(comp, version, cache_dir / "bin" / f"{name}-{version}-{key}"))
    return out


def say(message: str) -> None:
    print(message, flush=True)


def ensure(names: list[str] | None = None, cache_dir: Path | None = None, log=say,
           build_dir: Path | None = None, go_dir: Path | None = None) -> dict[str, Path]:
    """Build the named components (all by default) that are not cached and working; return
    name -> binary path. Each is also linked as <cache>/bin/<name>. The Go module and build
    caches are <cache>/go unless `go_dir` says otherwise."""
    from .config import DEFAULT_CACHE
    cache_dir = cache_dir or DEFAULT_CACHE
    build_dir = build_dir or BUILD_DIR
    go_dir = go_dir or cache_dir / "go"
    names = list(names or COMPONENTS)
    bin_dir = cache_dir / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    go = go_binary()
    planned = plan(names, cache_dir, _go_version(go), build_dir)
    downloaded: set[str] = set()
    out = {}
    for p in planned:
        if not reports_version(p.path, p.component, p.version):
            if p.path.exists():
                log(f"build: the cached {p.path.name} does not run or reports another version: rebuilding it")
                p.path.unlink()
            if p.component.module not in downloaded:
                t0 = time.monotonic()
                log(f"build: fetching the Go modules of build/{p.component.module} (from the module proxy the "
                    f"first time, then from {go_dir / 'mod'})")
                _download(go, p.component, cache_dir, build_dir, go_dir)
                log(f"build: Go modules of build/{p.component.module} ready in {_mmss(time.monotonic() - t0)}")
                downloaded.add(p.component.module)
            _build(go, p, cache_dir, build_dir, go_dir, log)
        _link(bin_dir, p)
        out[p.component.name] = p.path
    return out


def _log_file(cache_dir: Path, what: str) -> Path:
    logs = cache_dir / "build-logs"
    logs.mkdir(parents=True, exist_ok=True)
    return logs / f"{what}.log"


def _download(go: str, comp: Component, cache_dir: Path, build_dir: Path, go_dir: Path) -> None:
    log_file = _log_file(cache_dir, f"download-{comp.module}")
    with open(log_file, "w") as f:
        proc = subprocess.run([go, "mod", "download"], cwd=comp.module_dir(build_dir), env=go_env(go_dir),
                              stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise BuildError(f"{comp.name}: downloading the Go modules of build/{comp.module} failed "
                         f"({_last_line(log_file)}; log: {log_file}): check access to the Go module proxy, "
                         "then rerun 'make binaries'")


def _build(go: str, p: Planned, cache_dir: Path, build_dir: Path, go_dir: Path, log) -> None:
    comp = p.component
    log_file = _log_file(cache_dir, comp.name)
    tmp = p.path.with_name(f".{p.path.name}.tmp{os.getpid()}")
    cmd = [go, "build", "-v", "-o", str(tmp), "-ldflags", " ".join(ldflags(comp, p.version))]
    if comp.tags:
        cmd += ["-tags", ",".join(comp.tags)]
    cmd.append(comp.package)
    log(f"build: {comp.name} {p.version}: building from build/{comp.module} "
        f"({comp.estimate or 'a few minutes'} cold on 2 cores; log: {log_file})")
    t0 = time.monotonic()
    with open(log_file, "w") as f:
        proc = subprocess.Popen(cmd, cwd=comp.module_dir(build_dir), env=go_env(go_dir),
                                stdout=f, stderr=subprocess.STDOUT)
        done = threading.Event()
        ticker = threading.Thread(target=_progress, args=(comp.name, log_file, t0, done, log), daemon=True)
        ticker.start()
        try:
            rc = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            tmp.unlink(missing_ok=True)
            raise
        finally:
            done.set()
            ticker.join()
    if rc != 0:
        tmp.unlink(missing_ok=True)
        raise BuildError(f"{comp.name}: go build failed ({_last_line(log_file)}; log: {log_file})")
    if not reports_version(tmp, comp, p.version):
        tmp.unlink(missing_ok=True)
        raise BuildError(f"{comp.name}: the binary built does not report version {p.version} "
                         f"('{tmp.name} {' '.join(comp.version_args)}'; log: {log_file})")
    os.replace(tmp, p.path)
    for old in p.path.parent.glob(f"{comp.name}-v*"):
        if old != p.path and old.is_file():
            old.unlink()            # another version or key of the same component
    log(f"build: {comp.name} {p.version} built in {_mmss(time.monotonic() - t0)} "
        f"({p.path.stat().st_size / 2**20:.0f} MiB)")


def _progress(name: str, log_file: Path, t0: float, done: threading.Event, log) -> None:
    while not done.wait(PROGRESS_EVERY):
        try:
            packages = sum(1 for _ in open(log_file, errors="replace"))
        except OSError:
            packages = 0
        log(f"build: {name}: still building, {_mmss(time.monotonic() - t0)} so far ({packages} packages compiled)")


def _link(bin_dir: Path, p: Planned) -> None:
    link = bin_dir / p.component.name
    if link.is_symlink() and os.readlink(link) == p.path.name:
        return
    tmp = bin_dir / f".{p.component.name}.link{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(p.path.name)
    os.replace(tmp, link)


def _last_line(log_file: Path) -> str:
    try:
        lines = [ln.strip() for ln in log_file.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    errors = [ln for ln in lines if "error" in ln.lower() or ln.startswith(("go: ", "#"))]
    return (errors or lines or ["no output"])[-1][:300]


def _mmss(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def binary(name: str, cache_dir: Path | None = None) -> Path:
    """The cached binary for `name`, built first if needed."""
    return ensure([name], cache_dir)[name]


def main(argv: list[str] | None = None) -> int:
    import argparse
    parser = argparse.ArgumentParser(prog="python -m kube_xdp_rig.gobuild",
                                     description="Build the rig's Go binaries that are not cached yet.",
                                     epilog=f"components: {', '.join(COMPONENTS)}")
    parser.add_argument("names", nargs="*", metavar="NAME", help="components to build (default: all)")
    args = parser.parse_args(argv)
    t0 = time.monotonic()
    try:
        built = ensure(args.names or None)
    except BuildError as e:
        print(f"build: {e}", file=sys.stderr)
        return 1
    print(f"build: {len(built)} binaries ready in {built and next(iter(built.values())).parent} "
          f"({_mmss(time.monotonic() - t0)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
