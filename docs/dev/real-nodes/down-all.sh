#!/bin/bash
# Remove everything the experiment made: nodes, control plane, bridge, host mountpoint dirs, state.
for nd in /tmp/k12/nodes/*/; do [ -d "$nd" ] && /tmp/research/node/node-down.sh $(basename $nd); done
C=/tmp/k12/cp
for c in sched kcm apiserver etcd; do [ -f $C/$c.pid ] && kill $(cat $C/$c.pid) 2>/dev/null; done
sleep 3
for c in sched kcm apiserver etcd; do [ -f $C/$c.pid ] && kill -KILL $(cat $C/$c.pid) 2>/dev/null; done   # apiserver 1.37 may hang in shutdown
ip link del k12br0 2>/dev/null || true
rm -rf $C
# mountpoints node-up created on the host (empty dirs); only if empty
for d in /var/lib/kubelet /var/lib/containerd /run/containerd /var/lib/cni /etc/cni /var/log/pods /var/log/containers; do
  rmdir $d 2>/dev/null || true
done
echo "all down"
