"""The real helm v4 CLI for the chart tests, run as a user runs it.

The binary is the one kube_xdp_rig.gobuild builds from helm.sh/helm/v4/cmd/helm (cached in
~/.cache/kube-xdp/bin; built first if missing). Helm keeps a cache, a configuration and
plugins under the user's home: the tests give it directories of their own
(HELM_CACHE_HOME, HELM_CONFIG_HOME, HELM_DATA_HOME in a temporary directory), so they
neither read nor change a person's Helm set-up, and KUBECONFIG is never inherited: a
command talks to a cluster only when a test passes --kubeconfig. Charts are local
directories; nothing is downloaded.

`run` never raises on Helm's exit status (a test asserts on it, and on Helm's own
words); `ok` asserts success and shows Helm's stderr when it fails.
"""

from __future__ import annotations

import atexit
import functools
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import yaml

from kube_xdp_rig import gobuild

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "kube-xdp"


@functools.cache
def binary() -> str:
    return str(gobuild.binary("helm"))


@functools.cache
def kubectl_binary() -> str:
    return str(gobuild.binary("kubectl"))


@functools.cache
def _home() -> Path:
    home = Path(tempfile.mkdtemp(prefix="kube-xdp-helm-"))
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    return home


def env() -> dict[str, str]:
    home = _home()
    out = {k: v for k, v in os.environ.items() if not k.startswith("HELM_") and k != "KUBECONFIG"}
    out.update(HELM_CACHE_HOME=str(home / "cache"), HELM_CONFIG_HOME=str(home / "config"),
               HELM_DATA_HOME=str(home / "data"))
    return out


def run(*args: str, kubeconfig: str | None = None, values: dict | None = None, stdin: str | None = None,
        timeout: float = 180) -> subprocess.CompletedProcess:
    """`helm ARGS`, with `--kubeconfig` when given; `values` go in as `-f -` (YAML on stdin)."""
    argv = [binary(), *args]
    if kubeconfig:
        argv += ["--kubeconfig", kubeconfig]
    if values is not None:
        assert stdin is None, "values and stdin both want helm's stdin"
        argv += ["-f", "-"]
        stdin = yaml.safe_dump(values)
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout, env=env())


def ok(*args: str, **kw) -> subprocess.CompletedProcess:
    result = run(*args, **kw)
    assert result.returncode == 0, f"helm {' '.join(args)} failed ({result.returncode}): {result.stderr}"
    return result


def template(values: dict | None = None, *, release: str, namespace: str, chart: Path = CHART,
             kube_version: str | None = None, args: tuple[str, ...] = ()) -> str:
    """`helm template RELEASE CHART -n NAMESPACE [--kube-version V] -f -`: the manifest."""
    extra = ("--kube-version", kube_version) if kube_version else ()
    return ok("template", release, str(chart), "--namespace", namespace, *extra, *args, values=values or {}).stdout


def documents(manifest: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(manifest) if d]


def render(values: dict | None = None, **kw) -> list[dict]:
    """The objects `helm template` renders (templates only: Helm prints crds/ only with
    --include-crds, and NOTES.txt never)."""
    return documents(template(values, **kw))


_LINT_MESSAGE = re.compile(r"^\[(INFO|WARNING|ERROR)\] ", re.M)


def lint(chart: Path = CHART, values: dict | None = None, *, kube_version: str | None = None,
         strict: bool = True) -> tuple[int, list[tuple[str, str]]]:
    """`helm lint [--strict] [--kube-version V] -f - CHART`: the exit status and the
    messages as (severity, text), a message's continuation lines included."""
    args = ["lint", *(["--strict"] if strict else []), *(["--kube-version", kube_version] if kube_version else [])]
    result = run(*args, str(chart), values=values or {})
    starts = [m.start() for m in _LINT_MESSAGE.finditer(result.stdout)]
    tail = result.stdout.find("\n\n", starts[-1]) if starts else -1
    ends = starts[1:] + [tail if tail != -1 else len(result.stdout)]
    messages = []
    for start, end in zip(starts, ends):
        severity, text = _LINT_MESSAGE.match(result.stdout, start).group(1), result.stdout[start:end]
        messages.append((severity, text[text.index("]") + 2:].strip()))
    return result.returncode, messages


def show(what: str, chart: Path = CHART) -> str:
    """`helm show chart|values|crds|readme CHART`."""
    return ok("show", what, str(chart)).stdout
