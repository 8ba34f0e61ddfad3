#!/bin/bash
# Management bridge + etcd + kube-apiserver + kube-controller-manager + kube-scheduler for the experiment.
# Usage: controlplane.sh [bridge etcd apiserver kcm sched]   (default: all). Logs/pids in /tmp/k12/cp.
set -euo pipefail
B=$HOME/.cache/kube-xdp/bin K=/tmp/k12/bin P=/tmp/k12/pki C=/tmp/k12/cp
mkdir -p $C
bridge() { # management bridge on the host: 198.19.250.1/24 = the API server's address, reachable from every node netns
  ip link show k12br0 >/dev/null 2>&1 || { ip link add k12br0 type bridge; ip addr add 198.19.250.1/24 dev k12br0; ip link set k12br0 up; }
}
etcd() {
  setsid $B/etcd --name k12 --data-dir $C/etcd --listen-client-urls http://127.0.0.1:17379 --advertise-client-urls http://127.0.0.1:17379 \
    --listen-peer-urls http://127.0.0.1:17380 --initial-advertise-peer-urls http://127.0.0.1:17380 \
    --initial-cluster k12=http://127.0.0.1:17380 --listen-metrics-urls http://127.0.0.1:17381 >>$C/etcd.log 2>&1 </dev/null & echo $! > $C/etcd.pid
}
apiserver() {
  # --kubelet-preferred-address-types=InternalIP: the default order starts with Hostname, and the API server then
  # resolves the node name through the host's resolv.conf (a 10.x resolver here) for logs/exec/port-forward.
  setsid $B/kube-apiserver --etcd-servers=http://127.0.0.1:17379 --secure-port=17443 --bind-address=198.19.250.1 --advertise-address=198.19.250.1 \
    --tls-cert-file=$P/apiserver.crt --tls-private-key-file=$P/apiserver.key --client-ca-file=$P/ca.crt \
    --kubelet-client-certificate=$P/apiserver-kubelet-client.crt --kubelet-client-key=$P/apiserver-kubelet-client.key \
    --kubelet-preferred-address-types=InternalIP \
    --service-account-key-file=$P/sa.pub --service-account-signing-key-file=$P/sa.key --service-account-issuer=https://kubernetes.default.svc \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction --service-cluster-ip-range=198.19.240.0/24 \
    --allow-privileged=true --profiling=false --v=1 >>$C/apiserver.log 2>&1 </dev/null & echo $! > $C/apiserver.pid
}
kcm() {
  setsid $K/kube-controller-manager --kubeconfig=$P/kube-controller-manager.kubeconfig --authentication-kubeconfig=$P/kube-controller-manager.kubeconfig \
    --authorization-kubeconfig=$P/kube-controller-manager.kubeconfig --bind-address=127.0.0.1 --secure-port=17257 \
    --allocate-node-cidrs --cluster-cidr=198.19.128.0/17 --node-cidr-mask-size=24 --service-cluster-ip-range=198.19.240.0/24 \
    --root-ca-file=$P/ca.crt --service-account-private-key-file=$P/sa.key --use-service-account-credentials \
    --cluster-signing-cert-file=$P/ca.crt --cluster-signing-key-file=$P/ca.key --leader-elect=false --v=1 >>$C/kcm.log 2>&1 </dev/null & echo $! > $C/kcm.pid
}
sched() {
  setsid $K/kube-scheduler --kubeconfig=$P/kube-scheduler.kubeconfig --authentication-kubeconfig=$P/kube-scheduler.kubeconfig \
    --authorization-kubeconfig=$P/kube-scheduler.kubeconfig --bind-address=127.0.0.1 --secure-port=17259 --leader-elect=false --v=1 >>$C/sched.log 2>&1 </dev/null & echo $! > $C/sched.pid
}
for step in ${@:-bridge etcd apiserver kcm sched}; do $step; done
