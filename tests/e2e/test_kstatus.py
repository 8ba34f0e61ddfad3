"""kstatus, as Flux, kpt and cli-utils' appliers compute it, against XdpPrograms (and their
XdpAttachments) as the real operator and agents leave them on the rig, at every stage of
a program's life: does it agree with what the operator means?

The checker is kxstatus (build/tools/cmd/kxstatus: sigs.k8s.io/cli-utils' own
kstatus.Compute over the object read from the API server, built by kube_xdp_rig.gobuild).
For each stage the test reads the object, runs kxstatus, reads the object again (the
same resourceVersion, so kxstatus judged exactly that object), and compares three
things: kxstatus' verdict, the project's own reading of the object
(kube_xdp_api.conditions.kstatus, the rules of conventions.md) and the verdict the stage
calls for (docs/api.md, operator/kube_xdp_operator/status.py):

- progressing (placed, the node's agent has not reported): InProgress;
- Ready: Current;
- spec changed, the operator has not caught up (observedGeneration behind): InProgress;
- Stalled by a compile error, by a verifier rejection, by a spec the operator refuses: Failed;
- no node selected: Current (Ready=True, NoNodesSelected: the operator decided that a
  program that selects nothing has nothing left to do, so kstatus readers must not wait);
- deleting while an agent's finalizer holds the attachment: Terminating; then NotFound.

Transient stages are held still honestly: the operator or a node's agent is stopped
(the rig's processes), the object is read, then they are started again.

- applied, nothing has reported yet (the operator, or the node's agent, is down): InProgress.
  kstatus alone calls an object with no status at all Current; the CRDs default `status`
  to {observedGeneration: 0}, which the API server shows until a controller writes, so
  kstatus sees generation 1 not yet observed.

Every verdict lands in a table printed at the end of the module (and kept in
.pytest_cache/kube-xdp-kstatus.md).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
from kubernetes.client.rest import ApiException

from kube_xdp_api import conditions as cond
from kube_xdp_api import names, reasons
from kube_xdp_rig import gobuild, workloads

from .kubexdp import COUNT_ALL, program, wait

pytestmark = pytest.mark.rig

NODE = "node-1"
ON_NODE = {"matchLabels": {"kubernetes.io/hostname": NODE}}
AGENT = workloads.agent_name(NODE)
AGENT_RESYNC = 1.0          # as the kubexdp fixture starts the agents
NOT_FOUND = "NotFound"      # kstatus' name for an object that does not exist
PROGRAMS = f"{names.PROGRAMS}.{names.GROUP}"
ATTACHMENTS = f"{names.ATTACHMENTS}.{names.GROUP}"

COMPILE_ERROR = "int xdp_bad(struct xdp_md *ctx) { return XDP_PASS }"
VERIFIER_REJECTS = ("#include <uapi/linux/bpf.h>\nint xdp_bad(struct xdp_md *ctx) {\n"
                    "  unsigned char *p = (void *)(long)ctx->data;\n  return p[100] ? XDP_PASS : XDP_DROP;\n}\n")


@functools.cache
def kxstatus_binary() -> str:
    return str(gobuild.binary("kxstatus"))


def kxstatus(rig, resource: str, *objects: str) -> list[dict]:
    """`kxstatus --kubeconfig K RESOURCE NAME...`: one verdict per object."""
    result = subprocess.run([kxstatus_binary(), "--kubeconfig", rig.kubeconfig, resource, *objects],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"kxstatus failed ({result.returncode}): {result.stderr}{result.stdout}"
    verdicts = [json.loads(line) for line in result.stdout.splitlines()]
    assert [v["name"] for v in verdicts] == list(objects), result.stdout
    return verdicts


@dataclasses.dataclass(frozen=True)
class Row:
    stage: str
    kind: str
    name: str
    kstatus: str        # kxstatus' verdict
    message: str        # kxstatus' message
    ours: str           # kube_xdp_api.conditions.kstatus on the same object
    expected: str       # what the stage means
    conditions: str     # the object's generation and conditions, for the reader

    @property
    def agrees(self) -> bool:
        return self.kstatus == self.ours == self.expected


TABLE: list[Row] = []


def _summary(obj: dict | None) -> str:
    if obj is None:
        return "(gone)"
    st = obj.get("status") or {}
    parts = [f"gen {obj['metadata'].get('generation')}/obs {st.get('observedGeneration', '-')}"]
    for c in st.get("conditions") or []:
        parts.append(f"{c['type']}={c['status']}({c['reason']})")
    if obj["metadata"].get("deletionTimestamp"):
        parts.append("deletionTimestamp")
    return " ".join(parts)


def _render(rows: list[Row], version: str) -> str:
    head = ["stage", "object", "kxstatus", "kxstatus message", "project rule", "stage means", "agree",
            "object (generation, conditions)"]
    lines = [f"kstatus verdicts ({version}) on the rig", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        message = r.message if len(r.message) <= 70 else r.message[:67] + "..."
        cells = [r.stage, f"{r.kind} {r.name}", r.kstatus, message.replace("|", "/").replace("\n", " "), r.ours,
                 r.expected, "yes" if r.agrees else "NO", r.conditions]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@pytest.fixture(scope="module", autouse=True)
def verdict_table(request):
    """Prints the verdicts of the module's tests at its end (and keeps them in
    .pytest_cache/kube-xdp-kstatus.md)."""
    TABLE.clear()
    yield TABLE
    if not TABLE:
        return
    version = subprocess.run([kxstatus_binary(), "--version"], capture_output=True, text=True).stdout.strip()
    text = _render(TABLE, version)
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():       # a module fixture's teardown is captured
            reporter.write_line("")
            reporter.write_sep("=", "kstatus verdicts")
            reporter.write_line(text)
    try:
        out = Path(request.config.rootpath) / ".pytest_cache" / "kube-xdp-kstatus.md"
        out.parent.mkdir(exist_ok=True)
        out.write_text(text + "\n")
    except OSError:
        pass


def _read(kubexdp, plural: str, name: str) -> dict | None:
    try:
        return kubexdp.custom.get_cluster_custom_object(names.GROUP, names.VERSION, plural, name)
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def observe(rig, kubexdp, stage: str, plural: str, name: str, expected: str) -> Row:
    """kxstatus' verdict on the object, with the object it judged (read just before and
    just after, at the same resourceVersion), recorded in the table."""
    kind = {names.PROGRAMS: names.PROGRAM_KIND, names.ATTACHMENTS: names.ATTACHMENT_KIND}[plural]
    for _ in range(10):
        before = _read(kubexdp, plural, name)
        (verdict,) = kxstatus(rig, f"{plural}.{names.GROUP}", name)
        after = _read(kubexdp, plural, name)
        version = (lambda o: o and o["metadata"]["resourceVersion"])
        if version(before) == version(after):
            break
    else:
        raise AssertionError(f"{kind} {name} kept changing while kxstatus read it")
    row = Row(stage, kind, name, verdict["status"], verdict["message"], cond.kstatus(after) if after else NOT_FOUND,
              expected, _summary(after))
    TABLE.append(row)
    return row


def assert_agrees(*rows: Row) -> None:
    assert all(r.agrees for r in rows), "\n".join(
        f"{r.stage}: {r.kind} {r.name}: kxstatus {r.kstatus} ({r.message}), project rule {r.ours}, "
        f"stage means {r.expected}; {r.conditions}" for r in rows if not r.agrees)


@contextmanager
def stopped(rig, *processes: str):
    """The rig's operator and/or agents stopped for the block, started again after."""
    for name in processes:
        assert workloads.stop(rig, name), f"{name} was not running"
    try:
        yield
    finally:
        for name in processes:
            if name == "operator":
                workloads.start_operator(rig)
            else:
                workloads.start_agent(rig, name.removeprefix("agent-"), resync=AGENT_RESYNC)


def attachment(name: str) -> str:
    return names.attachment_name(name, NODE)


def test_progressing_ready_and_a_spec_change_not_yet_observed(rig, kubexdp, programs) -> None:
    name = "kst-progress"
    with stopped(rig, AGENT):
        programs(program(name, COUNT_ALL, "xdp_count", interfaces={"names": ["eth1"]}, selector=ON_NODE))
        # placed by the operator, not reported by the node's agent
        wait(lambda: kubexdp.is_current(name, cond.RECONCILING, cond.TRUE) and kubexdp.attachments(name),
             60, f"{name} placed and Reconciling")
        progressing = observe(rig, kubexdp, "placed, agent not reported", names.PROGRAMS, name, cond.IN_PROGRESS)
    kubexdp.wait_ready(name)
    wait(lambda: cond.kstatus(_read(kubexdp, names.ATTACHMENTS, attachment(name)) or {}) == cond.CURRENT, 30,
         f"{attachment(name)} reported Ready")
    ready = [observe(rig, kubexdp, "Ready", names.PROGRAMS, name, cond.CURRENT),
             observe(rig, kubexdp, "Ready", names.ATTACHMENTS, attachment(name), cond.CURRENT)]
    with stopped(rig, "operator"):
        kubexdp.patch_spec(name, {"priority": 600})
        changed = observe(rig, kubexdp, "spec changed, not observed yet", names.PROGRAMS, name, cond.IN_PROGRESS)
    kubexdp.wait_ready(name)
    again = observe(rig, kubexdp, "Ready again", names.PROGRAMS, name, cond.CURRENT)
    assert_agrees(progressing, *ready, changed, again)
    assert kubexdp.condition(name, cond.READY)["reason"] == reasons.READY
    assert changed.message == "XdpProgram generation is 2, but latest observed generation is 1"


@pytest.mark.parametrize("source, reason", [(COMPILE_ERROR, reasons.COMPILE_ERROR),
                                            (VERIFIER_REJECTS, reasons.VERIFIER_REJECTED)],
                         ids=["compile-error", "verifier-rejection"])
def test_stalled_by_the_node_is_failed(rig, kubexdp, programs, source: str, reason: str) -> None:
    name = f"kst-{reason.lower()}"
    programs(program(name, source, "xdp_bad", interfaces={"names": ["eth1"]}, selector=ON_NODE))
    wait(lambda: kubexdp.is_current(name, cond.STALLED, cond.TRUE), 90, f"{name} Stalled")
    assert kubexdp.condition(name, cond.STALLED)["reason"] == reason
    rows = [observe(rig, kubexdp, f"Stalled: {reason}", names.PROGRAMS, name, cond.FAILED),
            observe(rig, kubexdp, f"Stalled: {reason}", names.ATTACHMENTS, attachment(name), cond.FAILED)]
    assert_agrees(*rows)
    assert rows[0].message.startswith(f"1/1 nodes failed: {NODE} ({reason}")      # the Stalled message


def test_a_spec_the_operator_refuses_is_failed(rig, kubexdp, programs) -> None:
    """A pattern that is no regular expression: refused by the operator (Stalled,
    InvalidSpec) before anything is placed."""
    name = "kst-invalid"
    programs(program(name, COUNT_ALL, "xdp_count", interfaces={"pattern": "eth(("}, selector=ON_NODE))
    wait(lambda: kubexdp.is_current(name, cond.STALLED, cond.TRUE), 60, f"{name} Stalled")
    assert kubexdp.condition(name, cond.STALLED)["reason"] == reasons.INVALID_SPEC
    assert_agrees(observe(rig, kubexdp, "Stalled: InvalidSpec (operator)", names.PROGRAMS, name, cond.FAILED))


def test_no_node_selected_is_current(rig, kubexdp, programs) -> None:
    """docs/api.md: a program whose nodeSelector matches no node is Ready (NoNodesSelected):
    nothing is left to do, and kstatus readers must not wait for a timeout."""
    name = "kst-nowhere"
    programs(program(name, COUNT_ALL, "xdp_count", selector={"matchLabels": {"kubexdp.io/kstatus-test": "none"}}))
    kubexdp.wait_ready(name)
    assert kubexdp.condition(name, cond.READY)["reason"] == reasons.NO_NODES_SELECTED
    assert kubexdp.attachments(name) == {}
    assert_agrees(observe(rig, kubexdp, "no node selected", names.PROGRAMS, name, cond.CURRENT))


def test_deleting_is_terminating_then_not_found(rig, kubexdp, programs) -> None:
    """Deleted while node-1's agent is stopped: its finalizer holds the attachment, the
    operator's holds the program (Ready=False, Reconciling=True, Deleting). When the agent
    is back it detaches and lets go, and both are gone."""
    name = "kst-delete"
    programs(program(name, COUNT_ALL, "xdp_count", interfaces={"names": ["eth1"]}, selector=ON_NODE))
    kubexdp.wait_ready(name)
    with stopped(rig, AGENT):
        kubexdp.delete(name)
        wait(lambda: (kubexdp.condition(name, cond.READY) or {}).get("reason") == reasons.DELETING
             and (_read(kubexdp, names.ATTACHMENTS, attachment(name)) or {}).get("metadata", {})
             .get("deletionTimestamp"), 30, f"{name} Deleting, its attachment held by the agent's finalizer")
        deleting = [observe(rig, kubexdp, "deleting, agent finalizer held", names.PROGRAMS, name, cond.TERMINATING),
                    observe(rig, kubexdp, "deleting, agent finalizer held", names.ATTACHMENTS, attachment(name),
                            cond.TERMINATING)]
    kubexdp.wait_gone(name)
    gone = [observe(rig, kubexdp, "deleted", names.PROGRAMS, name, NOT_FOUND),
            observe(rig, kubexdp, "deleted", names.ATTACHMENTS, attachment(name), NOT_FOUND)]
    assert_agrees(*deleting, *gone)
    assert all(r.message == "Resource scheduled for deletion" for r in deleting)


def test_an_object_nothing_has_reported_on_yet_is_in_progress(rig, kubexdp, programs) -> None:
    """kstatus (cli-utils status.Compute) decides from deletionTimestamp,
    status.observedGeneration, and Reconciling/Stalled/Ready conditions; an object with
    none of them is "Resource is current". So, without the CRDs' status default, an
    XdpProgram the operator has not seen yet and an XdpAttachment its agent has not
    reported on were Current to kstatus (Flux's wait, kpt), while nothing had acted on
    them (seen on this rig before the default). With `status: {default:
    {observedGeneration: 0}}` the API server shows observedGeneration 0 until a controller
    writes, and kstatus agrees with the project's rule: InProgress."""
    name = "kst-unseen"
    with stopped(rig, AGENT):
        with stopped(rig, "operator"):
            programs(program(name, COUNT_ALL, "xdp_count", interfaces={"names": ["eth1"]}, selector=ON_NODE))
            unseen = observe(rig, kubexdp, "applied, operator down (no status)", names.PROGRAMS, name,
                             cond.IN_PROGRESS)
        wait(lambda: kubexdp.is_current(name, cond.RECONCILING, cond.TRUE) and kubexdp.attachments(name), 60,
             f"{name} placed")
        unreported = observe(rig, kubexdp, "placed, agent down (no status)", names.ATTACHMENTS, attachment(name),
                             cond.IN_PROGRESS)
    for row in (unseen, unreported):
        assert row.agrees and row.kstatus == cond.IN_PROGRESS, row
        assert "generation is 1, but latest observed generation is 0" in row.message, row
        assert row.conditions == "gen 1/obs 0", row              # only the schema's default: nothing has reported
    kubexdp.wait_ready(name)
