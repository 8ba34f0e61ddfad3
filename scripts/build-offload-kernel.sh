#!/usr/bin/env bash
# Build the offload lab's kernel: Debian's `linux` source package (6.1) configured for
# virtme-ng (virtio, 9p/virtiofs) plus what the lab needs (BPF, BPF_JIT, DEBUG_FS,
# NETDEVSIM for XDP hardware offload, VETH), trimmed of graphics, sound, wireless, USB,
# tracing and debug info to keep the build short. Safe to run by hand.
#
# Output (cached; rebuilt only when missing):
#   $KUBE_XDP_CACHE/offload-kernel/$BUILD_ID/bzImage        the kernel vng boots
#   $KUBE_XDP_CACHE/offload-kernel/$BUILD_ID/headers/       include/ + arch/x86/include/
#                                                          of the built tree, for bcc
#                                                          (BCC_KERNEL_SOURCE=headers)
#   $KUBE_XDP_CACHE/offload-kernel/$BUILD_ID/config          the final .config
#   $KUBE_XDP_CACHE/offload-kernel/$BUILD_ID/build-info      source version, build time
# The tree is built under $KUBE_XDP_CACHE/build/ and the result is renamed into place
# only when complete, so an interrupted build never counts as cached.
# BUILD_ID names the recipe (config fragment, this script's steps): bump it when either
# changes and every cache rebuilds once.
#
# Usage: build-offload-kernel.sh          build if missing; print the output directory
#        build-offload-kernel.sh --path   print the output directory only (no build)
#        build-offload-kernel.sh --check  exit 0 if cached, 1 if not
set -euo pipefail
CACHE=${KUBE_XDP_CACHE:-$HOME/.cache/kube-xdp}
BUILD_ID=${KUBE_XDP_OFFLOAD_KERNEL_ID:-deb6.1-nsim-kx2}
OUT=$CACHE/offload-kernel/$BUILD_ID
die() { echo "build-offload-kernel: $*" >&2; exit 1; }
log() { echo "build-offload-kernel: $*" >&2; }

cached() { [ -s "$OUT/bzImage" ] && [ -f "$OUT/headers/include/linux/kconfig.h" ] && [ -f "$OUT/build-info" ]; }
case "${1:-}" in
  --path) echo "$OUT"; exit 0 ;;
  --check) cached; exit $? ;;
  "") ;;
  *) die "unknown argument '$1' (use --path or --check)" ;;
esac
if cached; then log "cached $OUT"; echo "$OUT"; exit 0; fi

for t in make gcc flex bison bc pahole dpkg-source xz; do
  command -v "$t" >/dev/null || die "'$t' is missing: run scripts/install-lab-deps.sh"
done
[ -f /usr/include/libelf.h ] || die "libelf-dev is missing: run scripts/install-lab-deps.sh"
[ -f /usr/include/openssl/ssl.h ] || die "libssl-dev is missing: run scripts/install-lab-deps.sh"

T0=$(date +%s)
SRC=$CACHE/src/linux                 # downloaded source package, kept for rebuilds
WORK=$CACHE/build/offload-kernel
rm -rf "$WORK"                       # a half-built tree from an interrupted run is discarded
mkdir -p "$SRC" "$WORK" "$CACHE/offload-kernel"

# 1. Debian's linux source package (orig tarball + Debian's patches, ~140 MB download).
cd "$SRC"
if ! ls linux_*.dsc >/dev/null 2>&1; then
  log "fetching Debian's linux source package (~140 MB)"
  apt-get source --download-only linux >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get source --download-only linux >/dev/null; } \
    || die "apt-get source linux failed: is there a deb-src line for bookworm (scripts/install-host-deps.sh adds one)?"
fi
DSC=$(ls linux_*.dsc | sort -V | tail -1)
VERSION=${DSC#linux_}; VERSION=${VERSION%.dsc}
log "unpacking $DSC with Debian's patches"
dpkg-source --no-check -x "$DSC" "$WORK/src" >"$WORK/unpack.log" 2>&1 \
  || { tail -20 "$WORK/unpack.log" >&2; die "dpkg-source -x $DSC failed"; }
T1=$(date +%s)

# 2. Config: x86_64 defconfig + what virtme-ng needs to boot (vng --kconfig adds its own
# list) + the lab's options, then our trim, then checks that every required option held.
cd "$WORK/src"
VNG=$(command -v vng || true)
[ -n "$VNG" ] || VNG=$(dirname "$(readlink -f "$0")")/../.venv/bin/vng
[ -x "$VNG" ] || die "vng (virtme-ng) is missing: run scripts/install-lab-deps.sh"
REQUIRED=(
  BPF BPF_SYSCALL BPF_JIT DEBUG_FS NETDEVSIM VETH NET_CLS_BPF NET_SCH_INGRESS
  VIRTIO VIRTIO_PCI VIRTIO_MMIO NET_9P NET_9P_VIRTIO 9P_FS OVERLAY_FS
  DEVTMPFS TMPFS UNIX INET PACKET SERIAL_8250_CONSOLE VIRTIO_CONSOLE BINFMT_SCRIPT
)
DISABLE=(
  # graphics, sound, input and USB: the guest has a serial console only
  DRM FB SOUND SND USB_SUPPORT HID INPUT_MOUSE INPUT_JOYSTICK INPUT_TABLET
  INPUT_TOUCHSCREEN INPUT_MISC AGP VGA_ARB
  # wireless, bluetooth and wired NIC drivers (netdevsim and veth are all we use)
  WIRELESS WLAN CFG80211 MAC80211 RFKILL BT ETHERNET NET_VENDOR_INTEL
  IPV6 NETFILTER NETLABEL XFRM_USER MACSEC
  # storage the guest does not use (root is the host over 9p/virtiofs)
  ATA MD BLK_DEV_DM SCSI_LOWLEVEL BLK_DEV_SR EXT4_FS EXT2_FS VFAT_FS NFS_FS
  ISO9660_FS QUOTA
  # tracing, probes, debug info: the biggest build-time costs we do not need
  KPROBES UPROBES FTRACE FUNCTION_TRACER KPROBE_EVENTS UPROBE_EVENTS
  DEBUG_INFO DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT DEBUG_INFO_DWARF4 DEBUG_INFO_DWARF5
  DEBUG_INFO_BTF DEBUG_KERNEL SLUB_DEBUG
  # power management, platform extras, hibernation, security modules
  HIBERNATION SUSPEND CPU_FREQ MICROCODE X86_MCE PCCARD YENTA THERMAL HWMON
  SECURITY AUDIT KEXEC CRASH_DUMP EFI XEN
  VIRTIO_BALLOON DRM_VIRTIO_GPU DRM_BOCHS SQUASHFS I2C
  # the lab boots with --force-9p: no virtiofs, hence no DAX / memory hotplug
  VIRTIO_FS FUSE_FS DAX FS_DAX ZONE_DEVICE MEMORY_HOTPLUG
  # no disks (root is 9p), no KVM in the guest, no IOMMUs, no platform drivers
  SCSI BLK_DEV_SD KVM VIRTUALIZATION AMD_IOMMU INTEL_IOMMU X86_PLATFORM_DEVICES ACPI_WMI
  ACPI_BATTERY ACPI_AC ACPI_VIDEO ACPI_FAN ACPI_DOCK ACPI_THERMAL ACPI_TABLE_UPGRADE HOTPLUG_PCI
  NETCONSOLE IP_PNP IP_MROUTE IP_ADVANCED_ROUTER NUMA X86_5LEVEL PROFILING
  CPU_SUP_HYGON CPU_SUP_CENTAUR CPU_SUP_ZHAOXIN CGROUP_RDMA CGROUP_HUGETLB CGROUP_PERF
  INPUT_EVDEV INPUT_LEDS BLK_DEV_LOOP
)
FRAG=$WORK/lab.config
{
  for o in "${REQUIRED[@]}"; do echo "CONFIG_$o=y"; done
  for o in "${DISABLE[@]}"; do echo "# CONFIG_$o is not set"; done
  echo "CONFIG_DEBUG_INFO_NONE=y"
  echo "CONFIG_LOCALVERSION=\"-kube-xdp-lab\""
  echo "# CONFIG_LOCALVERSION_AUTO is not set"
} >"$FRAG"
log "configuring (vng --kconfig + lab fragment)"
{ "$VNG" --kconfig --config "$FRAG" \
  && scripts/kconfig/merge_config.sh -m .config "$FRAG" \
  && make olddefconfig; } >"$WORK/config.log" 2>&1 \
  || { tail -20 "$WORK/config.log" >&2; die "kernel configuration failed (log: $WORK/config.log)"; }
for o in "${REQUIRED[@]}"; do
  grep -qx "CONFIG_$o=y" .config || die "CONFIG_$o is not =y after configuration (a dependency is off; see $WORK/src/.config)"
done
for o in DRM SOUND DEBUG_INFO KPROBES FTRACE; do
  grep -qx "CONFIG_$o=y" .config && die "CONFIG_$o stayed on after the trim (something selects it)"
done

# 3. Build. -j cores+1, niced: the machine is shared with other tests. Only bzImage:
# MODULES stays on (BPF_JIT depends on it) but every option the lab needs is built in.
JOBS=${KUBE_XDP_KERNEL_JOBS:-$(( $(nproc) + 1 ))}
log "building bzImage with -j$JOBS (several minutes; log: $WORK/build.log)"
T2=$(date +%s)
nice -n 10 make -j"$JOBS" bzImage >"$WORK/build.log" 2>&1 \
  || { tail -30 "$WORK/build.log" >&2; die "make bzImage failed (full log: $WORK/build.log)"; }
T3=$(date +%s)
# The headers bcc needs (it compiles against include/ and arch/x86/include/, both with
# their generated/ parts). scripts/ etc. are not needed: bcc does not run make.
STAGE=$CACHE/offload-kernel/.$BUILD_ID.tmp.$$
rm -rf "$STAGE"; mkdir -p "$STAGE/headers/arch/x86"
cp arch/x86/boot/bzImage "$STAGE/bzImage"
cp .config "$STAGE/config"
cp -a include "$STAGE/headers/include"
cp -a arch/x86/include "$STAGE/headers/arch/x86/include"
cp Makefile "$STAGE/headers/Makefile"
KREL=$(make -s kernelrelease)
cat >"$STAGE/build-info" <<EOF
source=linux $VERSION (Debian)
kernelrelease=$KREL
build_id=$BUILD_ID
unpack_seconds=$((T1 - T0))
make_seconds=$((T3 - T2))
total_seconds=$(( $(date +%s) - T0 ))
jobs=$JOBS
bzimage_bytes=$(stat -c %s arch/x86/boot/bzImage)
EOF
rm -rf "$OUT" && mv "$STAGE" "$OUT"
cd / && rm -rf "$WORK"      # the built tree is ~1 GB; only bzImage + headers are kept
# Builds of older recipes are never used again (a running guest keeps its kernel loaded).
find "$CACHE/offload-kernel" -mindepth 1 -maxdepth 1 ! -name "$BUILD_ID" -exec rm -rf {} +
log "built $OUT (linux $VERSION, $KREL; make bzImage $((T3 - T2)) s, total $(( $(date +%s) - T0 )) s)"
echo "$OUT"
