#!/bin/bash
# Full experiment from nothing (binaries and images already built): control plane, 2 nodes, test workloads. Prints timings.
set -euo pipefail
export KUBECONFIG=/tmp/k12/pki/admin.kubeconfig; K=$HOME/.cache/kube-xdp/bin/kubectl
ts() { date +%s.%N; }; el() { printf '%.2f' $(echo "$(ts) - $1" | bc); }
T0=$(ts)
/tmp/research/controlplane.sh bridge etcd apiserver
until $K get --raw /readyz >/dev/null 2>&1; do sleep 0.2; done
echo "apiserver ready: $(el $T0) s"
# kcm/scheduler only after /readyz: started earlier, kcm exits with "configmaps extension-apiserver-authentication is
# forbidden" (bootstrap RBAC not yet in place)
/tmp/research/controlplane.sh kcm sched
until $K -n kube-system get sa default >/dev/null 2>&1 && $K -n default get sa default >/dev/null 2>&1; do sleep 0.2; done
echo "default service accounts: $(el $T0) s"
/tmp/research/node/node-up.sh k12-n1 1 nftables
SYSFS=${N2_SYSFS:-1} /tmp/research/node/node-up.sh k12-n2 2 nftables
/tmp/research/node/wait-ready.sh k12-n1; /tmp/research/node/wait-ready.sh k12-n2
echo "both nodes Ready: $(el $T0) s"
until [ -n "$($K get node k12-n1 -o jsonpath='{.spec.podCIDR}')" ] && [ -n "$($K get node k12-n2 -o jsonpath='{.spec.podCIDR}')" ]; do sleep 0.2; done
C1=$($K get node k12-n1 -o jsonpath='{.spec.podCIDR}') C2=$($K get node k12-n2 -o jsonpath='{.spec.podCIDR}')
ip -n k12-n1 route add $C2 via 198.19.250.12; ip -n k12-n2 route add $C1 via 198.19.250.11
T1=$(ts)
$K apply -f /tmp/research/manifests/agent-like-ds.yaml -f /tmp/research/manifests/web-ds-svc.yaml >/dev/null
sed s/@NODE@/k12-n2/ /tmp/research/manifests/cni-pod-kubectl.yaml | $K apply -f - >/dev/null
$K rollout status ds/agentlike --timeout=120s >/dev/null; echo "agent-like DS ready: $(el $T1) s after apply"
$K rollout status ds/web --timeout=120s >/dev/null; $K wait --for=condition=Ready pod/podkubectl --timeout=120s >/dev/null
echo "all test pods ready: $(el $T1) s after apply; total $(el $T0) s"
