#!/bin/bash
# Build kubelet, kube-proxy, kube-controller-manager, kube-scheduler from the build module copy, version-stamped
# like hack/lib/version.sh (the same -X settings the rig's gobuild.py uses for kube-apiserver).
set -euo pipefail
export GOMODCACHE=$HOME/.cache/kube-xdp/go/mod GOCACHE=$HOME/.cache/kube-xdp/go/build
cd /tmp/k12/build-k8s
V=v1.37.2 LD="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  LD="$LD -X $p.gitVersion=$V -X $p.gitMajor=1 -X $p.gitMinor=37 -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
done
for c in ${@:-kubelet kube-proxy kube-controller-manager kube-scheduler}; do
  s=$(date +%s.%N)
  CGO_ENABLED=0 go build -trimpath -ldflags "$LD" -tags providerless -o /tmp/k12/bin/.$c.new k8s.io/kubernetes/cmd/$c
  mv /tmp/k12/bin/.$c.new /tmp/k12/bin/$c
  e=$(date +%s.%N)
  printf '%s built in %.1f s, %s bytes\n' $c $(echo "$e - $s" | bc) $(stat -c %s /tmp/k12/bin/$c)
done
