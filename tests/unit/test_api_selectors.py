"""Label selector matching with Kubernetes semantics (kube_xdp_api.selectors)."""

from __future__ import annotations

import pytest

from kube_xdp_api.selectors import matches
from kube_xdp_api.spec import LabelSelector, SpecError

LABELS = {"kubernetes.io/os": "linux", "role": "edge", "zone": "a", "empty": ""}


def expr(key, operator, *values):
    item = {"key": key, "operator": operator}
    if values:
        item["values"] = list(values)
    return {"matchExpressions": [item]}


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ({}, LABELS, True),
        (None, LABELS, True),
        ({}, {}, True),
        ({"matchLabels": {"role": "edge"}}, LABELS, True),
        ({"matchLabels": {"role": "core"}}, LABELS, False),
        ({"matchLabels": {"missing": "x"}}, LABELS, False),
        ({"matchLabels": {"empty": ""}}, LABELS, True),
        ({"matchLabels": {"role": "edge", "zone": "b"}}, LABELS, False),
        (expr("zone", "In", "a", "b"), LABELS, True),
        (expr("zone", "In", "b"), LABELS, False),
        (expr("missing", "In", "a"), LABELS, False),
        (expr("zone", "NotIn", "b"), LABELS, True),
        (expr("zone", "NotIn", "a"), LABELS, False),
        (expr("missing", "NotIn", "a"), LABELS, True),
        (expr("role", "Exists"), LABELS, True),
        (expr("empty", "Exists"), LABELS, True),
        (expr("missing", "Exists"), LABELS, False),
        (expr("missing", "DoesNotExist"), LABELS, True),
        (expr("role", "DoesNotExist"), LABELS, False),
        ({"matchLabels": {"role": "edge"}, **expr("zone", "In", "b")}, LABELS, False),
        ({"matchExpressions": [{"key": "role", "operator": "Exists"},
                               {"key": "zone", "operator": "NotIn", "values": ["c"]}]}, LABELS, True),
        ({"matchExpressions": [{"key": "role", "operator": "Exists"},
                               {"key": "zone", "operator": "NotIn", "values": ["a"]}]}, LABELS, False),
        (expr("zone", "In", "a"), None, False),
        (expr("zone", "NotIn", "a"), None, True),
    ],
    ids=[
        "empty-matches-all", "none-matches-all", "empty-matches-unlabelled",
        "labels-equal", "labels-differ", "labels-missing-key", "labels-empty-value", "labels-all-must-hold",
        "in-hit", "in-miss", "in-missing-key", "notin-hit", "notin-miss", "notin-missing-key-matches",
        "exists", "exists-empty-value", "exists-missing", "doesnotexist-missing", "doesnotexist-present",
        "labels-and-expressions-and", "expressions-all-hold", "expressions-one-fails",
        "in-no-labels", "notin-no-labels",
    ],
)
def test_matches(selector, labels, expected):
    assert matches(selector, labels) is expected


def test_parsed_selector_is_accepted():
    selector = LabelSelector.from_dict({"matchLabels": {"role": "edge"}})
    assert matches(selector, LABELS)


@pytest.mark.parametrize(
    "selector",
    [expr("zone", "In"), expr("zone", "Exists", "a"), expr("zone", "Gt", "1"), {"matchLabels": {"a b": "x"}}],
    ids=["in-without-values", "exists-with-values", "unknown-operator", "bad-label-key"],
)
def test_invalid_selector_raises(selector):
    with pytest.raises(SpecError):
        matches(selector, LABELS)
