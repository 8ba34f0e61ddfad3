"""The real kernel behind the same three factories as `fake.FakeKernel`.

The control loop takes one of these (or a FakeKernel in unit tests) and asks it for
`.compiler`, `.netlink(netns)` and `.pin_store(root)`; nothing else in the agent
touches bcc, netlink or bpffs directly.
"""

from __future__ import annotations

from .bpffs import PinStore
from .compile import Compiler
from .netlink import Netlink


class HostKernel:
    """This machine's kernel: bcc compiler (one, shared: it holds the cache), netlink, bpffs."""

    def __init__(self, *, compiler: Compiler | None = None) -> None:
        self.compiler = compiler if compiler is not None else Compiler()

    def netlink(self, netns: str | None = None) -> Netlink:
        return Netlink(netns)

    def pin_store(self, root: str) -> PinStore:
        return PinStore(root)

    def builder(self, bpffs: str, netns: str | None = None):
        """Compile+load+pin in a child process (see kube_xdp_agent.build)."""
        from ..build import SubprocessBuilder
        return SubprocessBuilder(self.compiler, bpffs, netns)
