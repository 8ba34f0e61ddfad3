"""What the agent did -> the XdpAttachment's status (kube_xdp_agent.report, .record): pure."""

from __future__ import annotations

import re

import pytest

from kube_xdp_agent.record import IfaceRecord, Refused, fallback_message, from_status
from kube_xdp_agent.report import attachment_status, transition_events
from kube_xdp_api import conditions as cond
from kube_xdp_api.schema import attachment_status_schema

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"
GEN = 4
PIN = "/sys/fs/bpf/kube-xdp/drop-udp/bbbbbbbbbbbb/prog"
TAG = "0123456789abcdef"
COMPILE = {"durationMs": 812, "cacheHit": False, "digest": "b" * 64}
DIGEST = "bbbbbbbbbbbb"
OK = [IfaceRecord("eth0", True, "native", "native", (), "link", 7, 101, DIGEST, TAG, PIN),
      IfaceRecord("eth1", True, "generic", "generic", (), "netlink", None, 101, DIGEST, TAG, PIN)]
REFUSED = (Refused("native", "DriverModeUnsupported", 95, "the driver refused XDP in native mode"),)
FALLBACK = IfaceRecord("eth2", True, "generic", "native", REFUSED, "link", 8, 101, DIGEST, TAG, PIN,
                       reason="DriverModeUnsupported", message=fallback_message("generic", REFUSED))
VERIFIER_LOG = "bpf: Failed to load program: Permission denied\n" + "".join(
    f"{i}: (bf) r{i % 10} = r1 ; some verifier state line {i}\n" for i in range(400)) + \
    "R0 invalid mem access 'inv'\nprocessed 400 insns"
COMPILER_OUTPUT = "/virtual/main.c:3:12: error: use of undeclared identifier 'XDP_PASSS'\n" + "note: x\n" * 1000


def status(old=None, now=T0, **kwargs):
    kwargs.setdefault("interfaces", OK)
    return attachment_status(old=old, generation=GEN, now=now, **kwargs).status


def conditions_of(st):
    return {c["type"]: (c["status"], c["reason"]) for c in st["conditions"]}


def condition(st, type_):
    return cond.get_condition(st["conditions"], type_)


def kstatus_of(st):
    return cond.kstatus({"metadata": {"generation": GEN}, "status": st})


# --- success -----------------------------------------------------------------------------
def test_all_ok_is_ready():
    st = status(compile_info=COMPILE)
    assert conditions_of(st) == {"Ready": ("True", "Attached"), "Reconciling": ("False", "AsExpected"),
                                 "Stalled": ("False", "AsExpected")}
    assert st["reason"] is None and st["message"] is None       # a merge patch removes an old failure
    assert st["observedGeneration"] == GEN
    assert all(c["observedGeneration"] == GEN and c["lastTransitionTime"] == T0 for c in st["conditions"])
    assert st["interfaces"] == [
        {"name": "eth0", "ready": True, "mode": "native", "preferredMode": "native", "attachedBy": "link",
         "linkId": 7, "progId": 101, "digest": DIGEST, "tag": TAG, "pinPath": PIN},
        {"name": "eth1", "ready": True, "mode": "generic", "preferredMode": "generic", "attachedBy": "netlink",
         "progId": 101, "digest": DIGEST, "tag": TAG, "pinPath": PIN},
    ]
    assert condition(st, "Ready")["message"] == "eth0=native, eth1=generic"
    assert st["compile"] == COMPILE
    assert kstatus_of(st) == cond.CURRENT


def test_fallback_is_ready_and_says_why():
    st = status(interfaces=[OK[0], FALLBACK])
    assert conditions_of(st)["Ready"] == ("True", "Attached")
    entry = st["interfaces"][1]
    assert (entry["ready"], entry["mode"], entry["reason"]) == (True, "generic", "DriverModeUnsupported")
    assert (entry["preferredMode"], entry["refused"]) == ("native", [
        {"mode": "native", "reason": "DriverModeUnsupported", "errno": 95,
         "message": "the driver refused XDP in native mode"}])
    assert entry["message"] == "attached in generic mode; refused: native: the driver refused XDP in native mode"


def test_the_record_reads_back_what_it_wrote_but_no_prose():
    """from_status(to_entry(r)) == r, but for the message and pin path: they are rebuilt,
    never read (a refusal's own words are carried along, and compared by nothing)."""
    st = status(interfaces=[OK[0], FALLBACK])
    back = from_status(st)
    assert back["eth0"] == OK[0].__class__(**{**OK[0].__dict__, "pin_path": None})
    assert back["eth2"] == FALLBACK.__class__(**{**FALLBACK.__dict__, "pin_path": None, "message": ""})
    assert back["eth2"].settled(("native", "generic")) and not back["eth2"].legacy
    legacy = from_status({"interfaces": [{"name": "eth0", "ready": True, "mode": "generic", "progId": 3,
                                          "reason": "DriverModeUnsupported", "message": "anything at all"}]})
    assert legacy["eth0"].legacy and legacy["eth0"].settled(("native", "generic"))
    assert from_status({"interfaces": [{"ready": True}, "junk", {"name": "eth0", "progId": "7"}]}) == {
        "eth0": IfaceRecord("eth0", False, legacy=True)}


def test_a_reason_not_in_the_catalogue_is_refused():
    with pytest.raises(ValueError, match="CATALOGUE"):
        IfaceRecord("eth0", False, reason="SomethingNew", message="x").to_entry()
    with pytest.raises(ValueError, match="CATALOGUE"):
        Refused("native", "SomethingNew").to_entry()
    with pytest.raises(ValueError, match="CATALOGUE"):
        attachment_status(old=None, generation=1, now=T0, failure=("SomethingNew", "x"))


def test_success_after_a_failure_clears_reason_and_message():
    failed = status(failure=("CompileError", COMPILER_OUTPUT), interfaces=None)
    st = status(old=failed, now=T1)
    assert st["reason"] is None and st["message"] is None
    assert conditions_of(st)["Stalled"] == ("False", "AsExpected")


# --- failures ----------------------------------------------------------------------------
def failing(interface, reason, message):
    return [OK[0], IfaceRecord(interface, False, reason=reason, message=message)]


STALLING = [
    pytest.param({"failure": ("CompileError", COMPILER_OUTPUT), "interfaces": None}, "CompileError",
                 id="compile-error"),
    pytest.param({"failure": ("VerifierRejected", VERIFIER_LOG), "interfaces": None}, "VerifierRejected",
                 id="verifier-rejected"),
    pytest.param({"interfaces": failing("eth1", "Conflict", "eth1 already runs XDP program id 7 of XdpProgram x")},
                 "Conflict", id="conflict"),
    pytest.param({"interfaces": failing("eth7", "InterfaceNotFound", "interface eth7 not found on this node")},
                 "InterfaceNotFound", id="interface-not-found"),
    pytest.param({"failure": ("NoInterfacesMatched", "no interface matches pattern 'ens.*'"), "interfaces": []},
                 "NoInterfacesMatched", id="no-interfaces-matched"),
    pytest.param({"interfaces": []}, "NoInterfacesMatched", id="nothing-selected"),
    pytest.param({"interfaces": [IfaceRecord("eth1", False, reason="Conflict", message="eth1 busy"),
                                 IfaceRecord("eth7", False, reason="InterfaceNotFound", message="no eth7")]},
                 "Conflict", id="different-stalling-reasons-first-one"),
]


@pytest.mark.parametrize("kwargs, reason", STALLING)
def test_stalling_failure(kwargs, reason):
    st = status(**kwargs)
    assert conditions_of(st) == {"Ready": ("False", reason), "Reconciling": ("False", "AsExpected"),
                                 "Stalled": ("True", reason)}
    assert st["reason"] == reason
    assert st["message"] and condition(st, "Stalled")["message"] == condition(st, "Ready")["message"]
    assert kstatus_of(st) == cond.FAILED


TRANSIENT = [
    pytest.param({"failure": ("SourceDigestMismatch", "the program's source changed"), "interfaces": None},
                 "SourceDigestMismatch", id="source-digest-mismatch"),
    pytest.param({"failure": ("PinFailed", "bpffs not mounted"), "interfaces": None}, "PinFailed", id="pin-failed"),
    pytest.param({"interfaces": failing("eth1", "AttachFailed", "errno=EBUSY")}, "AttachFailed", id="attach-failed"),
    pytest.param({"interfaces": [IfaceRecord("eth1", False, reason="AttachFailed", message="EBUSY"),
                                 IfaceRecord("eth7", False, reason="InterfaceNotFound", message="no eth7")]},
                 "AttachFailed", id="mixed-transient-and-stalling-retries"),
]


@pytest.mark.parametrize("kwargs, reason", TRANSIENT)
def test_transient_failure_is_reconciling(kwargs, reason):
    st = status(**kwargs)
    assert conditions_of(st) == {"Ready": ("False", reason), "Reconciling": ("True", reason),
                                 "Stalled": ("False", "AsExpected")}
    assert st["reason"] == reason
    assert kstatus_of(st) == cond.IN_PROGRESS


def test_interface_failures_are_listed_per_interface_and_in_the_message():
    st = status(interfaces=failing("eth1", "Conflict", "eth1 already runs XDP program id 7"))
    assert st["interfaces"][1] == {"name": "eth1", "ready": False, "reason": "Conflict",
                                   "message": "eth1 already runs XDP program id 7"}
    assert "mode" not in st["interfaces"][1] and "progId" not in st["interfaces"][1]
    assert st["message"] == "eth1: eth1 already runs XDP program id 7"


def test_compiler_output_is_trimmed_keeping_the_first_error():
    st = status(failure=("CompileError", COMPILER_OUTPUT), interfaces=None)
    for message in (st["message"], condition(st, "Stalled")["message"]):
        assert len(message) <= cond.MESSAGE_MAX
        assert message.startswith("/virtual/main.c:3:12: error: use of undeclared identifier")


def test_verifier_log_is_trimmed_keeping_the_tail():
    st = status(failure=("VerifierRejected", VERIFIER_LOG), interfaces=None)
    for message in (st["message"], condition(st, "Stalled")["message"]):
        assert len(message) <= cond.MESSAGE_MAX
        assert message.endswith("R0 invalid mem access 'inv'\nprocessed 400 insns")   # why it refused
        assert "some verifier state line 399" in message
        assert "some verifier state line 0\n" not in message


def test_long_interface_message_is_trimmed():
    st = status(interfaces=failing("eth1", "Conflict", "x" * 10_000))
    assert len(st["interfaces"][1]["message"]) <= cond.MESSAGE_MAX


# --- transitions and what is kept --------------------------------------------------------
def test_last_transition_time_kept_when_nothing_changes():
    first = status(now=T0)
    again = status(old=first, now=T1)
    assert again == first


def test_last_transition_time_moves_only_for_conditions_that_change():
    first = status(now=T0)
    failed = status(old=first, now=T1, interfaces=failing("eth1", "Conflict", "busy"))
    times = {c["type"]: c["lastTransitionTime"] for c in failed["conditions"]}
    assert times == {"Ready": T1, "Reconciling": T0, "Stalled": T1}
    failed_again = status(old=failed, now="2026-01-01T00:09:00Z", interfaces=failing("eth1", "Conflict", "busy"))
    assert failed_again["conditions"] == failed["conditions"]


def test_observed_generation_follows_the_attachment():
    first = status()
    st = attachment_status(old=first, generation=GEN + 1, now=T1, interfaces=OK).status
    assert st["observedGeneration"] == GEN + 1
    assert all(c["observedGeneration"] == GEN + 1 for c in st["conditions"])


def test_a_warning_event_when_stalled_turns_true_or_changes_reason():
    ok = attachment_status(old=None, generation=GEN, now=T0, interfaces=OK)
    assert transition_events(None, ok) == []
    stalled = attachment_status(old=ok.status, generation=GEN, now=T1, interfaces=failing("eth1", "Conflict", "busy"))
    assert transition_events(ok.status, stalled) == [("Warning", "Conflict", "eth1: busy")]
    again = attachment_status(old=stalled.status, generation=GEN, now=T1, interfaces=failing("eth1", "Conflict", "busy"))
    assert transition_events(stalled.status, again) == []
    other = attachment_status(old=again.status, generation=GEN, now=T1,
                              interfaces=failing("eth7", "InterfaceNotFound", "gone"))
    assert transition_events(again.status, other) == [("Warning", "InterfaceNotFound", "eth7: gone")]


def test_compile_info_kept_from_the_old_status_when_not_given():
    first = status(compile_info=COMPILE)
    assert status(old=first, now=T1)["compile"] == COMPILE
    assert "compile" not in status()


# --- every key written is declared in the CRD schema --------------------------------------
def check_schema(value, schema, path="status"):
    """Every key of `value` is declared in `schema`; types, enums, patterns and lengths hold.

    None means "remove" in a merge patch: allowed anywhere an object key is. Empty strings
    are refused (the rig's API server rejects them, docs/api.md).
    """
    kind = schema.get("type")
    if kind == "object":
        assert isinstance(value, dict), path
        props = schema.get("properties", {})
        for key, item in value.items():
            assert key in props, f"{path}.{key} is not declared in the XdpAttachment status schema"
            if item is not None:
                check_schema(item, props[key], f"{path}.{key}")
        for key in schema.get("required", []):
            assert value.get(key) is not None, f"{path}.{key} is required"
    elif kind == "array":
        assert isinstance(value, list), path
        assert len(value) <= schema.get("maxItems", len(value)), path
        for i, item in enumerate(value):
            check_schema(item, schema["items"], f"{path}[{i}]")
    elif kind == "string":
        assert isinstance(value, str) and value != "", f"{path}: {value!r}"
        assert len(value) <= schema.get("maxLength", len(value)), path
        assert len(value) >= schema.get("minLength", 0), path
        if "enum" in schema:
            assert value in schema["enum"], f"{path}: {value!r}"
        if "pattern" in schema:
            assert re.search(schema["pattern"], value), f"{path}: {value!r}"
    elif kind == "integer":
        assert type(value) is int and value >= schema.get("minimum", value), f"{path}: {value!r}"
    elif kind == "boolean":
        assert type(value) is bool, path
    else:
        raise AssertionError(f"{path}: schema type {kind!r} not handled")


CASES = [
    pytest.param({"compile_info": COMPILE}, id="ready"),
    pytest.param({"interfaces": [OK[0], FALLBACK]}, id="fallback"),
    *STALLING,
    *TRANSIENT,
]


@pytest.mark.parametrize("kwargs", [pytest.param(c.values[0], id=c.id) for c in CASES])
def test_status_matches_the_crd_schema(kwargs):
    check_schema(status(**kwargs), attachment_status_schema())


def test_success_after_failure_matches_the_crd_schema():
    failed = status(failure=("VerifierRejected", VERIFIER_LOG), interfaces=None, compile_info=COMPILE)
    check_schema(status(old=failed, now=T1), attachment_status_schema())


def test_schema_check_can_fail():
    with pytest.raises(AssertionError, match="not declared"):
        check_schema({"observedGeneration": 1, "phase": "Ready"}, attachment_status_schema())
    with pytest.raises(AssertionError):
        check_schema({"interfaces": [{"name": "eth0", "mode": "turbo"}]}, attachment_status_schema())


def test_the_record_written_is_the_schema_and_the_docs():
    """Every field of an interface entry is declared in the CRD and documented in
    docs/api.md's record table, and attachedBy's values are the agent's own."""
    from pathlib import Path

    from kube_xdp_agent import record
    from kube_xdp_api import schema

    item = attachment_status_schema()["properties"]["interfaces"]["items"]["properties"]
    written = set(FALLBACK.to_entry()) | set(OK[0].to_entry())
    assert written <= set(item)
    assert item["attachedBy"]["enum"] == list(schema.ATTACHED_BY) == [record.LINK, record.NETLINK]
    docs = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()
    table = docs.split("Each `interfaces[]` entry is what the agent remembers")[1].split("\n\n")[1]
    documented = set(re.findall(r"`([a-zA-Z]+)(?:\[\])?`", " ".join(line.split("|")[1] for line in table.splitlines()
                                                                      if line.startswith("| `"))))
    assert documented == set(item)
