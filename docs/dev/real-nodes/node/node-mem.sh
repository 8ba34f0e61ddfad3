#!/bin/bash
# RSS / PSS (MiB) of a node's kubelet, containerd, shims, kube-proxy. Usage: node-mem.sh NAME
ND=/tmp/k12/nodes/$1
C=$(cat $ND/containerd.pid)
shims=$(for p in $(pgrep -f containerd-shim-runc-v2); do grep -q "containerd.sock" /proc/$p/cmdline 2>/dev/null; \
  [ "$(readlink /proc/$p/ns/mnt)" = "$(readlink /proc/$(cat $ND/holder.pid)/ns/mnt)" ] && echo $p; done)
tot_r=0 tot_p=0
for pair in kubelet:$(cat $ND/kubelet.pid) containerd:$C kube-proxy:$(cat $ND/kube-proxy.pid) $(for s in $shims; do echo shim:$s; done); do
  n=${pair%%:*} p=${pair##*:}
  r=$(awk '/^VmRSS/{print $2}' /proc/$p/status); ps_=$(awk '/^Pss:/{print $2}' /proc/$p/smaps_rollup)
  tot_r=$((tot_r+r)); tot_p=$((tot_p+ps_))
  printf '%-11s pid %-7s RSS %6.1f MiB  PSS %6.1f MiB\n' $n $p $(echo "$r/1024" | bc -l) $(echo "$ps_/1024" | bc -l)
done
printf 'TOTAL %s: RSS %.1f MiB, PSS %.1f MiB (%d shims)\n' $1 $(echo "$tot_r/1024" | bc -l) $(echo "$tot_p/1024" | bc -l) $(echo $shims | wc -w)
