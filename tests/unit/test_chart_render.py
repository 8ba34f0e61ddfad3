"""The Helm chart (charts/kube-xdp) through the real helm v4 CLI, offline.

`helm lint --strict`, `helm template` and `helm show`, exactly as a user or a CI job
runs them (tests/helm_cli.py: the binary built by kube_xdp_rig.gobuild), for the oldest
Kubernetes the chart supports. No cluster: the install, upgrade, rollback and uninstall
against the rig's API server are in tests/e2e/test_chart.py.
"""

from __future__ import annotations

import collections
import json
import re
import shutil
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from kube_xdp_agent.inventory import DEFAULT_PROBE_PATTERN, interface_selector
from kube_xdp_api import names, rbac, schema

from .. import helm_cli

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kube-xdp"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
RELEASE, NAMESPACE = "kube-xdp", "kube-xdp"
KUBE_VERSION = "v1.32.0"     # the oldest the chart supports (Chart.yaml kubeVersion; the rig runs 1.37.2)
SCHEMA_REFUSAL = "values don't meet the specifications of the schema(s)"      # Helm's own words


def render(values: dict | None = None, *, release: str = RELEASE, namespace: str = NAMESPACE) -> list[dict]:
    return helm_cli.render(values, release=release, namespace=namespace, kube_version=KUBE_VERSION)


def notes(values: dict | None = None) -> str:
    """NOTES.txt as `helm install` prints it (a client-side dry run: no cluster)."""
    out = helm_cli.ok("install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client", "-o", "json",
                      values=values or {})
    return json.loads(out.stdout)["info"]["notes"]


def chart_metadata() -> dict:
    return yaml.safe_load(helm_cli.show("chart"))


def values_schema() -> dict:
    return json.loads((CHART / "values.schema.json").read_text())


def refused_by_the_schema(values: dict) -> str:
    """Helm's error when `helm template` refuses `values` (asserts that it does)."""
    result = helm_cli.run("template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION,
                          values=values)
    assert result.returncode != 0, f"helm template accepted {values}"
    return result.stderr


def one(docs: list[dict], kind: str, name_suffix: str = "") -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"expected one {kind} *{name_suffix}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def ci_values(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


# --- lint, scenarios, schema ---------------------------------------------------------------
def lint_problems(chart: Path, values: dict | None = None) -> list[str]:
    """What `helm lint --strict` reports above INFO (the only INFO is "icon is
    recommended"); a failing exit status without such a message is a problem too."""
    status, messages = helm_cli.lint(chart, values, kube_version=KUBE_VERSION)
    problems = [f"[{severity}] {text}" for severity, text in messages if severity != "INFO"]
    return problems or ([f"helm lint exited {status}"] if status else [])


def test_ci_scenarios_exist() -> None:
    assert {p.name for p in CI_VALUES} >= {
        "default-values.yaml", "capabilities-values.yaml", "privileged-values.yaml",
        "priorityclass-tolerations-values.yaml", "custom-image-values.yaml"}


@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.name)
def test_strict_lint_is_clean(values_file: Path) -> None:
    assert lint_problems(CHART, ci_values(values_file)) == []


# What every scenario renders at least; ADMISSION_KINDS may come on top (the per-node
# admission policy, templates/admission-policy.yaml), nothing else.
WORKLOAD_KINDS = collections.Counter({"ClusterRole": 2, "ClusterRoleBinding": 2, "DaemonSet": 1, "Deployment": 1,
                                      "ServiceAccount": 2})
ADMISSION_KINDS = {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}


def assert_chart_kinds(kinds: list[str]) -> None:
    rendered = collections.Counter(kinds)
    assert not WORKLOAD_KINDS - rendered, f"missing: {WORKLOAD_KINDS - rendered}"
    assert set(rendered - WORKLOAD_KINDS) <= ADMISSION_KINDS, f"unexpected: {rendered - WORKLOAD_KINDS}"


@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.name)
def test_every_ci_scenario_renders_and_validates(values_file: Path) -> None:
    """`helm template -f ci/X-values.yaml` (which validates the values against the
    schema first) renders the operator, the agent and their RBAC."""
    out = helm_cli.ok("template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION,
                      "-f", str(values_file))
    assert_chart_kinds([d["kind"] for d in helm_cli.documents(out.stdout)])


def test_the_kind_check_can_fail() -> None:
    with pytest.raises(AssertionError):
        assert_chart_kinds(["ClusterRole", "ClusterRoleBinding", "DaemonSet", "Deployment", "ServiceAccount"])
    with pytest.raises(AssertionError):
        assert_chart_kinds(list(WORKLOAD_KINDS.elements()) + ["Secret"])
    assert_chart_kinds(list(WORKLOAD_KINDS.elements()) + sorted(ADMISSION_KINDS))


def test_kubernetes_older_than_the_minimum_is_refused() -> None:
    """Chart.yaml's kubeVersion (>=1.32.0-0): helm refuses to render (and so to install)
    for 1.31 with its own message; 1.32.0 and a vendor build of 1.32 pass. (`helm
    install` checks the same constraint against the server's version.)"""
    for old in ("1.31.0", "v1.31.9"):
        result = helm_cli.run("template", RELEASE, str(CHART), "--kube-version", old)
        assert result.returncode != 0
        assert (f"chart requires kubeVersion: >=1.32.0-0 which is incompatible with Kubernetes "
                f"v{old.removeprefix('v')}") in result.stderr, result.stderr
    for supported in ("1.32.0", "v1.32.4-eks-4f4795d", "1.37.2"):
        helm_cli.ok("template", RELEASE, str(CHART), "--kube-version", supported)


def test_lint_catches_a_broken_chart(tmp_path: Path) -> None:
    """The lint test can fail: a template with a YAML error is reported."""
    broken = tmp_path / "kube-xdp"
    shutil.copytree(CHART, broken)
    path = broken / "templates" / "serviceaccounts.yaml"
    path.write_text(path.read_text().replace("kind: ServiceAccount", "kind: ServiceAccount\n  oops: [", 1))
    assert lint_problems(broken) != []


# Refused since the audit of issue 5; each is also checked through `helm lint --strict`.
NEW_REFUSALS = {
    "agent-env-value-and-valueFrom": {"agent": {"extraEnv": [
        {"name": "X", "value": "1", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]}},
    "operator-env-value-and-valueFrom": {"operator": {"extraEnv": [
        {"name": "X", "value": "1", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]}},
    "agent-env-overrides-node-name": {"agent": {"extraEnv": [{"name": "NODE_NAME", "value": "node-9"}]}},
    "agent-env-overrides-node-name-from": {"agent": {"extraEnv": [
        {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]}},
    "env-name-not-a-variable": {"agent": {"extraEnv": [{"name": "1=X", "value": "1"}]}},
    "common-label-overrides-name": {"commonLabels": {"app.kubernetes.io/name": "other"}},
    "common-label-overrides-instance": {"commonLabels": {"app.kubernetes.io/instance": "other"}},
    "common-label-overrides-version": {"commonLabels": {"app.kubernetes.io/version": "9"}},
    "common-label-overrides-chart": {"commonLabels": {"helm.sh/chart": "other-1.0"}},
    "common-label-bad-value": {"commonLabels": {"team": "not a label value"}},
}

BAD_VALUES = {
    "unknown-top-level-key": {"replicas": 2},
    "unknown-nested-key": {"agent": {"bpffs": {"propagation": "Bidirectional"}}},
    "typo-in-operator": {"operator": {"livenes": {"port": 8080}}},
    "capability-with-cap-prefix": {"agent": {"capabilities": ["CAP_BPF"]}},
    "capability-lowercase": {"agent": {"capabilities": ["bpf"]}},
    "no-capabilities": {"agent": {"capabilities": []}},
    "privileged-not-bool": {"agent": {"privileged": "yes"}},
    "bad-pull-policy": {"image": {"pullPolicy": "Sometimes"}},
    "bad-digest": {"image": {"digest": "sha256:xyz"}},
    "empty-repository": {"image": {"repository": ""}},
    "port-out-of-range": {"operator": {"liveness": {"port": 70000}}},
    "resync-zero": {"agent": {"resync": 0}},
    "max-unavailable-zero": {"agent": {"maxUnavailable": 0}},
    "max-unavailable-bad-percent": {"agent": {"maxUnavailable": "150%"}},
    "relative-bpffs": {"agent": {"bpffs": {"path": "sys/fs/bpf"}}},
    "bad-seccomp": {"agent": {"seccompProfile": "Localhost"}},
    "bad-toleration-operator": {"agent": {"tolerations": [{"operator": "Maybe"}]}},
    "unknown-resources-key": {"agent": {"resources": {"request": {"cpu": "1"}}}},
    "bad-priority-class": {"agent": {"priorityClassName": "Not_A_Name"}},
    "env-without-name": {"agent": {"extraEnv": [{"value": "x"}]}},
    "capability-not-linux": {"agent": {"capabilities": ["BPF", "NET_ADMN"]}},
    "capability-made-up": {"agent": {"capabilities": ["ROOT"]}},
    "cleanup-timeout-zero": {"operator": {"agentCleanupTimeoutSeconds": 0}},
    "cleanup-timeout-not-integer": {"operator": {"agentCleanupTimeoutSeconds": "10m"}},
    "inventory-interfaces-not-a-string": {"agent": {"inventoryInterfaces": ["eth0"]}},
    **NEW_REFUSALS,
}


@pytest.mark.parametrize("values", BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_values_violating_the_schema_are_refused(values: dict) -> None:
    """`helm template` refuses them at the schema, before rendering anything."""
    assert SCHEMA_REFUSAL in refused_by_the_schema(values)


@pytest.mark.parametrize("values", NEW_REFUSALS.values(), ids=NEW_REFUSALS.keys())
def test_strict_lint_refuses_them_too(values: dict) -> None:
    assert any(SCHEMA_REFUSAL in p for p in lint_problems(CHART, values))


ALLOWED_VALUES = {
    "env-value": {"agent": {"extraEnv": [{"name": "BCC_KERNEL_SOURCE", "value": "/usr/src/linux"}]}},
    "env-valueFrom": {"agent": {"extraEnv": [{"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]}},
    "env-name-only": {"operator": {"extraEnv": [{"name": "EMPTY"}]}},
    "common-label-with-prefix": {"commonLabels": {"example.com/team": "net", "env": "prod"}},
    "common-label-empty-value": {"commonLabels": {"team": ""}},
    "other-kubernetes-io-label": {"commonLabels": {"kubernetes.io/managed": "x"}},
}


@pytest.mark.parametrize("values", ALLOWED_VALUES.values(), ids=ALLOWED_VALUES.keys())
def test_the_refusals_are_narrow(values: dict) -> None:
    """What the refusals above must not catch: one of value/valueFrom, other label keys."""
    render(values)
    assert lint_problems(CHART, values) == []


CAPABILITY_HEADER = Path("/usr/include/linux/capability.h")


def test_capability_enum_is_the_kernels_list() -> None:
    """agent.capabilities accepts exactly the Linux capability names (without CAP_), as the
    kernel's UAPI header defines them: the schema's enum is that list, and helm renders
    all of them into the agent's capabilities (the enum applies to each item)."""
    if not CAPABILITY_HEADER.exists():
        pytest.skip("no /usr/include/linux/capability.h (Debian: linux-libc-dev)")
    kernel = re.findall(r"^#define CAP_([A-Z_]+)\s+[0-9]+\s*$", CAPABILITY_HEADER.read_text(), re.M)
    assert len(kernel) >= 41
    enum = values_schema()["properties"]["agent"]["properties"]["capabilities"]["items"]["enum"]
    assert sorted(enum) == sorted(kernel)
    rendered = agent_pod({"agent": {"capabilities": kernel}})["containers"][0]["securityContext"]["capabilities"]
    assert rendered["add"] == kernel


def _object_schemas(node: dict, path: str = "$"):
    if node.get("type") == "object" or "properties" in node:
        yield path, node
    for key, child in (node.get("properties") or {}).items():
        yield from _object_schemas(child, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        yield from _object_schemas(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _object_schemas(node["additionalProperties"], f"{path}.*")


# Kubernetes types passed through as they are (validated by the API server instead).
PASS_THROUGH = {"$.operator.extraEnv[].valueFrom", "$.agent.extraEnv[].valueFrom"} | {
    f"$.{c}.affinity.{k}" for c in ("operator", "agent") for k in ("nodeAffinity", "podAffinity", "podAntiAffinity")}


def test_schema_is_strict_everywhere() -> None:
    """Every object either forbids unknown keys or types its free-form values (maps of
    strings such as annotations); only Kubernetes pass-through types stay open."""
    root = values_schema()
    loose = []
    for path, node in _object_schemas(root):
        extra = node.get("additionalProperties")
        if path in PASS_THROUGH:
            assert extra is True, path
        elif extra is not False and not (isinstance(extra, dict) and "type" in extra):
            loose.append(path)
        if path not in PASS_THROUGH and "description" not in node and not path.endswith("[]"):
            loose.append(f"{path} (no description)")
    assert loose == []


def test_values_yaml_has_a_comment_on_every_key() -> None:
    """Each key the schema declares has a comment on the line(s) just above it (or at the
    end of its line) in values.yaml; keys inside free-form maps are exempt."""
    root = values_schema()
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []
    missing = []
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z][\w.-]*):", line)
        if not match:
            continue
        indent, key = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parent = [k for _, k in stack]
        stack.append((indent, key))
        node = root
        for k in parent:
            node = (node.get("properties") or {}).get(k) or {}
        if key not in (node.get("properties") or {}):
            continue                       # a key inside a free-form value (resources, ...)
        above = lines[i - 1].strip() if i else ""
        if not (above.startswith("#") or "#" in line.split(":", 1)[1]):
            missing.append(".".join(parent + [key]))
    assert missing == []


def test_schema_declares_exactly_the_keys_of_values_yaml() -> None:
    """No default without a schema entry, no schema entry without a default to read
    (objects whose keys are all required; optional ones like affinity default to {})."""
    chart_schema, chart_values = values_schema(), yaml.safe_load(helm_cli.show("values"))

    def declared(node: dict, prefix: str = "") -> set[str]:
        out = set()
        for key, child in (node.get("properties") or {}).items():
            out.add(prefix + key)
            if child.get("additionalProperties") is False and child.get("required"):
                out |= declared(child, f"{prefix}{key}.")
        return out

    def used(values: dict, node: dict, prefix: str = "") -> set[str]:
        out = set()
        for key, value in values.items():
            out.add(prefix + key)
            child = (node.get("properties") or {}).get(key, {})
            if isinstance(value, dict) and child.get("additionalProperties") is False and child.get("required"):
                out |= used(value, child, f"{prefix}{key}.")
        return out

    in_schema, in_values = declared(chart_schema), used(chart_values, chart_schema)
    assert in_values == in_schema, f"keys in only one of values.yaml / the schema: {sorted(in_values ^ in_schema)}"


# --- what the objects say ------------------------------------------------------------------
def test_chart_crds_are_the_repository_crds_byte_for_byte() -> None:
    """The chart ships crds/ as copies: regenerate both with `make crds`, or
    `python -m kube_xdp_api.schema --write charts/kube-xdp/crds/`."""
    repo = {p.name: p.read_bytes() for p in (REPO / "crds").glob("*.yaml")}
    chart = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*.yaml")}
    assert repo and chart == repo
    assert schema.check_dir(CHART / "crds") == []


def test_chart_crds_are_what_helm_installs() -> None:
    """`helm show crds`: the CRDs Helm applies at install, exactly kube_xdp_api.schema's."""
    shown = helm_cli.documents(helm_cli.show("crds"))
    assert sorted(c["metadata"]["name"] for c in shown) == sorted(crd["metadata"]["name"] for crd in schema.all_crds())
    assert {c["metadata"]["name"]: c["spec"] for c in shown} == {c["metadata"]["name"]: c["spec"]
                                                                  for c in schema.all_crds()}


def _rules(role: dict) -> list[tuple[str, tuple[str, ...], tuple[str, ...]]]:
    return [(g, tuple(r["resources"]), tuple(r["verbs"])) for r in role["rules"] for g in r["apiGroups"]]


@pytest.mark.parametrize("component,rules", [("operator", rbac.OPERATOR_RULES), ("agent", rbac.AGENT_RULES)])
def test_cluster_roles_equal_kube_xdp_api_rbac(component: str, rules: list) -> None:
    role = one(render(), "ClusterRole", f"-{component}")
    assert _rules(role) == _rules(rbac.cluster_role(role["metadata"]["name"], rules))


def test_default_release_uses_the_rig_and_rbac_names() -> None:
    """Release kube-xdp in namespace kube-xdp: the same ServiceAccounts and roles as
    kube_xdp_api.rbac.manifests() (the identities the rig's tokens carry)."""
    docs = render()
    expected = {(d["kind"], d["metadata"]["name"], d["metadata"].get("namespace"))
                for d in rbac.manifests() if d["kind"] != "Namespace"}
    got = {(d["kind"], d["metadata"]["name"], d["metadata"].get("namespace"))
           for d in docs if d["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding")}
    assert got == expected
    for binding in (d for d in docs if d["kind"] == "ClusterRoleBinding"):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": binding["metadata"]["name"],
                                        "namespace": NAMESPACE}]


def test_rbac_follows_custom_names_and_can_be_disabled() -> None:
    docs = render(ci_values(CHART / "ci" / "custom-image-values.yaml"), release="edge", namespace="net")
    binding = one(docs, "ClusterRoleBinding", "-agent")
    assert binding["metadata"]["name"] == "xdp-agent"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "xdp-node-agent", "namespace": "net"}]
    assert one(docs, "DaemonSet")["spec"]["template"]["spec"]["serviceAccountName"] == "xdp-node-agent"
    kinds = {d["kind"] for d in render({"rbac": {"create": False}})}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding"}


def test_operator_deployment() -> None:
    dep = one(render(), "Deployment", "-operator")
    spec, pod = dep["spec"], dep["spec"]["template"]["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    (container,) = pod["containers"]
    assert container["command"] == ["kube-xdp-operator"]
    assert container["args"] == ["--liveness=http://0.0.0.0:8080/healthz", "--agent-cleanup-timeout=600"]
    probe = container["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz"
    assert {"name": "liveness", "containerPort": 8080, "protocol": "TCP"} in container["ports"]
    assert probe["port"] == "liveness"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}
    assert pod["serviceAccountName"] == "kube-xdp-operator"


def test_operator_liveness_port_moves_everywhere() -> None:
    container = one(render({"operator": {"liveness": {"port": 9901}, "verbose": True}}),
                    "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["--liveness=http://0.0.0.0:9901/healthz", "--agent-cleanup-timeout=600", "--verbose"]
    assert container["ports"][0]["containerPort"] == 9901


def test_operator_agent_cleanup_timeout_is_the_operators_flag(capsys) -> None:
    """operator.agentCleanupTimeoutSeconds renders --agent-cleanup-timeout, a flag the
    operator's own parser knows (tests/unit/test_dockerfile.py runs the CLI with the args)."""
    container = one(render({"operator": {"agentCleanupTimeoutSeconds": 45}}),
                    "Deployment")["spec"]["template"]["spec"]["containers"][0]
    flags = [a for a in container["args"] if a.startswith("--agent-cleanup-timeout")]
    assert flags == ["--agent-cleanup-timeout=45"]
    from kube_xdp_operator.__main__ import main
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0 and "--agent-cleanup-timeout" in capsys.readouterr().out
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["operator"]["agentCleanupTimeoutSeconds"] == 600      # the operator's own default


def agent_pod(values: dict | None = None) -> dict:
    return one(render(values), "DaemonSet", "-agent")["spec"]["template"]["spec"]


def test_agent_daemonset_defaults() -> None:
    ds = one(render(), "DaemonSet", "-agent")
    assert ds["spec"]["updateStrategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert "priorityClassName" not in pod
    (agent,) = pod["containers"]
    assert agent["command"] == ["kube-xdp-agent"]
    assert agent["args"] == [f"--bpffs={names.DEFAULT_BPFFS}", "--resync=3",
                             f"--inventory-interfaces={DEFAULT_PROBE_PATTERN}",
                             "--health-address=127.0.0.1", "--health-port=8081"]
    # the agent's /healthz on the node's loopback (hostNetwork), probed there by the kubelet
    assert agent["livenessProbe"] == {"httpGet": {"host": "127.0.0.1", "path": "/healthz", "port": 8081},
                                      "initialDelaySeconds": 10, "periodSeconds": 20, "timeoutSeconds": 5,
                                      "failureThreshold": 3}
    assert "ports" not in agent                       # nothing to publish: loopback only
    assert {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}} in agent["env"]
    sc = agent["securityContext"]
    assert sc["privileged"] is False and sc["runAsUser"] == 0 and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["BPF", "NET_ADMIN", "PERFMON", "SYS_ADMIN", "SYS_RESOURCE"]}
    assert sc["allowPrivilegeEscalation"] is False
    mounts = {m["name"]: m for m in agent["volumeMounts"]}
    assert mounts["bpffs"] == {"name": "bpffs", "mountPath": "/sys/fs/bpf", "mountPropagation": "HostToContainer"}
    assert mounts["lib-modules"] == {"name": "lib-modules", "mountPath": "/lib/modules", "readOnly": True}
    assert mounts["usr-src"] == {"name": "usr-src", "mountPath": "/usr/src", "readOnly": True}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["bpffs"]["hostPath"]["path"] == "/sys/fs/bpf"
    assert volumes["lib-modules"]["hostPath"]["path"] == "/lib/modules"
    assert volumes["usr-src"]["hostPath"]["path"] == "/usr/src"
    assert "emptyDir" in volumes["tmp"]
    # the one privileged piece: the init container that mounts bpffs on the host if needed
    (init,) = pod["initContainers"]
    assert init["securityContext"] == {"privileged": True}
    assert init["volumeMounts"] == [{"name": "bpffs", "mountPath": "/sys/fs/bpf", "mountPropagation": "Bidirectional"}]
    assert "mount -t bpf bpf" in init["command"][-1]


def test_agent_health_port_moves_everywhere_and_is_the_agents_flag(capsys) -> None:
    agent = agent_pod({"agent": {"health": {"port": 9911, "initialDelaySeconds": 10, "periodSeconds": 7,
                                            "timeoutSeconds": 2, "failureThreshold": 4}}})["containers"][0]
    assert agent["args"][-2:] == ["--health-address=127.0.0.1", "--health-port=9911"]
    assert agent["livenessProbe"]["httpGet"]["port"] == 9911
    assert (agent["livenessProbe"]["periodSeconds"], agent["livenessProbe"]["failureThreshold"]) == (7, 4)
    from kube_xdp_agent.__main__ import main
    from kube_xdp_agent.health import DEFAULT_ADDRESS, DEFAULT_PORT
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and "--health-address" in out and "--health-port" in out
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert (DEFAULT_ADDRESS, DEFAULT_PORT) == ("127.0.0.1", values["agent"]["health"]["port"])   # the agent's defaults


def _inventory_arg(values: dict | None = None) -> str:
    (arg,) = [a for a in agent_pod(values)["containers"][0]["args"] if a.startswith("--inventory-interfaces=")]
    return arg.split("=", 1)[1]


def test_agent_inventory_interfaces_default_is_the_agents_own() -> None:
    """agent.inventoryInterfaces renders --inventory-interfaces; its default is the agent's
    default pattern (a drift fails here), which probes NICs and skips pods' veths."""
    pattern = _inventory_arg()
    assert pattern == DEFAULT_PROBE_PATTERN
    probe = interface_selector(pattern)

    def selected(name: str, index: int = 7) -> bool:      # the selector reads name and index only
        return probe(SimpleNamespace(name=name, index=index))
    assert selected("eth0") and selected("ens5f1") and selected("bond0")
    assert not selected("veth1a2b") and not selected("cali12ab") and not selected("lxc_health")
    assert not selected("lo", index=1)


def test_agent_inventory_interfaces_is_passed_exactly() -> None:
    """A regular expression with YAML- and shell-special characters reaches the agent as
    one argument, unchanged; "" (probe none) is passed too."""
    for pattern in (r"eth[0-9]+|ens\d+f[01]", r"(?!veth).+ <&>'\"", ""):
        assert _inventory_arg({"agent": {"inventoryInterfaces": pattern}}) == pattern
        interface_selector(pattern)      # the agent accepts it at start


def test_agent_minimal_capabilities_scenario_has_no_privileged_container() -> None:
    pod = agent_pod(ci_values(CHART / "ci" / "capabilities-values.yaml"))
    assert "initContainers" not in pod
    sc = pod["containers"][0]["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["BPF", "NET_ADMIN"]}
    assert sc["allowPrivilegeEscalation"] is False and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert '"privileged": true' not in str(pod).lower().replace("'", '"')


def test_agent_privileged_scenario() -> None:
    pod = agent_pod(ci_values(CHART / "ci" / "privileged-values.yaml"))
    sc = pod["containers"][0]["securityContext"]
    assert sc == {"privileged": True, "readOnlyRootFilesystem": True}
    assert pod["containers"][0]["volumeMounts"][0]["mountPropagation"] == "HostToContainer"


def test_agent_bpffs_path_moves_everywhere() -> None:
    pod = agent_pod({"agent": {"bpffs": {"path": "/run/bpf"}}})
    assert pod["containers"][0]["args"][0] == "--bpffs=/run/bpf"
    assert pod["containers"][0]["volumeMounts"][0]["mountPath"] == "/run/bpf"
    assert pod["initContainers"][0]["volumeMounts"][0]["mountPath"] == "/run/bpf"
    assert pod["volumes"][0]["hostPath"]["path"] == "/run/bpf"
    assert {"name": "BPFFS", "value": "/run/bpf"} in pod["initContainers"][0]["env"]


def test_priority_class_and_tolerations_scenario() -> None:
    values = ci_values(CHART / "ci" / "priorityclass-tolerations-values.yaml")
    docs = render(values)
    pod = one(docs, "DaemonSet")["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["tolerations"] == values["agent"]["tolerations"]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert one(docs, "DaemonSet")["spec"]["updateStrategy"]["rollingUpdate"] == {"maxUnavailable": "10%"}
    op = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert op["priorityClassName"] == "system-cluster-critical"


def test_custom_image_scenario() -> None:
    values = ci_values(CHART / "ci" / "custom-image-values.yaml")
    docs = render(values)
    ref = "registry.example.com:5000/platform/kube-xdp@" + values["image"]["digest"]
    for workload in (one(docs, "DaemonSet"), one(docs, "Deployment")):
        pod = workload["spec"]["template"]["spec"]
        for c in pod["containers"] + pod.get("initContainers", []):
            assert c["image"] == ref and c["imagePullPolicy"] == "Always"
        assert pod["imagePullSecrets"] == [{"name": "registry-credentials"}]
        assert workload["metadata"]["labels"]["team"] == "network"
    tag_only = one(render({"image": {"repository": "r.example/kube-xdp", "tag": "1.2.3"}}), "Deployment")
    assert tag_only["spec"]["template"]["spec"]["containers"][0]["image"] == "r.example/kube-xdp:1.2.3"
    default = one(render(), "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert default == f"kube-xdp:{chart_metadata()['appVersion']}"


def test_standard_labels_and_selectors() -> None:
    docs = render()
    for doc in docs:
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "kube-xdp"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "kube-xdp-0.1.0"
        assert labels["app.kubernetes.io/version"] == "0.1.0"
        assert labels["app.kubernetes.io/component"]
        if doc["kind"] in WORKLOAD_KINDS:
            assert labels["app.kubernetes.io/component"] in ("operator", "agent")
    selectors = {}
    for workload in (one(docs, "DaemonSet"), one(docs, "Deployment")):
        selector = workload["spec"]["selector"]["matchLabels"]
        # stable keys only (never the version or chart), plus the component
        assert set(selector) == {"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component"}
        assert selector.items() <= workload["spec"]["template"]["metadata"]["labels"].items()
        selectors[workload["kind"]] = selector
    assert selectors["DaemonSet"] != selectors["Deployment"]     # neither selects the other's pods


def test_versions_agree() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    meta = chart_metadata()
    assert meta["appVersion"] == project["version"]
    assert meta["kubeVersion"] == f">={KUBE_VERSION.removeprefix('v')}-0"


def test_chart_commands_are_the_project_entry_points() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    docs = render()
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["command"] == ["kube-xdp-operator"]
    assert one(docs, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]["command"] == ["kube-xdp-agent"]
    assert scripts["kube-xdp-operator"] == "kube_xdp_operator.__main__:main"
    assert scripts["kube-xdp-agent"] == "kube_xdp_agent.__main__:main"


# The documented CRD upgrade (tests/e2e/test_chart.py shows why --force-conflicts).
CRD_UPGRADE = "kubectl apply --server-side --force-conflicts -f crds/"


def test_notes_tell_how_to_check_and_what_nodes_need() -> None:
    text = notes()
    for needle in ("rollout status deployment/kube-xdp-operator", "rollout status daemonset/kube-xdp-agent",
                   "kubectl get xdpprograms", "bpffs at /sys/fs/bpf", "/lib/modules/$(uname -r)/build",
                   CRD_UPGRADE, "--reset-then-reuse-values", "no kube-xdp image is\npublished"):
        assert needle in text, needle
    assert "kubectl apply --server-side -f crds/" not in text     # conflicts with Helm's field manager
    assert chart_metadata()["annotations"]["kubexdp.io/crds-upgrade"] == CRD_UPGRADE
    assert "no kube-xdp image" not in notes({"image": {"repository": "registry.example.com/kube-xdp"}})
