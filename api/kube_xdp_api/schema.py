"""The CRD schemas of kube-xdp, as Python data: the one source of truth.

`crds/*.yaml` (and the chart's copy) are generated from this module and a unit test
fails if they drift:

    python -m kube_xdp_api.schema --write crds/     # regenerate (make crds)
    python -m kube_xdp_api.schema --check crds/     # exit 1 with a diff if stale

Target: apiextensions.k8s.io/v1 on Kubernetes 1.32 or later (tested on 1.37): structural
schemas with OpenAPI value validation (pattern, enum, min/max, maxItems, maxProperties,
required) plus CEL rules (`x-kubernetes-validations`, GA since 1.29 with `reason`,
`fieldPath` and `messageExpression`) for what OpenAPI cannot say: exactly one source and
one interfaces choice, map keys, UTF-8 byte counts, selector operator/values pairing,
define values that could become preprocessor operators. The rules are data (`CelRule`,
listed in `CEL_RULES`): tests check each one's shape here and its refusal on the real API
server. What CEL cannot say (Python regex syntax, the C source scan) is checked only by
kube_xdp_api.spec, which both the operator and the agent run on everything anyway; see
docs/api.md, "Where each rule is enforced".

CEL cost: the API server refuses a CRD whose rules' estimated cost exceeds its budget,
and estimates from the bounds it sees, so every string, list and map a rule reads has a
maxLength / maxItems / maxProperties here. Map keys have no length a schema can state:
the rules on keys have static messages (a messageExpression listing the bad keys was
refused as over budget by more than 100x on 1.37), and a messageExpression never
concatenates `string(int)` (unbounded in the estimate; format() is not).

Defaults live only in the XdpProgram schema. The XdpAttachment spec has none: the
operator always writes every field, and a server-side default would make the desired
and the stored spec differ forever.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kube_xdp_api import conditions, names, spec

Schema = dict[str, Any]

HEADER = (
    "# Generated from api/kube_xdp_api/schema.py (the one source of truth) by\n"
    "#   python -m kube_xdp_api.schema --write <dir>      (make crds)\n"
    "# Do not edit by hand: change schema.py and regenerate.\n"
)

# The XdpProgram name rule (docs/api.md). A v1 structural schema may restrict only
# metadata.name/generateName; drop this entry to lift the rule at the API server (the
# operator still refuses bad names with spec.validate_program_name).
PROGRAM_NAME_SCHEMA: Schema = {
    "type": "string",
    "maxLength": spec.DNS_LABEL_MAX,
    "pattern": spec.DNS_LABEL,
}

STATUS_INTERFACES_MAX = 1024
# How an attachment holds an interface's hook (status.interfaces[].attachedBy; the agent's
# record.LINK / NETLINK).
ATTACHED_BY = ("link", "netlink")

# The XdpAttachment fields a client may select on (`fieldSelector`): each agent lists and
# watches `spec.nodeName=<its node>`.
ATTACHMENT_SELECTABLE_FIELDS = (".spec.nodeName",)


# --- CEL rules (x-kubernetes-validations) -------------------------------------------------
# The reasons a rule may give (apiextensions ValidationRule.reason); the API server puts
# the reason and the field into the 422 response's `details.causes`.
FIELD_VALUE_INVALID = "FieldValueInvalid"
FIELD_VALUE_FORBIDDEN = "FieldValueForbidden"
FIELD_VALUE_REQUIRED = "FieldValueRequired"
FIELD_VALUE_DUPLICATE = "FieldValueDuplicate"


@dataclass(frozen=True)
class CelRule:
    """One CEL validation rule: `name` is ours (tests and docs), the rest goes into the CRD.

    `message` is what the API server says when the rule fails (and what it falls back to
    when `message_expression` is set but cannot be evaluated); `field_path` is relative to
    the schema node the rule sits on (unset: the error names that node itself)."""

    name: str
    rule: str
    message: str
    reason: str = FIELD_VALUE_INVALID
    field_path: str | None = None
    message_expression: str | None = None

    def to_schema(self) -> dict[str, str]:
        out = {"rule": self.rule, "message": self.message}
        if self.message_expression is not None:
            out["messageExpression"] = self.message_expression
        out["reason"] = self.reason
        if self.field_path is not None:
            out["fieldPath"] = self.field_path
        return out


def _cel_string(text: str) -> str:
    """A CEL raw string literal holding `text` (no escapes: regex backslashes stay as they are)."""
    assert "'" not in text and "\n" not in text, text
    return f"r'{text}'"


def _cel_list(items) -> str:
    return "[" + ", ".join(_cel_string(i) for i in sorted(items)) + "]"


_C_IDENTIFIER_TEXT = "C identifiers ([A-Za-z_][A-Za-z0-9_]*) of at most 64 characters"
_OPERATORS_TEXT = ", ".join(spec.GUARDED_OPERATORS)

SOURCE_EXCLUSIVE = CelRule(
    "source-exclusive",
    "!(has(self.inline) && has(self.configMapRef))",
    "must not be set together with inline: set exactly one of inline or configMapRef",
    FIELD_VALUE_FORBIDDEN,
    field_path=".configMapRef",
)
SOURCE_REQUIRED = CelRule(
    "source-required",
    "has(self.inline) || has(self.configMapRef)",
    "set exactly one of inline or configMapRef",
    FIELD_VALUE_REQUIRED,
)
INLINE_BYTES = CelRule(
    "inline-bytes",
    f"size(bytes(self)) <= {spec.INLINE_SOURCE_MAX_BYTES}",
    f"must be at most {spec.INLINE_SOURCE_MAX_BYTES} bytes of UTF-8",
    # format(), not '+': the estimated size of string(int) is unbounded, and so would be
    # the cost of concatenating it (the API server refuses that messageExpression)
    message_expression=f"'is %d bytes of UTF-8, at most {spec.INLINE_SOURCE_MAX_BYTES}'.format([size(bytes(self))])",
)
INLINE_NO_NUL = CelRule(
    "inline-no-nul",
    "!self.contains('\\x00')",
    "must not contain a NUL character",
)
DEFINE_NAMES = CelRule(
    "define-names",
    f"self.all(k, size(k) <= {spec.C_IDENTIFIER_MAX} && k.matches({_cel_string(spec.C_IDENTIFIER)}))",
    f"names must be {_C_IDENTIFIER_TEXT}",
)
DEFINE_NAMES_NOT_OPERATORS = CelRule(
    "define-names-not-operators",
    f"self.all(k, !(k in {_cel_list(spec.GUARDED_OPERATORS)}))",
    f"a name must not be a preprocessor operator ({_OPERATORS_TEXT})",
    FIELD_VALUE_FORBIDDEN,
)
DEFINE_VALUE_NO_DOTDOT = CelRule(
    "define-value-no-dotdot",
    "!self.contains('..')",
    "must not contain '..'",
)
DEFINE_VALUE_NO_OPERATOR = CelRule(
    "define-value-no-operator",
    f"self.findAll({_cel_string(spec.IDENTIFIER_TOKEN)}).all(t, !(t in"
    f" {_cel_list(set(spec.GUARDED_OPERATORS) | spec.GUARDED_PREFIXES)}))",
    f"must not hold a preprocessor operator ({_OPERATORS_TEXT}) or an identifier that token pasting (##)"
    " could complete into one (_, _P, ..., __, __has_, ...): its use cannot be checked",
    FIELD_VALUE_FORBIDDEN,
)
INTERFACES_EXCLUSIVE = CelRule(
    "interfaces-exclusive",
    "(has(self.names) ? 1 : 0) + (has(self.pattern) ? 1 : 0) + (has(self.primary) ? 1 : 0) <= 1",
    "set only one of names, pattern or primary: true",
    FIELD_VALUE_FORBIDDEN,
)
INTERFACES_REQUIRED = CelRule(
    "interfaces-required",
    "has(self.names) || has(self.pattern) || has(self.primary)",
    "set one of names, pattern or primary: true",
    FIELD_VALUE_REQUIRED,
)
INTERFACE_NAME_NOT_DOTS = CelRule(
    "interface-name-not-dots",
    "self != '.' && self != '..'",
    "'.' and '..' are not interface names",
)
_LABEL_KEY_OK = (
    f"size(k) <= {spec.LABEL_KEY_MAX} && k.matches({_cel_string(spec.LABEL_KEY)})"
    f" && k.lastIndexOf('/') <= {spec.DNS_SUBDOMAIN_MAX}"
)
_LABEL_KEY_TEXT = (
    "label keys: an optional prefix (a DNS subdomain of at most 253 characters) and '/', then a name"
    " of 1-63 of [A-Za-z0-9-_.], alphanumeric at both ends"
)
MATCH_LABELS_KEYS = CelRule(
    "match-labels-keys",
    f"self.all(k, {_LABEL_KEY_OK})",
    f"keys must be {_LABEL_KEY_TEXT}",
)
EXPRESSION_KEY_PREFIX = CelRule(
    "expression-key-prefix",
    f"self.lastIndexOf('/') <= {spec.DNS_SUBDOMAIN_MAX}",
    f"the prefix before '/' must be at most {spec.DNS_SUBDOMAIN_MAX} characters",
)
EXPRESSION_VALUES_REQUIRED = CelRule(
    "expression-values-required",
    "!(self.operator in ['In', 'NotIn']) || (has(self.values) && size(self.values) > 0)",
    "required (at least one value) for operators In and NotIn",
    FIELD_VALUE_REQUIRED,
    field_path=".values",
)
EXPRESSION_VALUES_FORBIDDEN = CelRule(
    "expression-values-forbidden",
    "!(self.operator in ['Exists', 'DoesNotExist']) || !has(self.values) || size(self.values) == 0",
    "must be empty for operators Exists and DoesNotExist",
    FIELD_VALUE_FORBIDDEN,
    field_path=".values",
)

CEL_RULES: dict[str, CelRule] = {r.name: r for r in (
    SOURCE_EXCLUSIVE, SOURCE_REQUIRED, INLINE_BYTES, INLINE_NO_NUL, DEFINE_NAMES, DEFINE_NAMES_NOT_OPERATORS,
    DEFINE_VALUE_NO_DOTDOT, DEFINE_VALUE_NO_OPERATOR, INTERFACES_EXCLUSIVE, INTERFACES_REQUIRED,
    INTERFACE_NAME_NOT_DOTS, MATCH_LABELS_KEYS, EXPRESSION_KEY_PREFIX, EXPRESSION_VALUES_REQUIRED,
    EXPRESSION_VALUES_FORBIDDEN,
)}


def _validations(*rules: CelRule) -> dict[str, list[dict[str, str]]]:
    return {"x-kubernetes-validations": [r.to_schema() for r in rules]}


# --- Small builders -----------------------------------------------------------------------
def _str(description: str, *, pattern: str | None = None, max_len: int | None = None, min_len: int | None = None,
         **extra: Any) -> Schema:
    out: Schema = {"type": "string", "description": description}
    if min_len is not None:
        out["minLength"] = min_len
    if max_len is not None:
        out["maxLength"] = max_len
    if pattern is not None:
        out["pattern"] = pattern
    out.update(extra)
    return out


def _int(description: str, *, minimum: int | None = 0, maximum: int | None = None, fmt: str = "int64",
         **extra: Any) -> Schema:
    out: Schema = {"type": "integer", "format": fmt, "description": description}
    if minimum is not None:
        out["minimum"] = minimum
    if maximum is not None:
        out["maximum"] = maximum
    out.update(extra)
    return out


def _bool(description: str) -> Schema:
    return {"type": "boolean", "description": description}


def _obj(description: str, properties: dict[str, Schema], *, required: list[str] | None = None,
         **extra: Any) -> Schema:
    out: Schema = {"type": "object", "description": description}
    if required:
        out["required"] = required
    out["properties"] = properties
    out.update(extra)
    return out


def _mode(description: str) -> Schema:
    return _str(description, enum=list(spec.MODES))


def _reason(description: str) -> Schema:
    return _str(description, pattern=conditions.REASON_PATTERN, max_len=conditions.REASON_MAX, min_len=1)


def _message(description: str) -> Schema:
    return _str(description, max_len=conditions.MESSAGE_MAX)


def conditions_schema() -> Schema:
    """`status.conditions`: metav1.Condition, a list-map keyed by type."""
    return {
        "type": "array",
        "description": "Ready, Reconciling and Stalled (kstatus semantics), keyed by type.",
        "maxItems": 16,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": _obj(
            "One condition (metav1.Condition).",
            {
                "type": _str(
                    "Condition type: Ready, Reconciling or Stalled.",
                    max_len=316,
                    pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                    r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
                ),
                "status": _str("True, False or Unknown.", enum=list(conditions.STATUSES)),
                "reason": _reason("CamelCase reason, stable (catalogue: kube_xdp_api.reasons)."),
                "message": _str("Human-readable details.", max_len=conditions.CONDITION_MESSAGE_MAX),
                "lastTransitionTime": _str("When status last changed.", format="date-time"),
                "observedGeneration": _int("The metadata.generation this condition describes."),
            },
            required=["type", "status", "reason", "message", "lastTransitionTime"],
        ),
    }


def _interfaces_schema(*, with_default: bool) -> Schema:
    out = _obj(
        "Which interfaces on each node: exactly one of names, pattern or primary: true.",
        {
            "names": {
                "type": "array",
                "description": "Interface names (1-32), each 1-15 of [A-Za-z0-9_.-], not '.' or '..'.",
                "minItems": 1,
                "maxItems": spec.INTERFACE_NAMES_MAX,
                "x-kubernetes-list-type": "set",
                "items": _str(
                    "An interface name.",
                    pattern=spec.INTERFACE_NAME,
                    max_len=15,
                    **_validations(INTERFACE_NAME_NOT_DOTS),
                ),
            },
            "pattern": _str(
                "A Python regular expression matched against each interface name with re.fullmatch.",
                min_len=1,
                max_len=spec.INTERFACE_PATTERN_MAX,
            ),
            "primary": {
                "type": "boolean",
                "description": "true: the interface of the node's default route.",
                "enum": [True],
            },
        },
        **_validations(INTERFACES_EXCLUSIVE, INTERFACES_REQUIRED),
    )
    if with_default:
        out["default"] = {"primary": True}
    return out


def _compile_fields_properties(*, with_defaults: bool) -> dict[str, Schema]:
    """Fields shared by XdpProgram.spec and XdpAttachment.spec (spec.CompileFields)."""

    def default(value: Any) -> dict[str, Any]:
        return {"default": value} if with_defaults else {}

    return {
        "entrypoint": _str(
            "The C function to attach (a C identifier).",
            pattern=spec.C_IDENTIFIER,
            max_len=spec.C_IDENTIFIER_MAX,
            min_len=1,
        ),
        "defines": {
            "type": "object",
            "description": (
                "Macros passed to the compiler, one -DNAME=VALUE argument each: at most 32; names are C"
                " identifiers of at most 64 characters, not a preprocessor operator; values at most 128 of"
                " [A-Za-z0-9_.+-], no leading '-' except before a digit or '.', no '..', nothing that is or"
                " could be pasted into _Pragma, __pragma or a __has_* operator."
            ),
            "maxProperties": spec.DEFINES_MAX,
            "additionalProperties": _str(
                "A macro value.",
                pattern=spec.DEFINE_VALUE,
                max_len=spec.DEFINE_VALUE_MAX,
                **_validations(DEFINE_VALUE_NO_DOTDOT, DEFINE_VALUE_NO_OPERATOR),
            ),
            **_validations(DEFINE_NAMES, DEFINE_NAMES_NOT_OPERATORS),
            **default({}),
        },
        "interfaces": _interfaces_schema(with_default=with_defaults),
        "mode": _mode("Preferred attach mode: offload, native (driver) or generic (skb).") | default(
            spec.DEFAULT_MODE
        ),
        "fallback": {
            "type": "array",
            "description": "Modes tried in order when the preferred mode is refused; [] means this mode or fail.",
            "maxItems": len(spec.MODES),
            "x-kubernetes-list-type": "set",
            "items": _mode("An attach mode."),
            **default(list(spec.DEFAULT_FALLBACK)),
        },
        "priority": _int(
            "Who wins when two programs select the same interface: higher wins, a tie goes to the older.",
            minimum=spec.PRIORITY_MIN,
            maximum=spec.PRIORITY_MAX,
            fmt="int32",
        )
        | default(spec.DEFAULT_PRIORITY),
        "takeOver": _bool(
            "Replace, atomically, an XDP program not managed by kube-xdp found on a selected interface"
            " (default false: such a program is never touched and the interface reports Conflict)."
        ),
    }


def _label_selector_schema() -> Schema:
    return _obj(
        "A label selector over Node labels; empty selects every node.",
        {
            "matchLabels": {
                "type": "object",
                "description": "Labels a node must carry, exactly.",
                "maxProperties": spec.MATCH_LABELS_MAX,
                "additionalProperties": _str("A label value.", pattern=spec.LABEL_VALUE, max_len=spec.LABEL_VALUE_MAX),
                **_validations(MATCH_LABELS_KEYS),
            },
            "matchExpressions": {
                "type": "array",
                "description": "Requirements, all of which must hold.",
                "maxItems": spec.MATCH_EXPRESSIONS_MAX,
                "items": _obj(
                    "A label requirement. In/NotIn need values; Exists/DoesNotExist take none.",
                    {
                        "key": _str("A label key.", pattern=spec.LABEL_KEY, max_len=spec.LABEL_KEY_MAX,
                                    **_validations(EXPRESSION_KEY_PREFIX)),
                        "operator": _str("In, NotIn, Exists or DoesNotExist.", enum=list(spec.SELECTOR_OPERATORS)),
                        "values": {
                            "type": "array",
                            "description": "Label values.",
                            "maxItems": spec.EXPRESSION_VALUES_MAX,
                            "items": _str("A label value.", pattern=spec.LABEL_VALUE, max_len=spec.LABEL_VALUE_MAX),
                        },
                    },
                    required=["key", "operator"],
                    **_validations(EXPRESSION_VALUES_REQUIRED, EXPRESSION_VALUES_FORBIDDEN),
                ),
            },
        },
        default={},
    )


# --- XdpProgram ------------------------------------------------------------------------------
def program_spec_schema() -> Schema:
    return _obj(
        "The XDP program, the nodes it belongs on, the interfaces and the attach mode.",
        {
            "source": _obj(
                "Where the C source is: exactly one of inline or configMapRef.",
                {
                    "inline": _str(
                        "The C source (at most 65536 bytes of UTF-8, no NUL).",
                        min_len=1,
                        max_len=spec.INLINE_SOURCE_MAX_BYTES,
                        **_validations(INLINE_BYTES, INLINE_NO_NUL),
                    ),
                    "configMapRef": _obj(
                        "A key of a ConfigMap holding the C source.",
                        {
                            "namespace": _str(
                                "The ConfigMap's namespace.", pattern=spec.DNS_LABEL, max_len=spec.DNS_LABEL_MAX
                            ),
                            "name": _str(
                                "The ConfigMap's name.", pattern=spec.DNS_SUBDOMAIN, max_len=spec.DNS_SUBDOMAIN_MAX
                            ),
                            "key": _str(
                                "The key holding the source.",
                                pattern=spec.CONFIGMAP_KEY,
                                max_len=spec.CONFIGMAP_KEY_MAX,
                            ),
                        },
                        required=["namespace", "name", "key"],
                    ),
                },
                **_validations(SOURCE_EXCLUSIVE, SOURCE_REQUIRED),
            ),
            **_compile_fields_properties(with_defaults=True),
            "nodeSelector": _label_selector_schema(),
        },
        required=["source", "entrypoint"],
    )


def program_status_schema() -> Schema:
    """Written by the operator only (kube_xdp_operator.status.aggregate)."""
    return _obj(
        "What the operator observed, aggregated from the program's XdpAttachments.",
        {
            "observedGeneration": _int("The metadata.generation this status describes."),
            "conditions": conditions_schema(),
            "selectedNodes": _int("Nodes the nodeSelector selects."),
            "readyNodes": _int("Selected nodes whose attachment is Ready for the current generation."),
            "failedNodes": _int("Selected nodes whose attachment reports a failure for the current generation."),
            "nodeSummary": _str("ready/selected, for the printer column.", max_len=64),
            "modes": {
                "type": "object",
                "description": "Attach mode -> number of interfaces attached in that mode.",
                "maxProperties": len(spec.MODES),
                "additionalProperties": _int("Interfaces attached in this mode."),
            },
            "modeSummary": _str("e.g. native=4,generic=2, for the printer column.", max_len=128),
            "failingNodes": {
                "type": "array",
                "description": "At most 10 failing nodes, sorted by name.",
                "maxItems": 10,
                "items": _obj(
                    "A failing node.",
                    {
                        "node": _str("The node's name.", max_len=spec.DNS_SUBDOMAIN_MAX),
                        "reason": _reason("The attachment's failure reason."),
                        "message": _message("The attachment's failure message (trimmed)."),
                    },
                    required=["node", "reason"],
                ),
            },
        },
    )


def _ready_columns() -> list[dict[str, Any]]:
    return [
        {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
        {"name": "Reason", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].reason'},
    ]


_AGE_COLUMN = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


def program_crd() -> dict[str, Any]:
    root = _root_schema(
        "XdpProgram: one XDP program, the nodes it belongs on, its interfaces and attach mode.",
        program_spec_schema(),
        program_status_schema(),
        metadata_name=PROGRAM_NAME_SCHEMA,
    )
    columns = [
        *_ready_columns(),
        {"name": "Nodes", "type": "string", "jsonPath": ".status.nodeSummary", "description": "ready/selected"},
        {"name": "Modes", "type": "string", "jsonPath": ".status.modeSummary"},
        _AGE_COLUMN,
        {"name": "Mode", "type": "string", "jsonPath": ".spec.mode", "priority": 1},
        {"name": "Entrypoint", "type": "string", "jsonPath": ".spec.entrypoint", "priority": 1},
    ]
    return _crd(names.PROGRAMS, names.PROGRAM_KIND, names.PROGRAM_SHORT_NAME, root, columns)


# --- XdpAttachment ---------------------------------------------------------------------------
def attachment_spec_schema() -> Schema:
    return _obj(
        "One program on one node: written by the operator, acted on by that node's agent.",
        {
            "nodeName": _str("The node.", pattern=spec.DNS_SUBDOMAIN, max_len=spec.DNS_SUBDOMAIN_MAX, min_len=1),
            "programRef": _obj(
                "The XdpProgram this attachment belongs to.",
                {
                    "name": _str("The program's name.", pattern=spec.DNS_LABEL, max_len=spec.DNS_LABEL_MAX),
                    "uid": _str("The program's uid.", min_len=1, max_len=spec.UID_MAX),
                },
                required=["name", "uid"],
            ),
            "programGeneration": _int("The program's metadata.generation this spec was built from.", minimum=1),
            "sourceDigest": _str(
                "sha256 hex of the program's source bytes; the agent refuses a source that does not match.",
                pattern=spec.SOURCE_DIGEST,
                max_len=64,
            ),
            **_compile_fields_properties(with_defaults=False),
        },
        required=[
            "nodeName",
            "programRef",
            "programGeneration",
            "sourceDigest",
            "entrypoint",
            "defines",
            "interfaces",
            "mode",
            "fallback",
            "priority",
        ],
    )


def attachment_status_schema() -> Schema:
    """Written by the agent only."""
    return _obj(
        "What the node's agent did, read back from the kernel.",
        {
            "observedGeneration": _int("The attachment's metadata.generation acted on."),
            "conditions": conditions_schema(),
            "reason": _reason("Top-level failure reason, if any."),
            "message": _message("Top-level failure message: compiler or verifier output, trimmed."),
            "interfaces": {
                "type": "array",
                "description": "One entry per selected interface.",
                "maxItems": STATUS_INTERFACES_MAX,
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["name"],
                "items": _obj(
                    "An interface and what is attached to it: the agent's structured record, which it decides "
                    "from on its next reconcile (messages and pinPath are for people).",
                    {
                        "name": _str("The interface.", max_len=15, min_len=1),
                        "ready": _bool("The program is attached here as asked."),
                        "mode": _mode("The mode read back from netlink (never assumed)."),
                        "preferredMode": _mode("The policy's first mode (spec.mode) when this entry was written."),
                        "refused": {
                            "type": "array",
                            "description": "The modes tried before `mode` and refused, in the order tried: why the "
                                           "preferred mode is not used.",
                            "maxItems": len(spec.MODES),
                            "x-kubernetes-list-type": "atomic",
                            "items": _obj(
                                "A mode the kernel or the device refused.",
                                {
                                    "mode": _mode("The mode."),
                                    "reason": _reason("Why (DriverModeUnsupported, OffloadUnsupported, "
                                                      "ProgramNotOffloadable)."),
                                    "errno": _int("The kernel's errno, when it gave one."),
                                    "message": _str("The kernel's or bcc's words, for people.", max_len=1024),
                                },
                                required=["mode", "reason"],
                            ),
                        },
                        "attachedBy": _str("How the program holds the hook: link (kube-xdp's pinned bpf_link: the "
                                           "kernel refuses other tools' netlink detach or replace) or netlink "
                                           "(where links cannot be used, or an atomic takeover of a "
                                           "netlink-attached program).", enum=list(ATTACHED_BY)),
                        "linkId": _int("The kernel's bpf_link id (attachedBy link)."),
                        "progId": _int("The kernel's program id."),
                        "digest": _str("The 12 hex digits the program is pinned under "
                                       "(<bpffs>/kube-xdp/<program>/<digest>/).", pattern=r"^[0-9a-f]{12}$"),
                        "tag": _str("The program tag (hex).", max_len=64),
                        "pinPath": _str("Where the program is pinned in bpffs (for people).", max_len=4096),
                        "reason": _reason("Why not ready; if ready, why not the preferred mode."),
                        "message": _message("Details, for people."),
                    },
                    required=["name"],
                ),
            },
            "compile": _obj(
                "The last compile.",
                {
                    "durationMs": _int("Compile and load time in milliseconds."),
                    "cacheHit": _bool("The compile cache served the object."),
                    "digest": _str("The compile key (source, entrypoint, defines, kernel).", max_len=128),
                },
            ),
        },
    )


def attachment_crd() -> dict[str, Any]:
    root = _root_schema(
        "XdpAttachment: one XdpProgram on one node; created by the operator, acted on by the node's agent.",
        attachment_spec_schema(),
        attachment_status_schema(),
    )
    columns = [
        {"name": "Node", "type": "string", "jsonPath": ".spec.nodeName"},
        {"name": "Program", "type": "string", "jsonPath": ".spec.programRef.name"},
        *_ready_columns(),
        _AGE_COLUMN,
        {"name": "Modes", "type": "string", "jsonPath": ".status.interfaces[*].mode", "priority": 1},
    ]
    return _crd(names.ATTACHMENTS, names.ATTACHMENT_KIND, names.ATTACHMENT_SHORT_NAME, root, columns,
                selectable_fields=ATTACHMENT_SELECTABLE_FIELDS)


# --- XdpNode -----------------------------------------------------------------------------------
def node_spec_schema() -> Schema:
    return _obj(
        "The node this object describes.",
        {"nodeName": _str("The node.", pattern=spec.DNS_SUBDOMAIN, max_len=spec.DNS_SUBDOMAIN_MAX, min_len=1)},
        required=["nodeName"],
    )


# The netdev family's names of the xdp-features bits (include/uapi/linux/netdev.h, enum
# netdev_xdp_act; the agent's kernel/netdev.py reads them), and where an interface's modes
# come from (the agent's inventory.py).
XDP_FEATURES = ("basic", "redirect", "ndo-xmit", "xsk-zerocopy", "hw-offload", "rx-sg", "ndo-xmit-sg")
MODES_FROM = ("xdpFeatures", "probe", "none")


def node_status_schema() -> Schema:
    """Written by the node's agent only."""
    return _obj(
        "What the node's agent found: kernel, bcc, headers, and each interface's XDP features and modes.",
        {
            "observedGeneration": _int("The metadata.generation this status describes."),
            "conditions": conditions_schema(),
            "kernelRelease": _str("uname -r.", max_len=256),
            "btf": _bool("The kernel exposes BTF (/sys/kernel/btf/vmlinux)."),
            "bccVersion": _str("The bcc library version.", max_len=64),
            "headers": _obj(
                "Kernel headers for bcc.",
                {
                    "found": _bool("Headers were found."),
                    "path": _str("Where.", max_len=4096),
                },
            ),
            "netdevFamily": _bool("The kernel reports interfaces' xdp-features (the netdev generic-netlink "
                                  "family, kernel 6.3+). Without it the agent finds modes by attach probing."),
            "interfaceCount": _int("Number of interfaces listed."),
            "modeSummary": _str("How many interfaces support each mode, e.g. native=3,generic=4.", max_len=128),
            "interfaces": {
                "type": "array",
                "description": "The node's interfaces.",
                "maxItems": STATUS_INTERFACES_MAX,
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["name"],
                "items": _obj(
                    "An interface.",
                    {
                        "name": _str("The interface.", max_len=15, min_len=1),
                        "ifindex": _int("Its index in the node's network namespace (a re-created interface "
                                        "has a new one: its modes are probed again)."),
                        "driver": _str("The driver (ethtool -i).", max_len=64),
                        "kind": _str("The link kind (veth, bridge, ...); absent for physical NICs.", max_len=64),
                        "xdpFeatures": {
                            "type": "array",
                            "description": "The XDP features the driver reports (netdev family): basic (native "
                                           "XDP), redirect, ndo-xmit, xsk-zerocopy, hw-offload (offload), "
                                           "rx-sg, ndo-xmit-sg. Absent when not read (kernel before 6.3).",
                            "maxItems": len(XDP_FEATURES),
                            "x-kubernetes-list-type": "set",
                            "items": _str("A feature.", enum=list(XDP_FEATURES)),
                        },
                        "modesFrom": _str("Where modes come from: xdpFeatures (read: generic always, native "
                                          "with basic, offload with hw-offload), probe (a test program attached "
                                          "and detached in each mode), none (not known: see unknownModes).",
                                          enum=list(MODES_FROM)),
                        "probed": _bool("True when the modes were found by attaching a test program; false when "
                                        "the agent's --inventory-interfaces did not select the interface for "
                                        "probing. Absent otherwise."),
                        "unknownModes": {
                            "type": "array",
                            "description": "Modes not known (the hook held a program when probed, the "
                                           "interface was not selected for probing, or nothing was read).",
                            "maxItems": len(spec.MODES),
                            "x-kubernetes-list-type": "set",
                            "items": _mode("An attach mode."),
                        },
                        "unsupported": {
                            "type": "array",
                            "description": "Modes the kernel refused when probed, with its message (modesFrom: "
                                           "probe).",
                            "maxItems": len(spec.MODES),
                            "x-kubernetes-list-type": "map",
                            "x-kubernetes-list-map-keys": ["mode"],
                            "items": _obj("A refused mode.", {"mode": _mode("The mode."),
                                                              "message": _message("The kernel's refusal.")},
                                          required=["mode"]),
                        },
                        "modes": {
                            "type": "array",
                            "description": "XDP modes the interface supports (see modesFrom).",
                            "maxItems": len(spec.MODES),
                            "x-kubernetes-list-type": "set",
                            "items": _mode("An attach mode."),
                        },
                        "attached": {
                            "type": "array",
                            "description": "Programs attached now, one per mode (read back from netlink).",
                            "maxItems": len(spec.MODES),
                            "x-kubernetes-list-type": "map",
                            "x-kubernetes-list-map-keys": ["mode"],
                            "items": _obj(
                                "An attached program.",
                                {"mode": _mode("The mode."), "progId": _int("The kernel's program id.")},
                                required=["mode"],
                            ),
                        },
                    },
                    required=["name"],
                ),
            },
        },
    )


def node_crd() -> dict[str, Any]:
    root = _root_schema(
        "XdpNode: one per node, written by its agent: kernel, bcc, headers, interfaces and XDP modes.",
        node_spec_schema(),
        node_status_schema(),
    )
    columns = [
        {"name": "Kernel", "type": "string", "jsonPath": ".status.kernelRelease"},
        {"name": "BCC", "type": "string", "jsonPath": ".status.bccVersion"},
        {"name": "Interfaces", "type": "integer", "jsonPath": ".status.interfaceCount"},
        {"name": "Modes", "type": "string", "jsonPath": ".status.modeSummary"},
        _AGE_COLUMN,
        {"name": "BTF", "type": "boolean", "jsonPath": ".status.btf", "priority": 1},
    ]
    return _crd(names.NODES, names.NODE_KIND, names.NODE_SHORT_NAME, root, columns)


# --- CRD assembly ------------------------------------------------------------------------------
def _root_schema(description: str, spec_schema: Schema, status_schema: Schema, *,
                 metadata_name: Schema | None = None) -> Schema:
    metadata: Schema = {"type": "object"}
    if metadata_name is not None:
        metadata["properties"] = {"name": metadata_name}
    return _obj(
        description,
        {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": metadata,
            "spec": spec_schema,
            # Until a controller writes the status, the API server shows observedGeneration
            # 0 (a default applied on read): kstatus (Flux, kpt) then says InProgress
            # instead of its "no status at all: Current", which would call a program that
            # nothing has placed, or an attachment no agent has acted on, ready.
            "status": {**status_schema, "default": {"observedGeneration": 0}},
        },
        required=["spec"],
    )


def _crd(plural: str, kind: str, short_name: str, root: Schema, columns: list[dict[str, Any]], *,
         selectable_fields: tuple[str, ...] = ()) -> dict[str, Any]:
    version: dict[str, Any] = {
        "name": names.VERSION,
        "served": True,
        "storage": True,
        "subresources": {"status": {}},
        "additionalPrinterColumns": columns,
    }
    if selectable_fields:
        version["selectableFields"] = [{"jsonPath": path} for path in selectable_fields]
    version["schema"] = {"openAPIV3Schema": root}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{names.GROUP}",
            "labels": {"app.kubernetes.io/part-of": "kube-xdp"},
        },
        "spec": {
            "group": names.GROUP,
            "scope": "Cluster",
            "names": {
                "plural": plural,
                "singular": kind.lower(),
                "kind": kind,
                "listKind": f"{kind}List",
                "shortNames": [short_name],
                "categories": [names.CATEGORY],
            },
            "versions": [version],
        },
    }


def all_crds() -> list[dict[str, Any]]:
    return [program_crd(), attachment_crd(), node_crd()]


def openapi_schema(crd: dict[str, Any]) -> Schema:
    """The openAPIV3Schema of a CRD's (only) version."""
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def render(crd: dict[str, Any]) -> str:
    """The YAML file for one CRD, header included (deterministic)."""
    return HEADER + yaml.safe_dump(crd, sort_keys=False, default_flow_style=False, width=100)


def file_name(crd: dict[str, Any]) -> str:
    return f"{crd['metadata']['name']}.yaml"


def rendered_files() -> dict[str, str]:
    """File name -> content, for every CRD."""
    return {file_name(crd): render(crd) for crd in all_crds()}


def check_dir(directory: Path) -> list[str]:
    """Differences between `directory` and the generated files: one message per file."""
    problems = []
    for name, want in rendered_files().items():
        path = directory / name
        if not path.exists():
            problems.append(f"{path}: missing")
            continue
        have = path.read_text()
        if have != want:
            diff = difflib.unified_diff(
                have.splitlines(keepends=True), want.splitlines(keepends=True), str(path), f"{path} (generated)"
            )
            problems.append("".join(diff))
    return problems


def write_dir(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, content in rendered_files().items():
        path = directory / name
        if not path.exists() or path.read_text() != content:
            tmp = path.with_suffix(".yaml.tmp")
            tmp.write_text(content)
            tmp.replace(path)
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kube_xdp_api.schema",
        description="Generate or check kube-xdp's CRD YAML from api/kube_xdp_api/schema.py.",
        epilog=(
            "examples:\n"
            "  python -m kube_xdp_api.schema --write crds/\n"
            "  python -m kube_xdp_api.schema --check crds/"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", metavar="DIR", type=Path, help="write one YAML file per CRD into DIR")
    action.add_argument("--check", metavar="DIR", type=Path, help="exit 1 with a diff if DIR differs")
    args = parser.parse_args(argv)
    if args.write is not None:
        for path in write_dir(args.write):
            print(f"wrote {path}")
        return 0
    problems = check_dir(args.check)
    if problems:
        for problem in problems:
            print(problem, file=sys.stderr)
        print(f"{args.check} is stale: run `python -m kube_xdp_api.schema --write {args.check}` (make crds)",
              file=sys.stderr)
        return 1
    print(f"{args.check}: up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
