"""An XdpAttachment -> what the node should have (kube_xdp_agent.desired): pure.

The agent runs as root: anything it takes from the attachment is re-validated, so a bad
string never reaches a bpffs path, a compiler flag or a netlink call.
"""

from __future__ import annotations

import copy

import pytest

from kube_xdp_agent.desired import Desired, resolve_interfaces
from kube_xdp_api.spec import Interfaces, SpecError

DIGEST = "ab" * 32


def attachment(**spec_changes):
    att = {
        "metadata": {"name": "drop-udp.node-1", "generation": 3, "finalizers": ["kubexdp.io/agent"]},
        "spec": {
            "nodeName": "node-1",
            "programRef": {"name": "drop-udp", "uid": "0f1e2d3c-uid"},
            "programGeneration": 2,
            "sourceDigest": DIGEST,
            "entrypoint": "xdp_drop_udp",
            "defines": {"PORT": "53", "LIMIT": "-1"},
            "interfaces": {"names": ["eth0", "eth1"]},
            "mode": "native",
            "fallback": ["generic"],
            "priority": 500,
        },
    }
    for key, value in spec_changes.items():
        if value is _DELETE:
            del att["spec"][key]
        else:
            att["spec"][key] = value
    return att


_DELETE = object()


# --- Desired.from_attachment -------------------------------------------------------------
def test_valid_attachment():
    d = Desired.from_attachment(attachment())
    assert (d.name, d.generation, d.deleting, d.program) == ("drop-udp.node-1", 3, False, "drop-udp")
    assert d.spec.source_digest == DIGEST
    assert d.spec.fields.entrypoint == "xdp_drop_udp"
    assert dict(d.spec.fields.defines) == {"PORT": "53", "LIMIT": "-1"}
    assert d.spec.fields.interfaces == Interfaces(names=("eth0", "eth1"))
    assert d.modes == ("native", "generic")


def test_deleting_attachment():
    att = attachment()
    att["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert Desired.from_attachment(att).deleting is True


@pytest.mark.parametrize(
    "changes, modes",
    [
        pytest.param({}, ("native", "generic"), id="native-then-generic"),
        pytest.param({"fallback": []}, ("native",), id="no-fallback"),
        pytest.param({"mode": "generic", "fallback": ["generic", "native"]}, ("generic", "native"),
                     id="preferred-mode-not-tried-twice"),
        pytest.param({"mode": _DELETE, "fallback": _DELETE}, ("native", "generic"), id="defaults"),
        pytest.param({"mode": "offload", "fallback": ["native", "generic"]}, ("offload", "native", "generic"),
                     id="offload-first"),
    ],
)
def test_modes_in_order(changes, modes):
    assert Desired.from_attachment(attachment(**changes)).modes == modes


@pytest.mark.parametrize(
    "changes, reason",
    [
        pytest.param({"defines": {"PORT": "53 -o /tmp/x"}}, "InvalidDefine", id="define-value-with-space"),
        pytest.param({"defines": {"PORT": "-include/etc/passwd"}}, "InvalidDefine", id="define-value-flag"),
        pytest.param({"defines": {"PATH": "..x"}}, "InvalidDefine", id="define-value-dotdot"),
        pytest.param({"defines": {"-DX": "1"}}, "InvalidDefine", id="define-name-not-identifier"),
        pytest.param({"defines": {"X": 1}}, "InvalidDefine", id="define-value-not-string"),
        pytest.param({"programRef": {"name": "../../etc", "uid": "u"}}, "InvalidSpec", id="program-name-path"),
        pytest.param({"programRef": {"name": "a/b", "uid": "u"}}, "InvalidSpec", id="program-name-slash"),
        pytest.param({"programRef": {"name": "Drop", "uid": "u"}}, "InvalidSpec", id="program-name-not-dns-label"),
        pytest.param({"interfaces": {"names": ["../eth0"]}}, "InvalidSpec", id="interface-name-path"),
        pytest.param({"interfaces": {"names": [".."]}}, "InvalidSpec", id="interface-name-dotdot"),
        pytest.param({"interfaces": {"names": ["eth0:1"]}}, "InvalidSpec", id="interface-name-label"),
        pytest.param({"interfaces": {"names": ["eth0", "eth0"]}}, "InvalidSpec", id="interface-names-duplicate"),
        pytest.param({"interfaces": {"pattern": "eth("}}, "InvalidSpec", id="pattern-not-a-regex"),
        pytest.param({"nodeName": "node/../x"}, "InvalidSpec", id="node-name-path"),
        pytest.param({"sourceDigest": "abc"}, "InvalidSpec", id="digest-short"),
        pytest.param({"sourceDigest": "AB" * 32}, "InvalidSpec", id="digest-uppercase"),
        pytest.param({"sourceDigest": "../" + "a" * 61}, "InvalidSpec", id="digest-path"),
        pytest.param({"sourceDigest": _DELETE}, "InvalidSpec", id="digest-missing"),
        pytest.param({"entrypoint": "main; rm"}, "InvalidSpec", id="entrypoint-not-identifier"),
        pytest.param({"mode": "turbo"}, "InvalidSpec", id="mode-unknown"),
        pytest.param({"programGeneration": 0}, "InvalidSpec", id="program-generation-zero"),
    ],
)
def test_invalid_attachment_is_refused(changes, reason):
    with pytest.raises(SpecError) as info:
        Desired.from_attachment(attachment(**changes))
    assert info.value.reason == reason


@pytest.mark.parametrize("att", [{"metadata": {"name": "x"}}, {"metadata": {"name": "x"}, "spec": "eth0"}],
                         ids=["no-spec", "spec-not-an-object"])
def test_attachment_without_a_spec_is_refused(att):
    with pytest.raises(SpecError) as info:
        Desired.from_attachment(att)
    assert info.value.reason == "InvalidSpec"


def test_from_attachment_does_not_modify_its_input():
    att = attachment()
    before = copy.deepcopy(att)
    Desired.from_attachment(att)
    assert att == before


# --- resolve_interfaces ------------------------------------------------------------------
NODE = ["lo", "eth0", "eth1", "eth10", "veth-a", "docker0"]


@pytest.mark.parametrize(
    "selector, available, primary, expected",
    [
        pytest.param(Interfaces(names=("eth1", "eth0")), NODE, "eth0", (["eth1", "eth0"], None, ""),
                     id="names-present-in-spec-order"),
        pytest.param(Interfaces(names=("lo",)), NODE, "eth0", (["lo"], None, ""), id="names-lo-when-named"),
        pytest.param(Interfaces(pattern="eth[0-9]"), NODE, "eth0", (["eth0", "eth1"], None, ""),
                     id="pattern-fullmatch-not-prefix"),
        pytest.param(Interfaces(pattern="eth.*"), NODE, "eth0", (["eth0", "eth1", "eth10"], None, ""),
                     id="pattern-sorted"),
        pytest.param(Interfaces(pattern=".*"), NODE, "eth0", (["docker0", "eth0", "eth1", "eth10", "veth-a"], None, ""),
                     id="pattern-never-lo"),
        pytest.param(Interfaces(pattern="1"), NODE, "eth0", ([], "NoInterfacesMatched", None),
                     id="pattern-search-is-not-enough"),
        pytest.param(Interfaces(primary=True), NODE, "eth1", (["eth1"], None, ""), id="primary"),
        pytest.param(Interfaces(primary=True), NODE, None, ([], "NoInterfacesMatched", None),
                     id="primary-without-default-route"),
        pytest.param(Interfaces(primary=True), NODE, "lo", ([], "NoInterfacesMatched", None),
                     id="primary-never-lo"),
    ],
)
def test_resolve_interfaces(selector, available, primary, expected):
    names, reason, message = resolve_interfaces(selector, available, primary)
    assert (names, reason) == expected[:2]
    if reason is None:
        assert message == ""
    else:
        assert message                    # a human sentence, never empty


def test_missing_names_are_reported_and_the_others_kept():
    names, reason, message = resolve_interfaces(Interfaces(names=("eth0", "eth7", "eth8")), NODE, "eth0")
    assert names == ["eth0"]
    assert reason == "InterfaceNotFound"
    assert "eth7" in message and "eth8" in message and "eth0" not in message


def test_pattern_matching_nothing_names_the_pattern_and_what_exists():
    _, reason, message = resolve_interfaces(Interfaces(pattern="ens[0-9]+"), ["lo", "eth0"], "eth0")
    assert reason == "NoInterfacesMatched"
    assert "ens[0-9]+" in message and "eth0" in message and "lo" not in message.split("have:")[1]


def test_primary_without_default_route_says_so():
    _, _, message = resolve_interfaces(Interfaces(primary=True), NODE, None)
    assert "default route" in message
