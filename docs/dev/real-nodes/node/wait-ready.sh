#!/bin/bash
# Seconds from the kubelet's start (ND/kubelet.start) until the Node reports Ready=True. Usage: wait-ready.sh NAME
N=$1 ND=/tmp/k12/nodes/$1 K="$HOME/.cache/kube-xdp/bin/kubectl --kubeconfig /tmp/k12/pki/admin.kubeconfig"
until [ "$($K get node $N -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]; do sleep 0.1; done
printf '%s Ready %.2f s after kubelet start\n' $N $(echo "$(date +%s.%N) - $(cat $ND/kubelet.start)" | bc)
