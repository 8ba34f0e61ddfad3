#!/bin/bash
# (Re)start kube-proxy of node NAME inside its namespaces. Usage: kube-proxy-start.sh NAME [iptables|nftables]
set -euo pipefail
N=$1 MODE=${2:-iptables} BIN=/tmp/k12/bin PKI=/tmp/k12/pki ND=/tmp/k12/nodes/$1
H=$(cat $ND/holder.pid)
sed -e "s#@NODE@#$N#g" -e "s#@PKI@#$PKI#g" -e "s#@MODE@#$MODE#g" /tmp/research/node/kube-proxy.yaml.in > $ND/kube-proxy.yaml
setsid nsenter -t $H -m -n env PATH=/usr/sbin:/usr/bin:/sbin:/bin $BIN/kube-proxy --config $ND/kube-proxy.yaml --v=2 >>$ND/log/kube-proxy.log 2>&1 < /dev/null &
echo $! > $ND/kube-proxy.pid
