"""kube-xdp itself on the rig: CRDs, RBAC, the agents' node-restriction admission policy,
the operator and one agent per node.

The operator and agents run as processes tracked by the rig (so `down` stops them),
authenticated as the ServiceAccounts kube-xdp/kube-xdp-operator and
kube-xdp/kube-xdp-agent, with exactly the RBAC in kube_xdp_api.rbac and the policy in
kube_xdp_api.admission: the rig proves the least-privilege rules are enough. Each agent
does its netlink work in its node's namespace and pins in its node's bpffs.

The operator uses the rig's static token (kube_xdp_rig.certs). Each agent gets a real
pod-bound ServiceAccount token, as a DaemonSet pod would: the rig creates a placeholder
Pod `kube-xdp-agent-<node>` on the node (spec.nodeName; no kubelet runs it, it stays
Pending) and asks the TokenRequest API for a token bound to it, so the API server puts the
node's name in the agent's user info (`authentication.kubernetes.io/node-name`), which the
policy compares with the node each write names.
"""

from __future__ import annotations

import base64
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import kubernetes
from kubernetes.client.rest import ApiException

from kube_xdp_api import admission, names, rbac

from . import apply as applier
from . import certs
from .config import RigConfig
from .controlplane import port_owner
from .rig import Rig, RigInfo

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "crds"

# Lifetime of an agent's token: a week, longer than any test, fault or bench session and
# a demo left up for days. Nothing refreshes it (no kubelet rotates a projected token
# here): a rig kept up longer needs its agents restarted (start_agent issues a new
# token). The rig's API server sets no --service-account-max-token-expiration, so the
# request is granted as asked (the TokenRequest minimum is 600 s).
AGENT_TOKEN_SECONDS = 7 * 24 * 3600
PLACEHOLDER_IMAGE = "registry.k8s.io/pause:3.10"
# Token issuance in parallel (a pod and a TokenRequest per node): 200 hollow nodes
PARALLEL_ISSUERS = 8


def install(info: RigInfo) -> None:
    """Apply the CRDs, the RBAC and the agents' node-restriction policy (idempotent);
    return once the API server enforces the policy."""
    client = kubernetes.config.new_client_from_config(config_file=info.kubeconfig)
    try:
        applier.apply(client, applier.load_yaml(CRDS))
        applier.apply(client, rbac.manifests())
        applier.apply(client, admission.manifests())
    finally:
        client.close()
    wait_for(lambda: policy_enforced(info), 30, "the agents' node-restriction policy enforced")


POLICY_PROBE = "kube-xdp-rig-policy-probe"


def policy_enforced(info: RigInfo) -> bool:
    """Whether the API server refuses what the policy must refuse: a dry-run create of
    another node's XdpNode by the agent ServiceAccount (the admin impersonating it with a
    node name in its extra, as a pod-bound token would carry). Asked only once RBAC allows
    the agent that create (a SubjectAccessReview), so a 403 can only be the policy's;
    nothing is stored (dry run)."""
    agent_user = admission.agent_username(rbac.NAMESPACE, rbac.AGENT_SA)
    admin = kubernetes.config.new_client_from_config(config_file=info.kubeconfig)
    try:
        review = kubernetes.client.AuthorizationV1Api(admin).create_subject_access_review({"spec": {
            "user": agent_user, "groups": ["system:serviceaccounts"],
            "resourceAttributes": {"verb": "create", "group": names.GROUP, "resource": names.NODES}}})
    finally:
        admin.close()
    if not review.status.allowed:
        return False
    client = kubernetes.config.new_client_from_config(config_file=info.kubeconfig)
    client.set_default_header("Impersonate-User", agent_user)
    client.set_default_header("Impersonate-Group", "system:serviceaccounts")
    client.set_default_header("Impersonate-Extra-" + admission.NODE_NAME_EXTRA.replace("/", "%2F"),
                              f"{POLICY_PROBE}-elsewhere")
    body = {"apiVersion": names.API_VERSION, "kind": names.NODE_KIND, "metadata": {"name": POLICY_PROBE},
            "spec": {"nodeName": POLICY_PROBE}}
    try:
        kubernetes.client.CustomObjectsApi(client).create_cluster_custom_object(
            names.GROUP, names.VERSION, names.NODES, body, dry_run="All")
        return False
    except ApiException as e:
        if e.status == 403:
            return True
        raise RuntimeError(f"probing the node-restriction policy (dry-run create of XdpNode {POLICY_PROBE} "
                           f"as the agent): {e.status} {e.reason}") from e
    finally:
        client.close()


def placeholder_pod_name(node: str) -> str:
    return f"{rbac.AGENT_SA}-{node}"


def placeholder_pod(node: str) -> dict:
    """The Pod an agent's token is bound to: on `node`, with the agent's ServiceAccount,
    nothing mounted. No kubelet runs it on the rig (it stays Pending); a pause container
    if one ever did."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": placeholder_pod_name(node), "namespace": rbac.NAMESPACE,
            "labels": {"app.kubernetes.io/name": "kube-xdp", "app.kubernetes.io/component": "agent",
                       "app.kubernetes.io/managed-by": "kube-xdp-rig"},
            "annotations": {"kubexdp.io/rig-placeholder":
                            "the pod the rig binds this node's agent token to; the agent runs as a host process"},
        },
        "spec": {
            "nodeName": node, "serviceAccountName": rbac.AGENT_SA, "automountServiceAccountToken": False,
            "containers": [{"name": "agent", "image": PLACEHOLDER_IMAGE}],
        },
    }


def token_request(pod_name: str, pod_uid: str, seconds: int = AGENT_TOKEN_SECONDS) -> dict:
    """A TokenRequest for the API server's default audience, bound to the pod."""
    return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"audiences": [], "expirationSeconds": seconds,
                     "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": pod_name, "uid": pod_uid}}}


def token_claims(token: str) -> dict:
    """The claims of a JWT (its payload, not verified: the API server just issued it)."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def agent_kubeconfig_dir(info: RigInfo) -> Path:
    return Path(info.state_dir) / "agents"


def agent_kubeconfig(info: RigInfo, node: str) -> Path:
    """The node's agent kubeconfig (its bound token), written by issue_agent_credentials."""
    return agent_kubeconfig_dir(info) / f"{node}.kubeconfig"


def _placeholder(core, node: str):
    """The node's placeholder pod, created if missing (or replaced when it is being
    deleted: with no kubelet a deleted pod on a node never goes)."""
    body = placeholder_pod(node)
    name = body["metadata"]["name"]
    try:
        return core.create_namespaced_pod(rbac.NAMESPACE, body)
    except ApiException as e:
        if e.status != 409:
            raise RuntimeError(f"creating placeholder pod {rbac.NAMESPACE}/{name} for node {node}: "
                               f"{e.status} {e.reason}") from e
    pod = core.read_namespaced_pod(name, rbac.NAMESPACE)
    if pod.metadata.deletion_timestamp is None and pod.spec.node_name == node:
        return pod
    core.delete_namespaced_pod(name, rbac.NAMESPACE, grace_period_seconds=0)
    wait_for(lambda: _pod_gone(core, name), 30, f"pod {rbac.NAMESPACE}/{name} deleted")
    return core.create_namespaced_pod(rbac.NAMESPACE, body)


def _pod_gone(core, name: str) -> bool:
    try:
        core.read_namespaced_pod(name, rbac.NAMESPACE)
    except ApiException as e:
        if e.status == 404:
            return True
        raise
    return False


def issue_agent_token(core, node: str, seconds: int = AGENT_TOKEN_SECONDS) -> str:
    """A token of the agent's ServiceAccount bound to the node's placeholder pod. Raises
    when the API server does not put the node in it (a server before 1.30, or the
    ServiceAccountTokenPodNodeInfo feature off): the node-restriction policy would deny
    every write of that agent."""
    pod = _placeholder(core, node)
    try:
        issued = core.create_namespaced_service_account_token(
            rbac.AGENT_SA, rbac.NAMESPACE, token_request(pod.metadata.name, pod.metadata.uid, seconds))
    except ApiException as e:
        raise RuntimeError(f"TokenRequest for {rbac.NAMESPACE}/{rbac.AGENT_SA} bound to pod "
                           f"{pod.metadata.name} (node {node}): {e.status} {e.reason}") from e
    token = issued.status.token
    bound = ((token_claims(token).get("kubernetes.io") or {}).get("node") or {}).get("name")
    if bound != node:
        raise RuntimeError(f"the API server issued node {node}'s agent a token bound to node {bound!r}, not "
                           f"{node!r}: pod-bound tokens need the node claim (Kubernetes 1.30+, feature "
                           f"ServiceAccountTokenPodNodeInfo)")
    return token


def issue_agent_credentials(info: RigInfo, nodes: list[str], seconds: int = AGENT_TOKEN_SECONDS) -> dict[str, Path]:
    """Per node: its placeholder pod, a bound token, and a kubeconfig with it
    (agent_kubeconfig; mode 0600). The ServiceAccount must exist (install)."""
    client = kubernetes.config.new_client_from_config(config_file=info.kubeconfig)
    core = kubernetes.client.CoreV1Api(client)
    agent_kubeconfig_dir(info).mkdir(mode=0o700, exist_ok=True)

    def one(node: str) -> tuple[str, Path]:
        path = agent_kubeconfig(info, node)
        certs.write_kubeconfig(path, server=info.server, ca_file=Path(info.ca_file),
                               user=f"{rbac.AGENT_SA}@{node}", token=issue_agent_token(core, node, seconds))
        return node, path

    try:
        with ThreadPoolExecutor(max_workers=min(PARALLEL_ISSUERS, max(1, len(nodes)))) as pool:
            return dict(pool.map(one, nodes))
    finally:
        client.close()


def rig_for(info: RigInfo) -> Rig:
    cfg = info.config
    return Rig(RigConfig(instance=info.instance, nodes=cfg["nodes"], interfaces=tuple(cfg["interfaces"]),
                         apiserver_port=info.apiserver_port, etcd_port=info.etcd_port))


def agent_name(node: str) -> str:
    return f"agent-{node}"


def start_operator(info: RigInfo, *, extra: list[str] | None = None) -> int:
    procs = rig_for(info).procs
    if procs.pid("operator"):
        return procs.pid("operator")
    liveness = _free_port()
    return procs.start("operator", [sys.executable, "-m", "kube_xdp_operator",
                                    "--kubeconfig", info.kubeconfigs["operator"],
                                    "--liveness", f"http://127.0.0.1:{liveness}/healthz", *(extra or [])])


def start_agent(info: RigInfo, node: str, *, resync: float = 2.0, extra: list[str] | None = None,
                kubeconfig: Path | None = None) -> int:
    """Start the node's agent (unless it runs) with a fresh bound token (or `kubeconfig`,
    one issue_agent_credentials wrote)."""
    procs = rig_for(info).procs
    name = agent_name(node)
    if procs.pid(name):
        return procs.pid(name)
    n = info.node(node)
    kubeconfig = kubeconfig or issue_agent_credentials(info, [node])[node]
    # process agents share the host's network namespace: each serves /healthz on a port of its own
    return procs.start(name, [sys.executable, "-m", "kube_xdp_agent", "--node-name", node,
                              "--kubeconfig", str(kubeconfig), "--bpffs", n.bpffs,
                              "--netns", n.netns, "--resync", str(resync), "--health-port", str(_free_port()),
                              *(extra or [])])


def start_all(info: RigInfo, **kw) -> None:
    install(info)
    start_operator(info)
    kubeconfigs = issue_agent_credentials(info, [n.name for n in info.nodes])
    for n in info.nodes:
        start_agent(info, n.name, kubeconfig=kubeconfigs[n.name], **kw)


def stop(info: RigInfo, name: str) -> bool:
    return rig_for(info).procs.stop(name)


def _free_port() -> int:
    import random
    while True:
        port = random.randrange(30000, 60000)
        if not port_owner(port):
            return port


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")
