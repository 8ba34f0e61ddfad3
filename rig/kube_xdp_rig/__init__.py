"""The local cluster rig: a real kube-apiserver + etcd on loopback and simulated nodes.

Each simulated node is a Node object, a network namespace holding its "NIC" veths, a
traffic-source namespace on the far end of those veths, and its own bpffs instance.
The rig touches only what it creates: its state directory, namespaces whose names start
with its instance prefix, bpffs mounts under its state directory and processes it started.
"""
