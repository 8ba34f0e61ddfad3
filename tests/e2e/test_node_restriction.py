"""The agents' node restriction (kube_xdp_api.admission, a ValidatingAdmissionPolicy) on
the rig's real API server, with the agents' real pod-bound tokens.

The rig installs the policy with the CRDs and RBAC and gives each agent a token bound to a
placeholder pod on its node (kube_xdp_rig.workloads.issue_agent_credentials). Here, with
the running agents' own kubeconfigs: node-1's agent is refused node-2's attachment (status,
finalizer, spec) and node-2's XdpNode, with the policy's message; its own writes pass;
moving an attachment to or away from its node is refused; a token that names no node is
refused everything; the operator is not restricted. RBAC alone allowed every one of the
refused requests (tests/e2e/test_rbac.py): only the policy refuses them. The whole deploy
path under the policy is every other e2e test (the agents write their status and XdpNode
through it).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import kubernetes
import pytest
import yaml
from kubernetes.client.rest import ApiException

from kube_xdp_api import admission, names, rbac
from kube_xdp_rig import certs, workloads

from .conftest import api_client
from .kubexdp import COUNT_ALL, program, wait

pytestmark = pytest.mark.rig

G, V = names.GROUP, names.VERSION
POLICY = admission.policy_name()
PROGRAM = "nr-count"
AGENT_USER = admission.agent_username(rbac.NAMESPACE, rbac.AGENT_SA)


@contextmanager
def client_of(kubeconfig: Path) -> Iterator[kubernetes.client.CustomObjectsApi]:
    client = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
    try:
        yield kubernetes.client.CustomObjectsApi(client)
    finally:
        client.close()


@contextmanager
def agent(rig, node: str) -> Iterator[kubernetes.client.CustomObjectsApi]:
    """The API as the node's running agent sees it: its own kubeconfig (its bound token)."""
    with client_of(workloads.agent_kubeconfig(rig, node)) as custom:
        yield custom


def refused(call: Callable[[], object]) -> str:
    """The message of the policy's refusal of `call` (asserts it is the policy's: 403,
    naming the policy; RBAC's 403 names no policy)."""
    with pytest.raises(ApiException) as denied:
        call()
    body = json.loads(denied.value.body)
    assert denied.value.status == 403 and body["reason"] == "Forbidden", body
    assert f"ValidatingAdmissionPolicy '{POLICY}' with binding '{POLICY}' denied request" in body["message"], body
    return body["message"]


def whoami(kubeconfig: Path) -> dict:
    client = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
    try:
        review = kubernetes.client.AuthenticationV1Api(client).create_self_subject_review(
            {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
        return review.status.user_info.to_dict()
    finally:
        client.close()


@pytest.fixture(scope="module")
def placed(kubexdp) -> Iterator[dict[str, dict]]:
    """A program on node-1 and node-2 (attached by their agents, through the policy):
    node -> its XdpAttachment."""
    selector = {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In",
                                      "values": ["node-1", "node-2"]}]}
    with kubexdp.tracked_programs() as create:
        create(program(PROGRAM, COUNT_ALL, "xdp_count", selector=selector))
        kubexdp.wait_ready(PROGRAM)
        atts = kubexdp.attachments(PROGRAM)
        assert sorted(atts) == ["node-1", "node-2"]
        yield atts


def attachment(admin_custom, node: str) -> dict:
    return admin_custom.get_cluster_custom_object(G, V, names.ATTACHMENTS, names.attachment_name(PROGRAM, node))


@pytest.fixture()
def admin_custom(admin):
    return kubernetes.client.CustomObjectsApi(admin)


# --- the tokens ------------------------------------------------------------------------------
@pytest.mark.parametrize("node", ["node-1", "node-2", "node-3"])
def test_each_agent_token_is_bound_to_a_pod_on_its_node(rig, kubexdp, node: str) -> None:
    """The API server names the node in the agent's user info (what the policy reads), and
    in the token itself; the token lives as long as the rig asked."""
    user = whoami(workloads.agent_kubeconfig(rig, node))
    assert user["username"] == AGENT_USER
    assert user["extra"][admission.NODE_NAME_EXTRA] == [node]
    assert user["extra"]["authentication.kubernetes.io/pod-name"] == [workloads.placeholder_pod_name(node)]
    token = yaml.safe_load(workloads.agent_kubeconfig(rig, node).read_text())["users"][0]["user"]["token"]
    claims = workloads.token_claims(token)
    assert claims["kubernetes.io"]["node"]["name"] == node
    assert claims["exp"] - claims["iat"] == workloads.AGENT_TOKEN_SECONDS
    pod = kubexdp.core.read_namespaced_pod(workloads.placeholder_pod_name(node), rbac.NAMESPACE)
    assert pod.spec.node_name == node and pod.spec.service_account_name == rbac.AGENT_SA
    assert claims["kubernetes.io"]["pod"]["uid"] == pod.metadata.uid


# --- another node's objects -----------------------------------------------------------------
def test_another_nodes_attachment_status_is_refused(rig, placed, admin_custom) -> None:
    before = attachment(admin_custom, "node-2")
    name = before["metadata"]["name"]
    with agent(rig, "node-1") as as_node1:
        # the very status node-2's agent wrote: a write that would change nothing is refused too
        message = refused(lambda: as_node1.patch_cluster_custom_object_status(
            G, V, names.ATTACHMENTS, name, {"status": before["status"]}))
    assert (f"the agent of node 'node-1' (its token's node) may write only that node's XdpAttachments and XdpNode; "
            f"this UPDATE of xdpattachments/status \"{name}\" is for node 'node-2'") in message
    assert "check the agent's --node-name" in message


def test_another_nodes_attachment_finalizer_and_metadata_are_refused(rig, placed, admin_custom) -> None:
    before = attachment(admin_custom, "node-2")
    name = before["metadata"]["name"]
    assert names.FINALIZER_AGENT in before["metadata"]["finalizers"]
    with agent(rig, "node-1") as as_node1:
        released = refused(lambda: as_node1.patch_cluster_custom_object(
            G, V, names.ATTACHMENTS, name, {"metadata": {"finalizers": []}}))
        refused(lambda: as_node1.patch_cluster_custom_object(
            G, V, names.ATTACHMENTS, name, {"metadata": {"annotations": {"kubexdp.io/nr-test": "x"}}}))
    assert f"UPDATE of xdpattachments \"{name}\" is for node 'node-2'" in released
    after = attachment(admin_custom, "node-2")
    assert names.FINALIZER_AGENT in after["metadata"]["finalizers"]
    assert "kubexdp.io/nr-test" not in (after["metadata"].get("annotations") or {})


def test_moving_an_attachment_to_or_away_from_its_node_is_refused(rig, placed, admin_custom) -> None:
    own, other = names.attachment_name(PROGRAM, "node-1"), names.attachment_name(PROGRAM, "node-2")
    with agent(rig, "node-1") as as_node1:
        away = refused(lambda: as_node1.patch_cluster_custom_object(
            G, V, names.ATTACHMENTS, own, {"spec": {"nodeName": "node-2"}}))
        here = refused(lambda: as_node1.patch_cluster_custom_object(
            G, V, names.ATTACHMENTS, other, {"spec": {"nodeName": "node-1"}}))
    assert f"UPDATE of xdpattachments \"{own}\" would move it from node 'node-1' to node 'node-2'" in away
    assert f"UPDATE of xdpattachments \"{other}\" would move it from node 'node-2' to node 'node-1'" in here
    assert attachment(admin_custom, "node-1")["spec"]["nodeName"] == "node-1"
    assert attachment(admin_custom, "node-2")["spec"]["nodeName"] == "node-2"


def test_another_nodes_xdpnode_is_refused(rig, kubexdp, admin_custom) -> None:
    node2 = wait(lambda: _published(admin_custom, "node-2"), 30, "node-2's XdpNode published")
    with agent(rig, "node-1") as as_node1:
        status = refused(lambda: as_node1.patch_cluster_custom_object_status(
            G, V, names.NODES, "node-2", {"status": node2["status"]}))
        patch = refused(lambda: as_node1.patch_cluster_custom_object(
            G, V, names.NODES, "node-2", {"metadata": {"labels": {"kubexdp.io/nr-test": "x"}}}))
        fresh = f"nr-{uuid.uuid4().hex[:6]}"
        create = refused(lambda: as_node1.create_cluster_custom_object(G, V, names.NODES, _xdpnode(fresh)))
        # its own name with another node in spec.nodeName: refused before the API server
        # would even say it exists
        mislabelled = refused(lambda: as_node1.create_cluster_custom_object(
            G, V, names.NODES, {**_xdpnode("node-1"), "spec": {"nodeName": "node-2"}}))
    assert "this UPDATE of xdpnodes/status \"node-2\" is for node 'node-2'" in status
    assert "this UPDATE of xdpnodes \"node-2\" is for node 'node-2'" in patch
    assert f"this CREATE of xdpnodes \"{fresh}\" is for node '{fresh}'" in create
    assert "this CREATE of xdpnodes \"node-1\" is for node 'node-2'" in mislabelled
    assert _get(admin_custom, names.NODES, fresh) is None
    assert "kubexdp.io/nr-test" not in _get(admin_custom, names.NODES, "node-2")["metadata"].get("labels", {})


# --- its own objects ----------------------------------------------------------------------------
def test_its_own_writes_pass(rig, placed, admin_custom) -> None:
    """The writes the agent makes (status, finalizer) on its own attachment and XdpNode,
    and a metadata change the policy sees in full (the annotation is stored)."""
    own = attachment(admin_custom, "node-1")
    name = own["metadata"]["name"]
    with agent(rig, "node-1") as as_node1:
        as_node1.patch_cluster_custom_object_status(G, V, names.ATTACHMENTS, name, {"status": own["status"]})
        as_node1.patch_cluster_custom_object(G, V, names.ATTACHMENTS, name,
                                             {"metadata": {"finalizers": own["metadata"]["finalizers"]}})
        noted = as_node1.patch_cluster_custom_object(G, V, names.ATTACHMENTS, name,
                                                     {"metadata": {"annotations": {"kubexdp.io/nr-test": "own"}}})
        assert noted["metadata"]["annotations"]["kubexdp.io/nr-test"] == "own"
        as_node1.patch_cluster_custom_object(G, V, names.ATTACHMENTS, name,
                                             {"metadata": {"annotations": {"kubexdp.io/nr-test": None}}})
        node1 = wait(lambda: _published(admin_custom, "node-1"), 30, "node-1's XdpNode published")
        as_node1.patch_cluster_custom_object_status(G, V, names.NODES, "node-1", {"status": node1["status"]})


@pytest.fixture()
def fresh_node(rig, kubexdp) -> Iterator[tuple[str, Path]]:
    """A Node object no agent runs on yet, and an agent kubeconfig for it issued the way the
    rig issues every agent's (placeholder pod, bound token); all removed afterwards."""
    node = f"nr-{uuid.uuid4().hex[:6]}"
    kubexdp.core.create_node({"apiVersion": "v1", "kind": "Node",
                              "metadata": {"name": node, "labels": {"kubexdp.io/nr-test": "true"}}})
    try:
        yield node, workloads.issue_agent_credentials(rig, [node])[node]
    finally:
        _delete(kubexdp.custom, names.NODES, node)
        try:
            kubexdp.core.delete_namespaced_pod(workloads.placeholder_pod_name(node), rbac.NAMESPACE,
                                               grace_period_seconds=0)
        except ApiException as e:
            if e.status != 404:
                raise
        kubexdp.core.delete_node(node)
        workloads.agent_kubeconfig(rig, node).unlink(missing_ok=True)


def test_an_agent_creates_and_updates_its_own_xdpnode(fresh_node, admin_custom) -> None:
    node, kubeconfig = fresh_node
    with client_of(kubeconfig) as as_agent:
        created = as_agent.create_cluster_custom_object(G, V, names.NODES, _xdpnode(node))
        assert created["spec"]["nodeName"] == node
        as_agent.patch_cluster_custom_object_status(G, V, names.NODES, node, {"status": {"observedGeneration": 1}})
    assert _get(admin_custom, names.NODES, node)["status"]["observedGeneration"] == 1


@pytest.fixture()
def agents_may_delete_xdpnodes(admin, rig) -> Iterator[None]:
    """RBAC widened (as a cluster admin might): the agent ServiceAccount may delete
    XdpNodes. The policy, not RBAC, must then refuse another node's."""
    rbac_api = kubernetes.client.RbacAuthorizationV1Api(admin)
    name = f"nr-widened-{uuid.uuid4().hex[:6]}"
    rbac_api.create_cluster_role({"metadata": {"name": name}, "rules": [
        {"apiGroups": [G], "resources": [names.NODES], "verbs": ["delete"]}]})
    rbac_api.create_cluster_role_binding({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": rbac.AGENT_SA, "namespace": rbac.NAMESPACE}]})
    authz = kubernetes.client.AuthorizationV1Api(admin)

    def allowed() -> bool:
        review = authz.create_subject_access_review({"spec": {
            "user": AGENT_USER, "groups": ["system:serviceaccounts", f"system:serviceaccounts:{rbac.NAMESPACE}"],
            "resourceAttributes": {"verb": "delete", "group": G, "resource": names.NODES}}})
        return bool(review.status.allowed)

    try:
        wait(allowed, 30, "the widened RBAC in effect")
        yield
    finally:
        rbac_api.delete_cluster_role_binding(name)
        rbac_api.delete_cluster_role(name)


def test_delete_another_nodes_xdpnode_is_refused_even_where_rbac_allows_it(
        fresh_node, agents_may_delete_xdpnodes, kubexdp, admin_custom) -> None:
    node, kubeconfig = fresh_node
    wait(lambda: _get(admin_custom, names.NODES, "node-2"), 30, "node-2's XdpNode")
    admin_custom.create_cluster_custom_object(G, V, names.NODES, _xdpnode(node))
    with client_of(kubeconfig) as as_agent:
        message = refused(lambda: as_agent.delete_cluster_custom_object(G, V, names.NODES, "node-2"))
        as_agent.delete_cluster_custom_object(G, V, names.NODES, node)       # its own: allowed
    assert f"the agent of node '{node}' (its token's node)" in message
    assert "this DELETE of xdpnodes \"node-2\" is for node 'node-2'" in message
    assert _get(admin_custom, names.NODES, "node-2") is not None
    wait(lambda: _get(admin_custom, names.NODES, node) is None, 10, f"XdpNode {node} deleted")


# --- tokens that name no node ---------------------------------------------------------------
@contextmanager
def unbound_token(core, kind: str) -> Iterator[str]:
    """A real token of the agent ServiceAccount that names no node: from a TokenRequest
    with no bound object, or bound to a pod that is not on any node."""
    if kind == "no-bound-object":
        yield core.create_namespaced_service_account_token(
            rbac.AGENT_SA, rbac.NAMESPACE,
            {"spec": {"audiences": [], "expirationSeconds": 600}}).status.token
        return
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": f"nr-unscheduled-{uuid.uuid4().hex[:6]}", "namespace": rbac.NAMESPACE},
           "spec": {"serviceAccountName": rbac.AGENT_SA, "automountServiceAccountToken": False,
                    "containers": [{"name": "agent", "image": workloads.PLACEHOLDER_IMAGE}]}}
    created = core.create_namespaced_pod(rbac.NAMESPACE, pod)
    try:
        yield core.create_namespaced_service_account_token(
            rbac.AGENT_SA, rbac.NAMESPACE,
            workloads.token_request(created.metadata.name, created.metadata.uid, 600)).status.token
    finally:
        core.delete_namespaced_pod(created.metadata.name, rbac.NAMESPACE, grace_period_seconds=0)


@pytest.mark.parametrize("kind", ["no-bound-object", "pod-on-no-node"])
def test_a_token_that_names_no_node_is_refused(rig, placed, kubexdp, admin_custom, tmp_path, kind: str) -> None:
    own = attachment(admin_custom, "node-1")
    with unbound_token(kubexdp.core, kind) as token:
        kubeconfig = tmp_path / "unbound.kubeconfig"
        certs.write_kubeconfig(kubeconfig, server=rig.server, ca_file=Path(rig.ca_file), user="unbound", token=token)
        user = whoami(kubeconfig)
        assert user["username"] == AGENT_USER                       # the agent, by RBAC...
        assert admission.NODE_NAME_EXTRA not in (user.get("extra") or {})   # ...on no node
        with client_of(kubeconfig) as as_unbound:
            assert as_unbound.get_cluster_custom_object(G, V, names.ATTACHMENTS, own["metadata"]["name"])  # reads pass
            status = refused(lambda: as_unbound.patch_cluster_custom_object_status(
                G, V, names.ATTACHMENTS, own["metadata"]["name"], {"status": own["status"]}))
            create = refused(lambda: as_unbound.create_cluster_custom_object(G, V, names.NODES, _xdpnode("node-1")))
    for message in (status, create):
        assert admission.NO_NODE_MESSAGE in message


# --- not the agent -------------------------------------------------------------------------------
def test_the_operator_is_not_restricted(rig, placed, admin_custom) -> None:
    """The operator's ServiceAccount (no node in its token) writes any node's attachment;
    the program placed on two nodes above went through it too."""
    name = names.attachment_name(PROGRAM, "node-2")
    operator = api_client(rig, "operator")
    try:
        custom = kubernetes.client.CustomObjectsApi(operator)
        for value in ("operator", None):
            custom.patch_cluster_custom_object(G, V, names.ATTACHMENTS, name,
                                               {"metadata": {"annotations": {"kubexdp.io/nr-test": value}}})
    finally:
        operator.close()
    assert "kubexdp.io/nr-test" not in (attachment(admin_custom, "node-2")["metadata"].get("annotations") or {})


def test_the_rig_runs_the_policy_of_kube_xdp_api(admin) -> None:
    api = kubernetes.client.AdmissionregistrationV1Api(admin)
    policy, binding = (d["spec"] for d in admission.manifests())
    got = api.read_validating_admission_policy(POLICY).to_dict()["spec"]
    assert [(c["name"], c["expression"]) for c in got["match_conditions"]] == [
        (c["name"], c["expression"]) for c in policy["matchConditions"]]
    assert [(v["name"], v["expression"]) for v in got["variables"]] == [
        (v["name"], v["expression"]) for v in policy["variables"]]
    assert [(v["expression"], v.get("message"), v.get("message_expression"), v["reason"])
            for v in got["validations"]] == [
        (v["expression"], v.get("message"), v.get("messageExpression"), v["reason"]) for v in policy["validations"]]
    assert got["failure_policy"] == "Fail"
    got_binding = api.read_validating_admission_policy_binding(POLICY).to_dict()["spec"]
    assert (got_binding["policy_name"], got_binding["validation_actions"]) == (POLICY, ["Deny"])


# --- helpers ----------------------------------------------------------------------------------------
def _xdpnode(name: str) -> dict:
    return {"apiVersion": names.API_VERSION, "kind": names.NODE_KIND,
            "metadata": {"name": name, "labels": {names.LABEL_NODE: names.node_label_value(name)}},
            "spec": {"nodeName": name}}


def _get(custom, plural: str, name: str) -> dict | None:
    try:
        return custom.get_cluster_custom_object(G, V, plural, name)
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def _published(custom, node: str) -> dict | None:
    """The node's XdpNode once its agent has written its status."""
    obj = _get(custom, names.NODES, node)
    return obj if obj and obj.get("status") else None


def _delete(custom, plural: str, name: str) -> None:
    try:
        custom.delete_cluster_custom_object(G, V, plural, name)
    except ApiException as e:
        if e.status != 404:
            raise

