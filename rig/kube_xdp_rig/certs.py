"""Certificates, tokens and kubeconfigs for the rig's API server (openssl CLI).

Identities (static token file, all checked by RBAC; nothing runs with AlwaysAllow):
- admin:    user kube-xdp-admin in group system:masters (the printed kubeconfig);
- nobody:   user rig-nobody with no bindings (tests expect 403 on writes);
- operator: the ServiceAccount user name system:serviceaccount:kube-xdp:kube-xdp-operator,
  with the ServiceAccount groups, so RBAC bindings to the ServiceAccount apply to it
  exactly as they would to the pod's token in a real cluster.
The agents have no static token: each gets a real ServiceAccount token bound to a pod on
its node (kube_xdp_rig.workloads.issue_agent_credentials), whose node name the agents'
admission policy needs and a static token cannot carry.
"""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path

import yaml

SA_NAMESPACE = "kube-xdp"
IDENTITIES = {
    "admin": ("kube-xdp-admin", ["system:masters"]),
    "nobody": ("rig-nobody", []),
    "operator": (f"system:serviceaccount:{SA_NAMESPACE}:kube-xdp-operator",
                 ["system:serviceaccounts", f"system:serviceaccounts:{SA_NAMESPACE}"]),
}


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {proc.stderr.strip()[-500:]}")


def generate(pki: Path) -> None:
    """CA, a serving certificate for 127.0.0.1/localhost, the service-account key pair
    and one token per identity. Files are created mode 0600 in `pki`."""
    pki.mkdir(parents=True, exist_ok=True, mode=0o700)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
             "-days", "365", "-subj", "/CN=kube-xdp-rig-ca", cwd=pki)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=kube-apiserver", cwd=pki)
    (pki / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\n"
        "extendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.crt", "-days", "365", "-extfile", "server.ext", cwd=pki)
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)
    lines = []
    tokens = {}
    for ident, (user, groups) in IDENTITIES.items():
        token = secrets.token_hex(24)
        tokens[ident] = token
        lines.append(f'{token},{user},{user},"{",".join(groups)}"')
    (pki / "tokens.csv").write_text("\n".join(lines) + "\n")
    (pki / "tokens.yaml").write_text(yaml.safe_dump(tokens))
    for f in pki.iterdir():
        f.chmod(0o600)


def tokens(pki: Path) -> dict:
    return yaml.safe_load((pki / "tokens.yaml").read_text())


def write_kubeconfig(path: Path, *, server: str, ca_file: Path, user: str, token: str) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kube-xdp-rig", "cluster": {"server": server, "certificate-authority": str(ca_file)}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": f"{user}@kube-xdp-rig", "context": {"cluster": "kube-xdp-rig", "user": user}}],
        "current-context": f"{user}@kube-xdp-rig",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
