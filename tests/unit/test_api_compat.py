"""The supported Kubernetes versions: the check both controllers run at start, the same
minimum in the chart, and what an operator or agent does facing an older API server (a
stand-in /version endpoint: no older kube-apiserver is built here)."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from kube_xdp_api import compat

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("major, minor, version", [
    ("1", "32", (1, 32)), ("1", "37", (1, 37)), ("1", "32+", (1, 32)), ("2", "0", (2, 0)),
    ("", "", None), ("1", "", None), ("one", "32", None),
], ids=["1.32", "1.37", "provider-plus", "2.0", "empty", "no-minor", "garbage"])
def test_server_version_reads_providers_minor_suffixes(major, minor, version):
    assert compat.server_version(major, minor) == version


@pytest.mark.parametrize("major, minor", [("1", "32"), ("1", "37"), ("1", "40+"), ("2", "1"), ("", "")])
def test_supported_or_unknown_versions_pass(major, minor):
    compat.check(major, minor, f"v{major}.{minor}.0", component="kube-xdp-operator")


@pytest.mark.parametrize("major, minor, git", [("1", "31", "v1.31.4"), ("1", "20", "v1.20.2"), ("1", "30+", "v1.30.9-eks")])
def test_older_servers_are_refused_with_what_to_do(major, minor, git):
    with pytest.raises(compat.UnsupportedKubernetes) as err:
        compat.check(major, minor, git, component="kube-xdp-agent")
    assert str(err.value).startswith(f"kube-xdp-agent: the API server runs Kubernetes {git}, and kube-xdp needs "
                                     "1.32 or later (")
    assert "upgrade the cluster" in str(err.value)


def test_the_chart_states_the_same_minimum():
    chart = yaml.safe_load((REPO / "charts" / "kube-xdp" / "Chart.yaml").read_text())
    assert chart["kubeVersion"] == ">={}.{}.0-0".format(*compat.MIN_KUBERNETES)


class _Version(http.server.BaseHTTPRequestHandler):
    answer: dict = {}

    def do_GET(self):                       # noqa: N802 - http.server's name
        found = self.path.rstrip("/") == "/version"          # the Python client asks for /version/
        body = json.dumps(self.answer if found else {}).encode()
        self.send_response(200 if found else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_):
        pass


@pytest.fixture()
def old_server(tmp_path):
    _Version.answer = {"major": "1", "minor": "31", "gitVersion": "v1.31.4"}
    server = http.server.HTTPServer(("127.0.0.1", 0), _Version)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    yield kubeconfig
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("module, args", [
    ("kube_xdp_operator", ["--liveness", "none"]),
    ("kube_xdp_agent", ["--node-name", "node-1", "--no-inventory"]),
])
def test_a_controller_facing_an_older_server_exits_with_the_message(old_server, module, args):
    proc = subprocess.run([sys.executable, "-m", module, "--kubeconfig", str(old_server), *args],
                          capture_output=True, text=True, timeout=60)
    component = module.replace("_", "-")
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"{component}: the API server runs Kubernetes v1.31.4, and kube-xdp needs 1.32 or later")
