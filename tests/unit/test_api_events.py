"""Events about cluster-scoped objects: where they live and what kubectl looks for."""

import datetime

import pytest

from kube_xdp_api import events

PROGRAM = {"apiVersion": "kubexdp.io/v1alpha1", "kind": "XdpProgram",
           "metadata": {"name": "udp-drop", "uid": "u-1", "resourceVersion": "42"}}
NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)


def test_an_event_about_a_cluster_scoped_object_names_no_namespace_in_its_involved_object():
    body = events.event_body(PROGRAM, "Normal", "Ready", "3/3 nodes ready", component="kube-xdp-operator", now=NOW)
    assert body["metadata"] == {"generateName": "udp-drop.", "namespace": "default"}
    assert body["involvedObject"] == {"apiVersion": "kubexdp.io/v1alpha1", "kind": "XdpProgram", "name": "udp-drop",
                                      "uid": "u-1", "resourceVersion": "42"}
    assert "namespace" not in body["involvedObject"]
    assert (body["type"], body["reason"], body["message"]) == ("Normal", "Ready", "3/3 nodes ready")
    assert body["source"] == {"component": "kube-xdp-operator"} and body["count"] == 1
    assert body["firstTimestamp"] == body["lastTimestamp"] == NOW


def test_the_agent_names_its_node_and_long_messages_are_cut():
    body = events.event_body(PROGRAM, "Warning", "DriftRepaired", "x" * 5000, component="kube-xdp-agent",
                             host="node-1", now=NOW)
    assert body["source"] == {"component": "kube-xdp-agent", "host": "node-1"}
    assert body["reportingInstance"] == "node-1" and len(body["message"]) == events.MAX_MESSAGE


def test_an_unknown_type_is_refused():
    with pytest.raises(ValueError, match="Normal or Warning"):
        events.event_body(PROGRAM, "Info", "Ready", "", component="c")


class Core:
    def __init__(self, fail: bool = False):
        self.fail, self.posted = fail, []

    def create_namespaced_event(self, namespace, body):
        if self.fail:
            raise RuntimeError("connection refused")
        self.posted.append((namespace, body))


def test_post_creates_the_event_in_the_default_namespace():
    core = Core()
    assert events.post(core, PROGRAM, "Normal", "Ready", "ok", component="kube-xdp-operator")
    assert [(ns, b["reason"]) for ns, b in core.posted] == [("default", "Ready")]


def test_a_failed_post_is_logged_never_raised(caplog):
    assert not events.post(Core(fail=True), PROGRAM, "Warning", "Conflict", "no", component="kube-xdp-operator")
    assert "could not post Event Conflict for XdpProgram udp-drop: connection refused" in caplog.text


def test_a_reason_not_in_the_catalogue_is_refused_not_posted():
    """A bug, not the API's trouble: raised (the reason would be undocumented API)."""
    core = Core()
    with pytest.raises(ValueError, match="not in kube_xdp_api.reasons.CATALOGUE"):
        events.post(core, PROGRAM, "Warning", "Stalled", "no", component="kube-xdp-operator")
    assert core.posted == []
