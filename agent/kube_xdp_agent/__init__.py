"""kube-xdp agent: runs on each node, compiles, attaches and pins the XDP programs assigned to it."""
