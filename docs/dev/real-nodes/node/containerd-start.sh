#!/bin/bash
# (Re)start the containerd of node NAME inside its namespaces. Usage: containerd-start.sh NAME
set -euo pipefail
N=$1 BIN=/tmp/k12/bin ND=/tmp/k12/nodes/$1
H=$(cat $ND/holder.pid)
setsid nsenter -t $H -m -n $BIN/containerd --config $ND/containerd.toml >>$ND/log/containerd.log 2>&1 < /dev/null & echo $! > $ND/containerd.pid
for _ in $(seq 200); do [ -S /proc/$H/root/run/containerd/containerd.sock ] && break; sleep 0.05; done
