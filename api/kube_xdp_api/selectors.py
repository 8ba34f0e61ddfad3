"""Label selector matching with Kubernetes semantics (pure).

- `matchLabels` and every `matchExpressions` requirement must all hold (AND).
- `In`: the label exists and its value is one of `values`.
- `NotIn`: the label is absent, or its value is not one of `values`.
- `Exists` / `DoesNotExist`: the key is present / absent (values ignored).
- An empty selector (`{}`, no requirements) matches everything. `None` is treated the
  same: the XdpProgram schema defaults `nodeSelector` to `{}` ("every node"), so a
  missing selector must not mean "nothing" here (unlike `metav1.LabelSelectorAsSelector`
  for a nil pointer).
"""

from __future__ import annotations

from collections.abc import Mapping

from kube_xdp_api.spec import LabelSelector


def parse_selector(selector: LabelSelector | Mapping | None) -> LabelSelector:
    """A validated LabelSelector from a dict (raises spec.SpecError) or as is."""
    if isinstance(selector, LabelSelector):
        return selector
    return LabelSelector.from_dict(selector)


def matches(selector: LabelSelector | Mapping | None, labels: Mapping[str, str] | None) -> bool:
    """True when `labels` satisfy `selector`."""
    sel = parse_selector(selector)
    labels = labels or {}
    for key, value in sel.match_labels:
        if labels.get(key) != value:
            return False
    for req in sel.match_expressions:
        present = req.key in labels
        if req.operator == "In":
            ok = present and labels[req.key] in req.values
        elif req.operator == "NotIn":
            ok = not present or labels[req.key] not in req.values
        elif req.operator == "Exists":
            ok = present
        elif req.operator == "DoesNotExist":
            ok = not present
        else:  # unreachable: LabelSelectorRequirement validates the operator
            raise ValueError(f"unknown selector operator {req.operator!r}")
        if not ok:
            return False
    return True
