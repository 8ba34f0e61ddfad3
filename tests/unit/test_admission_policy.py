"""The agents' node-restriction policy: the chart's copy (templates/admission-policy.yaml,
rendered by the real helm CLI) equals kube_xdp_api.admission, for the default release and
for releases with other names, namespaces and ServiceAccounts; the switch turns it off.
What the policy allows and refuses is asked of the real API server in
tests/e2e/test_node_restriction.py.
"""

from __future__ import annotations

import json

import pytest

from kube_xdp_api import admission, names, rbac

from .. import helm_cli

POLICY_KINDS = ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")


def rendered_policy(values: dict | None = None, *, release: str = "kube-xdp",
                    namespace: str = "kube-xdp") -> list[dict]:
    return [d for d in helm_cli.render(values, release=release, namespace=namespace) if d["kind"] in POLICY_KINDS]


# (release, namespace, values) -> (policy name, agent ServiceAccount) the chart must use
CASES = {
    "default": ("kube-xdp", "kube-xdp", {}, "kube-xdp-agent-node-restriction", "kube-xdp-agent"),
    "other-release": ("edge", "net", {}, "edge-kube-xdp-agent-node-restriction", "edge-kube-xdp-agent"),
    "own-names": ("edge", "net",
                  {"fullnameOverride": "xdp", "agent": {"serviceAccount": {"name": "xdp-node-agent"}}},
                  "xdp-agent-node-restriction", "xdp-node-agent"),
    "no-service-account": ("kx", "kx-system", {"agent": {"serviceAccount": {"create": False}}},
                           "kx-kube-xdp-agent-node-restriction", "default"),
}


@pytest.mark.parametrize("case", CASES)
def test_the_charts_policy_equals_kube_xdp_api_admission(case: str) -> None:
    release, namespace, values, name, service_account = CASES[case]
    got = rendered_policy(values, release=release, namespace=namespace)
    want = admission.manifests(namespace, service_account, name)
    assert [d["kind"] for d in got] == [d["kind"] for d in want]
    for g, w in zip(got, want):
        assert g["apiVersion"] == w["apiVersion"]
        assert g["metadata"]["name"] == w["metadata"]["name"] == name
        assert g["spec"] == w["spec"]
        assert g["metadata"]["labels"]["app.kubernetes.io/component"] == "agent"
        assert g["metadata"]["labels"]["app.kubernetes.io/instance"] == release
    policy = got[0]["spec"]
    assert policy["matchConditions"][0]["expression"] == (
        f"request.userInfo.username == 'system:serviceaccount:{namespace}:{service_account}'")


def test_the_default_release_restricts_the_rigs_agent() -> None:
    """Release kube-xdp in kube-xdp: the same objects the rig and kubectl users apply
    (kube_xdp_api.admission.manifests() with the rig's ServiceAccount)."""
    without_labels = [{**d, "metadata": {k: v for k, v in d["metadata"].items() if k != "labels"}}
                      for d in rendered_policy()]
    assert without_labels == admission.manifests()
    assert admission.manifests()[0]["spec"]["matchConditions"][0]["expression"].endswith(
        f":{rbac.NAMESPACE}:{rbac.AGENT_SA}'")


def test_the_switch_turns_the_policy_off() -> None:
    assert rendered_policy({"nodeRestriction": {"create": False}}) == []
    kinds = {d["kind"] for d in helm_cli.render({"nodeRestriction": {"create": False}}, release="kube-xdp",
                                                 namespace="kube-xdp")}
    assert {"DaemonSet", "ClusterRole"} <= kinds            # only the policy goes


def test_the_policy_covers_every_agent_write() -> None:
    """Every resource the agent's RBAC lets it write is matched by the policy, for every
    write verb RBAC grants it (patch is an UPDATE at admission): a new grant in
    kube_xdp_api.rbac on a per-node kind must be added to the policy."""
    rule = admission.manifests()[0]["spec"]["matchConstraints"]["resourceRules"][0]
    operations = {"create": "CREATE", "patch": "UPDATE", "update": "UPDATE", "delete": "DELETE"}
    per_node = {names.ATTACHMENTS, names.NODES}
    for group, resources, verbs, _ in rbac.AGENT_RULES:
        for resource in resources:
            if group != names.GROUP or resource.split("/")[0] not in per_node:
                continue
            assert resource in rule["resources"]
            for verb in verbs:
                if verb in operations:
                    assert operations[verb] in rule["operations"], (resource, verb)
    assert rule["apiGroups"] == [names.GROUP] and rule["apiVersions"] == ["*"]
    assert "DELETE" in rule["operations"]             # refused by RBAC today; by the policy if RBAC widens


def notes(values: dict) -> str:
    """NOTES.txt as `helm install` prints it (a client-side dry run: no cluster)."""
    out = helm_cli.ok("install", "kube-xdp", str(helm_cli.CHART), "--namespace", "kube-xdp", "--dry-run=client",
                      "-o", "json", values=values)
    return json.loads(out.stdout)["info"]["notes"]


def test_the_notes_name_the_policy_or_say_it_is_off() -> None:
    on, off = notes({}), notes({"nodeRestriction": {"create": False}})
    assert "ValidatingAdmissionPolicy kube-xdp-agent-node-restriction" in on
    assert "nodeRestriction.create=false" not in on
    assert "nodeRestriction.create=false: no admission policy" in off and "agent-node-restriction" not in off
