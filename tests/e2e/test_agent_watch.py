"""Each agent sees only its own node's XdpAttachments: it lists and watches with the field
selector `spec.nodeName=<node>` (the CRD's selectable field), so the node an attachment
is about is the node whose agent acts on it, whatever its labels say.

- The API server filters by the field: a list with the agent's selector returns exactly
  that node's attachments, and a field the CRD does not declare selectable is refused (the
  selector is served, not ignored).
- The agents act by it: an attachment made by hand whose `kubexdp.io/node` label names
  node-1 but whose spec names node-2 is attached on node-2 only (iproute2's view of every
  node), reported by node-2's agent, and cleaned up by it when deleted. With the former
  label selector node-1's agent would have attached it on node-1 and node-2's would never
  have seen it.
"""

from __future__ import annotations

import kubernetes
import pytest
from kubernetes.client.rest import ApiException

from kube_xdp_agent.controller import attachment_field_selector
from kube_xdp_api import names
from kube_xdp_api.spec import AttachmentSpec, ProgramSpec, source_digest

from .kubexdp import COUNT_ALL, kernel_xdp, pins_of, program, wait

pytestmark = pytest.mark.rig

IFACE = "eth1"
NO_NODE = {"matchLabels": {"kubexdp.io/no-such-node": "true"}}


def _list(kubexdp, **selectors) -> list[str]:
    return sorted(a["metadata"]["name"] for a in kubexdp.custom.list_cluster_custom_object(
        names.GROUP, names.VERSION, names.ATTACHMENTS, **selectors)["items"])


def test_the_server_selects_a_nodes_attachments_by_its_name(rig, kubexdp, programs):
    programs(program("e2e-watch-all", COUNT_ALL, "xdp_count", interfaces={"names": [IFACE]}))
    kubexdp.wait_ready("e2e-watch-all")
    for n in rig.nodes:
        assert _list(kubexdp, field_selector=attachment_field_selector(n.name)) == [
            names.attachment_name("e2e-watch-all", n.name)], n.name
    assert _list(kubexdp, field_selector=attachment_field_selector("kxe-no-such-node")) == []
    with pytest.raises(ApiException) as refused:
        _list(kubexdp, field_selector="spec.mode=native")
    assert refused.value.status == 400 and "spec.mode" in refused.value.body


def test_an_attachment_is_acted_on_by_the_agent_of_its_spec_node_not_of_its_label(rig, kubexdp, programs):
    source = programs(program("e2e-watch-decoy", COUNT_ALL, "xdp_count", interfaces={"names": [IFACE]},
                              selector=NO_NODE))
    kubexdp.wait(lambda: kubexdp.is_current("e2e-watch-decoy", "Ready", "True"), 60, "e2e-watch-decoy placed nowhere")
    assert kubexdp.attachments("e2e-watch-decoy") == {}
    fields = ProgramSpec.from_dict(source["spec"]).fields
    spec = AttachmentSpec(node_name="node-2", program_name="e2e-watch-decoy", program_uid=source["metadata"]["uid"],
                          program_generation=source["metadata"]["generation"],
                          source_digest=source_digest(COUNT_ALL), fields=fields).to_dict()
    name = "e2e-watch-decoy.by-hand"
    # the label says node-1; no program label, so the operator leaves it alone
    kubexdp.custom.create_cluster_custom_object(names.GROUP, names.VERSION, names.ATTACHMENTS, {
        "apiVersion": names.API_VERSION, "kind": names.ATTACHMENT_KIND,
        "metadata": {"name": name, "labels": {names.LABEL_NODE: "node-1"}}, "spec": spec})
    try:
        def attached() -> dict | None:
            att = kubexdp.custom.get_cluster_custom_object(names.GROUP, names.VERSION, names.ATTACHMENTS, name)
            ready = [c for c in (att.get("status") or {}).get("conditions", [])
                     if c["type"] == "Ready" and c["status"] == "True"]
            return att if ready else None

        att = wait(attached, 90, f"{name} Ready (node-2's agent)")
        (entry,) = att["status"]["interfaces"]
        assert entry["name"] == IFACE
        assert kernel_xdp(rig.node("node-2").netns, IFACE) == (entry["mode"], entry["progId"])
        assert names.FINALIZER_AGENT in att["metadata"]["finalizers"]
        for other in ("node-1", "node-3"):
            assert kernel_xdp(rig.node(other).netns, IFACE) == (None, None), other
            assert pins_of(rig.node(other).bpffs, "e2e-watch-decoy") == [], other
        assert pins_of(rig.node("node-2").bpffs, "e2e-watch-decoy") != []
    finally:
        try:
            kubexdp.custom.delete_cluster_custom_object(names.GROUP, names.VERSION, names.ATTACHMENTS, name)
        except ApiException as e:
            if e.status != 404:
                raise

    def gone() -> bool:
        try:
            kubexdp.custom.get_cluster_custom_object(names.GROUP, names.VERSION, names.ATTACHMENTS, name)
        except kubernetes.client.ApiException as e:
            return e.status == 404
        return False

    wait(gone, 60, f"{name} released by node-2's agent")
    assert kernel_xdp(rig.node("node-2").netns, IFACE) == (None, None)
    assert pins_of(rig.node("node-2").bpffs, "e2e-watch-decoy") == []
