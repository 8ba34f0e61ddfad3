#!/bin/bash
# (Re)start the kubelet of node NAME inside its namespaces. Usage: kubelet-start.sh NAME
set -euo pipefail
N=$1 BIN=/tmp/k12/bin PKI=/tmp/k12/pki ND=/tmp/k12/nodes/$1
H=$(cat $ND/holder.pid); IP=$(ip -n $N -4 -o addr show mgmt0 | awk '{print $4}' | cut -d/ -f1)
date +%s.%N > $ND/kubelet.start
setsid nsenter -t $H -m -n env PATH=/usr/sbin:/usr/bin:/sbin:/bin $BIN/kubelet --config $ND/kubelet.yaml \
  --kubeconfig $PKI/node-$N.kubeconfig --hostname-override $N --node-ip $IP --v=2 >>$ND/log/kubelet.log 2>&1 < /dev/null &
echo $! > $ND/kubelet.pid
