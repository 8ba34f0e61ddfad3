#!/usr/bin/env bash
# Install what the offload lab needs on a Debian 12 host: QEMU to boot the lab kernel,
# the kernel's build dependencies, and virtme-ng (PyPI, command `vng`) in the venv.
# Idempotent: re-running only installs what is missing. Run as root.
# Usage: scripts/install-lab-deps.sh [VENV]   (VENV defaults to .venv; skip with VENV=-)
set -euo pipefail

die() { echo "install-lab-deps: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (apt-get install)"

PKGS=(
  qemu-system-x86                      # boots the lab kernel (TCG: no KVM needed)
  flex bison bc libelf-dev libssl-dev dwarves  # the kernel's build dependencies
  dpkg-dev                             # apt-get source linux
  xz-utils make gcc libc6-dev          # unpack the tarball, build
  busybox                              # virtme-ng's init uses it when present
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-lab-deps: apt-get update"
  apt-get update -qq || die "apt-get update failed: check the Debian mirror in /etc/apt/sources.list.d"
  echo "install-lab-deps: installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    || die "apt-get install failed for: ${missing[*]} (see apt's output above; rerun after fixing)"
fi

VENV=${1:-${VENV:-.venv}}
if [ "$VENV" != - ]; then
  [ -x "$VENV/bin/python" ] || die "no venv at $VENV: run 'make venv' first (or pass VENV=- to skip virtme-ng)"
  if ! [ -x "$VENV/bin/vng" ]; then
    echo "install-lab-deps: pip install virtme-ng into $VENV"
    "$VENV/bin/python" -m pip install -q virtme-ng || die "pip install virtme-ng failed"
  fi
  "$VENV/bin/vng" --version >/dev/null 2>&1 || die "$VENV/bin/vng does not run after install"
fi
echo "install-lab-deps: ok"
