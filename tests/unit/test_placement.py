"""Placement: program + nodes -> wanted attachments -> plan (kube_xdp_operator.placement)."""

from __future__ import annotations

import copy
import re

import pytest

from kube_xdp_api import names
from kube_xdp_api.spec import SpecError, source_digest
from kube_xdp_operator.placement import (
    AttachmentPlan,
    merge_patch,
    plan_attachments,
    selected_nodes,
    stale_inventories,
    wanted_attachments,
)

UID = "5b1c2d3e-0000-4000-8000-00000000abcd"
DIGEST = source_digest("int xdp_main(struct xdp_md *ctx) { return XDP_PASS; }")
T = "2026-01-01T00:00:00Z"


def program(*, selector=None, generation=3, **spec_changes):
    spec = {
        "source": {"inline": "int xdp_main(struct xdp_md *ctx) { return XDP_PASS; }"},
        "entrypoint": "xdp_main",
        "nodeSelector": {"matchLabels": {"role": "edge"}} if selector is None else selector,
        **spec_changes,
    }
    return {"apiVersion": names.API_VERSION, "kind": names.PROGRAM_KIND,
            "metadata": {"name": "drop-udp", "uid": UID, "generation": generation}, "spec": spec}


def node(name, deleting=False, **labels):
    metadata = {"name": name, "labels": {"kubernetes.io/hostname": name, **labels}}
    if deleting:
        metadata["deletionTimestamp"] = T
    return {"apiVersion": "v1", "kind": "Node", "metadata": metadata}


NODES = [node("n1", role="edge"), node("n2", role="edge"), node("n3", role="core")]


def test_wanted_attachment_body_is_complete():
    wanted = wanted_attachments(program(), NODES, DIGEST)
    assert sorted(wanted) == ["drop-udp.n1", "drop-udp.n2"]
    assert wanted["drop-udp.n1"] == {
        "apiVersion": "kubexdp.io/v1alpha1",
        "kind": "XdpAttachment",
        "metadata": {
            "name": "drop-udp.n1",
            "labels": {"kubexdp.io/program": "drop-udp", "kubexdp.io/node": "n1",
                       "app.kubernetes.io/managed-by": "kube-xdp-operator"},
            "ownerReferences": [{"apiVersion": "kubexdp.io/v1alpha1", "kind": "XdpProgram", "name": "drop-udp",
                                 "uid": UID, "controller": True, "blockOwnerDeletion": True}],
        },
        "spec": {
            "nodeName": "n1",
            "programRef": {"name": "drop-udp", "uid": UID},
            "programGeneration": 3,
            "sourceDigest": DIGEST,
            "entrypoint": "xdp_main",
            "defines": {},
            "interfaces": {"primary": True},
            "mode": "native",
            "fallback": ["generic"],
            "priority": 500,
        },
    }


def test_source_is_not_copied_into_attachments():
    wanted = wanted_attachments(program(), NODES, DIGEST)
    assert all("source" not in body["spec"] for body in wanted.values())


@pytest.mark.parametrize(
    ("selector", "expected"),
    [({}, ["n1", "n2", "n3"]), ({"matchLabels": {"role": "core"}}, ["n3"]),
     ({"matchExpressions": [{"key": "role", "operator": "NotIn", "values": ["edge"]}]}, ["n3"]),
     ({"matchLabels": {"role": "none"}}, [])],
    ids=["empty-selects-all", "match-labels", "not-in", "nothing"],
)
def test_selection(selector, expected):
    assert selected_nodes(selector, NODES) == expected
    wanted = wanted_attachments(program(selector=selector), NODES, DIGEST)
    assert sorted(body["spec"]["nodeName"] for body in wanted.values()) == expected


def test_deleting_node_is_not_selected():
    nodes = [node("n1", role="edge"), node("n2", deleting=True, role="edge")]
    assert list(wanted_attachments(program(), nodes, DIGEST)) == ["drop-udp.n1"]


def test_long_node_name():
    long_name = ".".join(["a" * 63] * 3) + "." + "b" * 61  # 253 characters, a valid DNS subdomain
    assert len(long_name) == 253
    wanted = wanted_attachments(program(selector={}), [node(long_name)], DIGEST)
    ((name, body),) = wanted.items()
    assert len(name) <= 253 and name == names.attachment_name("drop-udp", long_name)
    label = body["metadata"]["labels"][names.LABEL_NODE]
    assert len(label) <= 63 and re.fullmatch(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?", label)
    assert label == names.node_label_value(long_name)
    assert body["spec"]["nodeName"] == long_name


def test_deleting_program_wants_nothing():
    deleting = program()
    deleting["metadata"]["deletionTimestamp"] = T
    assert wanted_attachments(deleting, NODES, DIGEST) == {}


@pytest.mark.parametrize(
    ("change", "reason"),
    [({"spec": {"source": {"inline": "x"}, "entrypoint": "main()"}}, "InvalidSpec"),
     ({"spec": {"source": {"inline": "x"}, "entrypoint": "f", "defines": {"X": "-include"}}}, "InvalidDefine"),
     ({"metadata": {"name": "Drop_UDP", "uid": UID, "generation": 1}}, "InvalidSpec")],
    ids=["bad-entrypoint", "bad-define", "bad-program-name"],
)
def test_invalid_program_raises_spec_error(change, reason):
    bad = {**program(), **change}
    with pytest.raises(SpecError) as caught:
        wanted_attachments(bad, NODES, DIGEST)
    assert caught.value.reason == reason


def test_bad_digest_is_refused():
    with pytest.raises(SpecError):
        wanted_attachments(program(), NODES, "not-a-digest")


# --- Planning ------------------------------------------------------------------------------------
def stored(body, *, status=True, deleting=False, generation=1):
    """An attachment as the API server returns it: server fields, maybe a status."""
    obj = copy.deepcopy(body)
    obj["metadata"].update({"uid": "att-" + obj["metadata"]["name"], "resourceVersion": "7",
                            "generation": generation, "creationTimestamp": T,
                            "finalizers": [names.FINALIZER_AGENT]})
    if deleting:
        obj["metadata"]["deletionTimestamp"] = T
    if status:
        obj["status"] = {"observedGeneration": generation, "conditions": []}
    return obj


def test_plan_from_nothing_creates_everything():
    wanted = wanted_attachments(program(), NODES, DIGEST)
    plan = plan_attachments(wanted, [], owner_uid=UID)
    assert [b["metadata"]["name"] for b in plan.create] == ["drop-udp.n1", "drop-udp.n2"]
    assert (plan.update, plan.delete, plan.blocked) == ([], [], [])


def test_plan_is_idempotent():
    wanted = wanted_attachments(program(), NODES, DIGEST)
    assert plan_attachments(wanted, list(wanted.values()), owner_uid=UID) == AttachmentPlan()
    existing = [stored(b) for b in wanted.values()]
    plan = plan_attachments(wanted, existing, owner_uid=UID)
    assert plan.empty and plan == AttachmentPlan()


@pytest.mark.parametrize(
    ("nodes_after", "create", "delete"),
    [
        ([*NODES, node("n4", role="edge")], ["drop-udp.n4"], []),
        ([NODES[0], NODES[2]], [], ["drop-udp.n2"]),
        ([NODES[0], node("n2", role="core"), NODES[2]], [], ["drop-udp.n2"]),
        ([NODES[0], NODES[1], node("n3", role="edge")], ["drop-udp.n3"], []),
        ([NODES[0], node("n2", deleting=True, role="edge"), NODES[2]], [], ["drop-udp.n2"]),
    ],
    ids=["node-added", "node-removed", "node-relabelled-out", "node-relabelled-in", "node-deleting"],
)
def test_plan_follows_the_nodes(nodes_after, create, delete):
    before = [stored(b) for b in wanted_attachments(program(), NODES, DIGEST).values()]
    plan = plan_attachments(wanted_attachments(program(), nodes_after, DIGEST), before, owner_uid=UID)
    assert [b["metadata"]["name"] for b in plan.create] == create
    assert plan.delete == delete
    assert plan.update == []


def test_spec_change_updates_only_what_differs_and_never_status():
    before = [stored(b) for b in wanted_attachments(program(defines={"A": "1", "B": "2"}), NODES, DIGEST).values()]
    after = wanted_attachments(program(generation=4, mode="generic", defines={"A": "1"}), NODES, DIGEST)
    plan = plan_attachments(after, before, owner_uid=UID)
    assert plan.create == [] and plan.delete == []
    patch = {"spec": {"programGeneration": 4, "mode": "generic", "defines": {"B": None}}}
    assert plan.update == [("drop-udp.n1", patch), ("drop-udp.n2", patch)]


def test_digest_change_is_an_update():
    before = [stored(b) for b in wanted_attachments(program(), NODES[:1], DIGEST).values()]
    after = wanted_attachments(program(generation=4), NODES[:1], "b" * 64)
    assert plan_attachments(after, before, owner_uid=UID).update == [
        ("drop-udp.n1", {"spec": {"programGeneration": 4, "sourceDigest": "b" * 64}})]


def test_lost_labels_are_restored():
    wanted = wanted_attachments(program(), NODES[:1], DIGEST)
    existing = stored(wanted["drop-udp.n1"])
    del existing["metadata"]["labels"][names.LABEL_NODE]
    existing["metadata"]["labels"]["team"] = "net"
    plan = plan_attachments(wanted, [existing], owner_uid=UID)
    assert plan.update == [("drop-udp.n1", {"metadata": {"labels": {names.LABEL_NODE: "n1"}}})]


def test_attachments_owned_by_others_are_ignored():
    wanted = wanted_attachments(program(), NODES[:1], DIGEST)
    other_program = stored(wanted_attachments({**program(), "metadata": {"name": "other", "uid": "uid-other",
                                                                          "generation": 1}}, NODES[:2], DIGEST)
                           ["other.n2"])
    same_name_old_uid = stored(wanted["drop-udp.n1"])
    same_name_old_uid["metadata"]["ownerReferences"][0]["uid"] = "uid-of-a-deleted-program"
    plan = plan_attachments(wanted, [other_program, same_name_old_uid], owner_uid=UID)
    assert plan.create == [] and plan.update == [] and plan.delete == []
    assert plan.blocked == ["drop-udp.n1"]


def test_attachment_being_deleted_blocks_its_name_and_is_not_deleted_twice():
    wanted = wanted_attachments(program(), NODES, DIGEST)
    existing = [stored(wanted["drop-udp.n1"], deleting=True),
                stored(wanted_attachments(program(selector={}), NODES, DIGEST)["drop-udp.n3"], deleting=True)]
    plan = plan_attachments(wanted, existing, owner_uid=UID)
    assert [b["metadata"]["name"] for b in plan.create] == ["drop-udp.n2"]
    assert plan.blocked == ["drop-udp.n1"]
    assert plan.delete == []


def test_deleted_program_plan_deletes_everything_it_owns():
    existing = [stored(b) for b in wanted_attachments(program(), NODES, DIGEST).values()]
    deleting = program()
    deleting["metadata"]["deletionTimestamp"] = T
    plan = plan_attachments(wanted_attachments(deleting, NODES, DIGEST), existing, owner_uid=UID)
    assert plan.delete == ["drop-udp.n1", "drop-udp.n2"] and plan.create == []


def test_owner_uid_is_required():
    with pytest.raises(ValueError):
        plan_attachments({}, [], owner_uid="")


@pytest.mark.parametrize(
    ("old", "new", "patch"),
    [({"a": 1}, {"a": 1}, {}), ({"a": 1}, {"a": 2}, {"a": 2}), ({"a": 1, "b": 2}, {"a": 1}, {"b": None}),
     ({"m": {"x": "1", "y": "2"}}, {"m": {"x": "1"}}, {"m": {"y": None}}),
     ({"m": {"x": "1"}}, {"m": {}}, {"m": {"x": None}}),
     ({"l": [1, 2]}, {"l": [2]}, {"l": [2]}), ({}, {"i": {"names": ["eth0"]}}, {"i": {"names": ["eth0"]}}),
     ({"i": {"primary": True}}, {"i": {"pattern": "e.*"}}, {"i": {"primary": None, "pattern": "e.*"}})],
    ids=["equal", "scalar", "removed-key", "nested-removed", "emptied-map", "list-replaced", "added",
         "interfaces-switch"],
)
def test_merge_patch(old, new, patch):
    assert merge_patch(old, new) == patch


def test_stale_inventories_need_two_sightings_of_the_same_object():
    inventories = {"n1": "u1", "gone": "u2", "blank": ""}
    doomed, suspects = stale_inventories(inventories, {"n1"}, {})
    assert doomed == [] and suspects == {"gone": "u2"}            # no uid: never deleted
    doomed, suspects = stale_inventories(inventories, {"n1"}, suspects)
    assert doomed == [("gone", "u2")] and suspects == {}
    doomed, suspects = stale_inventories({"gone": "u3"}, set(), {"gone": "u2"})
    assert doomed == [] and suspects == {"gone": "u3"}            # re-created: starts over
    assert stale_inventories({"n1": "u1"}, {"n1"}, {"n1": "u1"}) == ([], {})
