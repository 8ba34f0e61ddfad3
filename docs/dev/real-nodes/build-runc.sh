#!/bin/bash
# Build runc v1.5.3 from the Go module proxy: needs cgo (libcontainer/nsenter is C) and Debian libseccomp-dev
# for the seccomp tag. Static link against Debian's libseccomp.a; the libpathrs tag is left out (no libpathrs in Debian).
set -euo pipefail
export GOMODCACHE=$HOME/.cache/kube-xdp/go/mod GOCACHE=$HOME/.cache/kube-xdp/go/build
cd /tmp/k12/build-runc
s=$(date +%s.%N)
CGO_ENABLED=1 go build -trimpath -buildmode=pie -tags 'seccomp urfave_cli_no_docs netgo osusergo' \
  -ldflags '-s -w -X main.gitCommit=modproxy-v1.5.3 -linkmode external -extldflags -static-pie' \
  -o /tmp/k12/bin/runc github.com/opencontainers/runc
e=$(date +%s.%N); printf 'runc built in %.1f s\n' $(echo "$e - $s" | bc); ls -l /tmp/k12/bin/runc; file /tmp/k12/bin/runc
