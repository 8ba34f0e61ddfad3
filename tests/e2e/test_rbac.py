"""Least privilege, asked of the rig's real API server (RBAC authorizer).

Each ServiceAccount is checked with SubjectAccessReviews (what `kubectl auth can-i
--as=system:serviceaccount:NS:SA` sends), created by the admin, against one table of
expectations. Two sets of subjects get the same table:
- the chart's: the ServiceAccounts, ClusterRoles and bindings Helm renders for a release
  "kxr" in namespace "kxr-rbac", applied to the rig;
- the rig's: kube_xdp_api.rbac.manifests(), bound to kube-xdp/kube-xdp-operator and
  kube-xdp/kube-xdp-agent (the identities of the rig's operator token and of its agents'
  pod-bound tokens).
A few real requests made with the rig's operator token and node-1's agent token (bound to
its placeholder pod, as the rig's agents get theirs) confirm that what the reviews say is
what the server does. What the agents' admission policy adds on top of RBAC (each agent
only its own node's objects) is tests/e2e/test_node_restriction.py.

Note on `patch xdpprograms` (operator): it needs it for its finalizer (no kopf
annotations any more); RBAC cannot tell a metadata patch from a spec patch, so "the operator never
writes spec" is a property of its code (docs/install.md), not of RBAC.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import kubernetes
import pytest
from kubernetes.client.rest import ApiException

from kube_xdp_api import names, rbac
from kube_xdp_rig import apply as applier
from kube_xdp_rig import workloads

from .. import helm_cli
from .conftest import api_client

pytestmark = pytest.mark.rig

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kube-xdp"
CHART_RELEASE, CHART_NAMESPACE = "kxr", "kxr-rbac"
G = names.GROUP
ANY_NS = "some-namespace"     # namespaced resources are checked in a namespace of no importance

# (verb, group, resource, subresource, namespaced) -> the access each component must have.
# Every grant of kube_xdp_api.rbac appears here as allowed (checked below), and the rest
# is what each must NOT be able to do.
ALLOW, DENY = True, False
AGENT = [
    # its attachments: watch and finalizer, its status
    *[(v, G, "xdpattachments", "", False, ALLOW) for v in ("get", "list", "watch", "patch")],
    *[(v, G, "xdpattachments", "status", False, ALLOW) for v in ("get", "patch")],
    # programs: read one (the source), nothing else
    ("get", G, "xdpprograms", "", False, ALLOW),
    ("get", "", "configmaps", "", True, ALLOW),
    # its XdpNode
    *[(v, G, "xdpnodes", "", False, ALLOW) for v in ("get", "list", "watch", "create", "patch")],
    *[(v, G, "xdpnodes", "status", False, ALLOW) for v in ("get", "patch")],
    # Events: created (core/v1), never changed; not the events.k8s.io API (unused)
    ("create", "", "events", "", True, ALLOW),
    *[(v, "", "events", "", True, DENY) for v in ("patch", "update", "delete", "list")],
    *[(v, "events.k8s.io", "events", "", True, DENY) for v in ("create", "patch", "delete")],
    # cannot create or change programs, nor see all of them
    *[(v, G, "xdpprograms", "", False, DENY) for v in ("create", "update", "patch", "delete", "list", "watch",
                                                       "deletecollection")],
    *[(v, G, "xdpprograms", "status", False, DENY) for v in ("update", "patch")],
    # cannot create, replace or delete attachments (the operator's job)
    *[(v, G, "xdpattachments", "", False, DENY) for v in ("create", "update", "delete", "deletecollection")],
    ("update", G, "xdpattachments", "status", False, DENY),
    ("delete", G, "xdpnodes", "", False, DENY),
    ("update", G, "xdpnodes", "", False, DENY),
    # nothing beyond reading one ConfigMap by name
    *[(v, "", "configmaps", "", True, DENY) for v in ("list", "watch", "create", "update", "patch", "delete")],
    ("get", "", "nodes", "", False, DENY),
    ("patch", "", "nodes", "", False, DENY),
]
OPERATOR = [
    *[(v, G, "xdpprograms", "", False, ALLOW) for v in ("get", "list", "watch", "patch")],
    *[(v, G, "xdpprograms", "status", False, ALLOW) for v in ("get", "patch")],
    ("update", G, "xdpprograms", "finalizers", False, ALLOW),
    *[(v, G, "xdpattachments", "", False, ALLOW) for v in ("get", "list", "watch", "create", "patch", "delete")],
    *[(v, "", "nodes", "", False, ALLOW) for v in ("get", "list", "watch")],
    ("get", "", "configmaps", "", True, ALLOW),
    # Events: created (core/v1: kube_xdp_api.events and kopf's own), never changed
    ("create", "", "events", "", True, ALLOW),
    *[(v, "", "events", "", True, DENY) for v in ("patch", "update", "delete", "list")],
    *[(v, "events.k8s.io", "events", "", True, DENY) for v in ("create", "patch", "delete")],
    # never creates, replaces or deletes programs (users own them)
    *[(v, G, "xdpprograms", "", False, DENY) for v in ("create", "update", "delete", "deletecollection")],
    ("update", G, "xdpprograms", "status", False, DENY),
    # attachment status is the agents' to write
    *[(v, G, "xdpattachments", "status", False, DENY) for v in ("patch", "update")],
    ("update", G, "xdpattachments", "", False, DENY),
    ("deletecollection", G, "xdpattachments", "", False, DENY),
    # XdpNodes are the agents': the operator reads which nodes have one and deletes the
    # XdpNode of a Node that is gone; it never creates or changes one
    *[(v, G, "xdpnodes", "", False, ALLOW) for v in ("get", "list", "watch", "delete")],
    *[(v, G, "xdpnodes", "", False, DENY) for v in ("create", "patch", "update")],
    ("patch", G, "xdpnodes", "status", False, DENY),
    # reads node labels, never changes nodes
    *[(v, "", "nodes", "", False, DENY) for v in ("patch", "update", "delete", "create")],
    *[(v, "", "configmaps", "", True, DENY) for v in ("list", "watch", "create", "update", "patch", "delete")],
]
# Neither component may touch secrets, RBAC, workloads, CRDs, tokens or identities.
FORBIDDEN_TO_BOTH = [
    *[(v, "", "secrets", "", True, DENY) for v in ("get", "list", "watch", "create", "update", "patch", "delete")],
    *[(v, "rbac.authorization.k8s.io", r, "", ns, DENY)
      for r, ns in (("clusterroles", False), ("clusterrolebindings", False), ("roles", True), ("rolebindings", True))
      for v in ("create", "update", "patch", "delete", "escalate", "bind")],
    *[(v, "", "pods", "", True, DENY) for v in ("create", "delete", "list")],
    ("create", "", "pods", "exec", True, DENY),
    *[(v, "apps", r, "", True, DENY) for r in ("deployments", "daemonsets", "statefulsets", "replicasets")
      for v in ("create", "update", "patch", "delete")],
    *[(v, "batch", r, "", True, DENY) for r in ("jobs", "cronjobs") for v in ("create", "patch")],
    ("create", "", "serviceaccounts", "token", True, DENY),
    *[(v, "", "serviceaccounts", "", True, DENY) for v in ("create", "patch")],
    ("impersonate", "", "users", "", False, DENY),
    ("impersonate", "", "serviceaccounts", "", True, DENY),
    *[(v, "apiextensions.k8s.io", "customresourcedefinitions", "", False, DENY) for v in ("create", "update",
                                                                                          "patch", "delete")],
    *[(v, "admissionregistration.k8s.io", "validatingwebhookconfigurations", "", False, DENY)
      for v in ("create", "patch")],
    ("create", "", "namespaces", "", False, DENY),
    ("delete", "", "namespaces", "", False, DENY),
    ("create", "certificates.k8s.io", "certificatesigningrequests", "", False, DENY),
]
TABLE = {"agent": AGENT + FORBIDDEN_TO_BOTH, "operator": OPERATOR + FORBIDDEN_TO_BOTH}
RULES = {"agent": rbac.AGENT_RULES, "operator": rbac.OPERATOR_RULES}


def subject(source: str, component: str) -> tuple[str, str]:
    """(namespace, ServiceAccount name) of a component for the chart's or the rig's RBAC."""
    if source == "chart":
        return CHART_NAMESPACE, f"{CHART_RELEASE}-kube-xdp-{component}"
    return rbac.NAMESPACE, {"agent": rbac.AGENT_SA, "operator": rbac.OPERATOR_SA}[component]


@pytest.fixture(scope="module")
def rbac_applied(rig):
    """The chart's rendered RBAC (release kxr in kxr-rbac) and kube_xdp_api.rbac.manifests(),
    applied with server-side apply; the CRDs too, for the real requests below."""
    docs = helm_cli.render(release=CHART_RELEASE, namespace=CHART_NAMESPACE, chart=CHART)     # helm template
    chart_rbac = [d for d in docs if d["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding")]
    assert len(chart_rbac) == 6
    admin = api_client(rig)
    try:
        applier.apply(admin, [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": CHART_NAMESPACE}}])
        applier.apply(admin, chart_rbac)
        applier.apply(admin, rbac.manifests())
        applier.apply(admin, applier.load_yaml(REPO / "crds"))
    finally:
        admin.close()


def can_i(admin, namespace: str, sa: str, verb: str, group: str, resource: str, subresource: str,
          namespaced: bool) -> bool:
    review = kubernetes.client.V1SubjectAccessReview(spec=kubernetes.client.V1SubjectAccessReviewSpec(
        user=f"system:serviceaccount:{namespace}:{sa}",
        groups=["system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"],
        resource_attributes=kubernetes.client.V1ResourceAttributes(
            verb=verb, group=group, resource=resource, subresource=subresource or None,
            namespace=ANY_NS if namespaced else None)))
    result = kubernetes.client.AuthorizationV1Api(admin).create_subject_access_review(review)
    assert not result.status.evaluation_error, result.status.evaluation_error
    return bool(result.status.allowed)


def _case_id(case) -> str:
    verb, group, resource, sub, _, allowed = case
    what = f"{resource}/{sub}" if sub else resource
    return f"{'can' if allowed else 'cannot'}-{verb}-{what}{'.' + group if group else ''}"


@pytest.mark.parametrize("source", ["chart", "rig"])
@pytest.mark.parametrize("component", ["agent", "operator"])
def test_access_table(rbac_applied, admin, source: str, component: str) -> None:
    """Every row of the component's table, as the API server answers it."""
    namespace, sa = subject(source, component)
    wrong = []
    for case in TABLE[component]:
        verb, group, resource, sub, namespaced, allowed = case
        if can_i(admin, namespace, sa, verb, group, resource, sub, namespaced) != allowed:
            wrong.append(_case_id(case))
    assert wrong == [], f"{source} {component} ({namespace}/{sa}) differs from the table: {wrong}"


@pytest.mark.parametrize("component", ["agent", "operator"])
def test_table_allows_exactly_what_rbac_grants(component: str) -> None:
    """The allowed rows are exactly kube_xdp_api.rbac's grants: a new grant must be added to
    the table (and so be reviewed), a removed one fails the table's row."""
    granted = {(verb, group, *(res.split("/", 1) + [""])[:2])
               for group, resources, verbs, _ in RULES[component] for res in resources for verb in verbs}
    allowed = {(verb, group, resource, sub) for verb, group, resource, sub, _, ok in TABLE[component] if ok}
    assert allowed == granted


def test_a_service_account_without_bindings_gets_nothing(rbac_applied, admin) -> None:
    """The reviews can say no for the right reason: an unbound ServiceAccount in the same
    namespace is refused what the agent is allowed."""
    assert can_i(admin, CHART_NAMESPACE, "kxr-kube-xdp-agent", "get", G, "xdpprograms", "", False)
    assert not can_i(admin, CHART_NAMESPACE, "default", "get", G, "xdpprograms", "", False)


# --- real requests with the rig's tokens ------------------------------------------------------
def _program(name: str) -> dict:
    return {"apiVersion": names.API_VERSION, "kind": names.PROGRAM_KIND, "metadata": {"name": name},
            "spec": {"entrypoint": "xdp_pass", "source": {"inline": "int xdp_pass(struct xdp_md *c) { return 2; }"},
                     "nodeSelector": {"matchLabels": {"kubexdp.io/rbac-test": "none"}}}}


def test_real_requests_match_the_reviews(rbac_applied, rig, admin) -> None:
    custom = kubernetes.client.CustomObjectsApi(admin)
    name = f"rbac-{uuid.uuid4().hex[:6]}"
    custom.create_cluster_custom_object(G, names.VERSION, names.PROGRAMS, _program(name))
    agent_kubeconfig = workloads.issue_agent_credentials(rig, ["node-1"])["node-1"]
    agent = kubernetes.config.new_client_from_config(config_file=str(agent_kubeconfig))
    operator = api_client(rig, "operator")
    try:
        as_agent, as_operator = kubernetes.client.CustomObjectsApi(agent), kubernetes.client.CustomObjectsApi(operator)
        # allowed: the agent reads the program, the operator lists programs and nodes
        assert as_agent.get_cluster_custom_object(G, names.VERSION, names.PROGRAMS, name)["metadata"]["name"] == name
        assert any(p["metadata"]["name"] == name
                   for p in as_operator.list_cluster_custom_object(G, names.VERSION, names.PROGRAMS)["items"])
        kubernetes.client.CoreV1Api(operator).list_node()
        # refused: the agent creating or changing programs, either reading secrets
        refused = [
            lambda: as_agent.create_cluster_custom_object(G, names.VERSION, names.PROGRAMS, _program(name + "-x")),
            lambda: as_agent.patch_cluster_custom_object(G, names.VERSION, names.PROGRAMS, name,
                                                         {"spec": {"priority": 1}}),
            lambda: as_agent.list_cluster_custom_object(G, names.VERSION, names.PROGRAMS),
            lambda: as_operator.create_cluster_custom_object(G, names.VERSION, names.PROGRAMS,
                                                             _program(name + "-y")),
            lambda: kubernetes.client.CoreV1Api(agent).list_namespaced_secret("kube-system"),
            lambda: kubernetes.client.CoreV1Api(operator).list_namespaced_secret("kube-system"),
            lambda: kubernetes.client.RbacAuthorizationV1Api(operator).create_cluster_role(
                {"metadata": {"name": f"escalate-{name}"}, "rules": []}),
            lambda: kubernetes.client.AppsV1Api(agent).list_namespaced_daemon_set("kube-xdp"),
        ]
        for attempt in refused:
            with pytest.raises(ApiException) as denied:
                attempt()
            assert denied.value.status == 403
    finally:
        agent.close()
        operator.close()
        custom.delete_cluster_custom_object(G, names.VERSION, names.PROGRAMS, name)
