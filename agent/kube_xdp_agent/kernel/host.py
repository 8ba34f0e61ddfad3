"""The real kernel behind the factories the test double (tests/fakes: `FakeKernel`) also has.

The control loop takes one of these (or a FakeKernel in unit tests) and asks it for
`.compiler`, `.netlink(netns)`, `.links(netns)` and `.pin_store(root)` (or `.node(netns,
root)`, the three of one node for attach.place); nothing else in the agent touches bcc,
netlink, bpf_link or bpffs directly.
"""

from __future__ import annotations

from .attach import Node
from .bpffs import PinStore
from .compile import Compiler
from .link import XdpLinks
from .netlink import Netlink


class HostKernel:
    """This machine's kernel: bcc compiler (one, shared: it holds the cache), netlink, links, bpffs."""

    def __init__(self, *, compiler: Compiler | None = None) -> None:
        self.compiler = compiler if compiler is not None else Compiler()

    def netlink(self, netns: str | None = None) -> Netlink:
        return Netlink(netns)

    def links(self, netns: str | None = None) -> XdpLinks:
        return XdpLinks(netns)

    def pin_store(self, root: str) -> PinStore:
        return PinStore(root)

    def node(self, netns: str | None, root: str) -> Node:
        """Netlink and links in `netns`, pins in the bpffs at `root`: what attach.place takes."""
        return Node(self.netlink(netns), self.links(netns), self.pin_store(root))

    def builder(self, bpffs: str, netns: str | None = None):
        """Compile+load+pin in a child process (see kube_xdp_agent.build)."""
        from ..build import SubprocessBuilder
        return SubprocessBuilder(self.compiler, bpffs, netns)
