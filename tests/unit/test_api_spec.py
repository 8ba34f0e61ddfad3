"""Spec parsing and validation (kube_xdp_api.spec), cross-checked against the CRD schema.

Each bad case says where the API server refuses it too: `api=OPENAPI` (the OpenAPI part
of the schema: patterns, enums, lengths, counts, required), `api=<a CelRule>` (that CEL
rule, `x-kubernetes-validations`), or `api=None` (the API server accepts it: only the
shared validator can refuse it, e.g. Python regex syntax). The OpenAPI side runs here
through a small value checker below that mimics the API server's rules (defaults, then
type/enum/pattern/lengths/items/properties/required); it does not evaluate CEL, so a CEL
case must pass it. tests/e2e/test_cel_admission.py sends every case to the real API
server and checks the `api=` of each: refused with 422 by OpenAPI, refused by the named
CEL rule with its message, or accepted.
"""

from __future__ import annotations

import copy
import hashlib
import re
from typing import Any

import pytest

from kube_xdp_api import reasons, schema
from kube_xdp_api.spec import (
    AttachmentSpec,
    CompileFields,
    ProgramSpec,
    SpecError,
    define_flags,
    source_digest,
    validate_program_name,
)

MINIMAL = {"source": {"inline": "int xdp_main(struct xdp_md *ctx) { return XDP_PASS; }"}, "entrypoint": "xdp_main"}
PROGRAM_SPEC_SCHEMA = schema.program_spec_schema()


# --- A small OpenAPI value checker (what the API server does with a structural schema) -----
def _pattern_matches(pattern: str, value: str) -> bool:
    # RE2's '$' (no multiline) is the end of the text; Python's also matches before a final '\n'.
    return re.search(re.sub(r"\$$", r"\\Z", pattern), value) is not None


def schema_errors(sch: dict[str, Any], value: Any, path: str = "spec") -> list[str]:
    kinds = {"object": dict, "array": list, "string": str, "boolean": bool}
    errors: list[str] = []
    t = sch.get("type")
    if t == "integer":
        if type(value) is not int:
            return [f"{path}: not an integer"]
    elif t is not None and not isinstance(value, kinds[t]):
        return [f"{path}: not a {t}"]
    if "enum" in sch and value not in sch["enum"]:
        errors.append(f"{path}: not in enum")
    if isinstance(value, str):
        if len(value) > sch.get("maxLength", len(value)) or len(value) < sch.get("minLength", 0):
            errors.append(f"{path}: length")
        if "pattern" in sch and not _pattern_matches(sch["pattern"], value):
            errors.append(f"{path}: pattern")
    if type(value) is int:
        if value < sch.get("minimum", value) or value > sch.get("maximum", value):
            errors.append(f"{path}: range")
    if isinstance(value, list):
        if len(value) > sch.get("maxItems", len(value)) or len(value) < sch.get("minItems", 0):
            errors.append(f"{path}: items count")
        if sch.get("x-kubernetes-list-type") == "set" and len(set(map(repr, value))) != len(value):
            errors.append(f"{path}: duplicate")
        for i, item in enumerate(value):
            errors += schema_errors(sch.get("items", {}), item, f"{path}[{i}]")
    if isinstance(value, dict):
        props = sch.get("properties", {})
        value = {**{k: copy.deepcopy(s["default"]) for k, s in props.items() if "default" in s}, **value}
        if len(value) > sch.get("maxProperties", len(value)):
            errors.append(f"{path}: too many properties")
        errors += [f"{path}.{k}: required" for k in sch.get("required", []) if k not in value]
        for key, item in value.items():
            if key in props:
                errors += schema_errors(props[key], item, f"{path}.{key}")
            elif "additionalProperties" in sch:
                errors += schema_errors(sch["additionalProperties"], item, f"{path}[{key}]")
    if "oneOf" in sch and sum(not schema_errors(b, value, path) for b in sch["oneOf"]) != 1:
        errors.append(f"{path}: oneOf")
    if "not" in sch and not schema_errors(sch["not"], value, path):
        errors.append(f"{path}: not")
    return errors


def with_(**changes: Any) -> dict[str, Any]:
    spec = copy.deepcopy(MINIMAL)
    for key, value in changes.items():
        if value is DROP:
            spec.pop(key, None)
        else:
            spec[key] = value
    return spec


DROP = object()

# --- Good specs ------------------------------------------------------------------------------
GOOD = [
    pytest.param(MINIMAL, id="minimal-inline"),
    pytest.param(with_(source={"configMapRef": {"namespace": "kube-system", "name": "xdp.src", "key": "prog.c"}}),
                 id="configmap-source"),
    pytest.param(with_(defines={"MAX_PORTS": "16", "NEG": "-1", "FRAC": "-.5", "F": "1.5e+3", "X": "0x800",
                                "EMPTY": "", "_UNDERSCORE": "A_B"}), id="defines"),
    pytest.param(with_(defines={f"D{i}": str(i) for i in range(32)}), id="32-defines"),
    pytest.param(with_(defines={"A": "my_Pragma", "B": "_Pragmatic", "C": "__u32", "D": "__has_included",
                                "E": "secret.h", "F": "x_"}), id="defines-near-operator-names"),
    pytest.param(with_(interfaces={"names": ["eth0", "veth-a.1", "ens3_x", "a" * 15]}), id="interface-names"),
    pytest.param(with_(interfaces={"pattern": r"veth[0-9]+|eth\d"}), id="interface-pattern"),
    pytest.param(with_(interfaces={"primary": True}), id="primary"),
    pytest.param(with_(mode="offload", fallback=["native", "generic"], priority=1000), id="offload-with-fallback"),
    pytest.param(with_(mode="generic", fallback=[], priority=0), id="generic-no-fallback"),
    pytest.param(with_(nodeSelector={
        "matchLabels": {"kubernetes.io/os": "linux", "role": ""},
        "matchExpressions": [
            {"key": "node.example.com/xdp", "operator": "In", "values": ["yes", "true"]},
            {"key": "tier", "operator": "NotIn", "values": ["db"]},
            {"key": "edge", "operator": "Exists"},
            {"key": "gpu", "operator": "DoesNotExist", "values": []},
        ]}), id="node-selector"),
    pytest.param(with_(entrypoint="_" + "a" * 63), id="entrypoint-64"),
    pytest.param(with_(source={"inline": "x" * 65536}), id="inline-64KiB"),
]


@pytest.mark.parametrize("raw", GOOD)
def test_good_spec_is_accepted_by_validator_and_schema(raw):
    parsed = ProgramSpec.from_dict(raw)
    assert schema_errors(PROGRAM_SPEC_SCHEMA, raw) == []
    # The parsed form round-trips: parsing its dict gives the same value.
    assert ProgramSpec.from_dict(parsed.to_dict()) == parsed


def test_defaults_match_the_schema_defaults():
    parsed = ProgramSpec.from_dict(MINIMAL)
    assert parsed.compile_fields() == {
        "entrypoint": "xdp_main",
        "defines": {},
        "interfaces": {"primary": True},
        "mode": "native",
        "fallback": ["generic"],
        "priority": 500,
    }
    props = PROGRAM_SPEC_SCHEMA["properties"]
    for key in ("defines", "interfaces", "mode", "fallback", "priority"):
        assert props[key]["default"] == parsed.compile_fields()[key], key
    assert props["nodeSelector"]["default"] == parsed.node_selector.to_dict() == {}


def test_compile_fields_are_canonical():
    a = ProgramSpec.from_dict(with_(defines={"B": "2", "A": "1"}))
    b = ProgramSpec.from_dict(with_(defines={"A": "1", "B": "2"}))
    assert a.compile_fields() == b.compile_fields()
    assert list(a.compile_fields()["defines"]) == ["A", "B"]
    assert "source" not in a.compile_fields()
    assert "nodeSelector" not in a.compile_fields()


# --- Bad specs: (spec, reason, where the API server refuses it too) -------------------------
OPENAPI = "openapi"      # refused by the OpenAPI part of the schema


def bad(id_: str, raw: dict[str, Any], reason: str, *, api: str | schema.CelRule | None):
    return pytest.param(raw, reason, api, id=id_)



D, S = reasons.INVALID_DEFINE, reasons.INVALID_SPEC
LONG_PREFIX = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 62])     # a DNS subdomain of 254 characters
BAD = [
    # defines: names (map keys: OpenAPI cannot constrain them, a CEL rule does)
    bad("define-name-space", with_(defines={"MY DEF": "1"}), D, api=schema.DEFINE_NAMES),
    bad("define-name-quote", with_(defines={'X"': "1"}), D, api=schema.DEFINE_NAMES),
    bad("define-name-dash-include", with_(defines={"-include": "/etc/passwd"}), D, api=OPENAPI),
    bad("define-name-flag-only", with_(defines={"-include": "x"}), D, api=schema.DEFINE_NAMES),
    bad("define-name-slash", with_(defines={"A/B": "1"}), D, api=schema.DEFINE_NAMES),
    bad("define-name-dotdot", with_(defines={"..": "1"}), D, api=schema.DEFINE_NAMES),
    bad("define-name-leading-digit", with_(defines={"1X": "1"}), D, api=schema.DEFINE_NAMES),
    bad("define-name-equals", with_(defines={"A=B": "1"}), D, api=schema.DEFINE_NAMES),
    bad("define-name-non-ascii", with_(defines={"PÖRT": "1"}), D, api=schema.DEFINE_NAMES),
    bad("define-name-empty", with_(defines={"": "1"}), D, api=schema.DEFINE_NAMES),
    bad("define-name-too-long", with_(defines={"A" * 65: "1"}), D, api=schema.DEFINE_NAMES),
    # defines: values
    bad("define-value-space", with_(defines={"X": "1 -include"}), D, api=OPENAPI),
    bad("define-value-quote", with_(defines={"X": '"a"'}), D, api=OPENAPI),
    bad("define-value-single-quote", with_(defines={"X": "'a'"}), D, api=OPENAPI),
    bad("define-value-include", with_(defines={"X": "-include"}), D, api=OPENAPI),
    bad("define-value-flag", with_(defines={"X": "-I/usr"}), D, api=OPENAPI),
    bad("define-value-double-dash", with_(defines={"X": "--1"}), D, api=OPENAPI),
    bad("define-value-slash", with_(defines={"X": "a/b"}), D, api=OPENAPI),
    bad("define-value-dotdot", with_(defines={"X": "a..b"}), D, api=schema.DEFINE_VALUE_NO_DOTDOT),
    bad("define-value-equals", with_(defines={"X": "a=b"}), D, api=OPENAPI),
    bad("define-value-newline", with_(defines={"X": "1\n"}), D, api=OPENAPI),
    bad("define-value-non-ascii", with_(defines={"X": "é"}), D, api=OPENAPI),
    bad("define-value-too-long", with_(defines={"X": "1" * 129}), D, api=OPENAPI),
    bad("define-value-not-string", with_(defines={"X": 1}), D, api=OPENAPI),
    # defines: values and names that are (or could paste into) a preprocessor operator that
    # reads files or runs pragmas; the OpenAPI character rule cannot see them, a CEL rule does
    bad("define-value-pragma-operator", with_(defines={"P": "_Pragma"}), D, api=schema.DEFINE_VALUE_NO_OPERATOR),
    bad("define-value-ms-pragma-operator", with_(defines={"P": "__pragma"}), D, api=schema.DEFINE_VALUE_NO_OPERATOR),
    bad("define-value-has-include", with_(defines={"H": "__has_include"}), D, api=schema.DEFINE_VALUE_NO_OPERATOR),
    bad("define-value-has-include-next", with_(defines={"H": "__has_include_next"}), D,
        api=schema.DEFINE_VALUE_NO_OPERATOR),
    bad("define-value-has-embed", with_(defines={"H": "__has_embed"}), D, api=schema.DEFINE_VALUE_NO_OPERATOR),
    bad("define-value-operator-in-an-expression", with_(defines={"X": "1+_Pragma"}), D,
        api=schema.DEFINE_VALUE_NO_OPERATOR),
    bad("define-value-prefix-to-paste", with_(defines={"A": "_Pra"}), D, api=schema.DEFINE_VALUE_NO_OPERATOR),
    bad("define-value-underscore-to-paste", with_(defines={"A": "_"}), D, api=schema.DEFINE_VALUE_NO_OPERATOR),
    bad("define-value-has-prefix-to-paste", with_(defines={"A": "__has_"}), D, api=schema.DEFINE_VALUE_NO_OPERATOR),
    bad("define-name-pragma-operator", with_(defines={"_Pragma": "1"}), D, api=schema.DEFINE_NAMES_NOT_OPERATORS),
    bad("define-name-has-include", with_(defines={"__has_include": "1"}), D, api=schema.DEFINE_NAMES_NOT_OPERATORS),
    bad("defines-33", with_(defines={f"D{i}": "1" for i in range(33)}), D, api=OPENAPI),
    # source
    bad("both-sources", with_(source={"inline": "x", "configMapRef": {"namespace": "a", "name": "b", "key": "c"}}),
        S, api=schema.SOURCE_EXCLUSIVE),
    bad("no-source", with_(source={}), S, api=schema.SOURCE_REQUIRED),
    bad("source-missing", with_(source=DROP), S, api=OPENAPI),
    bad("inline-empty", with_(source={"inline": ""}), S, api=OPENAPI),
    bad("inline-too-many-chars", with_(source={"inline": "x" * 65537}), S, api=OPENAPI),
    bad("inline-too-many-bytes", with_(source={"inline": "é" * 40000}), S, api=schema.INLINE_BYTES),
    bad("inline-nul", with_(source={"inline": "int x;\x00"}), S, api=schema.INLINE_NO_NUL),
    bad("configmap-namespace-upper", with_(source={"configMapRef": {"namespace": "Kube", "name": "b", "key": "c"}}),
        S, api=OPENAPI),
    bad("configmap-name-underscore", with_(source={"configMapRef": {"namespace": "a", "name": "b_c", "key": "c"}}),
        S, api=OPENAPI),
    bad("configmap-key-slash", with_(source={"configMapRef": {"namespace": "a", "name": "b", "key": "../c"}}),
        S, api=OPENAPI),
    bad("configmap-key-missing", with_(source={"configMapRef": {"namespace": "a", "name": "b"}}), S, api=OPENAPI),
    # entrypoint
    bad("entrypoint-missing", with_(entrypoint=DROP), S, api=OPENAPI),
    bad("entrypoint-leading-digit", with_(entrypoint="1main"), S, api=OPENAPI),
    bad("entrypoint-parens", with_(entrypoint="main()"), S, api=OPENAPI),
    bad("entrypoint-non-ascii", with_(entrypoint="mäin"), S, api=OPENAPI),
    bad("entrypoint-too-long", with_(entrypoint="a" * 65), S, api=OPENAPI),
    # interfaces
    bad("interfaces-names-and-pattern", with_(interfaces={"names": ["eth0"], "pattern": "eth.*"}), S,
        api=schema.INTERFACES_EXCLUSIVE),
    bad("interfaces-pattern-and-primary", with_(interfaces={"pattern": "eth.*", "primary": True}), S,
        api=schema.INTERFACES_EXCLUSIVE),
    bad("interfaces-none", with_(interfaces={}), S, api=schema.INTERFACES_REQUIRED),
    bad("interfaces-primary-false", with_(interfaces={"primary": False}), S, api=OPENAPI),
    bad("interfaces-names-empty", with_(interfaces={"names": []}), S, api=OPENAPI),
    bad("interface-name-space", with_(interfaces={"names": ["eth 0"]}), S, api=OPENAPI),
    bad("interface-name-slash", with_(interfaces={"names": ["eth0/1"]}), S, api=OPENAPI),
    bad("interface-name-colon", with_(interfaces={"names": ["eth0:1"]}), S, api=OPENAPI),
    bad("interface-name-dot", with_(interfaces={"names": ["."]}), S, api=schema.INTERFACE_NAME_NOT_DOTS),
    bad("interface-name-dotdot", with_(interfaces={"names": [".."]}), S, api=schema.INTERFACE_NAME_NOT_DOTS),
    bad("interface-name-16-chars", with_(interfaces={"names": ["a" * 16]}), S, api=OPENAPI),
    bad("interface-name-non-ascii", with_(interfaces={"names": ["ēth0"]}), S, api=OPENAPI),
    bad("interface-names-duplicate", with_(interfaces={"names": ["eth0", "eth0"]}), S, api=OPENAPI),
    bad("interface-names-33", with_(interfaces={"names": [f"eth{i}" for i in range(33)]}), S, api=OPENAPI),
    bad("interface-pattern-does-not-compile", with_(interfaces={"pattern": "eth("}), S, api=None),
    bad("interface-pattern-empty", with_(interfaces={"pattern": ""}), S, api=OPENAPI),
    bad("interface-pattern-too-long", with_(interfaces={"pattern": "a" * 257}), S, api=OPENAPI),
    # mode, fallback, priority
    bad("mode-unknown", with_(mode="skb"), S, api=OPENAPI),
    bad("fallback-unknown", with_(fallback=["driver"]), S, api=OPENAPI),
    bad("fallback-duplicate", with_(fallback=["generic", "generic"]), S, api=OPENAPI),
    bad("priority-negative", with_(priority=-1), S, api=OPENAPI),
    bad("priority-too-high", with_(priority=1001), S, api=OPENAPI),
    bad("priority-string", with_(priority="5"), S, api=OPENAPI),
    bad("priority-bool", with_(priority=True), S, api=OPENAPI),
    # nodeSelector
    bad("selector-operator-unknown", with_(nodeSelector={"matchExpressions": [{"key": "a", "operator": "Gt",
                                                                                "values": ["1"]}]}), S, api=OPENAPI),
    bad("selector-in-without-values", with_(nodeSelector={"matchExpressions": [{"key": "a", "operator": "In"}]}),
        S, api=schema.EXPRESSION_VALUES_REQUIRED),
    bad("selector-exists-with-values", with_(nodeSelector={"matchExpressions": [{"key": "a", "operator": "Exists",
                                                                                  "values": ["x"]}]}), S,
        api=schema.EXPRESSION_VALUES_FORBIDDEN),
    bad("selector-expression-key-space", with_(nodeSelector={"matchExpressions": [{"key": "a b",
                                                                                    "operator": "Exists"}]}),
        S, api=OPENAPI),
    bad("selector-label-key-space", with_(nodeSelector={"matchLabels": {"a b": "x"}}), S, api=schema.MATCH_LABELS_KEYS),
    bad("selector-label-key-prefix-too-long", with_(nodeSelector={"matchLabels": {LONG_PREFIX + "/x": "x"}}), S,
        api=schema.MATCH_LABELS_KEYS),
    bad("selector-expression-key-prefix-too-long", with_(nodeSelector={"matchExpressions": [
        {"key": LONG_PREFIX + "/x", "operator": "Exists"}]}), S, api=schema.EXPRESSION_KEY_PREFIX),
    bad("selector-label-value-space", with_(nodeSelector={"matchLabels": {"a": "x y"}}), S, api=OPENAPI),
    bad("selector-label-value-too-long", with_(nodeSelector={"matchLabels": {"a": "x" * 64}}), S, api=OPENAPI),
    # shape
    bad("spec-not-object", ["nope"], S, api=OPENAPI),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(("raw", "reason", "api"), BAD)
def test_bad_spec_is_rejected_with_a_stable_reason(raw, reason, api):
    with pytest.raises(SpecError) as caught:
        ProgramSpec.from_dict(raw)
    assert caught.value.reason == reason
    assert caught.value.message
    assert bool(schema_errors(PROGRAM_SPEC_SCHEMA, raw)) == (api == OPENAPI)
    if isinstance(api, schema.CelRule):
        assert schema.CEL_RULES[api.name] is api


def test_every_cel_rule_of_the_program_has_a_bad_case():
    """Each CEL rule is shown to refuse something the validator refuses too (the same
    cases go to the real API server in tests/e2e/test_cel_admission.py)."""
    covered = {p.values[2].name for p in BAD if isinstance(p.values[2], schema.CelRule)}
    assert covered == set(schema.CEL_RULES)


# --- Program names, digests, flags, attachment specs -------------------------------------------
@pytest.mark.parametrize(
    ("name", "ok"),
    [("drop-udp", True), ("a", True), ("a" * 63, True), ("a" * 64, False), ("Drop", False),
     ("drop.udp", False), ("-drop", False), ("drop-", False), ("", False), (None, False)],
    ids=["dashed", "one-char", "63", "64", "upper", "dot", "leading-dash", "trailing-dash", "empty", "none"],
)
def test_program_name_is_a_dns_label(name, ok):
    if ok:
        assert validate_program_name(name) == name
    else:
        with pytest.raises(SpecError):
            validate_program_name(name)


@pytest.mark.parametrize(
    "text", ["abc", "int x; // naïve\n", ""], ids=["ascii", "utf-8", "empty"]
)
def test_source_digest_is_sha256_of_utf8_bytes(text):
    assert source_digest(text) == hashlib.sha256(text.encode("utf-8")).hexdigest()
    assert len(source_digest(text)) == 64


def test_source_digest_known_value():
    assert source_digest("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_define_flags_are_one_argument_each():
    fields = ProgramSpec.from_dict(with_(defines={"B": "-1", "A": ""})).fields
    assert define_flags(fields.defines) == ["-DA=", "-DB=-1"]


@pytest.mark.parametrize(
    ("mode", "fallback", "expected"),
    [("native", ["generic"], ("native", "generic")), ("generic", ["generic"], ("generic",)),
     ("offload", [], ("offload",)), ("offload", ["native", "generic"], ("offload", "native", "generic"))],
    ids=["default", "fallback-repeats-mode", "no-fallback", "offload-chain"],
)
def test_modes_to_try(mode, fallback, expected):
    assert CompileFields.from_dict({"entrypoint": "f", "mode": mode, "fallback": fallback}).modes_to_try() == expected


ATTACHMENT = {
    "nodeName": "node-1.example.com",
    "programRef": {"name": "drop-udp", "uid": "0b3f1c9e-0000-4000-8000-000000000001"},
    "programGeneration": 3,
    "sourceDigest": "a" * 64,
    **ProgramSpec.from_dict(MINIMAL).compile_fields(),
}


def test_attachment_spec_round_trips_and_matches_its_schema():
    parsed = AttachmentSpec.from_dict(ATTACHMENT)
    assert parsed.to_dict() == ATTACHMENT
    assert schema_errors(schema.attachment_spec_schema(), ATTACHMENT) == []


@pytest.mark.parametrize(
    ("change", "reason"),
    [({"sourceDigest": "A" * 64}, S), ({"sourceDigest": "a" * 63}, S), ({"programGeneration": 0}, S),
     ({"nodeName": "Node_1"}, S), ({"programRef": {"name": "drop-udp"}}, S),
     ({"defines": {"X": "-include"}}, D), ({"interfaces": {"names": ["../x"]}}, S)],
    ids=["digest-upper", "digest-short", "generation-0", "node-name", "uid-missing", "define", "interface"],
)
def test_bad_attachment_spec_is_rejected(change, reason):
    raw = {**ATTACHMENT, **change}
    with pytest.raises(SpecError) as caught:
        AttachmentSpec.from_dict(raw)
    assert caught.value.reason == reason
    assert schema_errors(schema.attachment_spec_schema(), raw)


@pytest.mark.parametrize("defines", [{"P": "_Pragma"}, {"H": "__has_include"}, {"A": "__has_"}], ids=repr)
def test_attachment_spec_with_an_operator_define_is_refused_by_the_agents_parse(defines):
    """OpenAPI accepts these values (C-token characters): only the CEL rule
    define-value-no-operator refuses them at the API server. The agent's own parse of the
    XdpAttachment refuses them too, whatever the operator wrote or the server let through."""
    raw = {**ATTACHMENT, "defines": defines}
    assert schema_errors(schema.attachment_spec_schema(), raw) == []
    with pytest.raises(SpecError) as caught:
        AttachmentSpec.from_dict(raw)
    assert caught.value.reason == D
    assert "cannot be checked" in caught.value.message or "preprocessor operator" in caught.value.message
