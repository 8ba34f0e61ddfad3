#!/bin/bash
# Build containerd v2.4.2 (+ctr, shim) from the Go module proxy. Module: /tmp/k12/build-ctr (go.mod requires
# github.com/containerd/containerd/v2 v2.4.2; tools.go imports the three cmds; `go mod tidy`).
set -euo pipefail
export GOMODCACHE=$HOME/.cache/kube-xdp/go/mod GOCACHE=$HOME/.cache/kube-xdp/go/build
cd /tmp/k12/build-ctr
V=github.com/containerd/containerd/v2
LD="-s -w -X $V/version.Version=v2.4.2 -X $V/version.Revision=modproxy -X $V/version.Package=github.com/containerd/containerd/v2"
b() { s=$(date +%s.%N); "$@"; e=$(date +%s.%N); printf '%s built in %.1f s\n' "${@: -1}" $(echo "$e - $s" | bc); }
b env CGO_ENABLED=0 go build -trimpath -ldflags "$LD" -tags 'urfave_cli_no_docs no_btrfs no_devmapper no_zfs osusergo netgo static_build' -o /tmp/k12/bin/containerd $V/cmd/containerd
b env CGO_ENABLED=0 go build -trimpath -ldflags "$LD" -tags 'urfave_cli_no_docs no_grpc osusergo netgo static_build' -o /tmp/k12/bin/containerd-shim-runc-v2 $V/cmd/containerd-shim-runc-v2
b env CGO_ENABLED=0 go build -trimpath -ldflags "$LD" -tags 'urfave_cli_no_docs osusergo netgo static_build' -o /tmp/k12/bin/ctr $V/cmd/ctr
ls -l /tmp/k12/bin/containerd /tmp/k12/bin/containerd-shim-runc-v2 /tmp/k12/bin/ctr
