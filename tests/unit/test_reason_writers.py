"""Every reason the operator and the agent can write is in kube_xdp_api.reasons.CATALOGUE.

Two guards, one at run time and one here:
- the writers refuse an uncatalogued reason: `conditions.set_condition`, `events.event_body`
  (and so `events.post`), and `reasons.require`, which the agent's status writers
  (record.IfaceRecord/Refused.to_entry, report.attachment_status) call on every `reason`
  they fill (tests: test_api_conditions, test_api_events, test_agent_report);
- this scan reads the source of every module of the operator, the agent and the API model
  and finds each place a reason is written or handed on: the reason argument of a call to
  set_condition / event_body / post / event, any `reason=` keyword, the value of a
  `"reason"` key in a dict literal, a class's `reason = ...` attribute, and the first item
  of a `(reason, message)` failure tuple (`failure=` keywords and the tuples a
  `*_event`/`failure_of` function returns). Where that is a literal string, a module-level
  name bound to one, or `reasons.NAME`, the reason must be catalogued. (A reason passed on
  in a variable was checked where it was made.) So a new reason cannot be written without
  being catalogued first: a literal in a new writer fails here before it fails at run time.

The kernel layer's two internal reasons (KernelError's and BpfSyscallError's) are not API:
they are never written (the agent maps any uncatalogued error reason to a catalogued one,
execute.catalogued) and are listed here by name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from kube_xdp_api import reasons

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = [ROOT / "operator" / "kube_xdp_operator", ROOT / "agent" / "kube_xdp_agent", ROOT / "api" / "kube_xdp_api"]
INTERNAL = {"KernelError", "BpfSyscallFailed"}       # kernel/errors.py: never written (execute.catalogued)

# callee name -> (the index of its reason argument, the fewest arguments such a call has):
# set_condition(conditions, type, status, reason, ...), events.event_body(obj, type, reason,
# ...), events.post(core, obj, type, reason, ...), the agent's writer.event(att, type,
# reason, message), the operator's put(type, status, reason, message) around set_condition
REASON_ARG = {"set_condition": (3, 5), "event_body": (2, 4), "post": (3, 5), "event": (2, 4), "put": (2, 4)}


def modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in pkg.rglob("*.py") if p.name != "reasons.py")


def module_strings(tree: ast.Module) -> dict[str, str]:
    """NAME -> "literal" for the module's top-level string assignments."""
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    out[target.id] = node.value.value
    return out


def reason_expressions(tree: ast.Module) -> list[ast.expr]:
    """Every expression that is written or handed on as a reason (see the docstring)."""
    found: list[ast.expr] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            index, fewest = REASON_ARG.get(name, (None, 0))
            if index is not None and len(node.args) >= fewest and not any(isinstance(a, ast.Starred)
                                                                           for a in node.args[:index + 1]):
                found.append(node.args[index])
            for kw in node.keywords:
                if kw.arg == "reason":
                    found.append(kw.value)
                elif kw.arg == "failure" and isinstance(kw.value, ast.Tuple) and kw.value.elts:
                    found.append(kw.value.elts[0])
        elif isinstance(node, ast.Dict):
            found += [v for k, v in zip(node.keys, node.values)
                      if isinstance(k, ast.Constant) and k.value == "reason" and v is not None]
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "reason"
                                                        for t in item.targets):
                    found.append(item.value)
        elif isinstance(node, ast.FunctionDef) and (node.name.endswith("_event") or node.name == "failure_of"):
            for ret in ast.walk(node):
                if isinstance(ret, ast.Return) and isinstance(ret.value, ast.Tuple) and len(ret.value.elts) >= 2:
                    elts = ret.value.elts
                    found.append(elts[1] if len(elts) == 3 else elts[0])   # (type, reason, message) / (reason, message)
    return found


def resolve(expr: ast.expr, strings: dict[str, str]) -> str | None:
    """The reason `expr` writes when it can be read from the source, else None."""
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
        return expr.value
    if isinstance(expr, ast.Name):
        return strings.get(expr.id)
    if isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name) and expr.value.id == "reasons":
        value = getattr(reasons, expr.attr, None)
        return value if isinstance(value, str) else f"reasons.{expr.attr} (not defined)"
    if isinstance(expr, ast.BoolOp):            # `e.reason or reasons.ATTACH_FAILED`: each literal side
        sides = [resolve(v, strings) for v in expr.values]
        bad = [s for s in sides if s is not None and s not in reasons.CATALOGUE and s not in INTERNAL]
        return bad[0] if bad else next((s for s in sides if s is not None), None)
    return None


def written_reasons() -> list[tuple[str, int, str]]:
    out = []
    for path in modules():
        tree = ast.parse(path.read_text(), str(path))
        strings = module_strings(tree)
        for expr in reason_expressions(tree):
            value = resolve(expr, strings)
            if value is not None:
                out.append((str(path.relative_to(ROOT)), expr.lineno, value))
    return out


def test_every_reason_a_writer_names_is_catalogued():
    found = written_reasons()
    missing = [f"{path}:{line}: {value!r}" for path, line, value in found
               if value not in reasons.CATALOGUE and not (value in INTERNAL and path.endswith("kernel/errors.py"))]
    assert not missing, "reasons written but not in kube_xdp_api.reasons.CATALOGUE:\n" + "\n".join(missing)


def test_the_scan_sees_the_writers_of_both_sides():
    """The scan is not vacuous: it finds reasons in the operator, the agent's reconcile and
    execution, its XdpNode, and the kernel layer's errors."""
    where = {(path, value) for path, _, value in written_reasons()}
    for path, value in [("operator/kube_xdp_operator/status.py", reasons.NO_NODES_SELECTED),
                        ("agent/kube_xdp_agent/execute.py", reasons.CONFLICT),
                        ("agent/kube_xdp_agent/reconcile.py", reasons.PIN_REPAIRED),
                        ("agent/kube_xdp_agent/reconcile.py", reasons.TOOK_OVER),
                        ("agent/kube_xdp_agent/nodeinfo.py", reasons.PROBED),
                        ("agent/kube_xdp_agent/kernel/errors.py", reasons.HOOK_BUSY),
                        ("agent/kube_xdp_agent/kernel/offload.py", reasons.OFFLOAD_UNSUPPORTED)]:
        assert (path, value) in where, (path, value)


@pytest.mark.parametrize("source", [
    'cond.set_condition(c, "Ready", "False", "Unheardof", "", 1, now)',
    'events.post(core, obj, "Warning", "Unheardof", "x", component="c")',
    'self.writer.event(att, "Warning", "Unheardof", "x")',
    'put(cond.READY, cond.FALSE, "Unheardof", message)',
    'IfaceRecord("eth0", False, reason="Unheardof")',
    'x = {"reason": "Unheardof"}',
    'class E(KernelError):\n    reason = "Unheardof"',
    'UNHEARD = "Unheardof"\nf(reason=UNHEARD)',
    'attachment_status(old=None, generation=1, now=t, failure=("Unheardof", "x"))',
    'def takeover_event(r):\n    return ("Normal", "Unheardof", "x")',
], ids=["set_condition", "post", "event", "operator-put", "reason-keyword", "dict", "class-attribute", "module-name", "failure",
        "event-tuple"])
def test_the_scan_finds_an_uncatalogued_reason(source):
    tree = ast.parse(source)
    assert [resolve(e, module_strings(tree)) for e in reason_expressions(tree)] == ["Unheardof"]
