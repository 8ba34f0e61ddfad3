#!/usr/bin/env bash
# Build kube-apiserver from Debian's `kubernetes` source package (1.20.2, with vendor/)
# using Debian's Go 1.19, and cache the binary. Called by `kube-xdp-rig up` when the
# cached binary is missing; safe to run by hand. The binary is installed atomically
# (built elsewhere, then renamed), so an interrupted build never leaves a half binary.
#
# Output: $KUBE_XDP_CACHE/bin/kube-apiserver-$BUILD_ID (default ~/.cache/kube-xdp/bin).
# BUILD_ID names the source version and our patches; it lives in one file,
# scripts/kube-apiserver.build-id, read here and by the rig (which passes it in
# KUBE_XDP_APISERVER_BUILD_ID): change it when a patch changes, and every cache rebuilds once.
set -euo pipefail
die() { echo "build-kube-apiserver: $*" >&2; exit 1; }
CACHE=${KUBE_XDP_CACHE:-$HOME/.cache/kube-xdp}
BIN_DIR=$CACHE/bin
ID_FILE=$(dirname "$0")/kube-apiserver.build-id
BUILD_ID=${KUBE_XDP_APISERVER_BUILD_ID:-$(cat "$ID_FILE" 2>/dev/null)} || true
[ -n "$BUILD_ID" ] || die "no build id: $ID_FILE is missing or empty"
OUT=$BIN_DIR/kube-apiserver-$BUILD_ID

if [ -x "$OUT" ] && "$OUT" --version >/dev/null 2>&1; then
  echo "build-kube-apiserver: cached $OUT ($("$OUT" --version))"; exit 0
fi
if [ -e "$OUT" ]; then
  echo "build-kube-apiserver: the cached $OUT does not run (truncated or corrupted): rebuilding it"
  rm -f "$OUT"
fi
rm -f "$OUT".tmp.*       # a copy interrupted before its rename

GO=/usr/lib/go-1.19/bin
[ -x "$GO/go" ] || die "Debian's golang-1.19-go is missing: run scripts/install-host-deps.sh"
REFLECT2=/usr/share/gocode/src/github.com/modern-go/reflect2
[ -d "$REFLECT2" ] || die "golang-github-modern-go-reflect2-dev is missing: run scripts/install-host-deps.sh"
command -v dpkg-source >/dev/null || die "dpkg-dev is missing: run scripts/install-host-deps.sh"

WORK=$CACHE/build/kube-apiserver
if [ -e "$WORK" ]; then
  echo "build-kube-apiserver: discarding the half-built tree of an interrupted run ($WORK)"
  rm -rf "$WORK"
fi
mkdir -p "$WORK" "$BIN_DIR"
cd "$WORK"
echo "build-kube-apiserver: fetching Debian's kubernetes source package"
apt-get source --download-only kubernetes >/dev/null 2>&1 \
  || { apt-get update -qq && apt-get source --download-only kubernetes >/dev/null; } \
  || die "apt-get source kubernetes failed: is the deb-src line in /etc/apt/sources.list.d/kube-xdp-deb-src.sources?"
DSC=$(ls kubernetes_*.dsc | head -1)
dpkg-source --no-check -x "$DSC" src >/dev/null || die "dpkg-source -x $DSC failed"

# The vendored reflect2 v1.0.1 faults in mapiterinit under Go >= 1.18 (first write of a
# custom object crashes the server); Debian's 1.0.2 is API-compatible and fixes it.
rm -rf src/vendor/github.com/modern-go/reflect2
cp -r "$REFLECT2" src/vendor/github.com/modern-go/reflect2

# The OpenAPI type validator treats a value as JSON null when
# reflect.DeepEqual(reflect.Zero(T), reflect.ValueOf(v)); under Go >= 1.18 that holds for
# "" too, so every empty string in a custom resource is refused ('must be of type string:
# "null"'). Only a real nil is null: restore that.
for f in src/vendor/github.com/go-openapi/validate/type.go src/vendor/k8s.io/kube-openapi/pkg/validation/validate/type.go; do
  [ -f "$f" ] || continue
  sed -i 's/if data == nil || reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data)) {/if data == nil {/' "$f"
  grep -q 'reflect.DeepEqual(reflect.Zero' "$f" && die "patching $f failed: the upstream line changed"
done

mkdir -p gopath/src/k8s.io
ln -sfn "$WORK/src" gopath/src/k8s.io/kubernetes
cd gopath/src/k8s.io/kubernetes
echo "build-kube-apiserver: building (about 4 minutes on 2 cores)"
export PATH=$GO:$PATH GOPATH=$WORK/gopath CGO_ENABLED=0 GO111MODULE=off
unset GOFLAGS GOGCFLAGS
# Only the OpenAPI definitions are generated: the deepcopy, defaulter, conversion and
# prerelease-lifecycle outputs ship in the source package, and `make WHAT=...` would spend
# ~80 s regenerating them identically.
make gen_openapi >"$WORK/build.log" 2>&1 \
  || { tail -30 "$WORK/build.log" >&2; die "make gen_openapi failed (full log: $WORK/build.log)"; }
# providerless: without the in-tree cloud providers (AWS, Azure, GCE, OpenStack, vSphere
# SDKs), which the rig never uses: a 61 MB binary instead of 110 MB, ~40% less to compile.
# -dwarf=false: the binary is stripped (-s -w) anyway, so its debug info is never kept.
GOFLAGS=-tags=providerless GOGCFLAGS="all=-dwarf=false" KUBE_BUILD_PLATFORMS=linux/amd64 \
  hack/make-rules/build.sh cmd/kube-apiserver >>"$WORK/build.log" 2>&1 \
  || { tail -30 "$WORK/build.log" >&2; die "building cmd/kube-apiserver failed (full log: $WORK/build.log)"; }
BUILT=$(find _output -type f -name kube-apiserver -perm -u+x | head -1)
[ -n "$BUILT" ] || die "build finished but no kube-apiserver binary under _output"
cp "$BUILT" "$OUT.tmp.$$" && mv -f "$OUT.tmp.$$" "$OUT"
cd / && rm -rf "$WORK"    # the tree (~1 GB) holds the Go build cache too (hack/lib/golang.sh sets GOCACHE inside it)
echo "build-kube-apiserver: built $OUT ($("$OUT" --version))"
