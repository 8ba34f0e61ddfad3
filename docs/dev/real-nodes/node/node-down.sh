#!/bin/bash
# Tear down one rig node completely. Usage: node-down.sh NAME
# Order: agents -> every process of the node (cgroup tree, mount ns, net ns) -> holder -> cgroups -> netns -> files.
N=$1 ND=/tmp/k12/nodes/$1
H=$(cat $ND/holder.pid 2>/dev/null || true)
MNT=$( [ -n "$H" ] && readlink /proc/$H/ns/mnt 2>/dev/null || true)
stop() { [ -f $ND/$1.pid ] && kill -KILL $(cat $ND/$1.pid) 2>/dev/null || true; }
stop kube-proxy; stop kubelet; stop containerd
node_pids() {
  { # containers: every task in the node's cgroup tree (any v1 hierarchy)
    for c in /sys/fs/cgroup/*/$N; do [ -d $c ] && find $c -name cgroup.procs -exec cat {} + 2>/dev/null; done
    # shims (and anything else) in the node's mount namespace, except the holder
    [ -n "$MNT" ] && for p in /proc/[0-9]*; do [ "$(readlink $p/ns/mnt 2>/dev/null)" = "$MNT" ] && echo ${p#/proc/}; done
    # anything left in the node's network namespace (hostNetwork containers, stray processes)
    ip netns pids $N 2>/dev/null
  } | sort -un | grep -vx "${H:-x}" || true
}
for i in $(seq 50); do
  P=$(node_pids); [ -z "$P" ] && break
  kill -KILL $P 2>/dev/null || true; sleep 0.1   # teardown: nothing needs a graceful stop
done
[ -n "$(node_pids)" ] && echo "WARN: still running: $(node_pids)"
[ -n "$H" ] && kill -KILL $H 2>/dev/null; sleep 0.1     # last ref to the mount ns: its mounts (overlays, tmpfs, bpffs, netns binds) go
# cgroups: depth-first rmdir in every hierarchy
for c in /sys/fs/cgroup/*/$N; do [ -d $c ] && find $c -depth -type d -exec rmdir {} \; 2>/dev/null; done
ls -d /sys/fs/cgroup/*/$N 2>/dev/null && echo "WARN: cgroup left"
# host side of the mgmt veth first: the netns itself can outlive `ip netns del` for a while (seen once: held, most likely, by
# orphaned TCP sockets) and would keep the pair alive
ip link del $N-m 2>/dev/null || true
ip netns del $N 2>/dev/null || true
rm -rf $ND
echo "node $N down"
