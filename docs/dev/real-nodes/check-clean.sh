#!/bin/bash
# Prints anything the experiment left behind (nothing = clean).
ps -eo pid,args | grep -E "/tmp/k12|containerd-shim|k12-n|17443|17379" | grep -v grep
ip netns list | grep k12
ip link | grep k12
ls -d /sys/fs/cgroup/*/k12-* 2>/dev/null
grep -l "k12" /proc/[0-9]*/mountinfo 2>/dev/null | head -3
mount | grep -E "k12|/var/lib/kubelet|/run/containerd"
ls -d /var/lib/kubelet /var/lib/containerd /run/containerd /var/lib/cni /etc/cni /var/log/pods /var/log/containers 2>/dev/null
ls /run/netns | grep -E "cni-" 
exit 0
