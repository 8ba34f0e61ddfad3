#!/bin/bash
# PKI for the experiment's control plane (openssl). Usage: mkpki.sh DIR NODE...
set -euo pipefail
D=$1; shift; mkdir -p $D; cd $D
APIIP=198.19.250.1 SVCIP=198.19.240.1
[ -f ca.key ] || { openssl genrsa -out ca.key 2048 2>/dev/null
  openssl req -x509 -new -key ca.key -days 365 -subj /CN=k12-ca -out ca.crt; }
cert() { # name CN O [san]
  local n=$1 cn=$2 o=$3 san=${4:-}
  [ -f $n.crt ] && return 0
  openssl genrsa -out $n.key 2048 2>/dev/null
  openssl req -new -key $n.key -subj "/CN=$cn${o:+/O=$o}" -out $n.csr
  if [ -n "$san" ]; then printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$san" > $n.ext
  else printf 'extendedKeyUsage=clientAuth\n' > $n.ext; fi
  openssl x509 -req -in $n.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 -extfile $n.ext -out $n.crt 2>/dev/null
  rm -f $n.csr $n.ext
}
cert apiserver kube-apiserver "" "IP:127.0.0.1,IP:$APIIP,IP:$SVCIP,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost"
cert admin kubernetes-admin system:masters
cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
cert kube-controller-manager system:kube-controller-manager ""
cert kube-scheduler system:kube-scheduler ""
cert kube-proxy system:kube-proxy ""
for n in "$@"; do cert node-$n system:node:$n system:nodes; done
[ -f sa.key ] || { openssl genrsa -out sa.key 2048 2>/dev/null; openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null; }
kc() { # name cert
  cat > $1.kubeconfig <<EOK
apiVersion: v1
kind: Config
clusters:
- name: k12
  cluster: {server: "https://$APIIP:17443", certificate-authority: $D/ca.crt}
users:
- name: u
  user: {client-certificate: $D/$2.crt, client-key: $D/$2.key}
contexts:
- name: k12
  context: {cluster: k12, user: u}
current-context: k12
EOK
}
kc admin admin; kc kube-controller-manager kube-controller-manager; kc kube-scheduler kube-scheduler; kc kube-proxy kube-proxy
for n in "$@"; do kc node-$n node-$n; done
