"""Install and upgrade the Helm chart into the rig's real kube-apiserver with the real
Helm engine (helm-python-sdk, Helm v4's Go SDK), then read back what the API server
accepted. The rig has no kubelet, so no pod runs: the objects are what is checked.

The release gets a name and namespace of its own (kxc / kxc-chart), so its objects never
collide with the kube-xdp/kube-xdp-* identities other tests bind on the same rig.

Helm installs crds/ only when they do not exist: in a session where another test applied
the CRDs first (the kube-xdp deployment fixture does), Helm skips them. The install test
says which happened; the CRD-upgrade test below makes Helm create CRDs of its own (the
chart's CRDs renamed into a test API group, so the real ones, and the programs other
tests run, are never touched).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import subprocess
import time
from pathlib import Path

import kubernetes
import pytest
import yaml
from kubernetes.client.rest import ApiException
from kubernetes.dynamic import DynamicClient

from kube_xdp_agent.inventory import DEFAULT_PROBE_PATTERN
from kube_xdp_api import rbac, schema
from kube_xdp_rig import apply as applier

from .conftest import api_client
from .kubexdp import wait

helm_python = pytest.importorskip("helm_python", reason="helm-python-sdk (PyPI) is the Helm engine; pip install -e '.[test]'")

HELM_ERROR = pytest.importorskip("helm_python.errors").HelmError

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


@pytest.fixture(scope="module")
def installed(helm, rig):
    """The release, and the spec of each of the chart's CRDs that existed before it."""
    client = api_client(rig)
    try:
        before = {name: (crd_spec(client, crd) if crd else None)
                  for name, crd in read_crds(client, [c["metadata"]["name"] for c in schema.all_crds()]).items()}
    finally:
        client.close()
    release = helm.install(str(CHART), RELEASE, {}, namespace=NAMESPACE, create_namespace=True, timeout=60)
    return {"release": release, "crd_specs_before": before}


def test_install_is_deployed(installed, helm) -> None:
    status = helm.status(RELEASE)
    assert status["status"] == "deployed" and status["revision"] == 1


def test_install_leaves_the_crds_established_and_existing_ones_as_they_were(installed, admin) -> None:
    """After the install every CRD is there and Established. Helm 4 applies the chart's
    crds/ with server-side apply at install even where they exist (Helm 3 skipped them):
    CRDs that were already there with the same content keep their spec (Helm becomes a
    co-owner of its fields); see the next test for CRDs with other content."""
    ext = kubernetes.client.ApiextensionsV1Api(admin)
    for crd in schema.all_crds():
        name = crd["metadata"]["name"]
        stored = ext.read_custom_resource_definition(name)
        assert any(c.type == "Established" and c.status == "True" for c in stored.status.conditions)
        assert stored.spec.names.kind == crd["spec"]["names"]["kind"]
        if installed["crd_specs_before"][name] is not None:
            assert crd_spec(admin, stored) == installed["crd_specs_before"][name], f"Helm changed {name}"


def test_api_server_accepted_the_operator_deployment(installed, admin) -> None:
    dep = kubernetes.client.AppsV1Api(admin).read_namespaced_deployment(f"{FULLNAME}-operator", NAMESPACE)
    assert dep.spec.replicas == 1 and dep.spec.strategy.type == "Recreate"
    container = dep.spec.template.spec.containers[0]
    assert container.command == ["kube-xdp-operator"]
    assert container.args == ["--liveness=http://0.0.0.0:8080/healthz", "--agent-cleanup-timeout=600"]
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
    assert agent.command == ["kube-xdp-agent"] and agent.args == [
        "--bpffs=/sys/fs/bpf", "--resync=3", f"--inventory-interfaces={DEFAULT_PROBE_PATTERN}"]
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
    assert pod.containers[0].args == ["--bpffs=/sys/fs/bpf", "--resync=3",
                                      f"--inventory-interfaces={DEFAULT_PROBE_PATTERN}", "--verbose"]
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


# --- upgrading CRDs after a Helm install ----------------------------------------------------
KUBECTL = shutil.which("kubectl")
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


def _kubectl(rig, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([KUBECTL, "--kubeconfig", rig.kubeconfig, *args], capture_output=True, text=True, timeout=60)


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
    with a Helm config for CRD_RELEASE and the apiextensions client."""
    chart: Path
    shipped: list[dict]
    names: list[str]
    config: object
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
    config = helm_python.Config(kubeconfig_path=rig.kubeconfig, namespace=CRD_NAMESPACE)
    try:
        yield CrdChart(chart, shipped, names, config, ext)
    finally:
        config.uninstall(CRD_RELEASE, ignore_not_found=True, timeout=60)
        config.close()
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


@pytest.mark.skipif(KUBECTL is None, reason="no kubectl binary on PATH (Debian: apt-get install kubernetes-client)")
def test_crd_upgrade_after_a_helm_install_needs_force_conflicts(rig, admin, crd_chart: CrdChart, tmp_path: Path) -> None:
    """The documented CRD upgrade, against CRDs Helm created: `kubectl apply --server-side`
    of a changed CRD is refused as a conflict with Helm's field manager (Helm owns every
    field it set at install); `--force-conflicts` takes the fields over and applies it.
    The chart is the real one with its CRDs renamed into TEST_GROUP, so Helm creates them
    here whatever else the session installed."""
    chart, shipped, names, ext = crd_chart.chart, crd_chart.shipped, crd_chart.names, crd_chart.ext
    crd_chart.config.install(str(chart), CRD_RELEASE, {}, namespace=CRD_NAMESPACE, create_namespace=True, timeout=60)
    program = next(n for n in names if n.startswith("crdtestxdpprograms."))
    stored = _established(ext, program)
    helm_managers = {m.manager for m in stored.metadata.managed_fields if not m.manager.startswith("kube-apiserver")}
    assert len(helm_managers) == 1 and "kubectl" not in helm_managers, helm_managers
    (helm_manager,) = helm_managers        # "helm" for the helm CLI; here the SDK's process name

    # the same CRDs again: no conflict (equal values are co-owned)
    same = _kubectl(rig, "apply", "--server-side", "-f", str(chart / "crds"))
    assert same.returncode == 0, same.stderr

    # the next version's CRD: one more field in the program's spec
    changed = copy.deepcopy(shipped)
    crd = next(c for c in changed if c["metadata"]["name"] == program)
    spec_schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec_schema["properties"]["addedInNextVersion"] = {"type": "string", "description": "new in the next version"}
    _write_crds(tmp_path / "next-crds", changed)

    refused = _kubectl(rig, "apply", "--server-side", "-f", str(tmp_path / "next-crds"))
    assert refused.returncode != 0
    assert f'conflict with "{helm_manager}"' in refused.stderr and ".spec.versions" in refused.stderr, refused.stderr
    unchanged = ext.read_custom_resource_definition(program)
    assert "addedInNextVersion" not in json.dumps(admin.sanitize_for_serialization(unchanged.spec))

    forced = _kubectl(rig, "apply", "--server-side", "--force-conflicts", "-f", str(tmp_path / "next-crds"))
    assert forced.returncode == 0, forced.stderr
    upgraded = ext.read_custom_resource_definition(program)
    props = upgraded.spec.versions[0].schema.open_apiv3_schema.properties["spec"].properties
    assert "addedInNextVersion" in props
    assert "kubectl" in {m.manager for m in upgraded.metadata.managed_fields if m.operation == "Apply"}


def test_install_over_crds_with_other_content_is_refused_until_crds_are_skipped(admin, crd_chart: CrdChart) -> None:
    """Helm 4 applies crds/ server-side at install, without force: where someone else
    applied the CRDs with other content (an older or newer crds/, through kubectl, Flux or
    Argo CD), the install fails as a field conflict and nothing of the release is created.
    docs/install.md: install with --skip-crds when the CRDs are managed apart from the
    chart. (The SDK here has no skip-crds option: the chart without its crds/ stands in.)"""
    chart, names, ext, config = crd_chart.chart, crd_chart.names, crd_chart.ext, crd_chart.config
    older = copy.deepcopy(crd_chart.shipped)
    for crd in older:
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["description"] = "the previous version's CRD"
    applier.apply(admin, older)            # server-side apply, field manager kube-xdp-rig
    for name in names:
        _established(ext, name)
    with pytest.raises(HELM_ERROR) as refused:
        config.install(str(chart), CRD_RELEASE, {}, namespace=CRD_NAMESPACE, create_namespace=True, timeout=60)
    assert "conflict" in str(refused.value) and "kube-xdp-rig" in str(refused.value), refused.value
    with pytest.raises(ApiException):
        kubernetes.client.AppsV1Api(admin).read_namespaced_daemon_set(f"{CRD_RELEASE}-kube-xdp-agent", CRD_NAMESPACE)
    for name in names:      # the CRDs someone else applied are as they were
        assert ext.read_custom_resource_definition(name).spec.versions[0].schema.open_apiv3_schema.description \
            == "the previous version's CRD"
    shutil.rmtree(chart / "crds")     # what --skip-crds does
    config.install(str(chart), CRD_RELEASE, {}, namespace=CRD_NAMESPACE, create_namespace=True, timeout=60)
    assert config.status(CRD_RELEASE)["status"] == "deployed"


# --- upgrading the release's values -----------------------------------------------------------
VALUES_RELEASE, VALUES_NAMESPACE = "kxv", "kxv-chart"


def test_reuse_values_breaks_an_upgrade_that_adds_a_values_key(rig, admin, tmp_path: Path) -> None:
    """Why docs/install.md says `-f my-values.yaml` (or --reset-then-reuse-values), never
    --reuse-values: --reuse-values takes the previous release's values *instead of* the new
    chart's values.yaml, so a key the new chart adds is missing, and values.schema.json
    (which requires every key) refuses the upgrade. The same upgrade with the chart's own
    defaults plus the user's values (--reset-values -f my-values.yaml) passes.
    (--reset-then-reuse-values, Helm 3.14+, is not exposed by helm-python-sdk.)"""
    mine = {"agent": {"verbose": True}}                    # my-values.yaml
    nxt = tmp_path / "kube-xdp"
    shutil.copytree(CHART, nxt)
    (nxt / "values.yaml").write_text((nxt / "values.yaml").read_text()
                                     + "\n# -- A key the next chart version adds.\naddedInNextVersion: 1\n")
    chart_schema = json.loads((nxt / "values.schema.json").read_text())
    chart_schema["properties"]["addedInNextVersion"] = {"type": "integer", "description": "new in the next version"}
    chart_schema["required"].append("addedInNextVersion")
    (nxt / "values.schema.json").write_text(json.dumps(chart_schema, indent=2))
    config = helm_python.Config(kubeconfig_path=rig.kubeconfig, namespace=VALUES_NAMESPACE)
    try:
        config.install(str(CHART), VALUES_RELEASE, mine, namespace=VALUES_NAMESPACE, create_namespace=True, timeout=60)
        # reusing values with the same chart works
        same = config.upgrade(str(CHART), VALUES_RELEASE, {}, namespace=VALUES_NAMESPACE, reuse_values=True, timeout=60)
        assert same["revision"] == 2
        # with the next chart it is refused before anything reaches the cluster
        with pytest.raises(helm_python.HelmError) as refused:
            config.upgrade(str(nxt), VALUES_RELEASE, {}, namespace=VALUES_NAMESPACE, reuse_values=True, timeout=60)
        assert "addedInNextVersion" in str(refused.value)
        assert config.status(VALUES_RELEASE)["revision"] == 2
        # the chart's defaults plus my values file: passes, and keeps my values
        upgraded = config.upgrade(str(nxt), VALUES_RELEASE, mine, namespace=VALUES_NAMESPACE, reset_values=True,
                                  timeout=60)
        assert upgraded["revision"] == 3 and config.status(VALUES_RELEASE)["status"] == "deployed"
        ds = kubernetes.client.AppsV1Api(admin).read_namespaced_daemon_set(f"{VALUES_RELEASE}-kube-xdp-agent",
                                                                           VALUES_NAMESPACE)
        assert "--verbose" in ds.spec.template.spec.containers[0].args
    finally:
        config.uninstall(VALUES_RELEASE, ignore_not_found=True, timeout=60)
        config.close()
