"""An XdpAttachment -> what this node should have (pure, validated).

The agent runs as root: it re-validates everything it takes from the attachment even
though the API server's schema already did (defense in depth), so a bad string can never
reach a path, a compiler flag or a netlink call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import re

from kube_xdp_api import reasons
from kube_xdp_api.spec import AttachmentSpec, Interfaces, check_interface_name


@dataclasses.dataclass(frozen=True)
class Desired:
    """One attachment, parsed and re-validated by the shared AttachmentSpec."""

    name: str                    # attachment name
    generation: int              # attachment metadata.generation
    deleting: bool
    spec: AttachmentSpec

    @property
    def program(self) -> str:
        return self.spec.program_name

    @property
    def modes(self) -> tuple[str, ...]:
        return self.spec.fields.modes_to_try()

    @classmethod
    def from_attachment(cls, att: Mapping[str, Any]) -> "Desired":
        """Raises SpecError (InvalidSpec, InvalidDefine) for an attachment it must not act on."""
        meta = att.get("metadata") or {}
        return cls(name=meta.get("name", ""), generation=int(meta.get("generation") or 0),
                   deleting=bool(meta.get("deletionTimestamp")), spec=AttachmentSpec.from_dict(att.get("spec")))


def resolve_interfaces(selector: Interfaces, available: list[str], primary: str | None) -> tuple[list[str], str | None, str]:
    """Which of the node's interfaces the program goes on.

    Returns (names, reason, message); reason is None when every wanted interface exists.
    Explicit names that are missing are reported (the others are still attached);
    a pattern matching nothing and a node without a default route are reported too.
    Loopback is never selected by a pattern or as primary.
    """
    if selector.names:
        return _by_names(selector.names, set(available))
    if selector.pattern is not None:
        return _by_pattern(selector.pattern, available)
    if primary and primary != "lo":
        return [primary], None, ""
    return [], reasons.NO_INTERFACES_MATCHED, "no default route on this node: no primary interface"


def _by_names(names: list[str], present: set[str]) -> tuple[list[str], str | None, str]:
    wanted = [check_interface_name(n) for n in names]
    missing = [n for n in wanted if n not in present]
    found = [n for n in wanted if n in present]
    if missing:
        return found, reasons.INTERFACE_NOT_FOUND, f"interface(s) {', '.join(missing)} not found on this node"
    return found, None, ""


def _by_pattern(pattern: str, available: list[str]) -> tuple[list[str], str | None, str]:
    rx = re.compile(pattern)
    found = sorted(n for n in available if n != "lo" and rx.fullmatch(n))
    if not found:
        have = ", ".join(sorted(set(available) - {"lo"})) or "none"
        return [], reasons.NO_INTERFACES_MATCHED, f"no interface matches pattern {pattern!r} (have: {have})"
    return found, None, ""
