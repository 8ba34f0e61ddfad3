"""No agent decision reads a message or a pin path: messages are for people.

The agent's memory is its status, and the fields it decides from are structured
(record.py: mode, preferredMode, refused[].mode, progId, digest, linkId, reason). This scan
reads every module of the agent package (kernel layer included) and lists each place that
READS a `"message"` or `"pinPath"` key (a subscript in load context, or `.get("message")`):
each must be one of the reads listed below, which copy prose along without looking at it.
A new read (e.g. a `startswith` on a status message to decide whether a fallback holds, as
the agent once did) fails here. The behaviour is checked too: the agent does the same with
every message and pin path of its status replaced by nonsense
(test_agent_controller.py::test_decisions_are_the_same_whatever_the_messages_and_pin_paths_say).
"""

from __future__ import annotations

import ast
from pathlib import Path

AGENT = Path(__file__).resolve().parents[2] / "agent" / "kube_xdp_agent"
PROSE = {"message", "pinPath"}

# (module, function) -> why reading the key there decides nothing
ALLOWED = {
    ("record.py", "_record"): "a refusal's words, carried into the rebuilt entry while its fallback holds",
    ("inventory.py", "previous_from_status"): "a probe's refusal text, carried into the next XdpNode",
    ("build.py", "_error"): "the build worker's reply (not a status): the error message it raised",
}


def reads_in(tree: ast.Module, module: str) -> list[tuple[str, str, int, str]]:
    """(module, innermost function, line, key) of every read of a prose key in `tree`."""
    found: dict[tuple[int, str], str] = {}
    funcs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    for func in [tree, *funcs]:            # outer first: an inner function's name wins
        name = getattr(func, "name", "<module>")
        for node in ast.walk(func):
            key = None
            if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) \
                    and isinstance(node.slice, ast.Constant):
                key = node.slice.value
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
                    and node.args and isinstance(node.args[0], ast.Constant):
                key = node.args[0].value
            if key in PROSE:
                found[(node.lineno, key)] = name
    return sorted((module, name, line, key) for (line, key), name in found.items())


def prose_reads() -> list[tuple[str, str, int, str]]:
    return [r for path in sorted(AGENT.rglob("*.py"))
            for r in reads_in(ast.parse(path.read_text(), str(path)), str(path.relative_to(AGENT)))]


def test_no_agent_code_reads_a_message_or_a_pin_path_to_decide():
    reads = prose_reads()
    unexplained = [f"{m}:{line} {fn}() reads {key!r}" for m, fn, line, key in reads if (m, fn) not in ALLOWED]
    assert not unexplained, ("agent code reads prose; decide from structured fields (record.py) instead:\n"
                             + "\n".join(unexplained))


def test_the_allowed_reads_exist_and_the_scan_finds_them():
    """Not vacuous: each allowed read is found (and stays needed); a read of a status
    message, like the agent's old settled_interfaces, is found."""
    assert {(m, fn) for m, fn, _, _ in prose_reads()} == set(ALLOWED)
    tree = ast.parse("def settled(status):\n"
                     "    return [i for i in status['interfaces'] if i.get('message', '').startswith('attached')]\n"
                     "def recorded(entry):\n"
                     "    return entry['pinPath'].split('/')[-2]\n"
                     "def writes(entry):\n"
                     "    entry['message'] = 'for people'\n")
    assert {(fn, key) for _, fn, _, key in reads_in(tree, "old.py")} == {("settled", "message"),
                                                                       ("recorded", "pinPath")}
