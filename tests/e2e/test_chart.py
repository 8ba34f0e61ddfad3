"""Install, upgrade, roll back and uninstall the Helm chart on the rig's real
kube-apiserver with the real helm v4 CLI (tests/helm_cli.py), driven as docs/install.md
tells users to (a namespace created and labelled for Pod Security, a values file), then
read back what the API server accepted. The kubectl path (`helm template | kubectl apply
--server-side -f -`) and the documented CRD upgrade use the real kubectl of the same
Kubernetes release.

What cannot be shown here until the rig has kube-controller-manager and kubelet nodes
(issue 12): a `--wait` that succeeds, and any pod of the chart running. Helm 4's `--wait`
(strategy `watcher`: kstatus on every object of the release) waits for the Deployment's
and the DaemonSet's controllers to report their pods; on the rig no controller writes
their status and no pod runs, so `--wait` ends with Helm's "not ready" message naming
exactly those two, while the ServiceAccounts and RBAC pass the same wait. The tests
below assert that, on an install (with --rollback-on-failure) and on an upgrade (then
rolled back).

The releases get names and namespaces of their own (kxc / kxc-chart, ...), so their
objects never collide with the kube-xdp/kube-xdp-* identities other tests bind on the
same rig.

Helm 4 applies the chart's crds/ at install with server-side apply: in a session where
another test applied the CRDs first (the kube-xdp deployment fixture does), Helm becomes
a co-owner of their fields. The CRD tests below make Helm create CRDs of its own (the
chart's CRDs renamed into a test API group, so the real ones, and the programs other
tests run, are never touched).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import kubernetes
import pytest
import yaml
from kubernetes.client.rest import ApiException

from kube_xdp_agent.inventory import DEFAULT_PROBE_PATTERN
from kube_xdp_api import rbac, schema
from kube_xdp_rig import apply as applier

from .. import helm_cli
from ..unit.test_chart_render import SCHEMA_REFUSAL, assert_chart_kinds
from .conftest import api_client
from .kubexdp import wait

pytestmark = pytest.mark.rig

CHART = helm_cli.CHART
RELEASE, NAMESPACE = "kxc", "kxc-chart"
FULLNAME = "kxc-kube-xdp"
# my-values.yaml, as docs/install.md has users keep their settings (the image they built)
MY_VALUES = {"image": {"repository": "registry.example.com/kube-xdp", "tag": "0.1.0"}}
MY_IMAGE = "registry.example.com/kube-xdp:0.1.0"
WAIT_TIMEOUT = "10s"      # --wait cannot succeed on the rig (see the module docstring)


def ci_values(name: str) -> dict:
    return yaml.safe_load((CHART / "ci" / f"{name}-values.yaml").read_text()) or {}


def values_file(directory: Path, values: dict, name: str = "my-values.yaml") -> str:
    path = directory / name
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return str(path)


def helm(rig, *args: str, **kw) -> subprocess.CompletedProcess:
    """helm against the rig (never raises on helm's exit status)."""
    return helm_cli.run(*args, kubeconfig=rig.kubeconfig, **kw)


def helm_ok(rig, *args: str, **kw) -> subprocess.CompletedProcess:
    return helm_cli.ok(*args, kubeconfig=rig.kubeconfig, **kw)


def kubectl(rig, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([helm_cli.kubectl_binary(), "--kubeconfig", rig.kubeconfig, *args], input=stdin,
                          capture_output=True, text=True, timeout=120)


def kubectl_ok(rig, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    result = kubectl(rig, *args, stdin=stdin)
    assert result.returncode == 0, f"kubectl {' '.join(args)} failed: {result.stderr}"
    return result


def release_status(rig, release: str, namespace: str) -> dict:
    """`helm status -o json`: info.status, version (the revision), ..."""
    return json.loads(helm_ok(rig, "status", release, "--namespace", namespace, "-o", "json").stdout)


def history(rig, release: str, namespace: str) -> list[dict]:
    return json.loads(helm_ok(rig, "history", release, "--namespace", namespace, "-o", "json").stdout)


def not_ready(helm_error: str) -> list[str]:
    """The objects Helm's watcher names as not ready when --wait runs out of time."""
    return sorted(re.findall(r"^(?:Error: [A-Z ]+FAILED: (?:.*: )?)?resource (\S+) not ready\. status: InProgress",
                             helm_error, re.M))


def create_namespace(rig, namespace: str) -> None:
    """docs/install.md, "Before you start": the namespace, labelled for Pod Security's
    privileged level (the agent uses hostNetwork, hostPath and added capabilities)."""
    if kubectl(rig, "get", "namespace", namespace).returncode != 0:
        kubectl_ok(rig, "create", "namespace", namespace)
    kubectl_ok(rig, "label", "--overwrite", "namespace", namespace, "pod-security.kubernetes.io/enforce=privileged")


def crd_versions(client, names: list[str]) -> dict[str, str | None]:
    """resourceVersion of each CRD, None where it does not exist."""
    return {name: (crd.metadata.resource_version if crd else None) for name, crd in read_crds(client, names).items()}


def read_crds(client, names: list[str]) -> dict[str, kubernetes.client.V1CustomResourceDefinition | None]:
    ext = kubernetes.client.ApiextensionsV1Api(client)
    out = {}
    for name in names:
        try:
            out[name] = ext.read_custom_resource_definition(name)
        except ApiException as e:
            if e.status != 404:
                raise
            out[name] = None
    return out


def crd_spec(client, crd: kubernetes.client.V1CustomResourceDefinition) -> str:
    return json.dumps(client.sanitize_for_serialization(crd.spec), sort_keys=True)


def agent_daemonset(admin, release: str = RELEASE, namespace: str = NAMESPACE) -> kubernetes.client.V1DaemonSet:
    return kubernetes.client.AppsV1Api(admin).read_namespaced_daemon_set(f"{release}-kube-xdp-agent", namespace)


@pytest.fixture(scope="module")
def installed(rig, tmp_path_factory):
    """`helm install kxc charts/kube-xdp -n kxc-chart -f my-values.yaml` into a namespace
    created and labelled first; the spec of each of the chart's CRDs that existed before."""
    client = api_client(rig)
    try:
        before = {name: (crd_spec(client, crd) if crd else None)
                  for name, crd in read_crds(client, [c["metadata"]["name"] for c in schema.all_crds()]).items()}
    finally:
        client.close()
    create_namespace(rig, NAMESPACE)
    mine = values_file(tmp_path_factory.mktemp("values"), MY_VALUES)
    out = helm_ok(rig, "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "-f", mine)
    yield {"stdout": out.stdout, "crd_specs_before": before}
    helm(rig, "uninstall", RELEASE, "--namespace", NAMESPACE, "--ignore-not-found")


def test_install_is_deployed(installed, rig) -> None:
    status = release_status(rig, RELEASE, NAMESPACE)
    assert status["info"]["status"] == "deployed" and status["version"] == 1
    assert status["config"] == MY_VALUES                      # what -f my-values.yaml gave
    assert f"kubectl -n {NAMESPACE} rollout status deployment/{FULLNAME}-operator" in installed["stdout"]   # NOTES


def test_install_leaves_the_crds_established_and_existing_ones_as_they_were(installed, admin) -> None:
    """After the install every CRD is there and Established. Helm 4 applies the chart's
    crds/ with server-side apply at install even where they exist (Helm 3 skipped them):
    CRDs that were already there with the same content keep their spec (Helm becomes a
    co-owner of its fields); see the CRD tests below for CRDs with other content."""
    ext = kubernetes.client.ApiextensionsV1Api(admin)
    for crd in schema.all_crds():
        name = crd["metadata"]["name"]
        stored = ext.read_custom_resource_definition(name)
        assert any(c.type == "Established" and c.status == "True" for c in stored.status.conditions)
        assert stored.spec.names.kind == crd["spec"]["names"]["kind"]
        assert "helm" in {m.manager for m in stored.metadata.managed_fields}
        if installed["crd_specs_before"][name] is not None:
            assert crd_spec(admin, stored) == installed["crd_specs_before"][name], f"Helm changed {name}"


def test_api_server_accepted_the_operator_deployment(installed, admin) -> None:
    dep = kubernetes.client.AppsV1Api(admin).read_namespaced_deployment(f"{FULLNAME}-operator", NAMESPACE)
    assert dep.spec.replicas == 1 and dep.spec.strategy.type == "Recreate"
    container = dep.spec.template.spec.containers[0]
    assert container.image == MY_IMAGE
    assert container.command == ["kube-xdp-operator"]
    assert container.args == ["--liveness=http://0.0.0.0:8080/healthz", "--agent-cleanup-timeout=600"]
    assert container.liveness_probe.http_get.path == "/healthz"
    assert container.liveness_probe.http_get.port == "liveness"
    assert dep.spec.template.spec.service_account_name == f"{FULLNAME}-operator"
    assert dep.spec.template.spec.security_context.run_as_non_root is True
    assert {m.manager for m in dep.metadata.managed_fields if m.operation == "Apply"} == {"helm"}   # server-side


def test_api_server_accepted_the_agent_daemonset(installed, admin) -> None:
    ds = agent_daemonset(admin)
    assert ds.spec.update_strategy.type == "RollingUpdate"
    assert ds.spec.update_strategy.rolling_update.max_unavailable == 1
    pod = ds.spec.template.spec
    assert pod.host_network is True and pod.dns_policy == "ClusterFirstWithHostNet"
    assert pod.service_account_name == f"{FULLNAME}-agent"
    assert [(t.operator, t.key, t.effect) for t in pod.tolerations] == [("Exists", None, None)]
    agent = pod.containers[0]
    assert agent.image == MY_IMAGE
    assert agent.command == ["kube-xdp-agent"] and agent.args == [
        "--bpffs=/sys/fs/bpf", "--resync=3", f"--inventory-interfaces={DEFAULT_PROBE_PATTERN}",
        "--health-address=127.0.0.1", "--health-port=8081"]
    probe = agent.liveness_probe.http_get               # the agent's /healthz on the node's loopback
    assert (probe.host, probe.path, probe.port) == ("127.0.0.1", "/healthz", 8081)
    env = {e.name: e for e in agent.env}
    assert env["NODE_NAME"].value_from.field_ref.field_path == "spec.nodeName"
    assert agent.security_context.privileged is False
    assert agent.security_context.capabilities.drop == ["ALL"]
    assert agent.security_context.capabilities.add == ["BPF", "NET_ADMIN", "PERFMON", "SYS_ADMIN", "SYS_RESOURCE"]
    mounts = {m.name: m for m in agent.volume_mounts}
    assert mounts["bpffs"].mount_propagation == "HostToContainer"
    assert mounts["lib-modules"].read_only and mounts["usr-src"].read_only
    init = pod.init_containers[0]
    assert init.security_context.privileged is True
    assert init.volume_mounts[0].mount_propagation == "Bidirectional"
    paths = {v.name: v.host_path.path for v in pod.volumes if v.host_path}
    assert paths == {"bpffs": "/sys/fs/bpf", "lib-modules": "/lib/modules", "usr-src": "/usr/src"}


def test_api_server_accepted_the_service_accounts_and_rbac(installed, admin) -> None:
    core, auth = kubernetes.client.CoreV1Api(admin), kubernetes.client.RbacAuthorizationV1Api(admin)
    for component, rules in (("operator", rbac.OPERATOR_RULES), ("agent", rbac.AGENT_RULES)):
        name = f"{FULLNAME}-{component}"
        assert core.read_namespaced_service_account(name, NAMESPACE).metadata.labels[
            "app.kubernetes.io/component"] == component
        role = auth.read_cluster_role(name)
        stored = [(r.api_groups, r.resources, r.verbs) for r in role.rules]
        assert stored == [([g], list(r), list(v)) for g, r, v, _ in rules]
        binding = auth.read_cluster_role_binding(name)
        assert binding.role_ref.name == name
        assert [(s.kind, s.name, s.namespace) for s in binding.subjects] == [("ServiceAccount", name, NAMESPACE)]


# the values file of the upgrade: my values plus a scenario's, and verbose agents
UPGRADE_VALUES = {**MY_VALUES, **ci_values("priorityclass-tolerations")}
UPGRADE_VALUES["agent"] = {**UPGRADE_VALUES["agent"], "verbose": True}
UPGRADED_AGENT_ARGS = ["--bpffs=/sys/fs/bpf", "--resync=3", f"--inventory-interfaces={DEFAULT_PROBE_PATTERN}",
                       "--health-address=127.0.0.1", "--health-port=8081", "--verbose"]


def test_upgrade_with_a_values_file_changes_the_workloads(installed, rig, admin, tmp_path: Path) -> None:
    """`helm upgrade kxc charts/kube-xdp -n kxc-chart -f my-values.yaml` (docs/install.md)."""
    helm_ok(rig, "upgrade", RELEASE, str(CHART), "--namespace", NAMESPACE, "-f", values_file(tmp_path, UPGRADE_VALUES))
    status = release_status(rig, RELEASE, NAMESPACE)
    assert status["info"]["status"] == "deployed" and status["version"] == 2
    ds = agent_daemonset(admin)
    pod = ds.spec.template.spec
    assert pod.priority_class_name == "system-node-critical"
    assert [t.key for t in pod.tolerations] == ["dedicated", "node.kubernetes.io/not-ready"]
    assert pod.node_selector == {"kubernetes.io/os": "linux"}
    assert ds.spec.update_strategy.rolling_update.max_unavailable == "10%"
    assert pod.containers[0].args == UPGRADED_AGENT_ARGS
    assert pod.containers[0].image == MY_IMAGE
    dep = kubernetes.client.AppsV1Api(admin).read_namespaced_deployment(f"{FULLNAME}-operator", NAMESPACE)
    assert dep.spec.template.spec.priority_class_name == "system-cluster-critical"
    assert dep.spec.strategy.type == "Recreate"


def test_upgrade_with_wait_names_the_workloads_not_ready_and_rollback_restores(installed, rig, admin,
                                                                                tmp_path: Path) -> None:
    """`helm upgrade --wait` applies the new revision, then waits on every object of the
    release; on the rig the Deployment and the DaemonSet never become ready (no
    kube-controller-manager, no kubelet: issue 12), so Helm names exactly those two and
    records the revision as failed. `helm rollback kxc 2` brings revision 2's objects back."""
    slower = copy.deepcopy(UPGRADE_VALUES)
    slower["agent"]["resync"] = 7
    failed = helm(rig, "upgrade", RELEASE, str(CHART), "--namespace", NAMESPACE, "-f", values_file(tmp_path, slower),
                  "--wait", "--timeout", WAIT_TIMEOUT)
    assert failed.returncode != 0
    assert "UPGRADE FAILED" in failed.stderr and "context deadline exceeded" in failed.stderr, failed.stderr
    assert not_ready(failed.stderr) == [f"DaemonSet/{NAMESPACE}/{FULLNAME}-agent",
                                        f"Deployment/{NAMESPACE}/{FULLNAME}-operator"], failed.stderr
    assert "--resync=7" in agent_daemonset(admin).spec.template.spec.containers[0].args     # applied, then waited
    assert [r["status"] for r in history(rig, RELEASE, NAMESPACE)] == ["superseded", "deployed", "failed"]

    helm_ok(rig, "rollback", RELEASE, "2", "--namespace", NAMESPACE)
    revisions = history(rig, RELEASE, NAMESPACE)
    assert [(r["revision"], r["status"]) for r in revisions] == [
        (1, "superseded"), (2, "superseded"), (3, "failed"), (4, "deployed")]
    assert revisions[-1]["rollback_revision"] == 2
    assert agent_daemonset(admin).spec.template.spec.containers[0].args == UPGRADED_AGENT_ARGS


def test_install_with_wait_and_rollback_on_failure_leaves_nothing(rig, admin, tmp_path: Path) -> None:
    """`helm install --wait --rollback-on-failure` (Helm 3's --atomic): on the rig the wait
    names the two workloads as not ready (issue 12), and Helm uninstalls what it created."""
    release, namespace = "kxw", "kxw-chart"
    create_namespace(rig, namespace)
    try:
        failed = helm(rig, "install", release, str(CHART), "--namespace", namespace,
                      "-f", values_file(tmp_path, MY_VALUES), "--wait", "--rollback-on-failure",
                      "--timeout", WAIT_TIMEOUT)
        assert failed.returncode != 0
        assert "INSTALLATION FAILED" in failed.stderr and "has been uninstalled" in failed.stderr, failed.stderr
        assert not_ready(failed.stderr) == [f"DaemonSet/{namespace}/{release}-kube-xdp-agent",
                                            f"Deployment/{namespace}/{release}-kube-xdp-operator"], failed.stderr
        assert "release: not found" in helm(rig, "status", release, "--namespace", namespace).stderr
        for read in (lambda: agent_daemonset(admin, release, namespace),
                     lambda: kubernetes.client.RbacAuthorizationV1Api(admin).read_cluster_role(
                         f"{release}-kube-xdp-agent")):
            with pytest.raises(ApiException) as gone:
                read()
            assert gone.value.status == 404
    finally:
        helm(rig, "uninstall", release, "--namespace", namespace, "--ignore-not-found")


def test_the_not_ready_reader_can_fail() -> None:
    assert not_ready("Error: UPGRADE FAILED: context deadline exceeded") == []
    assert not_ready("Error: INSTALLATION FAILED: release x failed, and has been uninstalled due to "
                     "rollback-on-failure being set: resource DaemonSet/n/a not ready. status: InProgress, message: m\n"
                     "resource Deployment/n/b not ready. status: InProgress, message: Replicas: 0/1\n") == [
        "DaemonSet/n/a", "Deployment/n/b"]


def template_into_kubectl(rig, release: str, values_path: str, *kubectl_args: str) -> subprocess.CompletedProcess:
    """`helm template RELEASE charts/kube-xdp -n NAMESPACE -f VALUES | kubectl ARGS -f -`."""
    manifest = helm_cli.ok("template", release, str(CHART), "--namespace", NAMESPACE, "-f", values_path).stdout
    return kubectl(rig, *kubectl_args, "-f", "-", stdin=manifest)


@pytest.mark.parametrize("scenario", ["default", "capabilities", "privileged", "priorityclass-tolerations",
                                      "custom-image"])
def test_every_ci_scenario_passes_server_side_validation(installed, rig, scenario: str) -> None:
    """`helm template -f ci/X-values.yaml | kubectl apply --server-side --dry-run=server -f -`:
    the API server validates and admits every object without storing it."""
    applied = template_into_kubectl(rig, f"kxs-{scenario}", str(CHART / "ci" / f"{scenario}-values.yaml"),
                                    "apply", "--server-side", "--dry-run=server", "-o", "json")
    assert applied.returncode == 0, applied.stderr
    assert_chart_kinds([item["kind"] for item in json.loads(applied.stdout)["items"]])


def test_server_side_dry_run_reports_what_the_server_refuses(installed, rig, tmp_path: Path) -> None:
    """The dry runs above can fail: a pass-through value the schema cannot judge (a
    downward-API field that does not exist) renders, and is refused by the server."""
    bad = {"agent": {"extraEnv": [{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "spec.noSuchField"}}}]}}
    refused = template_into_kubectl(rig, "kxs-bad", values_file(tmp_path, bad), "apply", "--server-side",
                                    "--dry-run=server")
    assert refused.returncode != 0
    assert 'The DaemonSet "kxs-bad-kube-xdp-agent" is invalid' in refused.stderr, refused.stderr
    assert '"spec.noSuchField"' in refused.stderr


def test_the_kubectl_path_applies_upgrades_and_deletes_the_rendered_chart(installed, rig, admin,
                                                                          tmp_path: Path) -> None:
    """docs/install.md, "Install with kubectl": the chart rendered by `helm template` and
    applied server-side by kubectl (no Helm release: kubectl's field manager owns the
    objects); a changed values file applied the same way updates them; `kubectl delete`
    of the same rendering removes them."""
    release = "kxk"
    applied = template_into_kubectl(rig, release, values_file(tmp_path, MY_VALUES), "apply", "--server-side")
    assert applied.returncode == 0, applied.stderr
    try:
        ds = agent_daemonset(admin, release)
        assert ds.spec.template.spec.containers[0].image == MY_IMAGE
        assert {m.manager for m in ds.metadata.managed_fields if m.operation == "Apply"} == {"kubectl"}
        assert ds.metadata.labels["app.kubernetes.io/managed-by"] == "Helm"     # what the template says
        assert helm_ok(rig, "list", "--namespace", NAMESPACE, "-q").stdout.split() == [RELEASE]   # no kxk release

        verbose = values_file(tmp_path, {**MY_VALUES, "agent": {"verbose": True}}, "my-values-2.yaml")
        updated = template_into_kubectl(rig, release, verbose, "apply", "--server-side")
        assert updated.returncode == 0, updated.stderr
        assert agent_daemonset(admin, release).spec.template.spec.containers[0].args[-1] == "--verbose"
    finally:
        deleted = template_into_kubectl(rig, release, values_file(tmp_path, MY_VALUES, "my-values-3.yaml"),
                                        "delete", "--ignore-not-found")
    assert deleted.returncode == 0, deleted.stderr
    with pytest.raises(ApiException) as gone:
        kubernetes.client.RbacAuthorizationV1Api(admin).read_cluster_role(f"{release}-kube-xdp-agent")
    assert gone.value.status == 404


def test_api_server_refuses_what_the_chart_never_renders(installed, admin) -> None:
    """The same server refuses a privileged agent that also asks for
    allowPrivilegeEscalation=false (why the chart's privileged branch omits it)."""
    apps = kubernetes.client.AppsV1Api(admin)
    ds = agent_daemonset(admin)
    ds.metadata = kubernetes.client.V1ObjectMeta(name="kxc-refused", namespace=NAMESPACE)
    ds.status = None
    ds.spec.template.spec.containers[0].security_context = kubernetes.client.V1SecurityContext(
        privileged=True, allow_privilege_escalation=False)
    with pytest.raises(ApiException) as refused:
        apps.create_namespaced_daemon_set(NAMESPACE, ds, dry_run="All")
    assert refused.value.status == 422 and "allowPrivilegeEscalation" in refused.value.body


def test_values_violating_the_schema_are_refused_before_the_cluster(installed, rig, tmp_path: Path) -> None:
    before = release_status(rig, RELEASE, NAMESPACE)["version"]
    refused = helm(rig, "upgrade", RELEASE, str(CHART), "--namespace", NAMESPACE,
                   "-f", values_file(tmp_path, {"agent": {"capabilities": ["CAP_BPF"]}}))
    assert refused.returncode != 0 and SCHEMA_REFUSAL in refused.stderr, refused.stderr
    status = release_status(rig, RELEASE, NAMESPACE)
    assert status["version"] == before and status["info"]["status"] == "deployed"


def test_uninstall_removes_the_release_but_keeps_the_crds(installed, rig, admin) -> None:
    """`helm uninstall --wait` (waiting until the release's objects are gone works
    without controllers: deletion needs none)."""
    helm_ok(rig, "uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", "--timeout", "60s")
    with pytest.raises(ApiException) as gone:
        agent_daemonset(admin)
    assert gone.value.status == 404
    with pytest.raises(ApiException):
        kubernetes.client.RbacAuthorizationV1Api(admin).read_cluster_role(f"{FULLNAME}-agent")
    assert "release: not found" in helm(rig, "status", RELEASE, "--namespace", NAMESPACE).stderr
    # Helm never deletes crds/: programs survive an uninstall (docs/install.md)
    ext = kubernetes.client.ApiextensionsV1Api(admin)
    assert ext.read_custom_resource_definition("xdpprograms.kubexdp.io").metadata.name


# --- upgrading CRDs after a Helm install ----------------------------------------------------
TEST_GROUP = "crdtest.kubexdp.io"
CRD_RELEASE, CRD_NAMESPACE = "kxcrd", "kxc-crd"


def _renamed(crd: dict) -> dict:
    """The CRD as the chart ships it (same schema) in TEST_GROUP under names of its own:
    no short names or categories, another kind and plural, so that no `kubectl get xdpp`
    elsewhere can resolve to it (kubectl caches discovery, even after it is deleted)."""
    crd = copy.deepcopy(crd)
    names = crd["spec"]["names"]
    crd["spec"]["group"] = TEST_GROUP
    crd["spec"]["names"] = {"kind": f"CrdTest{names['kind']}", "listKind": f"CrdTest{names['listKind']}",
                            "plural": f"crdtest{names['plural']}", "singular": f"crdtest{names['singular']}"}
    crd["metadata"]["name"] = f"crdtest{names['plural']}.{TEST_GROUP}"
    return crd


def _write_crds(directory: Path, crds: list[dict]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for crd in crds:
        (directory / f"{crd['metadata']['name']}.yaml").write_text(yaml.safe_dump(crd, sort_keys=False))


def _established(ext, name: str, timeout: float = 30) -> kubernetes.client.V1CustomResourceDefinition:
    deadline = time.monotonic() + timeout
    while True:
        stored = ext.read_custom_resource_definition(name)
        if any(c.type == "Established" and c.status == "True" for c in stored.status.conditions or []):
            return stored
        assert time.monotonic() < deadline, f"{name} not Established after {timeout}s"
        time.sleep(0.2)


@dataclasses.dataclass
class CrdChart:
    """A copy of the chart whose CRDs are renamed into TEST_GROUP (`shipped`, `names`),
    and the apiextensions client."""
    chart: Path
    shipped: list[dict]
    names: list[str]
    ext: kubernetes.client.ApiextensionsV1Api


@pytest.fixture()
def crd_chart(rig, admin, tmp_path: Path):
    """The real chart with its CRDs renamed into TEST_GROUP, so the CRD tests never touch
    the real CRDs; afterwards the release is uninstalled and the renamed CRDs deleted."""
    chart = tmp_path / "kube-xdp"
    shutil.copytree(CHART, chart)
    shutil.rmtree(chart / "crds")
    shipped = [_renamed(yaml.safe_load(p.read_text())) for p in sorted((CHART / "crds").glob("*.yaml"))]
    _write_crds(chart / "crds", shipped)
    names = [c["metadata"]["name"] for c in shipped]
    assert set(crd_versions(admin, names).values()) == {None}, "left over from an earlier run"
    ext = kubernetes.client.ApiextensionsV1Api(admin)
    try:
        yield CrdChart(chart, shipped, names, ext)
    finally:
        helm(rig, "uninstall", CRD_RELEASE, "--namespace", CRD_NAMESPACE, "--ignore-not-found")
        for name in names:
            try:
                ext.delete_custom_resource_definition(name)
            except ApiException as e:
                if e.status != 404:
                    raise
        _wait_crds_gone(admin, names)


def _wait_crds_gone(client, names: list[str], timeout: float = 60) -> None:
    """A CRD's deletion is asynchronous: the API server's customresourcecleanup finalizer
    removes its objects first, so the CRD lingers as Terminating for a moment (long enough,
    on a loaded machine, for the next test to find it)."""
    wait(lambda: set(crd_versions(client, names).values()) == {None}, timeout, f"CRDs {names} gone after deletion",
         interval=0.2)


def test_crd_upgrade_after_a_helm_install_needs_force_conflicts(rig, admin, crd_chart: CrdChart, tmp_path: Path) -> None:
    """The documented CRD upgrade, against CRDs Helm created: `kubectl apply --server-side`
    of a changed CRD is refused as a conflict with Helm's field manager "helm" (it owns
    every field it set at install: docs/install.md quotes the message);
    `--force-conflicts` takes the fields over and applies it. The chart is the real one
    with its CRDs renamed into TEST_GROUP, so Helm creates them here whatever else the
    session installed."""
    chart, shipped, names, ext = crd_chart.chart, crd_chart.shipped, crd_chart.names, crd_chart.ext
    helm_ok(rig, "install", CRD_RELEASE, str(chart), "--namespace", CRD_NAMESPACE, "--create-namespace")
    program = next(n for n in names if n.startswith("crdtestxdpprograms."))
    stored = _established(ext, program)
    assert {m.manager for m in stored.metadata.managed_fields if not m.manager.startswith("kube-apiserver")} == {"helm"}

    # the same CRDs again: no conflict (equal values are co-owned)
    kubectl_ok(rig, "apply", "--server-side", "-f", str(chart / "crds"))

    # the next version's CRD: one more field in the program's spec
    changed = copy.deepcopy(shipped)
    crd = next(c for c in changed if c["metadata"]["name"] == program)
    spec_schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec_schema["properties"]["addedInNextVersion"] = {"type": "string", "description": "new in the next version"}
    _write_crds(tmp_path / "next-crds", changed)

    refused = kubectl(rig, "apply", "--server-side", "-f", str(tmp_path / "next-crds"))
    assert refused.returncode != 0
    assert 'Apply failed with 1 conflict: conflict with "helm": .spec.versions' in refused.stderr, refused.stderr
    unchanged = ext.read_custom_resource_definition(program)
    assert "addedInNextVersion" not in json.dumps(admin.sanitize_for_serialization(unchanged.spec))

    kubectl_ok(rig, "apply", "--server-side", "--force-conflicts", "-f", str(tmp_path / "next-crds"))
    upgraded = ext.read_custom_resource_definition(program)
    props = upgraded.spec.versions[0].schema.open_apiv3_schema.properties["spec"].properties
    assert "addedInNextVersion" in props
    assert "kubectl" in {m.manager for m in upgraded.metadata.managed_fields if m.operation == "Apply"}

    # and a later `helm upgrade` leaves the CRDs as kubectl applied them (Helm never upgrades crds/)
    helm_ok(rig, "upgrade", CRD_RELEASE, str(chart), "--namespace", CRD_NAMESPACE, "-f",
            values_file(tmp_path, {"agent": {"verbose": True}}))
    assert ext.read_custom_resource_definition(program).metadata.resource_version == \
        upgraded.metadata.resource_version


def test_install_over_crds_with_other_content_is_refused_until_crds_are_skipped(rig, admin,
                                                                               crd_chart: CrdChart) -> None:
    """Helm 4 applies crds/ server-side at install, without force: where someone else
    applied the CRDs with other content (an older or newer crds/, through kubectl, Flux or
    Argo CD), the install fails as a field conflict and nothing of the release is created.
    docs/install.md: install with --skip-crds when the CRDs are managed apart from the
    chart."""
    chart, names, ext = crd_chart.chart, crd_chart.names, crd_chart.ext
    older = copy.deepcopy(crd_chart.shipped)
    for crd in older:
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["description"] = "the previous version's CRD"
    applier.apply(admin, older)            # server-side apply, field manager kube-xdp-rig
    for name in names:
        _established(ext, name)
    refused = helm(rig, "install", CRD_RELEASE, str(chart), "--namespace", CRD_NAMESPACE, "--create-namespace")
    assert refused.returncode != 0
    assert 'conflict with "kube-xdp-rig"' in refused.stderr and "failed to install CRD" in refused.stderr, \
        refused.stderr
    assert "release: not found" in helm(rig, "status", CRD_RELEASE, "--namespace", CRD_NAMESPACE).stderr
    with pytest.raises(ApiException):
        agent_daemonset(admin, CRD_RELEASE, CRD_NAMESPACE)
    for name in names:      # the CRDs someone else applied are as they were
        assert ext.read_custom_resource_definition(name).spec.versions[0].schema.open_apiv3_schema.description \
            == "the previous version's CRD"
    helm_ok(rig, "install", CRD_RELEASE, str(chart), "--namespace", CRD_NAMESPACE, "--create-namespace",
            "--skip-crds")
    assert release_status(rig, CRD_RELEASE, CRD_NAMESPACE)["info"]["status"] == "deployed"
    for name in names:
        assert ext.read_custom_resource_definition(name).spec.versions[0].schema.open_apiv3_schema.description \
            == "the previous version's CRD"


# --- upgrading the release's values -----------------------------------------------------------
VALUES_RELEASE, VALUES_NAMESPACE = "kxv", "kxv-chart"


def test_reuse_values_breaks_an_upgrade_that_adds_a_values_key(rig, admin, tmp_path: Path) -> None:
    """Why docs/install.md says `-f my-values.yaml` (or --reset-then-reuse-values), never
    --reuse-values: --reuse-values takes the previous release's values *instead of* the new
    chart's values.yaml, so a key the new chart adds is missing, and values.schema.json
    (which requires every key) refuses the upgrade. The same upgrade with
    --reset-then-reuse-values (the new chart's defaults, then the release's values) passes,
    and so does `-f my-values.yaml`; both keep my values."""
    mine = values_file(tmp_path, {"agent": {"verbose": True}})
    nxt = tmp_path / "kube-xdp"
    shutil.copytree(CHART, nxt)
    (nxt / "values.yaml").write_text((nxt / "values.yaml").read_text()
                                     + "\n# -- A key the next chart version adds.\naddedInNextVersion: 1\n")
    chart_schema = json.loads((nxt / "values.schema.json").read_text())
    chart_schema["properties"]["addedInNextVersion"] = {"type": "integer", "description": "new in the next version"}
    chart_schema["required"].append("addedInNextVersion")
    (nxt / "values.schema.json").write_text(json.dumps(chart_schema, indent=2))

    def upgrade(chart: Path, *args: str) -> subprocess.CompletedProcess:
        return helm(rig, "upgrade", VALUES_RELEASE, str(chart), "--namespace", VALUES_NAMESPACE, *args)

    def verbose_agent() -> bool:
        return "--verbose" in agent_daemonset(admin, VALUES_RELEASE, VALUES_NAMESPACE).spec.template.spec.containers[0].args

    try:
        helm_ok(rig, "install", VALUES_RELEASE, str(CHART), "--namespace", VALUES_NAMESPACE, "--create-namespace",
                "-f", mine)
        # reusing values with the same chart works
        assert upgrade(CHART, "--reuse-values").returncode == 0
        assert release_status(rig, VALUES_RELEASE, VALUES_NAMESPACE)["version"] == 2
        # with the next chart it is refused before anything reaches the cluster
        refused = upgrade(nxt, "--reuse-values")
        assert refused.returncode != 0
        assert SCHEMA_REFUSAL in refused.stderr and "addedInNextVersion" in refused.stderr, refused.stderr
        assert release_status(rig, VALUES_RELEASE, VALUES_NAMESPACE)["version"] == 2
        # the new chart's defaults, then the release's values: passes, and keeps my values
        assert upgrade(nxt, "--reset-then-reuse-values").returncode == 0
        status = release_status(rig, VALUES_RELEASE, VALUES_NAMESPACE)
        assert status["version"] == 3 and status["info"]["status"] == "deployed" and verbose_agent()
        # and the documented form: my values file again
        assert upgrade(nxt, "-f", mine).returncode == 0
        assert release_status(rig, VALUES_RELEASE, VALUES_NAMESPACE)["version"] == 4 and verbose_agent()
        computed = json.loads(helm_ok(rig, "get", "values", VALUES_RELEASE, "--namespace", VALUES_NAMESPACE,
                                      "--all", "-o", "json").stdout)
        assert computed["addedInNextVersion"] == 1 and computed["agent"]["verbose"] is True
    finally:
        helm(rig, "uninstall", VALUES_RELEASE, "--namespace", VALUES_NAMESPACE, "--ignore-not-found")
