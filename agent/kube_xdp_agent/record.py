"""The structured per-interface record: what the agent wrote in an XdpAttachment's
`status.interfaces[]`, and what it reads back to decide (pure).

The status is the agent's memory between reconciles and across restarts, so every field
a decision needs is a field of its own, typed and schema'd (api/kube_xdp_api/schema.py,
`attachment_status_schema`; docs/api.md):

    name, ready                 the interface, and whether the program runs there as asked
    mode                        read back from netlink (never assumed)
    preferredMode               the first mode of the policy when this mode was chosen
    refused[]                   {mode, reason, errno, message}: each mode tried before `mode`
                                and refused, in order (why the preferred mode is not used)
    attachedBy                  'link' (our pinned bpf_link: the kernel enforces ownership)
                                or 'netlink'
    linkId, progId, digest      the kernel's link and program ids, and the 12-hex digest the
                                program is pinned under (<bpffs>/kube-xdp/<program>/<digest>)
    tag, pinPath                for people (the program's tag, where it is pinned)
    reason, message             for people: why not ready, or why not the preferred mode

Decisions read: `ready`, `mode`, `preferredMode`, `refused[].mode`, `progId`, `digest`,
`linkId` and `reason` (a reason is a catalogued code, not prose). Never a `message` or
`pinPath`: messages are written for people and read by no decision. `from_status` reads
no `pinPath` and no entry `message` at all (both are rebuilt from the structured fields);
it keeps each refusal's `message` only to write it again, unchanged, while the fallback
it explains still holds (`Refused.message`, which nothing compares or parses).
tests/unit/test_agent_no_prose.py holds the agent to this.

An entry written by an agent from before this record (no `preferredMode`) is `legacy`:
if it reports a fallback mode with a mode-refusal reason, that outcome is kept as it was
(the agent restarting or being upgraded never detaches to re-try modes), until the
interface is attached again for another cause.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from kube_xdp_api import conditions as cond
from kube_xdp_api import reasons

LINK, NETLINK = "link", "netlink"      # attachedBy (kernel.attach.LINK / NETLINK; schema.ATTACHED_BY)

# Reasons of a mode the kernel or device refused (the next mode is tried).
MODE_REFUSALS = frozenset({reasons.DRIVER_MODE_UNSUPPORTED, reasons.OFFLOAD_UNSUPPORTED,
                           reasons.PROGRAM_NOT_OFFLOADABLE})


@dataclasses.dataclass(frozen=True)
class Refused:
    """One mode tried and refused: the reason (catalogued), the errno when the kernel gave
    one, and the kernel's or bcc's words for people."""

    mode: str
    reason: str
    errno: int | None = None
    message: str = ""

    def to_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"mode": self.mode, "reason": reasons.require(self.reason)}
        if self.errno is not None:
            entry["errno"] = self.errno
        if self.message:
            entry["message"] = cond.trim_message(self.message, 1024)
        return entry


@dataclasses.dataclass(frozen=True)
class IfaceRecord:
    """One interface of an attachment's status, as plain data."""

    name: str
    ready: bool
    mode: str | None = None
    preferred_mode: str | None = None
    refused: tuple[Refused, ...] = ()
    attached_by: str | None = None
    link_id: int | None = None
    prog_id: int | None = None
    digest: str | None = None
    tag: str | None = None
    pin_path: str | None = None
    reason: str | None = None
    message: str = ""
    legacy: bool = False           # read from an entry without preferredMode (an older agent's)

    # -- decisions ---------------------------------------------------------------------
    def settled(self, modes: tuple[str, ...]) -> bool:
        """Whether this interface's mode is the outcome of trying `modes` in order: the
        preferred mode, or a fallback reached by trying (and being refused) every mode
        before it under the same preferred mode. A changed policy (another preferred
        mode, a mode now allowed earlier) is not settled by an old outcome."""
        if not (self.ready and self.prog_id and self.mode in modes):
            return False
        if self.mode == modes[0]:
            return True
        if self.legacy:
            return self.reason in MODE_REFUSALS
        return self.preferred_mode == modes[0] and \
            tuple(r.mode for r in self.refused) == modes[:modes.index(self.mode)]

    # -- status ------------------------------------------------------------------------
    def to_entry(self) -> dict[str, Any]:
        """The status entry (the schema's field names; absent fields omitted)."""
        entry: dict[str, Any] = {"name": self.name, "ready": self.ready}
        optional = {"mode": self.mode, "preferredMode": self.preferred_mode, "attachedBy": self.attached_by,
                    "linkId": self.link_id, "progId": self.prog_id, "digest": self.digest, "tag": self.tag,
                    "pinPath": self.pin_path}
        entry.update({k: v for k, v in optional.items() if v is not None})
        if self.refused:
            entry["refused"] = [r.to_entry() for r in self.refused]
        if self.reason:
            entry["reason"] = reasons.require(self.reason)
            entry["message"] = cond.trim_message(self.message)
        return entry


def fallback_message(mode: str, refused: Iterable[Refused]) -> str:
    """An interface's message (for people) when a later mode was used: the mode, then each
    refused mode with the kernel's words, in the order tried."""
    return f"attached in {mode} mode; refused: " + "; ".join(f"{r.mode}: {r.message}" for r in refused)


def from_status(status: Mapping[str, Any] | None) -> dict[str, IfaceRecord]:
    """interface -> its record, from an attachment's status (entries that are not
    well-formed are skipped: the agent then decides as if it had no memory of them)."""
    out: dict[str, IfaceRecord] = {}
    for entry in (status or {}).get("interfaces") or []:
        if isinstance(entry, Mapping) and isinstance(entry.get("name"), str):
            out[entry["name"]] = _record(entry)
    return out


def _record(entry: Mapping[str, Any]) -> IfaceRecord:
    refused = tuple(Refused(str(r.get("mode")), str(r.get("reason")), _int(r.get("errno")),
                            str(r.get("message") or ""))      # carried verbatim, never compared
                    for r in entry.get("refused") or [] if isinstance(r, Mapping))
    return IfaceRecord(
        name=entry["name"], ready=entry.get("ready") is True, mode=_str(entry.get("mode")),
        preferred_mode=_str(entry.get("preferredMode")), refused=refused,
        attached_by=_str(entry.get("attachedBy")), link_id=_int(entry.get("linkId")),
        prog_id=_int(entry.get("progId")), digest=_str(entry.get("digest")), tag=_str(entry.get("tag")),
        reason=_str(entry.get("reason")), legacy="preferredMode" not in entry)


def _int(value: Any) -> int | None:
    return value if type(value) is int else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
