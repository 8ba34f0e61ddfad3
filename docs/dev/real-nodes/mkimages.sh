#!/bin/bash
# Build the sandbox (pause) image and a busybox test image as OCI layouts with umoci, then docker-archive tarballs
# (with their names) with skopeo, for `ctr -n k8s.io images import`. No registry involved.
set -euo pipefail
W=/tmp/k12/img; cd $W
rm -rf oci pause-bundle test-bundle
umoci init --layout oci
# pause image
umoci new --image oci:pause
umoci unpack --rootless --image oci:pause pause-bundle >/dev/null
install -m 0755 pause pause-bundle/rootfs/pause
umoci repack --image oci:pause pause-bundle
umoci config --image oci:pause --config.entrypoint /pause --config.user 65535:65535 --architecture amd64 --os linux
# busybox test image
umoci new --image oci:test
umoci unpack --rootless --image oci:test test-bundle >/dev/null
mkdir -p test-bundle/rootfs/bin test-bundle/rootfs/etc test-bundle/rootfs/tmp
cp /bin/busybox test-bundle/rootfs/bin/busybox
for a in $(/bin/busybox --list); do [ -e test-bundle/rootfs/bin/$a ] || ln -s busybox test-bundle/rootfs/bin/$a; done
echo 'root:x:0:0:root:/root:/bin/sh' > test-bundle/rootfs/etc/passwd; echo 'root:x:0:' > test-bundle/rootfs/etc/group
umoci repack --image oci:test test-bundle
umoci config --image oci:test --config.cmd /bin/sh --config.env PATH=/bin --architecture amd64 --os linux
umoci gc --layout oci
rm -f pause.tar test.tar
skopeo copy -q oci:$W/oci:pause docker-archive:$W/pause.tar:registry.k8s.io/pause:3.10.1
skopeo copy -q oci:$W/oci:test docker-archive:$W/test.tar:localhost/test:1
ls -l $W/pause.tar $W/test.tar
