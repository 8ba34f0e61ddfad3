#!/bin/bash
# Bring up one rig node: netns + mgmt veth on k12br0, a mount-namespace holder with per-node binds and its own bpffs,
# containerd (+ image import), kubelet, kube-proxy. Usage: node-up.sh NAME IDX [iptables|nftables]
set -euo pipefail
N=$1 I=$2 MODE=${3:-nftables}
R=/tmp/research/node BIN=/tmp/k12/bin PKI=/tmp/k12/pki ND=/tmp/k12/nodes/$N
IP=198.19.250.$((10+I))
t0=$(date +%s.%N)
mkdir -p $ND/{var-lib-kubelet,var-lib-containerd,run-containerd,var-lib-cni,etc-cni,var-log-pods,var-log-containers,log}
: > $ND/resolv.conf     # pods get no nameserver (the host's resolver is a 10.x address)
sed -e "s#@BIN@#$BIN#g" -e "s#@NODEDIR@#$ND#g" $R/containerd.toml.in > $ND/containerd.toml
cp $R/cni.conflist.tmpl $ND/cni.conflist.tmpl
sed -e "s#@NODE@#$N#g" -e "s#@PKI@#$PKI#g" -e "s#@NODEDIR@#$ND#g" $R/kubelet.yaml.in > $ND/kubelet.yaml
# the kubelet's cgroupRoot (/NAME) must exist in every v1 hierarchy; the kubelet checks, it does not create it
for c in /sys/fs/cgroup/*/; do [ "$c" = /sys/fs/cgroup/unified/ ] || mkdir -p $c$N; done
cat /sys/fs/cgroup/cpuset/cpuset.cpus > /sys/fs/cgroup/cpuset/$N/cpuset.cpus
cat /sys/fs/cgroup/cpuset/cpuset.mems > /sys/fs/cgroup/cpuset/$N/cpuset.mems
# network namespace and management link
ip netns add $N
ip link add $N-m type veth peer name mgmt0 netns $N
ip link set $N-m master k12br0 up
ip -n $N link set lo up
ip -n $N addr add $IP/24 dev mgmt0
ip -n $N link set mgmt0 up
ip -n $N route add 198.19.240.0/24 dev mgmt0      # Service CIDR: OUTPUT-path DNAT from the node itself needs a route
# mount namespace holder: binds per-node dirs over the conventional paths, own bpffs
cat > $ND/mntns.sh <<EOS
set -e
if [ "${SYSFS:-0}" = 1 ]; then   # optional: a sysfs of the node's netns (/sys/class/net = the node's NICs), keeping the cgroup mounts
  mkdir -p $ND/cgmove; mount --rbind /sys/fs/cgroup $ND/cgmove
  mount -t sysfs sysfs /sys
  mount --move $ND/cgmove /sys/fs/cgroup
fi
for p in var/lib/kubelet var/lib/containerd run/containerd var/lib/cni etc/cni var/log/pods var/log/containers; do
  src=$ND/\$(echo \$p | tr / -); mkdir -p /\$p; mount --bind \$src /\$p
done
mount -t bpf bpf /sys/fs/bpf
# shared inside the node (pods' Bidirectional/HostToContainer hostPath mounts need shared/slave sources; containerd
# refuses 'not a shared mount' otherwise); the host's / is private, so nothing propagates back to the host
mount --make-rshared /
echo ready > $ND/mntns.ready
exec sleep infinity
EOS
rm -f $ND/mntns.ready
setsid nsenter --net=/run/netns/$N unshare --mount --propagation slave bash $ND/mntns.sh >$ND/log/mntns.log 2>&1 < /dev/null &
echo $! > $ND/holder.pid
for _ in $(seq 100); do [ -f $ND/mntns.ready ] && break; sleep 0.05; done
H=$(cat $ND/holder.pid)
t1=$(date +%s.%N)
$R/containerd-start.sh $N
for img in pause test; do nsenter -t $H -m -n $BIN/ctr -n k8s.io images import --local /tmp/k12/img/$img.tar >/dev/null; done
t2=$(date +%s.%N)
$R/kubelet-start.sh $N
$R/kube-proxy-start.sh $N $MODE
printf 'node %s: holder %s ip %s; netns+mntns %.2fs, containerd+images %.2fs\n' $N $H $IP $(echo "$t1-$t0" | bc) $(echo "$t2-$t1" | bc)
