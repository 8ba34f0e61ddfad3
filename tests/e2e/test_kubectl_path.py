"""The kubectl install path against the rig's real API server:
`kubectl apply --server-side -f crds/`, then an example, then `kubectl get xdpp` with the
printer columns, with the rig's kubectl 1.37 (built with the API server by
kube_xdp_rig.gobuild; never whatever kubectl is on PATH). The same path is also taken
through the Python client (server-side apply, and the Table API `kubectl get` itself
uses).

The example is applied as shipped with a server-side dry run, and for real under a
unique name with a node selector that matches no node (other tests on the same rig may
use the example's name, and the session's operator and agents may be running: the
program must not land on a node). Its status is the one the operator's own status code
computes for it (NoNodesSelected), written through the status subresource; a running
operator writes the same values, so the columns are the same whoever wrote them.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import kubernetes
import pytest
import yaml

from kube_xdp_api import names, schema
from kube_xdp_operator.status import aggregate
from kube_xdp_rig import apply as applier
from .. import helm_cli

pytestmark = pytest.mark.rig

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "udp-drop.yaml"
T0 = "2026-01-01T00:00:00Z"
COLUMNS = [c["name"].upper() for c in schema.program_crd()["spec"]["versions"][0]["additionalPrinterColumns"]]


def kubectl(rig, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([helm_cli.kubectl_binary(), "--kubeconfig", rig.kubeconfig, *args], input=stdin, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
    return result


def renamed_example(name: str) -> str:
    """The example as shipped, with only metadata.name changed and placed on no node."""
    text = EXAMPLE.read_text()
    assert text.count("\n  name: udp-drop\n") == 1 and text.count("\nspec:\n") == 1
    text = text.replace("\n  name: udp-drop\n", f"\n  name: {name}\n")
    return text.replace("\nspec:\n", "\nspec:\n  nodeSelector:\n    matchLabels:\n      kubexdp.io/no-such-node: \"true\"\n")


def write_status(admin, name: str) -> dict:
    """The status the operator computes for a program that selects no node."""
    custom = kubernetes.client.CustomObjectsApi(admin)
    program = custom.get_cluster_custom_object(names.GROUP, names.VERSION, names.PROGRAMS, name)
    status = aggregate(program, [], [], T0)
    custom.patch_cluster_custom_object_status(names.GROUP, names.VERSION, names.PROGRAMS, name, {"status": status})
    return status


ROW = ["True", "NoNodesSelected", "0/0", "none"]    # Ready, Reason, Nodes, Modes


def delete_program(admin, name: str) -> None:
    try:
        kubernetes.client.CustomObjectsApi(admin).delete_cluster_custom_object(
            names.GROUP, names.VERSION, names.PROGRAMS, name)
    except kubernetes.client.ApiException as e:
        if e.status != 404:
            raise


def test_kubectl_apply_crds_example_and_get_columns(rig, admin) -> None:
    applied = kubectl(rig, "apply", "--server-side", "-f", str(REPO / "crds"))
    for crd in schema.all_crds():
        assert f"customresourcedefinition.apiextensions.k8s.io/{crd['metadata']['name']} serverside-applied" \
            in applied.stdout
    kubectl(rig, "wait", "--for=condition=Established", "--timeout=30s", "-f", str(REPO / "crds"))

    dry = kubectl(rig, "apply", "--server-side", "--dry-run=server", "-f", str(EXAMPLE))
    assert "xdpprogram.kubexdp.io/udp-drop serverside-applied (server dry run)" in dry.stdout

    name = f"kubectl-{uuid.uuid4().hex[:6]}"
    try:
        kubectl(rig, "apply", "--server-side", "-f", "-", stdin=renamed_example(name))
        write_status(admin, name)
        header, row = kubectl(rig, "get", "xdpp", name).stdout.splitlines()
        assert header.split() == ["NAME"] + [c for c in COLUMNS if c not in ("MODE", "ENTRYPOINT")]
        assert header.split() == ["NAME", "READY", "REASON", "NODES", "MODES", "AGE"]
        assert row.split()[:5] == [name, *ROW]
        header, row = kubectl(rig, "get", "xdpprograms", name, "-o", "wide").stdout.splitlines()
        assert header.split()[-2:] == ["MODE", "ENTRYPOINT"] and row.split()[-2:] == ["native", "xdp_udp_drop"]
        # the category lists it with the attachments and nodes
        assert name in kubectl(rig, "get", names.CATEGORY).stdout
    finally:
        delete_program(admin, name)


def test_kubectl_refuses_an_invalid_program(rig, admin) -> None:
    """The path can fail: the API server's schema refuses a bad mode through kubectl too."""
    kubectl(rig, "apply", "--server-side", "-f", str(REPO / "crds"))
    bad = renamed_example(f"kubectl-bad-{uuid.uuid4().hex[:6]}").replace("mode: native", "mode: turbo")
    result = subprocess.run([helm_cli.kubectl_binary(), "--kubeconfig", rig.kubeconfig, "apply", "--server-side", "-f", "-"],
                            input=bad, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "spec.mode" in result.stderr


def test_python_client_path_and_table_columns(rig, admin) -> None:
    """Server-side apply of crds/ and the example with the Python client, then the Table
    the server renders for `kubectl get` (Accept: as=Table), with the printer columns."""
    applier.apply(admin, applier.load_yaml(REPO / "crds"))
    name = f"python-{uuid.uuid4().hex[:6]}"
    (doc,) = [d for d in yaml.safe_load_all(renamed_example(name)) if d]
    try:
        applier.apply(admin, [doc])
        write_status(admin, name)
        request = admin.param_serialize(
            "GET", f"/apis/{names.GROUP}/{names.VERSION}/{names.PROGRAMS}/{name}",
            header_params={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"}, auth_settings=["BearerToken"])
        raw = admin.call_api(*request)
        raw.read()
        assert raw.status == 200
        response = json.loads(raw.data)
        assert response["kind"] == "Table"
        columns = [c["name"] for c in response["columnDefinitions"]]
        assert columns == ["Name", "Ready", "Reason", "Nodes", "Modes", "Age", "Mode", "Entrypoint"]
        cells = dict(zip(columns, response["rows"][0]["cells"]))
        assert [cells["Name"], cells["Ready"], cells["Reason"], cells["Nodes"], cells["Modes"]] == [name, *ROW]
        assert (cells["Mode"], cells["Entrypoint"]) == ("native", "xdp_udp_drop")
    finally:
        delete_program(admin, name)
