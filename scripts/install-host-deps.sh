#!/usr/bin/env bash
# Install everything kube-xdp's rig, tests and demo need on a Debian 12 host.
# Idempotent: re-running only installs what is missing. Run as root.
set -euo pipefail

die() { echo "install-host-deps: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (the rig creates network namespaces and mounts bpffs)"
. /etc/os-release
[ "${VERSION_CODENAME:-}" = bookworm ] || echo "install-host-deps: warning: tested on Debian 12 (bookworm), this is ${PRETTY_NAME:-unknown}" >&2

PKGS=(
  dpkg-dev                             # apt-get source (the offload lab's kernel)
  python3-bpfcc python3-venv python3-dev  # bcc for Debian's python3, and the venv on top of it
  linux-headers-amd64                  # UAPI headers for bcc (linked below)
  netsniff-ng                          # trafgen: real packet load
  iproute2 openssl make procps psmisc kmod
)
# deb-src for the linux source package (the offload lab's kernel; only bookworm main; added once).
SRC=${KUBE_XDP_DEB_SRC_FILE:-/etc/apt/sources.list.d/kube-xdp-deb-src.sources}
if [ ! -f "$SRC" ]; then
  cat > "$SRC" <<'SRCEOF'
# added by kube-xdp scripts/install-host-deps.sh: apt-get source linux
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRCEOF
  NEED_UPDATE=1
fi

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ] || [ -n "${NEED_UPDATE:-}" ]; then
  echo "install-host-deps: apt-get update"
  apt-get update -qq || die "apt-get update failed: check network access and the Debian mirror in /etc/apt/sources.list.d, then rerun 'make deps'"
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-host-deps: installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    || die "apt-get install failed for: ${missing[*]} (apt's reason is above; fix it, then rerun 'make deps')"
fi

# bcc looks for headers at /lib/modules/$(uname -r)/{build,source}. The running kernel
# may ship none; Debian's split headers (arch + common) give the stable UAPI XDP needs.
KREL=$(uname -r)
MODDIR=/lib/modules/$KREL
if [ ! -e "$MODDIR/build/include" ]; then
  ARCH_HDR=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -1)
  COMMON_HDR=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -1)
  [ -n "$ARCH_HDR" ] && [ -n "$COMMON_HDR" ] || die "linux-headers-amd64 installed but no /usr/src/linux-headers-* found"
  mkdir -p "$MODDIR"
  ln -sfn "$ARCH_HDR" "$MODDIR/build"
  ln -sfn "$COMMON_HDR" "$MODDIR/source"
  echo "install-host-deps: linked $MODDIR/build -> $ARCH_HDR, source -> $COMMON_HDR"
fi
echo "install-host-deps: ok"
