"""The CRDs' CEL rules on the real API server (the rig's kube-apiserver).

- The CRDs as generated are accepted (their rules' estimated cost is within the server's
  budget) and stored with every rule.
- For each CEL rule (kube_xdp_api.schema.CEL_RULES), a spec that breaks it is refused with
  HTTP 422, and the response's cause names the field (the rule's fieldPath, or where the
  rule sits), gives the rule's reason and carries the rule's message: on XdpProgram, and
  for the rules shared with XdpAttachment on that kind too.
- The largest spec the schema allows (every list and map at its maximum, the longest
  strings) is created without a cost refusal, on both kinds; the byte limit of `inline`
  is exact (65536 bytes of UTF-8 pass, one more is refused).
- Every case of tests/unit/test_api_spec.py goes to the server too (a server-side dry
  run): good specs pass, each bad one is refused where the case says (OpenAPI, the named
  CEL rule) or passes when only the shared validator can refuse it.

Only the rig and the CRDs are needed (no operator or agent): programs select no node and
attachments name a node that does not exist, so a running operator or agent of the same
session has nothing to do with them.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path

import kubernetes
import pytest
from kubernetes.client.rest import ApiException

from kube_xdp_api import names, schema, spec
from kube_xdp_api.spec import AttachmentSpec, ProgramSpec
from kube_xdp_rig import apply as applier
from tests.unit.test_api_spec import BAD, GOOD, OPENAPI

from .conftest import api_client

pytestmark = pytest.mark.rig

REPO = Path(__file__).resolve().parents[2]
NO_NODE = {"matchLabels": {"kubexdp.io/no-such-node": "true"}}
GOOD_PROGRAM = {"source": {"inline": "int xdp_ok(struct xdp_md *ctx) { return XDP_PASS; }"}, "entrypoint": "xdp_ok",
                "interfaces": {"names": ["eth0"]}, "nodeSelector": NO_NODE}
GOOD_ATTACHMENT = {
    "nodeName": "kxe-no-such-node", "programRef": {"name": "kxe-cel", "uid": "0b3f1c9e-0000-4000-8000-000000000001"},
    "programGeneration": 1, "sourceDigest": "a" * 64, "entrypoint": "xdp_ok", "defines": {},
    "interfaces": {"names": ["eth0"]}, "mode": "native", "fallback": ["generic"], "priority": 500,
}
LONG_PREFIX = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 62])      # a DNS subdomain of 254 characters
# What a rule with a messageExpression says (its `message` is only the fallback).
EXPRESSION_SAYS = {"inline-bytes": "bytes of UTF-8, at most 65536"}


@dataclass(frozen=True)
class Break:
    rule: schema.CelRule
    spec: dict                  # merged over the good spec of its kind (top-level keys)
    field: str                  # the field the API server must name
    kind: str = names.PROGRAM_KIND
    says: str | None = None     # the message, when the rule computes it (messageExpression)

    @property
    def id(self) -> str:
        return f"{self.rule.name}-{self.kind}"


BREAKS = [
    Break(schema.SOURCE_EXCLUSIVE, {"source": {"inline": "int x;", "configMapRef": {
        "namespace": "default", "name": "x", "key": "k"}}}, "spec.source.configMapRef"),
    Break(schema.SOURCE_REQUIRED, {"source": {}}, "spec.source"),
    Break(schema.INLINE_BYTES, {"source": {"inline": "//" + "é" * 40000}}, "spec.source.inline",
          says="is 80002 bytes of UTF-8, at most 65536"),
    Break(schema.INLINE_NO_NUL, {"source": {"inline": "int x;\x00"}}, "spec.source.inline"),
    Break(schema.DEFINE_NAMES, {"defines": {"OK": "1", "A-B": "1"}}, "spec.defines"),
    Break(schema.DEFINE_NAMES_NOT_OPERATORS, {"defines": {"_Pragma": "1"}}, "spec.defines"),
    Break(schema.DEFINE_VALUE_NO_DOTDOT, {"defines": {"X": "a..b"}}, "spec.defines[X]"),
    Break(schema.DEFINE_VALUE_NO_OPERATOR, {"defines": {"P": "1+__has_"}}, "spec.defines[P]"),
    Break(schema.INTERFACES_EXCLUSIVE, {"interfaces": {"names": ["eth0"], "primary": True}}, "spec.interfaces"),
    Break(schema.INTERFACES_REQUIRED, {"interfaces": {}}, "spec.interfaces"),
    Break(schema.INTERFACE_NAME_NOT_DOTS, {"interfaces": {"names": ["eth0", "."]}}, "spec.interfaces.names[1]"),
    Break(schema.MATCH_LABELS_KEYS, {"nodeSelector": {"matchLabels": {LONG_PREFIX + "/x": "y"}}},
          "spec.nodeSelector.matchLabels"),
    Break(schema.EXPRESSION_KEY_PREFIX, {"nodeSelector": {"matchExpressions": [
        {"key": LONG_PREFIX + "/x", "operator": "Exists"}]}}, "spec.nodeSelector.matchExpressions[0].key"),
    Break(schema.EXPRESSION_VALUES_REQUIRED, {"nodeSelector": {"matchExpressions": [
        {"key": "a", "operator": "NotIn", "values": []}]}}, "spec.nodeSelector.matchExpressions[0].values"),
    Break(schema.EXPRESSION_VALUES_FORBIDDEN, {"nodeSelector": {"matchExpressions": [
        {"key": "a", "operator": "Exists"}, {"key": "b", "operator": "DoesNotExist", "values": ["x"]}]}},
        "spec.nodeSelector.matchExpressions[1].values"),
    # the compile fields' rules hold on XdpAttachment too (the operator copies them there)
    Break(schema.DEFINE_NAMES, {"defines": {"1X": "1"}}, "spec.defines", names.ATTACHMENT_KIND),
    Break(schema.DEFINE_NAMES_NOT_OPERATORS, {"defines": {"__has_include": "1"}}, "spec.defines",
          names.ATTACHMENT_KIND),
    Break(schema.DEFINE_VALUE_NO_DOTDOT, {"defines": {"X": "1..2"}}, "spec.defines[X]", names.ATTACHMENT_KIND),
    Break(schema.DEFINE_VALUE_NO_OPERATOR, {"defines": {"P": "_Pragma"}}, "spec.defines[P]", names.ATTACHMENT_KIND),
    Break(schema.INTERFACES_EXCLUSIVE, {"interfaces": {"pattern": "eth.*", "primary": True}}, "spec.interfaces",
          names.ATTACHMENT_KIND),
    Break(schema.INTERFACES_REQUIRED, {"interfaces": {}}, "spec.interfaces", names.ATTACHMENT_KIND),
    Break(schema.INTERFACE_NAME_NOT_DOTS, {"interfaces": {"names": [".."]}}, "spec.interfaces.names[0]",
          names.ATTACHMENT_KIND),
]

PLURAL = {names.PROGRAM_KIND: names.PROGRAMS, names.ATTACHMENT_KIND: names.ATTACHMENTS}


def body(kind: str, name: str, spec_: dict) -> dict:
    return {"apiVersion": names.API_VERSION, "kind": kind, "metadata": {"name": name}, "spec": spec_}


def good_spec(kind: str) -> dict:
    return copy.deepcopy(GOOD_PROGRAM if kind == names.PROGRAM_KIND else GOOD_ATTACHMENT)


def refusal(custom, kind: str, name: str, spec_: dict, *, dry_run: bool = False) -> dict | None:
    """None when the server accepts the object (a real create is deleted again at once),
    else the 422 response body (any other error fails)."""
    try:
        custom.create_cluster_custom_object(names.GROUP, names.VERSION, PLURAL[kind], body(kind, name, spec_),
                                            **({"dry_run": "All"} if dry_run else {}))
    except ApiException as e:
        assert e.status == 422, (e.status, e.body)
        return json.loads(e.body)
    if not dry_run:
        delete(custom, kind, name)
    return None


def delete(custom, kind: str, name: str) -> None:
    try:
        custom.delete_cluster_custom_object(names.GROUP, names.VERSION, PLURAL[kind], name)
    except ApiException as e:
        if e.status != 404:
            raise


def says(rule: schema.CelRule) -> str:
    return EXPRESSION_SAYS[rule.name] if rule.message_expression else rule.message


def caused_by(refused: dict, rule: schema.CelRule) -> list[dict]:
    """The causes of a 422 that are this rule's: its reason and its message."""
    return [c for c in refused["details"]["causes"] if c.get("reason") == rule.reason and says(rule) in c["message"]]


@pytest.fixture(scope="module")
def custom(rig):
    """The CRDs of crds/ applied, and a client; waits until the server validates with their
    CEL rules (a CRD update reaches the handlers a moment after the CRD is Established)."""
    client = api_client(rig)
    applier.apply(client, applier.load_yaml(REPO / "crds"))
    api = kubernetes.client.CustomObjectsApi(client)
    deadline = time.monotonic() + 30
    while True:
        refused = refusal(api, names.PROGRAM_KIND, "kxe-cel-probe", {**GOOD_PROGRAM, **BREAKS[0].spec}, dry_run=True)
        if refused and caused_by(refused, BREAKS[0].rule):
            break
        assert time.monotonic() < deadline, f"the CEL rules of crds/ are not in force after 30 s: {refused}"
        time.sleep(0.5)
    yield api
    client.close()


def test_the_crds_are_stored_with_every_rule(custom, rig):
    """The server accepted the CRDs (estimated cost within budget) and kept each rule as generated."""
    ext = kubernetes.client.ApiextensionsV1Api(custom.api_client)
    for crd in schema.all_crds():
        stored = ext.api_client.sanitize_for_serialization(ext.read_custom_resource_definition(crd["metadata"]["name"]))
        want = [e for _, n in _walk(schema.openapi_schema(crd)) for e in n.get("x-kubernetes-validations", [])]
        have = [e for _, n in _walk(stored["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
                for e in n.get("x-kubernetes-validations", [])]
        key = lambda e: json.dumps(e, sort_keys=True)      # noqa: E731
        assert sorted(have, key=key) == sorted(want, key=key), crd["metadata"]["name"]
        assert stored["spec"]["versions"][0].get("selectableFields") == crd["spec"]["versions"][0].get(
            "selectableFields")


def _walk(sch: dict, path: str = ""):
    yield path, sch
    for key, sub in (sch.get("properties") or {}).items():
        yield from _walk(sub, f"{path}.{key}")
    for key in ("items", "additionalProperties"):
        if isinstance(sch.get(key), dict):
            yield from _walk(sch[key], f"{path}.{key}")


def test_every_rule_has_a_breaking_case_on_each_kind_that_has_it():
    for kind, crd in ((names.PROGRAM_KIND, schema.program_crd()), (names.ATTACHMENT_KIND, schema.attachment_crd())):
        rules = {e["rule"] for _, n in _walk(schema.openapi_schema(crd)) for e in n.get("x-kubernetes-validations", [])}
        assert {b.rule.rule for b in BREAKS if b.kind == kind} == rules, kind
    assert set(EXPRESSION_SAYS) == {r.name for r in schema.CEL_RULES.values() if r.message_expression}


@pytest.mark.parametrize("case", BREAKS, ids=lambda b: b.id)
def test_a_spec_that_breaks_a_rule_is_refused_naming_the_field_with_its_message(case, custom):
    spec_ = {**good_spec(case.kind), **case.spec}
    name = f"kxe-cel-{BREAKS.index(case)}"
    refused = refusal(custom, case.kind, name, spec_)
    assert refused is not None, f"{case.id}: accepted"
    (cause,) = refused["details"]["causes"]              # this rule alone, nothing else
    assert cause["field"] == case.field, cause
    assert cause["reason"] == case.rule.reason, cause
    assert (case.says or case.rule.message) in cause["message"], cause
    # what kubectl prints: the field and the message, in the response's message
    assert case.field in refused["message"] and (case.says or case.rule.message) in refused["message"]
    # the shared validator refuses it too (the agent re-validates: defence in depth)
    parse = ProgramSpec.from_dict if case.kind == names.PROGRAM_KIND else AttachmentSpec.from_dict
    with pytest.raises(spec.SpecError):
        parse(spec_)


# --- the largest allowed spec -------------------------------------------------------------
def _label_key(i: int) -> str:
    """A label key of the maximum length: a 253-character prefix, '/', a 63-character name."""
    prefix = ".".join(["p" * 63, "q" * 63, "r" * 63, "s" * 61])
    return f"{prefix}/k{i:02d}" + "x" * 60


def largest_compile_fields() -> dict:
    define_value = "a+" * (spec.DEFINE_VALUE_MAX // 2)        # 64 identifiers for the operator rule to check
    return {
        "entrypoint": "e" * spec.C_IDENTIFIER_MAX,
        "defines": {f"D{i:02d}" + "_" * (spec.C_IDENTIFIER_MAX - 3): define_value for i in range(spec.DEFINES_MAX)},
        "interfaces": {"names": [f"if{i:02d}" + "x" * 11 for i in range(spec.INTERFACE_NAMES_MAX)]},
        "mode": "offload", "fallback": ["native", "generic", "offload"], "priority": spec.PRIORITY_MAX,
        "takeOver": True,
    }


def largest_program() -> dict:
    values = [f"v{j:02d}" + "y" * 60 for j in range(spec.EXPRESSION_VALUES_MAX)]
    return {
        "source": {"inline": "/" * spec.INLINE_SOURCE_MAX_BYTES},
        **largest_compile_fields(),
        "nodeSelector": {
            "matchLabels": {_label_key(i): "z" * spec.LABEL_VALUE_MAX for i in range(spec.MATCH_LABELS_MAX)},
            "matchExpressions": [{"key": _label_key(i), "operator": "In", "values": values}
                                 for i in range(spec.MATCH_EXPRESSIONS_MAX)],
        },
    }


def test_the_largest_allowed_program_is_created(custom):
    big = largest_program()
    ProgramSpec.from_dict(big)                               # the validator allows it as well
    assert len(big["source"]["inline"].encode()) == spec.INLINE_SOURCE_MAX_BYTES
    assert len(next(iter(big["nodeSelector"]["matchLabels"]))) == spec.LABEL_KEY_MAX
    refused = refusal(custom, names.PROGRAM_KIND, "kxe-cel-largest", big)
    assert refused is None, json.dumps(refused)[:2000]


def test_the_largest_allowed_attachment_is_created(custom):
    big = {**GOOD_ATTACHMENT, "nodeName": "n" * spec.DNS_SUBDOMAIN_MAX, **largest_compile_fields()}
    AttachmentSpec.from_dict(big)
    refused = refusal(custom, names.ATTACHMENT_KIND, "kxe-cel-largest", big)
    assert refused is None, json.dumps(refused)[:2000]


@pytest.mark.parametrize(("inline", "refused_"), [("é" * 32768, False), ("é" * 32768 + "x", True)],
                         ids=["65536-bytes", "65537-bytes"])
def test_the_inline_byte_limit_is_exact(custom, inline, refused_):
    """32768 two-byte characters are 65536 bytes: allowed; one more byte is refused, though
    it is far below maxLength (65536 characters)."""
    refused = refusal(custom, names.PROGRAM_KIND, "kxe-cel-bytes", {**GOOD_PROGRAM, "source": {"inline": inline}},
                      dry_run=True)
    assert (refused is not None) == refused_
    if refused_:
        assert [c["field"] for c in caused_by(refused, schema.INLINE_BYTES)] == ["spec.source.inline"]
        assert "is 65537 bytes of UTF-8, at most 65536" in refused["message"]


# --- the validator's cases, on the server ----------------------------------------------------
@pytest.mark.parametrize("raw", GOOD)
def test_a_good_spec_of_the_validator_is_accepted(custom, raw):
    assert refusal(custom, names.PROGRAM_KIND, "kxe-cel-good", raw, dry_run=True) is None


@pytest.mark.parametrize(("raw", "reason", "api"), BAD)
def test_each_bad_spec_of_the_validator_is_refused_where_it_says(custom, raw, reason, api):
    refused = refusal(custom, names.PROGRAM_KIND, "kxe-cel-bad", raw, dry_run=True)
    if api is None:
        assert refused is None, refused["message"]           # only the shared validator can refuse it
    elif api == OPENAPI:
        assert refused is not None
        cel_messages = {says(r) for r in schema.CEL_RULES.values()}
        assert any(not any(m in c["message"] for m in cel_messages) for c in refused["details"]["causes"]), refused
    else:
        assert refused is not None and caused_by(refused, api), (api.name, refused)
