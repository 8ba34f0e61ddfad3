"""The CRD schemas (kube_xdp_api.schema): structural, complete for what controllers write,
and identical to the generated files in crds/."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from kube_xdp_api import names, schema
from kube_xdp_operator.status import aggregate, stalled_status

REPO = Path(__file__).resolve().parents[2]
CRDS = {crd["spec"]["names"]["kind"]: crd for crd in schema.all_crds()}
KINDS = sorted(CRDS)
JUNCTORS = ("oneOf", "anyOf", "allOf", "not")


def walk(sch: dict[str, Any], path: str = ""):
    """Yield (path, schema) for every schema node outside logical junctors."""
    yield path, sch
    for key, sub in sch.get("properties", {}).items():
        yield from walk(sub, f"{path}.{key}")
    if isinstance(sch.get("items"), dict):
        yield from walk(sch["items"], f"{path}[]")
    if isinstance(sch.get("additionalProperties"), dict):
        yield from walk(sch["additionalProperties"], f"{path}{{}}")


def junctor_branches(sch: dict[str, Any]):
    for key in JUNCTORS:
        value = sch.get(key)
        for branch in (value if isinstance(value, list) else [value] if value else []):
            yield key, branch


@pytest.mark.parametrize("kind", KINDS)
def test_crd_identity(kind):
    crd = CRDS[kind]
    spec = crd["spec"]
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert spec["group"] == names.GROUP
    assert spec["scope"] == "Cluster"
    assert crd["metadata"]["name"] == f"{spec['names']['plural']}.{names.GROUP}"
    assert spec["names"]["categories"] == [names.CATEGORY]
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == (names.VERSION, True, True)
    assert version["subresources"] == {"status": {}}


def test_short_names():
    assert {k: CRDS[k]["spec"]["names"]["shortNames"] for k in KINDS} == {
        "XdpAttachment": ["xdpa"], "XdpNode": ["xdpn"], "XdpProgram": ["xdpp"]}


@pytest.mark.parametrize("kind", KINDS)
def test_schema_is_structural(kind):
    """Every node has a type; junctors only hold value validations (v1 structural rules)."""
    root = schema.openapi_schema(CRDS[kind])
    for path, node in walk(root):
        assert node.get("type") in ("object", "array", "string", "integer", "boolean"), path or "<root>"
        assert not ("properties" in node and "additionalProperties" in node), path
        if node["type"] == "array":
            assert "items" in node, path
        for key, branch in junctor_branches(node):
            forbidden = {"type", "properties", "items", "additionalProperties", "description", "default",
                         "nullable", "x-kubernetes-preserve-unknown-fields"}
            assert not forbidden & set(branch), f"{path}.{key}: {forbidden & set(branch)}"
        if node.get("x-kubernetes-list-type") == "map":
            keys = node["x-kubernetes-list-map-keys"]
            assert set(keys) <= set(node["items"].get("required", [])), f"{path}: map keys must be required"
        if node.get("x-kubernetes-list-type") == "set":
            assert node["items"]["type"] in ("string", "integer", "boolean"), path
        for key in node.get("required", []):
            assert key in node.get("properties", {}), f"{path}: required {key} undeclared"


@pytest.mark.parametrize("kind", KINDS)
def test_metadata_restricts_only_the_name(kind):
    metadata = schema.openapi_schema(CRDS[kind])["properties"]["metadata"]
    assert metadata["type"] == "object"
    assert set(metadata.get("properties", {})) <= {"name", "generateName"}


def test_program_name_is_a_dns_label_in_the_schema():
    metadata = schema.openapi_schema(CRDS["XdpProgram"])["properties"]["metadata"]
    assert metadata["properties"]["name"] == {"type": "string", "maxLength": 63,
                                              "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}


def test_no_defaults_in_the_attachment_spec():
    """The operator writes every field; a server-side default would make wanted != stored forever."""
    spec = schema.openapi_schema(CRDS["XdpAttachment"])["properties"]["spec"]
    assert [path for path, node in walk(spec) if "default" in node] == []


def column_path_declared(root: dict[str, Any], json_path: str) -> bool:
    """Does a printer column's simple JSONPath name declared fields?"""
    path = re.sub(r"\[\?\(@\.[^)]*\)\]|\[\*\]", "", json_path).lstrip(".")
    node = root
    for part in path.split("."):
        if node.get("type") == "array":
            node = node["items"]
        if part not in node.get("properties", {}):
            return part in ("creationTimestamp",) and node is root["properties"]["metadata"]
        node = node["properties"][part]
    return True


@pytest.mark.parametrize("kind", KINDS)
def test_printer_columns_read_declared_fields(kind):
    crd = CRDS[kind]
    root = schema.openapi_schema(crd)
    for column in crd["spec"]["versions"][0]["additionalPrinterColumns"]:
        assert column_path_declared(root, column["jsonPath"]), column


def test_program_printer_columns():
    columns = CRDS["XdpProgram"]["spec"]["versions"][0]["additionalPrinterColumns"]
    default_columns = {c["name"]: c["jsonPath"] for c in columns if not c.get("priority")}
    assert default_columns == {
        "Ready": '.status.conditions[?(@.type=="Ready")].status',
        "Reason": '.status.conditions[?(@.type=="Ready")].reason',
        "Nodes": ".status.nodeSummary",
        "Modes": ".status.modeSummary",
        "Age": ".metadata.creationTimestamp",
    }


# --- Every status field a controller writes is declared (else it is pruned silently) --------
def undeclared(sch: dict[str, Any], value: Any, path: str = "status") -> list[str]:
    missing = []
    if isinstance(value, dict):
        props = sch.get("properties")
        for key, item in value.items():
            if props is not None and key in props:
                missing += undeclared(props[key], item, f"{path}.{key}")
            elif isinstance(sch.get("additionalProperties"), dict):
                missing += undeclared(sch["additionalProperties"], item, f"{path}.{key}")
            else:
                missing.append(f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            missing += undeclared(sch.get("items", {}), item, f"{path}[{i}]")
    return missing


def _attachment(node: str, *, ready: bool, stalled_reason: str | None = None) -> dict[str, Any]:
    conditions = [{"type": "Ready", "status": "True" if ready else "False",
                   "reason": "Attached" if ready else (stalled_reason or "Progressing"), "message": "m",
                   "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}]
    if stalled_reason:
        conditions.append({"type": "Stalled", "status": "True", "reason": stalled_reason, "message": "error: x",
                           "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1})
    return {"metadata": {"name": f"p.{node}", "generation": 1},
            "spec": {"nodeName": node, "programGeneration": 2},
            "status": {"observedGeneration": 1, "conditions": conditions,
                       "interfaces": [{"name": "eth0", "mode": "native"}, {"name": "eth1", "mode": "generic"}]}}


@pytest.mark.parametrize(
    "scenario",
    ["mixed", "zero-nodes", "deleting", "stalled-status"],
)
def test_program_status_written_by_the_operator_is_declared(scenario):
    program = {"metadata": {"name": "p", "uid": "u", "generation": 2}, "spec": {}}
    attachments = [_attachment("n1", ready=True), _attachment("n2", ready=False, stalled_reason="CompileError"),
                   _attachment("n3", ready=False)]
    now = "2026-01-01T00:00:00Z"
    if scenario == "mixed":
        status = aggregate(program, attachments, ["n1", "n2", "n3", "n4"], now)
    elif scenario == "zero-nodes":
        status = aggregate(program, [], [], now)
    elif scenario == "deleting":
        program["metadata"]["deletionTimestamp"] = now
        status = aggregate(program, attachments, ["n1"], now)
    else:
        status = stalled_status(program, "InvalidSpec", "bad", now)
    status_schema = schema.program_status_schema()
    assert undeclared(status_schema, status) == []
    assert set(status) == set(status_schema["properties"]), "aggregate writes every declared key"
    # Values the printer columns and kstatus readers rely on are present.
    assert {c["type"] for c in status["conditions"]} == {"Ready", "Reconciling", "Stalled"}


# The XdpAttachment status as docs/api.md lists it, every field set.
ATTACHMENT_STATUS = {
    "observedGeneration": 2,
    "conditions": [{"type": "Ready", "status": "False", "reason": "CompileError", "message": "x",
                    "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 2}],
    "reason": "CompileError",
    "message": "prog.c:1:1: error",
    "interfaces": [{"name": "eth0", "mode": "native", "progId": 42, "tag": "a1b2c3d4e5f60718",
                    "pinPath": "/sys/fs/bpf/kube-xdp/p/0123456789ab/prog", "ready": True,
                    "reason": "Attached", "message": "ok"}],
    "compile": {"durationMs": 950, "cacheHit": False, "digest": "0123456789ab"},
}

NODE_STATUS = {
    "observedGeneration": 1,
    "conditions": ATTACHMENT_STATUS["conditions"],
    "kernelRelease": "6.18.0-1-amd64",
    "btf": True,
    "bccVersion": "0.26.0",
    "headers": {"found": True, "path": "/lib/modules/6.18.0-1-amd64/build"},
    "netdevFamily": True,
    "interfaceCount": 1,
    "modeSummary": "native=1,generic=1",
    "interfaces": [{"name": "eth0", "ifindex": 2, "driver": "veth", "kind": "veth", "modes": ["native", "generic"],
                    "modesFrom": "probe", "probed": True, "xdpFeatures": ["basic", "redirect", "rx-sg"],
                    "unknownModes": [], "unsupported": [{"mode": "offload", "message": "EINVAL"}],
                    "attached": [{"mode": "native", "progId": 42}]}],
}


@pytest.mark.parametrize(
    ("kind", "status"),
    [("XdpAttachment", ATTACHMENT_STATUS), ("XdpNode", NODE_STATUS)],
    ids=["attachment", "node"],
)
def test_agent_status_fields_are_declared(kind, status):
    status_schema = schema.openapi_schema(CRDS[kind])["properties"]["status"]
    assert undeclared(status_schema, status) == []
    assert set(status) == set(status_schema["properties"])


def test_conditions_schema_follows_metav1():
    conditions = schema.conditions_schema()
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    item = conditions["items"]
    assert item["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    assert item["properties"]["lastTransitionTime"]["format"] == "date-time"
    assert item["properties"]["observedGeneration"]["type"] == "integer"
    assert set(item["required"]) == {"type", "status", "reason", "message", "lastTransitionTime"}


# --- Generated files --------------------------------------------------------------------------
def test_crds_directory_matches_the_schema():
    """Fails when schema.py changed without `make crds` (or crds/ was edited by hand)."""
    problems = schema.check_dir(REPO / "crds")
    assert problems == [], "\n".join(problems) + "\nrun: python -m kube_xdp_api.schema --write crds/"


@pytest.mark.parametrize("kind", KINDS)
def test_generated_yaml_loads_back_to_the_same_crd(kind):
    crd = CRDS[kind]
    text = schema.render(crd)
    assert text.startswith("# Generated from api/kube_xdp_api/schema.py")
    assert yaml.safe_load(text) == crd


def test_cli_write_then_check(tmp_path, capsys):
    assert schema.main(["--check", str(tmp_path)]) == 1  # empty dir: every file missing
    assert schema.main(["--write", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "xdpattachments.kubexdp.io.yaml", "xdpnodes.kubexdp.io.yaml", "xdpprograms.kubexdp.io.yaml"]
    assert schema.main(["--check", str(tmp_path)]) == 0
    path = tmp_path / "xdpprograms.kubexdp.io.yaml"
    path.write_text(path.read_text().replace("maxLength: 63", "maxLength: 64", 1))
    capsys.readouterr()
    assert schema.main(["--check", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "-                maxLength: 64" in err and "+                maxLength: 63" in err
    assert "--write" in err
