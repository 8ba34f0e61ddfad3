"""The operator's reconcile (kube_xdp_operator.reconciler.Reconciler) against a recording
stand-in for its API writes and plain dicts for kopf's indexes.

What is checked here is the write discipline: the operator's own finalizer (added once,
even while the index lags behind), deletion (finalizer released as soon as no attachment
is left; stuck attachments released after the bound), the status rate limit (progress is
deferred, outcomes are written at once), the index lag on status (our last write, not
the stale index copy, is the old status), and when a reconcile asks to look again. The same paths run against the real API server
in tests/e2e and tests/faults; the write counts are measured by `make bench`.
"""

from __future__ import annotations

import copy
import datetime

import pytest

from kube_xdp_api import names
from kube_xdp_api.spec import source_digest
from kube_xdp_operator import reconciler as reconciler_mod
from kube_xdp_operator.reconciler import Reconciler
from kube_xdp_operator.placement import wanted_attachments

UID = "5b1c2d3e-0000-4000-8000-00000000abcd"
SOURCE = "int xdp_main(struct xdp_md *ctx) { return XDP_PASS; }"


class RecordingApi:
    """The ClusterApi methods the reconcile calls, recorded; status patches are merged
    into a stored status as the API server would."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.status: dict = {}

    def read_source(self, source):
        return source["inline"]

    def set_program_finalizer(self, program, *, present):
        self.calls.append(("finalizer", program["metadata"]["name"], present))

    def create_attachment(self, body):
        self.calls.append(("create", body["metadata"]["name"], tuple(body["metadata"].get("finalizers") or ())))

    def patch_attachment(self, name, patch):
        self.calls.append(("patch", name))

    def delete_attachment(self, name):
        self.calls.append(("delete", name))

    def release_attachment(self, att):
        self.calls.append(("release", att["metadata"]["name"]))

    def patch_program_status(self, name, status):
        self.calls.append(("status", name))
        self.status = {**self.status, **copy.deepcopy(dict(status))}
        return copy.deepcopy(self.status)

    def delete_xdpnode(self, name, uid):
        self.calls.append(("delete_xdpnode", name, uid))

    def post_event(self, program, type_, reason, message):
        self.calls.append(("event", program["metadata"]["uid"], reason))
        return True

    def kinds(self) -> list[str]:
        return [c[0] for c in self.calls]


def program(*, finalizers=(), deleting=None, generation=1, status=None):
    meta = {"name": "p", "uid": UID, "generation": generation, "resourceVersion": "7",
            "finalizers": list(finalizers)}
    if deleting:
        meta["deletionTimestamp"] = deleting
    body = {"apiVersion": names.API_VERSION, "kind": names.PROGRAM_KIND, "metadata": meta,
            "spec": {"source": {"inline": SOURCE}, "entrypoint": "xdp_main", "nodeSelector": {}}}
    if status is not None:
        body["status"] = status
    return body


def node(name):
    return {"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}}


def attachment(node_name, *, ready=False, deleting=None, finalizers=(names.FINALIZER_AGENT,)):
    """The attachment the operator itself wants for `node_name` (so the plan leaves it be),
    as an agent left it: current and Ready, or not reported yet."""
    body = copy.deepcopy(wanted_attachments(program(), [node(node_name)], source_digest(SOURCE))
                         [names.attachment_name("p", node_name)])
    meta = body["metadata"]
    meta["finalizers"] = list(finalizers)
    meta["generation"] = 1
    if deleting:
        meta["deletionTimestamp"] = deleting
    if ready:
        body["status"] = {"observedGeneration": 1,
                          "conditions": [{"type": "Ready", "status": "True", "reason": "Attached", "message": ""}]}
    return body


def ago(seconds: float) -> str:
    t = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=seconds)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture()
def rec():
    r = Reconciler(RecordingApi())
    r.bind({}, {n: [node(n)] for n in ("n1", "n2")}, {}, {})
    return r


def set_program(rec, body):
    rec.programs = {"p": [body]}


def test_finalizer_is_added_once_even_while_the_index_lags(rec):
    set_program(rec, program())
    rec._reconcile("p")
    rec._reconcile("p")        # the index still shows no finalizer: no second attempt
    assert [c for c in rec.api.calls if c[0] == "finalizer"] == [("finalizer", "p", True)]


def test_agent_finalizer_is_preset_only_where_an_agent_registered(rec):
    rec.bind(rec.programs, rec.nodes, rec.attachments, {"n1": ["uid-n1"]})
    set_program(rec, program(finalizers=[names.FINALIZER_OPERATOR]))
    rec._reconcile("p")
    creates = {c[1]: c[2] for c in rec.api.calls if c[0] == "create"}
    assert creates == {names.attachment_name("p", "n1"): (names.FINALIZER_AGENT,),
                       names.attachment_name("p", "n2"): ()}


def test_deleted_program_is_released_as_soon_as_no_attachment_is_left(rec):
    set_program(rec, program(finalizers=[names.FINALIZER_OPERATOR], deleting=ago(1)))
    rec.attachments = {"p": [attachment("n1", deleting=ago(1))]}
    rec._reconcile("p")
    assert ("finalizer", "p", False) not in rec.api.calls       # an agent still holds n1
    rec.attachments = {"p": []}                                  # the agent released it
    rec._reconcile("p")
    assert rec.api.calls[-1] == ("finalizer", "p", False)


def test_stuck_attachment_is_released_after_the_bound_and_the_rest_rechecked_then(rec, monkeypatch):
    monkeypatch.setattr(reconciler_mod, "AGENT_CLEANUP_TIMEOUT", 10.0)
    set_program(rec, program(finalizers=[names.FINALIZER_OPERATOR], deleting=ago(20)))
    rec.attachments = {"p": [attachment("n1", deleting=ago(5)), attachment("n2", deleting=ago(15))]}
    out = rec._reconcile("p")
    assert ("release", names.attachment_name("p", "n2")) in rec.api.calls
    assert ("release", names.attachment_name("p", "n1")) not in rec.api.calls
    assert [e[1] for e in out.events if e[0] == "Warning"] == ["CleanupAbandoned"]
    assert 5.0 <= out.recheck <= 6.1           # comes back when n1's bound ends (times have 1 s steps)
    assert ("finalizer", "p", False) not in rec.api.calls


def test_deselected_node_whose_agent_is_gone_is_released_too(rec, monkeypatch):
    """Not only on program deletion: an attachment deleted because its node was
    deselected must not stay Terminating forever when that node's agent is gone."""
    monkeypatch.setattr(reconciler_mod, "AGENT_CLEANUP_TIMEOUT", 10.0)
    rec.nodes = {"n1": [node("n1")]}
    set_program(rec, program(finalizers=[names.FINALIZER_OPERATOR]))
    rec.attachments = {"p": [attachment("n1", ready=True), attachment("n2", deleting=ago(12))]}
    events = rec._reconcile("p").events
    assert ("release", names.attachment_name("p", "n2")) in rec.api.calls
    assert [e[1] for e in events if e[0] == "Warning"] == ["CleanupAbandoned"]


def test_program_without_our_finalizer_is_left_to_the_deleted_event(rec):
    set_program(rec, program(deleting=ago(1)))
    rec.attachments = {"p": [attachment("n1")]}
    assert rec._reconcile("p").events == [] and rec.api.calls == []


def test_progress_is_rate_limited_and_the_outcome_is_not(rec, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(reconciler_mod, "_monotonic", lambda: clock[0])
    set_program(rec, program(finalizers=[names.FINALIZER_OPERATOR]))
    rec.attachments = {"p": [attachment("n1"), attachment("n2")]}
    rec._reconcile("p")                                          # new generation: written at once
    assert rec.api.kinds().count("status") == 1
    clock[0] += 0.2
    rec.attachments = {"p": [attachment("n1", ready=True), attachment("n2")]}   # progress: 1/2
    deferred = rec._reconcile("p")
    assert rec.api.kinds().count("status") == 1 and 0.7 <= deferred.recheck <= 0.8
    clock[0] += 0.1
    rec.attachments = {"p": [attachment("n1", ready=True), attachment("n2", ready=True)]}  # Ready
    events = rec._reconcile("p").events
    assert rec.api.kinds().count("status") == 2
    assert rec.api.status["readyNodes"] == 2 and ("Normal", "Ready", "2/2 nodes ready") in events


def test_stale_index_status_does_not_repeat_writes_or_events(rec):
    set_program(rec, program(finalizers=[names.FINALIZER_OPERATOR]))
    rec.attachments = {"p": [attachment("n1", ready=True), attachment("n2", ready=True)]}
    first = rec._reconcile("p").events
    again = rec._reconcile("p").events      # the index still has no status at all
    assert rec.api.kinds().count("status") == 1
    assert [e[1] for e in first] == ["Ready"] and again == []


def test_the_bound_is_never_cut_short_by_the_timestamps_whole_seconds(rec, monkeypatch):
    """deletionTimestamp has whole seconds: 10.4 s measured may be 9.5 s real; not released."""
    monkeypatch.setattr(reconciler_mod, "AGENT_CLEANUP_TIMEOUT", 10.0)
    set_program(rec, program(finalizers=[names.FINALIZER_OPERATOR], deleting=ago(10)))
    rec.attachments = {"p": [attachment("n1", deleting=ago(10))]}
    rec._reconcile("p")
    assert not [c for c in rec.api.calls if c[0] in ("release", "finalizer")]


def test_a_program_held_by_another_finalizer_says_deleting(rec):
    set_program(rec, program(finalizers=["example.com/hold", names.FINALIZER_OPERATOR], deleting=ago(1)))
    rec._reconcile("p")
    assert rec.api.calls[-1] == ("finalizer", "p", False)
    ready = next(c for c in rec.api.status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "Deleting")


def test_deleted_node_takes_its_xdpnode_with_it_guarded_by_the_uid_seen_then(rec):
    """The uid is the one the index showed at the Node's deletion (the handler puts it in
    the key), not the index's current one: a retry after the agent re-published its
    XdpNode must not delete the new object (the API server refuses: uid precondition)."""
    rec.bind(rec.programs, {"n1": [node("n1")]}, rec.attachments, {"n1": ["uid-n1"], "n2": ["uid-n2-new"]})
    rec.node_gone("n2", "uid-n2")
    assert rec.api.calls == [("delete_xdpnode", "n2", "uid-n2")]


def test_sweep_deletes_an_xdpnode_without_node_only_at_its_second_sighting(rec):
    rec.bind(rec.programs, {"n1": [node("n1")]}, rec.attachments, {"n1": ["uid-n1"], "gone": ["uid-a"]})
    rec.sweep_inventories()
    assert rec.api.calls == []              # one sighting could race the Node watch
    rec.sweep_inventories()
    assert rec.api.calls == [("delete_xdpnode", "gone", "uid-a")]


def test_sweep_spares_an_xdpnode_whose_node_appeared_or_that_was_re_created(rec):
    rec.bind(rec.programs, {"n1": [node("n1")]}, rec.attachments,
             {"n1": ["uid-n1"], "late": ["uid-l"], "again": ["uid-1"]})
    rec.sweep_inventories()
    rec.nodes = {"n1": [node("n1")], "late": [node("late")]}      # the Node watch caught up
    rec.agent_nodes = {"n1": ["uid-n1"], "late": ["uid-l"], "again": ["uid-2"]}   # a new object
    rec.sweep_inventories()
    assert rec.api.calls == []
    rec.sweep_inventories()
    assert rec.api.calls == [("delete_xdpnode", "again", "uid-2")]


def test_a_blocked_attachment_asks_to_look_again_shortly(rec):
    """n1's attachment of the same name is still being deleted (an agent holds it): the
    plan cannot create the new one yet, so the reconcile asks to come back in 2 s (not at
    the deletion bound, 600 s, nor at the next resync)."""
    set_program(rec, program(finalizers=[names.FINALIZER_OPERATOR]))
    rec.attachments = {"p": [attachment("n1", deleting=ago(1)), attachment("n2", ready=True)]}
    assert rec._reconcile("p").recheck == reconciler_mod.BLOCKED_RECHECK_SECONDS


def test_a_settled_program_asks_for_nothing(rec):
    set_program(rec, program(finalizers=[names.FINALIZER_OPERATOR]))
    rec.attachments = {"p": [attachment("n1", ready=True), attachment("n2", ready=True)]}
    assert rec._reconcile("p").recheck is None
    assert rec.reconcile("p") is None


def foreign(att: dict, uid: str = "00000000-dead-4000-8000-000000000000") -> dict:
    att = copy.deepcopy(att)
    for ref in att["metadata"]["ownerReferences"]:
        ref["uid"] = uid
    return att


@pytest.mark.parametrize("replaced", [False, True], ids=["program-gone", "program-replaced"])
def test_reconcile_deletes_attachments_whose_program_is_gone_or_was_replaced(rec, replaced):
    """A program deleted before the operator's finalizer was on it (or re-created under the
    same name) left attachments owned by a uid that no longer exists: the reconcile of its
    name deletes them, and releases the one whose Node is gone (no agent to wait for)."""
    rec.programs = {"p": [program(finalizers=[names.FINALIZER_OPERATOR])]} if replaced else {}
    rec.nodes = {"n1": [node("n1")]}
    rec.attachments = {"p": [foreign(attachment("n1", ready=True)), foreign(attachment("n2", ready=True))]}
    rec.reconcile("p")
    gone = [c for c in rec.api.calls if c[0] in ("delete", "release")]
    assert gone == [("delete", names.attachment_name("p", "n1")), ("delete", names.attachment_name("p", "n2")),
                    ("release", names.attachment_name("p", "n2"))]


def test_reconcile_posts_the_transition_events_about_the_program_after_its_status(rec):
    set_program(rec, program(finalizers=[names.FINALIZER_OPERATOR]))
    rec.attachments = {"p": [attachment("n1", ready=True), attachment("n2", ready=True)]}
    rec.reconcile("p")
    assert rec.api.calls[-2:] == [("status", "p"), ("event", UID, "Ready")]
