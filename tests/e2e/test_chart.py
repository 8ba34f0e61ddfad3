"""Install and upgrade the Helm chart into the rig's real kube-apiserver with the real
Helm engine (helm-python-sdk, Helm v4's Go SDK), then read back what the API server
accepted. The rig has no kubelet, so no pod runs: the objects are what is checked.

The release gets a name and namespace of its own (kxc / kxc-chart), so its objects never
collide with the kube-xdp/kube-xdp-* identities other tests bind on the same rig.
"""

from __future__ import annotations

import copy
from pathlib import Path

import kubernetes
import pytest
import yaml
from kubernetes.client.rest import ApiException
from kubernetes.dynamic import DynamicClient

from kube_xdp_api import rbac, schema

from .conftest import api_client

helm_python = pytest.importorskip("helm_python", reason="helm-python-sdk (PyPI) is the Helm engine; pip install -e '.[test]'")

pytestmark = pytest.mark.rig

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kube-xdp"
RELEASE, NAMESPACE = "kxc", "kxc-chart"
FULLNAME = "kxc-kube-xdp"


def ci_values(name: str) -> dict:
    return yaml.safe_load((CHART / "ci" / f"{name}-values.yaml").read_text()) or {}


@pytest.fixture(scope="module")
def helm(rig):
    config = helm_python.Config(kubeconfig_path=rig.kubeconfig, namespace=NAMESPACE)
    yield config
    config.uninstall(RELEASE, ignore_not_found=True)
    config.close()


@pytest.fixture(scope="module")
def installed(helm, rig):
    release = helm.install(str(CHART), RELEASE, {}, namespace=NAMESPACE, create_namespace=True, timeout=60)
    return release


def test_install_is_deployed(installed, helm) -> None:
    status = helm.status(RELEASE)
    assert status["status"] == "deployed" and status["revision"] == 1


def test_install_created_the_crds_and_they_are_established(installed, admin) -> None:
    ext = kubernetes.client.ApiextensionsV1Api(admin)
    for crd in schema.all_crds():
        stored = ext.read_custom_resource_definition(crd["metadata"]["name"])
        assert any(c.type == "Established" and c.status == "True" for c in stored.status.conditions)
        assert stored.spec.names.kind == crd["spec"]["names"]["kind"]


def test_api_server_accepted_the_operator_deployment(installed, admin) -> None:
    dep = kubernetes.client.AppsV1Api(admin).read_namespaced_deployment(f"{FULLNAME}-operator", NAMESPACE)
    assert dep.spec.replicas == 1 and dep.spec.strategy.type == "Recreate"
    container = dep.spec.template.spec.containers[0]
    assert container.command == ["kube-xdp-operator"]
    assert container.args == ["--liveness=http://0.0.0.0:8080/healthz"]
    assert container.liveness_probe.http_get.path == "/healthz"
    assert container.liveness_probe.http_get.port == "liveness"
    assert dep.spec.template.spec.service_account_name == f"{FULLNAME}-operator"
    assert dep.spec.template.spec.security_context.run_as_non_root is True


def test_api_server_accepted_the_agent_daemonset(installed, admin) -> None:
    ds = kubernetes.client.AppsV1Api(admin).read_namespaced_daemon_set(f"{FULLNAME}-agent", NAMESPACE)
    assert ds.spec.update_strategy.type == "RollingUpdate"
    assert ds.spec.update_strategy.rolling_update.max_unavailable == 1
    pod = ds.spec.template.spec
    assert pod.host_network is True and pod.dns_policy == "ClusterFirstWithHostNet"
    assert pod.service_account_name == f"{FULLNAME}-agent"
    assert [(t.operator, t.key, t.effect) for t in pod.tolerations] == [("Exists", None, None)]
    agent = pod.containers[0]
    assert agent.command == ["kube-xdp-agent"] and agent.args == ["--bpffs=/sys/fs/bpf", "--resync=3"]
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


def test_upgrade_changes_the_workloads(installed, helm, admin) -> None:
    values = copy.deepcopy(ci_values("priorityclass-tolerations"))
    values["agent"]["verbose"] = True
    release = helm.upgrade(str(CHART), RELEASE, values, namespace=NAMESPACE, timeout=60)
    assert release["revision"] == 2 and helm.status(RELEASE)["status"] == "deployed"
    ds = kubernetes.client.AppsV1Api(admin).read_namespaced_daemon_set(f"{FULLNAME}-agent", NAMESPACE)
    pod = ds.spec.template.spec
    assert pod.priority_class_name == "system-node-critical"
    assert [t.key for t in pod.tolerations] == ["dedicated", "node.kubernetes.io/not-ready"]
    assert pod.node_selector == {"kubernetes.io/os": "linux"}
    assert ds.spec.update_strategy.rolling_update.max_unavailable == "10%"
    assert pod.containers[0].args == ["--bpffs=/sys/fs/bpf", "--resync=3", "--verbose"]
    dep = kubernetes.client.AppsV1Api(admin).read_namespaced_deployment(f"{FULLNAME}-operator", NAMESPACE)
    assert dep.spec.template.spec.priority_class_name == "system-cluster-critical"
    assert dep.spec.strategy.type == "Recreate"


def server_dry_run(client, values: dict, release: str) -> list[str]:
    """Render with Helm, then server-side apply every object with dryRun=All: the API
    server validates and admits each one without storing it. (Helm's own
    dry_run="server" only connects for `lookup`; it does not send the objects.)"""
    rendered = helm_python.Chart.load(CHART).render(values, name=release, namespace=NAMESPACE)
    dyn = DynamicClient(client)
    kinds = []
    for path, text in sorted(rendered.items()):
        for doc in (d for d in yaml.safe_load_all(text) if d) if path.endswith(".yaml") else ():
            resource = dyn.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
            resource.server_side_apply(body=doc, name=doc["metadata"]["name"],
                                       namespace=doc["metadata"].get("namespace"),
                                       field_manager="kube-xdp-chart-test", dry_run="All")
            kinds.append(doc["kind"])
    return sorted(kinds)


@pytest.mark.parametrize("scenario", ["default", "capabilities", "privileged", "priorityclass-tolerations",
                                      "custom-image"])
def test_every_ci_scenario_passes_server_side_validation(installed, admin, scenario: str) -> None:
    kinds = server_dry_run(admin, ci_values(scenario), f"kxs-{scenario}")
    assert kinds == ["ClusterRole", "ClusterRole", "ClusterRoleBinding", "ClusterRoleBinding", "DaemonSet",
                     "Deployment", "ServiceAccount", "ServiceAccount"]


def test_server_side_dry_run_reports_what_the_server_refuses(installed, admin) -> None:
    """The dry runs above can fail: a pass-through value the schema cannot judge (a
    downward-API field that does not exist) is refused by the server."""
    bad = {"agent": {"extraEnv": [{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "spec.noSuchField"}}}]}}
    helm_python.Chart.load(CHART).validate_schema(bad)
    with pytest.raises(ApiException) as refused:
        server_dry_run(admin, bad, "kxs-bad")
    assert refused.value.status == 422 and "spec.noSuchField" in refused.value.body


def test_api_server_refuses_what_the_chart_never_renders(installed, admin) -> None:
    """The same server refuses a privileged agent that also asks for
    allowPrivilegeEscalation=false (why the chart's privileged branch omits it)."""
    apps = kubernetes.client.AppsV1Api(admin)
    ds = apps.read_namespaced_daemon_set(f"{FULLNAME}-agent", NAMESPACE)
    ds.metadata = kubernetes.client.V1ObjectMeta(name="kxc-refused", namespace=NAMESPACE)
    ds.status = None
    ds.spec.template.spec.containers[0].security_context = kubernetes.client.V1SecurityContext(
        privileged=True, allow_privilege_escalation=False)
    with pytest.raises(ApiException) as refused:
        apps.create_namespaced_daemon_set(NAMESPACE, ds, dry_run="All")
    assert refused.value.status == 422 and "allowPrivilegeEscalation" in refused.value.body


def test_values_violating_the_schema_are_refused_before_the_cluster(installed, helm) -> None:
    with pytest.raises(helm_python.HelmError):
        helm.upgrade(str(CHART), RELEASE, {"agent": {"capabilities": ["CAP_BPF"]}}, namespace=NAMESPACE, timeout=60)
    assert helm.status(RELEASE)["status"] == "deployed"


def test_uninstall_removes_the_release_but_keeps_the_crds(installed, helm, rig) -> None:
    helm.uninstall(RELEASE, timeout=60)
    admin = api_client(rig)
    try:
        with pytest.raises(ApiException) as gone:
            kubernetes.client.AppsV1Api(admin).read_namespaced_daemon_set(f"{FULLNAME}-agent", NAMESPACE)
        assert gone.value.status == 404
        with pytest.raises(ApiException):
            kubernetes.client.RbacAuthorizationV1Api(admin).read_cluster_role(f"{FULLNAME}-agent")
        # Helm never deletes crds/: programs survive an uninstall (docs/install.md)
        ext = kubernetes.client.ApiextensionsV1Api(admin)
        assert ext.read_custom_resource_definition("xdpprograms.kubexdp.io").metadata.name
    finally:
        admin.close()
