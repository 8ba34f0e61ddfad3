"""Placement: an XdpProgram and the cluster's Nodes -> the XdpAttachments it needs (pure).

No kopf and no Kubernetes client here: plain dicts in, plain dicts out, so every rule is
unit-tested without a cluster. handlers.py fetches, calls these, and applies the plan.

Rules:
- A node is selected when `spec.nodeSelector` matches its labels (empty: every node)
  and it is not being deleted (deletionTimestamp set).
- One XdpAttachment per selected node, named `names.attachment_name(program, node)`,
  labelled for the program and the node, owned by the program (controller reference).
- A program being deleted wants nothing: its plan deletes every attachment it owns.
- The plan only touches attachments this program owns (ownerReference uid); it updates
  the spec (and the kube-xdp labels the agent's watch relies on) only when they differ,
  and never touches status.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kube_xdp_api import names
from kube_xdp_api.selectors import matches
from kube_xdp_api.spec import AttachmentSpec, ProgramSpec, validate_program_name


@dataclass(frozen=True)
class AttachmentPlan:
    """What to do to make the stored attachments match the wanted ones.

    create:  full XdpAttachment bodies to create.
    update:  (name, JSON merge patch body) pairs, e.g. ("p.node-1", {"spec": {"mode": "generic"}}).
    delete:  names of owned attachments no longer wanted.
    blocked: wanted names that cannot be created now: an owned attachment of that name is
             still being deleted (its agent has not detached yet), or an object this
             program does not own holds the name. Retry later.
    """

    create: list[dict[str, Any]] = field(default_factory=list)
    update: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        """True when there is nothing to create, update or delete."""
        return not (self.create or self.update or self.delete)


def selected_nodes(selector: Any, nodes: Iterable[Mapping[str, Any]]) -> list[str]:
    """Sorted names of the nodes `selector` (dict or LabelSelector) selects, deleting nodes left out."""
    chosen = []
    for node in nodes:
        metadata = node.get("metadata") or {}
        if metadata.get("deletionTimestamp") or not metadata.get("name"):
            continue
        if matches(selector, metadata.get("labels") or {}):
            chosen.append(metadata["name"])
    return sorted(chosen)


def wanted_attachments(
    program: Mapping[str, Any], nodes: Iterable[Mapping[str, Any]], source_digest: str,
    *, agent_nodes: Collection[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Attachment name -> full XdpAttachment body, for every node the program selects.

    Nodes in `agent_nodes` (an agent registered there) get the attachment with the
    agent's finalizer already set, as the agent would set it first thing; elsewhere the
    agent sets it itself when it appears.

    Raises spec.SpecError (reason InvalidSpec/InvalidDefine) when the program's name or
    spec is invalid: the caller reports it as Stalled and leaves existing attachments be.
    """
    metadata = program.get("metadata") or {}
    program_name = validate_program_name(metadata.get("name"))
    if metadata.get("deletionTimestamp"):
        return {}
    spec = ProgramSpec.from_dict(program.get("spec"))
    wanted = {}
    for node_name in selected_nodes(spec.node_selector, nodes):
        attachment_spec = AttachmentSpec(
            node_name=node_name,
            program_name=program_name,
            program_uid=metadata.get("uid"),  # type: ignore[arg-type]  (validated by AttachmentSpec)
            program_generation=metadata.get("generation"),  # type: ignore[arg-type]
            source_digest=source_digest,
            fields=spec.fields,
        )
        name = names.attachment_name(program_name, node_name)
        finalizers = {"finalizers": [names.FINALIZER_AGENT]} if agent_nodes and node_name in agent_nodes else {}
        wanted[name] = {
            "apiVersion": names.API_VERSION,
            "kind": names.ATTACHMENT_KIND,
            "metadata": {
                "name": name,
                "labels": managed_labels(program_name, node_name),
                **finalizers,
                "ownerReferences": [
                    {
                        "apiVersion": names.API_VERSION,
                        "kind": names.PROGRAM_KIND,
                        "name": program_name,
                        "uid": metadata["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": attachment_spec.to_dict(),
        }
    return wanted


def managed_labels(program_name: str, node_name: str) -> dict[str, str]:
    """The labels the operator puts on an attachment (the agent watches by LABEL_NODE)."""
    return {
        names.LABEL_PROGRAM: program_name,
        names.LABEL_NODE: names.node_label_value(node_name),
        names.LABEL_MANAGED_BY: names.MANAGED_BY,
    }


def is_owned_by(attachment: Mapping[str, Any], owner_uid: str) -> bool:
    """True when `attachment` has an ownerReference to the XdpProgram with `owner_uid`."""
    for ref in (attachment.get("metadata") or {}).get("ownerReferences") or ():
        if ref.get("uid") == owner_uid and ref.get("kind") == names.PROGRAM_KIND:
            return True
    return False


def plan_attachments(
    wanted: Mapping[str, Mapping[str, Any]], existing: Iterable[Mapping[str, Any]], *, owner_uid: str
) -> AttachmentPlan:
    """Compare wanted attachments (from wanted_attachments) with the stored ones.

    `owner_uid` is the program's uid: attachments without an ownerReference to it are
    never updated or deleted (they belong to another program, or to an earlier program
    of the same name). It is explicit because `wanted` is empty exactly when ownership
    matters most (no node selected, program deleted).
    """
    if not owner_uid:
        raise ValueError("plan_attachments needs the owning program's uid")
    owned: dict[str, Mapping[str, Any]] = {}
    foreign: set[str] = set()
    for attachment in existing:
        name = (attachment.get("metadata") or {}).get("name")
        if not name:
            continue
        if is_owned_by(attachment, owner_uid):
            owned[name] = attachment
        else:
            foreign.add(name)

    plan = AttachmentPlan()
    for name in sorted(wanted):
        body = wanted[name]
        current = owned.get(name)
        if current is None:
            if name in foreign:
                plan.blocked.append(name)
            else:
                plan.create.append(dict(body))
        elif (current.get("metadata") or {}).get("deletionTimestamp"):
            plan.blocked.append(name)
        else:
            patch = _attachment_patch(current, body)
            if patch:
                plan.update.append((name, patch))
    for name in sorted(owned):
        if name not in wanted and not (owned[name].get("metadata") or {}).get("deletionTimestamp"):
            plan.delete.append(name)
    return plan


def _attachment_patch(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch taking `current` to `wanted` for spec and managed labels; {} if equal."""
    patch: dict[str, Any] = {}
    spec_patch = merge_patch(current.get("spec") or {}, wanted.get("spec") or {})
    if spec_patch:
        patch["spec"] = spec_patch
    have_labels = (current.get("metadata") or {}).get("labels") or {}
    want_labels = (wanted.get("metadata") or {}).get("labels") or {}
    label_patch = {k: v for k, v in want_labels.items() if have_labels.get(k) != v}
    if label_patch:
        patch["metadata"] = {"labels": label_patch}
    return patch


def merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The RFC 7386 JSON merge patch that turns `old` into `new` ({} when equal).

    Keys missing from `new` become None (delete); nested objects are diffed; lists and
    scalars are replaced whole.
    """
    patch: dict[str, Any] = {}
    for key in old:
        if key not in new:
            patch[key] = None
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            if isinstance(value, Mapping) and isinstance(old[key], Mapping):
                patch[key] = merge_patch(old[key], value)
            else:
                patch[key] = value
    return patch


def stale_inventories(inventories: Mapping[str, str], node_names: Collection[str],
                      suspects: Mapping[str, str]) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """XdpNodes whose Node is gone, to delete: (doomed, suspects for the next sweep).

    `inventories`: XdpNode name -> uid; `node_names`: the Nodes that exist now; `suspects`:
    what the previous sweep found without a Node. An XdpNode is doomed only when the
    previous sweep already saw the same object (same uid) without its Node: one sweep alone
    could race an agent that published its XdpNode an instant before the operator's Node
    watch showed the Node. The returned (name, uid) pairs are meant for a delete with a uid
    precondition, so an XdpNode re-created meanwhile is never the one deleted."""
    now = {name: uid for name, uid in inventories.items() if name not in node_names and uid}
    doomed = sorted((name, uid) for name, uid in now.items() if suspects.get(name) == uid)
    return doomed, {name: uid for name, uid in now.items() if (name, uid) not in doomed}
