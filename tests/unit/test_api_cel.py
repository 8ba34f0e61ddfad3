"""The CEL rules of the CRDs (kube_xdp_api.schema.CEL_RULES) as data: where each one sits,
its shape (message, reason, fieldPath), the bounds that keep the API server's cost
estimate low, and the XdpAttachment's selectable field.

What each rule refuses is checked on the real API server (tests/e2e/test_cel_admission.py);
tests/unit/test_api_spec.py names the rule that refuses each bad spec the validator refuses.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kube_xdp_agent.controller import attachment_field_selector
from kube_xdp_api import names, schema, spec

from .test_api_schema import walk   # the same walk over schema nodes

CRDS = {crd["spec"]["names"]["kind"]: crd for crd in schema.all_crds()}
REASONS = {schema.FIELD_VALUE_INVALID, schema.FIELD_VALUE_FORBIDDEN, schema.FIELD_VALUE_REQUIRED,
           schema.FIELD_VALUE_DUPLICATE}

# Where each rule sits: the schema path of its node, as walk() names it ([] a list's items,
# {} a map's values). The compile fields are shared by XdpProgram.spec and XdpAttachment.spec.
COMPILE_FIELD_RULES = {
    "define-names": ".spec.defines",
    "define-names-not-operators": ".spec.defines",
    "define-value-no-dotdot": ".spec.defines{}",
    "define-value-no-operator": ".spec.defines{}",
    "interfaces-exclusive": ".spec.interfaces",
    "interfaces-required": ".spec.interfaces",
    "interface-name-not-dots": ".spec.interfaces.names[]",
}
PROGRAM_ONLY_RULES = {
    "source-exclusive": ".spec.source",
    "source-required": ".spec.source",
    "inline-bytes": ".spec.source.inline",
    "inline-no-nul": ".spec.source.inline",
    "match-labels-keys": ".spec.nodeSelector.matchLabels",
    "expression-key-prefix": ".spec.nodeSelector.matchExpressions[].key",
    "expression-values-required": ".spec.nodeSelector.matchExpressions[]",
    "expression-values-forbidden": ".spec.nodeSelector.matchExpressions[]",
}
WHERE = {
    "XdpProgram": {**COMPILE_FIELD_RULES, **PROGRAM_ONLY_RULES},
    "XdpAttachment": COMPILE_FIELD_RULES,
    "XdpNode": {},
}


def rules_in(kind: str) -> dict[str, list[tuple[str, dict]]]:
    """Rule name -> [(schema path, the node holding it)] in a CRD; an entry that is not one
    of CEL_RULES fails the lookup."""
    by_text = {r.rule: r for r in schema.CEL_RULES.values()}
    found: dict[str, list[tuple[str, dict]]] = {}
    for path, node in walk(schema.openapi_schema(CRDS[kind])):
        for entry in node.get("x-kubernetes-validations", []):
            rule = by_text.get(entry["rule"])
            assert rule is not None, f"{kind}{path}: a rule not listed in schema.CEL_RULES: {entry['rule']}"
            assert entry == rule.to_schema(), f"{kind}{path}: {entry} differs from {rule.name}"
            found.setdefault(rule.name, []).append((path, node))
    return found


@pytest.mark.parametrize("kind", sorted(WHERE))
def test_each_rule_sits_where_it_belongs_and_nowhere_else(kind):
    found = rules_in(kind)
    assert {name: [p for p, _ in places] for name, places in found.items()} == {
        name: [path] for name, path in WHERE[kind].items()}


def test_every_rule_is_used():
    assert set(WHERE["XdpProgram"]) == set(schema.CEL_RULES)


@pytest.mark.parametrize("rule", schema.CEL_RULES.values(), ids=lambda r: r.name)
def test_rule_shape(rule):
    entry = rule.to_schema()
    assert rule.reason in REASONS
    assert entry["rule"].strip() and "\n" not in entry["rule"]
    # the API server requires a message without line breaks; ours are sentences that name
    # what is wrong, never the default "failed rule: <expression>"
    assert entry["message"] and "\n" not in entry["message"] and rule.rule not in entry["message"]
    assert set(entry) <= {"rule", "message", "messageExpression", "reason", "fieldPath"}


@pytest.mark.parametrize("kind", ["XdpProgram", "XdpAttachment"])
def test_field_paths_name_a_declared_field(kind):
    for name, places in rules_in(kind).items():
        rule = schema.CEL_RULES[name]
        for path, node in places:
            if rule.field_path is None:
                continue
            assert rule.field_path.startswith(".") and rule.field_path.count(".") == 1, rule.field_path
            assert rule.field_path[1:] in node.get("properties", {}), f"{kind}{path}: {rule.field_path}"


def test_required_rules_give_a_required_reason_and_exclusive_ones_forbidden():
    """The reason tells a client what kind of mistake it is: a missing choice is
    FieldValueRequired, a second choice FieldValueForbidden."""
    for name, rule in schema.CEL_RULES.items():
        if name.endswith("-required"):
            assert rule.reason == schema.FIELD_VALUE_REQUIRED, name
        if name.endswith("-exclusive") or name.endswith("-forbidden"):
            assert rule.reason == schema.FIELD_VALUE_FORBIDDEN, name


@pytest.mark.parametrize("kind", ["XdpProgram", "XdpAttachment"])
def test_what_a_rule_reads_is_bounded(kind):
    """The API server estimates a rule's cost from the sizes the schema allows: every string,
    list and map at or below a rule's node has a maximum (an enum bounds a string too).
    Map keys cannot be bounded by a schema: rules on keys keep a static message (a
    messageExpression built from the keys was refused as too costly on 1.37)."""
    for name, places in rules_in(kind).items():
        for path, node in places:
            for sub_path, sub in walk(node, path):
                t = sub.get("type")
                if t == "string":
                    assert "maxLength" in sub or "enum" in sub, f"{kind}{sub_path} (read by {name})"
                elif t == "array":
                    assert "maxItems" in sub, f"{kind}{sub_path} (read by {name})"
                elif t == "object" and isinstance(sub.get("additionalProperties"), dict):
                    assert "maxProperties" in sub, f"{kind}{sub_path} (read by {name})"
            if "additionalProperties" in node:
                assert "messageExpression" not in schema.CEL_RULES[name].to_schema(), name


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_no_openapi_junctors_left(kind):
    """oneOf/anyOf/allOf/not are gone: their messages name no field (1.37 reports a oneOf
    failure on `<nil>`: "must validate one and only one schema (oneOf)"); CEL rules say
    what to do instead, on the field."""
    for path, node in walk(schema.openapi_schema(CRDS[kind])):
        assert not {"oneOf", "anyOf", "allOf", "not"} & set(node), f"{kind}{path}"


def test_define_value_rule_lists_every_guarded_identifier():
    """The CEL rule and spec.define_file_access refuse the same identifiers."""
    rule = schema.DEFINE_VALUE_NO_OPERATOR.rule
    start = rule.index(" in [") + len(" in [")
    listed = set(re.findall(r"r'([^']*)'", rule[start:rule.index("]", start)]))
    assert listed == set(spec.GUARDED_OPERATORS) | spec.GUARDED_PREFIXES
    assert f"findAll(r'{spec.IDENTIFIER_TOKEN}')" in rule


def test_rule_constants_come_from_the_validator():
    """Limits and patterns are the validator's own constants, not copies."""
    assert f"<= {spec.INLINE_SOURCE_MAX_BYTES}" in schema.INLINE_BYTES.rule
    assert f"size(k) <= {spec.C_IDENTIFIER_MAX}" in schema.DEFINE_NAMES.rule
    assert f"r'{spec.C_IDENTIFIER}'" in schema.DEFINE_NAMES.rule
    assert f"r'{spec.LABEL_KEY}'" in schema.MATCH_LABELS_KEYS.rule
    assert f"lastIndexOf('/') <= {spec.DNS_SUBDOMAIN_MAX}" in schema.EXPRESSION_KEY_PREFIX.rule


# --- selectableFields ------------------------------------------------------------------------
def test_attachments_select_on_the_node_name():
    (version,) = CRDS["XdpAttachment"]["spec"]["versions"]
    assert version["selectableFields"] == [{"jsonPath": ".spec.nodeName"}]
    spec_schema = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec_schema["properties"]["nodeName"]["type"] == "string"
    assert "nodeName" in spec_schema["required"]
    for kind in ("XdpProgram", "XdpNode"):
        assert "selectableFields" not in CRDS[kind]["spec"]["versions"][0]


@pytest.mark.parametrize("node", ["node-1", "node-1.example.com", "n" * 253])
def test_the_agent_selects_on_the_selectable_field_with_the_whole_node_name(node):
    (field,) = schema.ATTACHMENT_SELECTABLE_FIELDS
    assert attachment_field_selector(node) == f"{field.lstrip('.')}={node}"


def test_a_long_node_name_is_selected_as_it_is_not_as_its_shortened_label():
    """The node label's value is shortened past 63 characters; the field selector is not."""
    node = "n" * 253
    assert names.node_label_value(node) != node
    assert attachment_field_selector(node).endswith("=" + node)


def test_docs_name_every_rule_with_its_reason_and_message():
    """docs/api.md, "Where each rule is enforced": a table row per rule says its name, its
    reason when not FieldValueInvalid, and its message (up to any parenthesis, which the
    docs abbreviate)."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()
    section = text[text.index("## Where each rule is enforced"):text.index("## What a source may include")]
    for rule in schema.CEL_RULES.values():
        (row,) = [line for line in section.splitlines() if f"`{rule.name}`" in line]
        said = row[row.index(f"`{rule.name}`"):].split("; `")[0]          # this rule's part of the row
        assert (rule.reason in said) == (rule.reason != schema.FIELD_VALUE_INVALID), (rule.name, said)
        shown = rule.message.split("(")[0].strip() if rule.message_expression is None else "bytes of UTF-8"
        assert shown in said, (rule.name, shown, said)
