// etcd for the kube-xdp rig: the etcd server's own entry point, at the etcd release that
// this module's Kubernetes version is built against (go.mod), so no second toolchain,
// package or download site is needed.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
