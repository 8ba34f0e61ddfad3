"""The bad-input catalogue: every way a user can get an XdpProgram wrong, and what kube-xdp
does about it, on the real rig.

Each case records, as data, where it is refused:
- at admission (`at=ADMISSION`): the API server refuses the create with HTTP 422, naming
  `field` in the response's causes; a case refused by one of the CRDs' CEL rules names the
  rule, and the response must carry its reason and its message on that field. The shared
  validator (kube_xdp_api.spec, which the operator and the root agent run whatever the
  server let through) must refuse the same input too, with reason `validator`;
- in status (`at=STATUS`): the program is created and its Ready condition says why, with
  reason `reason` (Stalled=True for a failure, kstatus's Failed), and words the messages
  must contain.
For every case, wherever it is refused:
- no process crashed: the operator and every agent are the same processes as before;
- a canary program on the same nodes (eth1, every node) keeps counting real packets;
- nothing is half-attached: while the bad program exists it holds no hook (unless the
  case expects it to), and once it is deleted no hook and no pin of it remains. Every
  interface of every node namespace is read (lo included, through iproute2): each hook is
  empty but the canary's on eth1.
A failing case still deletes what it created; a clean-up failure then is added to the
case's own error as a note, never in its place.

Where the cases were refused before the CRDs had CEL rules (the 1.20-era schema, measured
on kube-apiserver 1.37.2): 18 of the first 47 cases at admission, 29 in status. With the
CEL rules: 22 of those 47 at admission (the UTF-8 byte limit, two define names and a define
standing for _Pragma moved from status). The 9 cases added with the rules (a selector's
operator and values, label keys, a NUL, a preprocessor operator as a define name, no or two
choices) are all refused at admission; the old schema refused 3 of them (through oneOf) and
let 6 through to status. The whole catalogue: 21 of 56 at admission before, 31 now
(`test_where_the_cases_are_refused` prints the count from the data).

Security cases (docs/api.md "What a source may include") also prove that no byte of a
host file reaches a status, a message or an Event: the file holds a random token that is
looked for everywhere afterwards.
"""

from __future__ import annotations

import json
import secrets
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from kubernetes.client.rest import ApiException

from kube_xdp_agent.kernel.bpfsys import BpfMap
from kube_xdp_api import names, reasons, schema
from kube_xdp_api.spec import ProgramSpec, SpecError, validate_program_name
from kube_xdp_rig import traffic, workloads

from .kubexdp import COUNT_ALL, kernel_xdp, pins_of, program, wait

pytestmark = pytest.mark.rig

REPO = Path(__file__).resolve().parents[2]
GOOD = """
#include <uapi/linux/bpf.h>
int xdp_ok(struct xdp_md *ctx) { return XDP_PASS; }
"""
CANARY = "e2e-canary"
CANARY_IF = "eth1"
TOKEN = f"KXE_SECRET_{secrets.token_hex(8)}"
# A host file whose content must never show up anywhere: one absolute, one next to the
# agents' working directory (the repository: the rig starts them there), reachable by a
# relative `#include <...>` if the compiler searched its working directory.
SECRET_ABS = Path(f"/tmp/kxe-secret-{TOKEN[-8:]}.h")
SECRET_REL = f"kxe_secret_{TOKEN[-8:]}.h"


ADMISSION = "admission"     # the API server refuses the create (HTTP 422)
STATUS = "status"           # the program is created; its status says why


@dataclass
class Case:
    id: str
    at: str                             # ADMISSION or STATUS
    words: tuple[str, ...] = ()         # each must appear in the API error / the status messages
    spec: dict = field(default_factory=dict)     # merged over the good spec (None values delete)
    name: str | None = None             # metadata.name, default bad-<n>
    raw_spec: dict | None = None        # the whole spec, instead of the good one + `spec`
    ready: bool = False                 # the outcome is Ready=True (with reason `reason`)
    configmap: dict | None = None       # a ConfigMap to create first {name: {key: text}}
    # at admission: the field named in the 422's causes, the CEL rule refusing it (None:
    # the OpenAPI schema), and the reason the shared validator gives the same input
    field: str | None = None
    rule: schema.CelRule | None = None
    validator: str | None = None
    # in status: the reason of the program's Ready condition
    reason: str | None = None

    def __post_init__(self) -> None:
        assert self.at in (ADMISSION, STATUS), self.id
        if self.at == ADMISSION:
            assert self.field and self.validator and self.reason is None, self.id
        else:
            assert self.reason and self.field is None and self.rule is None, self.id


def admitted_not(id_: str, field_: str, validator: str, *words: str, rule: schema.CelRule | None = None,
                 **kw) -> Case:
    """A case the API server refuses."""
    return Case(id_, ADMISSION, words, field=field_, rule=rule, validator=validator, **kw)


def in_status(id_: str, reason: str, *words: str, **kw) -> Case:
    """A case the API server accepts and the program's status refuses (or reports)."""
    return Case(id_, STATUS, words, reason=reason, **kw)


def src(body: str) -> dict:
    return {"source": {"inline": "#include <uapi/linux/bpf.h>\n" + body}, "entrypoint": "xdp_bad"}


IS, ID = reasons.INVALID_SPEC, reasons.INVALID_DEFINE
LONG_PREFIX = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 62])      # a DNS subdomain of 254 characters

CASES = [
    # --- refused by the API server: the OpenAPI schema ------------------------------------------
    admitted_not("empty-spec", "spec.source", IS, "Required", raw_spec={}),
    admitted_not("name-with-dotdot", "metadata.name", IS, name="bad..name"),
    admitted_not("name-with-slash", "metadata.name", IS, name="bad/name"),
    admitted_not("name-non-ascii", "metadata.name", IS, name="prögram"),
    admitted_not("name-uppercase", "metadata.name", IS, name="BadName"),
    admitted_not("interface-with-slash", "spec.interfaces.names[0]", IS, spec={"interfaces": {"names": ["eth0/x"]}}),
    admitted_not("define-value-is-a-flag", "spec.defines.X", ID, spec={"defines": {"X": "-include/etc/shadow"}}),
    admitted_not("define-value-is-a-path", "spec.defines.X", ID, spec={"defines": {"X": "/etc/passwd"}}),
    admitted_not("define-value-with-space", "spec.defines.X", ID, spec={"defines": {"X": "1 -I/"}}),
    admitted_not("source-over-the-limit", "spec.source.inline", IS,
                 spec={"source": {"inline": "// " + "x" * 70000 + "\n" + GOOD}}),
    admitted_not("source-empty", "spec.source.inline", IS, spec={"source": {"inline": ""}}),
    admitted_not("entrypoint-not-an-identifier", "spec.entrypoint", IS, spec={"entrypoint": "xdp-ok"}),
    admitted_not("priority-out-of-range", "spec.priority", IS, spec={"priority": 5000}),
    admitted_not("mode-unknown", "spec.mode", IS, spec={"mode": "turbo"}),
    admitted_not("configmap-key-with-slash", "spec.source.configMapRef.key", IS, spec={"source": {"configMapRef": {
        "namespace": "default", "name": "x", "key": "../etc/passwd"}}}),
    # --- refused by the API server: a CEL rule (its reason and message on the field) -------------
    admitted_not("interface-dotdot", "spec.interfaces.names[0]", IS, rule=schema.INTERFACE_NAME_NOT_DOTS,
                 spec={"interfaces": {"names": [".."]}}),
    admitted_not("define-value-dotdot", "spec.defines[X]", ID, rule=schema.DEFINE_VALUE_NO_DOTDOT,
                 spec={"defines": {"X": "a..b"}}),
    admitted_not("two-sources", "spec.source.configMapRef", IS, rule=schema.SOURCE_EXCLUSIVE,
                 spec={"source": {"inline": GOOD, "configMapRef": {"namespace": "default", "name": "x", "key": "k"}}}),
    # (these four were refused in status before the CEL rules)
    admitted_not("source-over-the-limit-in-bytes", "spec.source.inline", IS, "is 80085 bytes of UTF-8",
                 rule=schema.INLINE_BYTES, spec={"source": {"inline": "// " + "é" * 40000 + "\n" + GOOD}}),
    admitted_not("define-name-not-an-identifier", "spec.defines", ID, rule=schema.DEFINE_NAMES,
                 spec={"defines": {"A-B": "1"}}),
    admitted_not("define-name-is-a-flag", "spec.defines", ID, rule=schema.DEFINE_NAMES,
                 spec={"defines": {"-include": "1"}}),
    admitted_not("define-stands-for-the-pragma-operator", "spec.defines[P]", ID, rule=schema.DEFINE_VALUE_NO_OPERATOR,
                 spec={"defines": {"P": "_Pragma"}, "source": {"inline": f'P("GCC dependency \\"{SECRET_ABS}\\"")\n' + GOOD}}),
    # (added with the CEL rules)
    admitted_not("no-source", "spec.source", IS, rule=schema.SOURCE_REQUIRED, spec={"source": {}}),
    admitted_not("source-with-a-nul", "spec.source.inline", IS, rule=schema.INLINE_NO_NUL,
                 spec={"source": {"inline": GOOD + "\x00"}}),
    admitted_not("define-name-is-a-preprocessor-operator", "spec.defines", ID, rule=schema.DEFINE_NAMES_NOT_OPERATORS,
                 spec={"defines": {"__has_include": "1"}}),
    admitted_not("two-interface-choices", "spec.interfaces", IS, rule=schema.INTERFACES_EXCLUSIVE,
                 spec={"interfaces": {"names": ["eth0"], "pattern": "eth.*"}}),
    admitted_not("no-interface-choice", "spec.interfaces", IS, rule=schema.INTERFACES_REQUIRED,
                 spec={"interfaces": {}}),
    admitted_not("selector-label-key-not-a-label-key", "spec.nodeSelector.matchLabels", IS,
                 rule=schema.MATCH_LABELS_KEYS, spec={"nodeSelector": {"matchLabels": {"kubexdp.io/role/edge": "yes"}}}),
    admitted_not("selector-key-prefix-too-long", "spec.nodeSelector.matchExpressions[0].key", IS,
                 rule=schema.EXPRESSION_KEY_PREFIX,
                 spec={"nodeSelector": {"matchExpressions": [{"key": LONG_PREFIX + "/x", "operator": "Exists"}]}}),
    admitted_not("selector-in-without-values", "spec.nodeSelector.matchExpressions[0].values", IS,
                 rule=schema.EXPRESSION_VALUES_REQUIRED,
                 spec={"nodeSelector": {"matchExpressions": [{"key": "role", "operator": "In"}]}}),
    admitted_not("selector-exists-with-values", "spec.nodeSelector.matchExpressions[0].values", IS,
                 rule=schema.EXPRESSION_VALUES_FORBIDDEN,
                 spec={"nodeSelector": {"matchExpressions": [{"key": "role", "operator": "Exists", "values": ["edge"]}]}}),
    # --- accepted by the API server, refused by the shared validator (operator: Stalled) --------
    in_status("invalid-regex", IS, "not a valid regex", spec={"interfaces": {"pattern": "eth["}}),
    in_status("include-host-file", IS, "quoted name",
              spec={"source": {"inline": f'#include "{SECRET_ABS}"\n' + GOOD}}),
    in_status("include-dotdot", IS, "relative path",
              spec={"source": {"inline": "#include <linux/../../../../../../tmp/x.h>\n" + GOOD}}),
    in_status("include-computed-by-a-macro", IS, "computed",
              spec={"source": {"inline": f'#define F "{SECRET_ABS}"\n#include F\n' + GOOD}}),
    in_status("include-digraph-and-continuation", IS, "quoted name",
              spec={"source": {"inline": f'%:\\\ninclude "{SECRET_ABS}"\n' + GOOD}}),
    # a crafted define (a value the schema accepts: a header-name-like token) used as the
    # header: the source is refused as a computed name, whatever the define holds
    in_status("define-names-the-include", IS, "computed (macro) name", "HDR",
              spec={"defines": {"HDR": SECRET_REL}, "source": {"inline": "#include HDR\n" + GOOD}}),
    in_status("define-names-the-has-include", IS, "computed (macro) name", "__has_include",
              spec={"defines": {"HDR": SECRET_REL},
                    "source": {"inline": "#if __has_include(HDR)\n#error found\n#endif\n" + GOOD}}),
    # the _Pragma operator: `#pragma GCC dependency` looks any file up; as _Pragma it hides in a string
    in_status("pragma-operator-gcc-dependency", IS, '_Pragma("GCC dependency ...") is not allowed',
              spec={"source": {"inline": f'_Pragma("GCC dependency \\"{SECRET_ABS}\\"")\n' + GOOD}}),
    in_status("pragma-operator-computed", IS, "computed",
              spec={"source": {"inline": f'#define P(x) _Pragma(#x)\nP(GCC dependency "{SECRET_ABS}")\n' + GOOD}}),
    in_status("pragma-operator-pasted", IS, "identifier _Pra is not allowed",
              spec={"source": {"inline": "#define CAT(a, b) a##b\n"
                                         f'CAT(_Pra, gma)("GCC dependency \\"{SECRET_ABS}\\"")\n' + GOOD}}),
    in_status("configmap-missing", reasons.SOURCE_NOT_FOUND, "does not exist", spec={"source": {"configMapRef": {
        "namespace": "default", "name": "kxe-no-such-source", "key": "prog.c"}}}),
    in_status("configmap-lacks-the-key", reasons.SOURCE_NOT_FOUND, "has no key", spec={"source": {"configMapRef": {
        "namespace": "default", "name": "kxe-source", "key": "prog.c"}}},
              configmap={"kxe-source": {"other.c": GOOD}}),
    in_status("configmap-source-includes-a-host-file", IS, "quoted name", spec={"source": {"configMapRef": {
        "namespace": "default", "name": "kxe-evil-source", "key": "prog.c"}}},
              configmap={"kxe-evil-source": {"prog.c": f'#include "{SECRET_ABS}"\n' + GOOD}}),
    # --- refused by the node: compiler, verifier, kernel (agents: Stalled) --------------------
    in_status("invalid-c", "CompileError", "error:", spec=src("int xdp_bad(struct xdp_md *ctx) { return XDP_PASS }")),
    in_status("verifier-unbounded-loop", "VerifierRejected", "infinite loop", spec=src(
        "int xdp_bad(struct xdp_md *ctx) {\n  volatile int spin = 1;\n  while (spin) { }\n  return XDP_PASS;\n}\n")),
    in_status("verifier-out-of-bounds-packet-access", "VerifierRejected", "invalid access to packet", spec=src(
        "int xdp_bad(struct xdp_md *ctx) {\n  unsigned char *p = (void *)(long)ctx->data;\n"
        "  return p[100] ? XDP_PASS : XDP_DROP;\n}\n")),
    in_status("wrong-entrypoint-name", "EntrypointNotFound", "no function 'xdp_nope'",
              spec={"entrypoint": "xdp_nope"}),
    in_status("not-an-xdp-function", "EntrypointNotFound", "not an XDP entrypoint", spec={
        "source": {"inline": "int kprobe__xdp_bad(struct pt_regs *ctx) { return 0; }\n"},
        "entrypoint": "kprobe__xdp_bad"}),
    in_status("include-relative-to-the-working-directory", "CompileError", "file not found",
              spec={"source": {"inline": f"#include <{SECRET_REL}>\n" + GOOD}}),
    in_status("pinned-map-at-a-user-path", "CompileError", "Operation not permitted", spec=src(
        'BPF_TABLE_PINNED("hash", u32, u64, evil, 4, "@BPFFS@/kxe-evil");\n'
        "int xdp_bad(struct xdp_md *ctx) { u32 k = 0; return evil.lookup(&k) ? XDP_DROP : XDP_PASS; }\n")),
    in_status("interface-missing", "InterfaceNotFound", "eth9", spec={"interfaces": {"names": ["eth9"]}}),
    in_status("loopback-never-matched-by-pattern", "NoInterfacesMatched", "pattern",
              spec={"interfaces": {"pattern": "lo"}}),
    in_status("loopback-by-name-has-no-native-xdp", "DriverModeUnsupported", "native",
              spec={"interfaces": {"names": ["lo"]}, "mode": "native", "fallback": []}),
    in_status("same-interface-as-a-higher-priority-program", "Conflict", CANARY, "priority 500 vs 100",
              spec={"interfaces": {"names": ["eth1"]}, "priority": 100}),
    # --- not an error, but nothing to do ----------------------------------------------------
    in_status("selector-matching-no-node", "NoNodesSelected", "matches no node",
              spec={"nodeSelector": {"matchLabels": {"kxe-no-such-label": "x"}}}, ready=True),
]


# Outcomes where the program never reaches the kernel (nothing may be pinned); for the
# others (an interface problem, a conflict) the program is loaded and pinned, unattached.
REFUSED_BEFORE_LOADING = {"InvalidSpec", "InvalidDefine", "SourceNotFound", "CompileError", "VerifierRejected",
                          "EntrypointNotFound", "NoNodesSelected"}


def _spec_of(case: Case, bpffs: str) -> dict:
    """The case's whole spec: the good one with its changes (or its raw spec)."""
    base = {"source": {"inline": GOOD}, "entrypoint": "xdp_ok", "interfaces": {"names": ["eth0"]}}
    spec = case.raw_spec if case.raw_spec is not None else _merge(base, case.spec)
    if "@BPFFS@" in json.dumps(spec):
        spec = json.loads(json.dumps(spec).replace("@BPFFS@", bpffs))
    return spec


def _merge(base: dict, patch: dict) -> dict:
    out = dict(base)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


@pytest.fixture(scope="module")
def canary(rig, kubexdp):
    kubexdp.create(program(CANARY, COUNT_ALL, "xdp_count", interfaces={"names": ["eth1"]}))
    kubexdp.wait_ready(CANARY)
    yield {n: a["status"]["interfaces"][0] for n, a in kubexdp.attachments(CANARY).items()}
    kubexdp.delete(CANARY)
    kubexdp.wait_gone(CANARY)


@pytest.fixture(scope="module")
def secrets_on_disk():
    SECRET_ABS.write_text(f"{TOKEN} leaked;\n")
    rel = REPO / SECRET_REL
    rel.write_text(f"{TOKEN} leaked;\n")
    yield
    SECRET_ABS.unlink(missing_ok=True)
    rel.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def processes(rig, kubexdp):
    procs = workloads.rig_for(rig).procs
    names_ = ["operator"] + [workloads.agent_name(n.name) for n in rig.nodes]
    return lambda: {n: procs.pid(n) for n in names_}


def _seen(entry: dict) -> int:
    with BpfMap.open_pinned(str(Path(entry["pinPath"]).parent / "maps" / "seen")) as m:
        return struct.unpack("<Q", m.lookup(struct.pack("<I", 0))[:8])[0]


def _everything_said(kubexdp, name: str) -> str:
    """Every status, message and Event text about `name` and its attachments."""
    parts = [json.dumps((kubexdp.get(name) or {}).get("status") or {}, ensure_ascii=False)]
    parts += [json.dumps(a.get("status") or {}, ensure_ascii=False) for a in kubexdp.attachments(name).values()]
    for e in kubexdp.core.list_namespaced_event("default").items:
        if e.involved_object.name == name or e.involved_object.name.startswith(f"{name}."):
            parts.append(e.message or "")
    return "\n".join(parts)


def _hooks(netns: str) -> dict[str, tuple[str | None, int | None]]:
    """Every interface of a node namespace (lo included) -> (mode, prog id) of its XDP
    hook, as iproute2 reads it."""
    out = subprocess.run(["ip", "-n", netns, "-j", "link", "show"], capture_output=True, text=True,
                         check=True).stdout
    return {link["ifname"]: kernel_xdp(netns, link["ifname"]) for link in json.loads(out)}


def _half_attached(rig, canary) -> list[str]:
    """What holds an XDP hook on any node that should not: every interface but the
    canary's must be empty, the canary's must hold the canary."""
    problems = []
    for n in rig.nodes:
        hooks = _hooks(n.netns)
        if "lo" not in hooks or CANARY_IF not in hooks:
            problems.append(f"{n.name}: iproute2 listed {sorted(hooks)}, without lo or {CANARY_IF}")
        for ifname, (mode, prog) in sorted(hooks.items()):
            want = canary[n.name]["progId"] if ifname == CANARY_IF else None
            if prog != want:
                problems.append(f"{n.name} {ifname}: XDP prog {prog} ({mode}), expected {want}")
    return problems


def _clean_up(kubexdp, case: Case, name: str) -> None:
    """Delete what the case created (the program, awaited until gone; its ConfigMaps)."""
    try:
        if case.at == STATUS:
            kubexdp.delete(name)
            kubexdp.wait_gone(name, timeout=90)
    finally:
        for cm in case.configmap or {}:
            try:
                kubexdp.core.delete_namespaced_config_map(cm, "default")
            except ApiException as e:
                if e.status != 404:
                    raise


def _check_case(case: Case, name: str, body: dict, rig, kubexdp, canary, processes, before: dict) -> None:
    """Create the bad program and check its outcome and every guarantee while it exists."""
    evil = Path(rig.nodes[0].bpffs) / "kxe-evil"          # a path on a real bpffs, outside kube-xdp's
    if case.at == ADMISSION:
        with pytest.raises(ApiException) as err:
            kubexdp.create(body)
        assert err.value.status == 422, err.value.body
        refused = json.loads(err.value.body)
        on_field = [c for c in refused["details"]["causes"] if c.get("field") == case.field]
        assert on_field, (case.field, refused["details"]["causes"])
        if case.rule is not None:             # the CEL rule's reason and message, on its field
            said = case.rule.message if case.rule.message_expression is None else ""
            assert any(c["reason"] == case.rule.reason and said in c["message"] for c in on_field), on_field
        for w in case.words:
            assert w in err.value.body, err.value.body
        assert kubexdp.get(name) is None if "/" not in name else True
        assert TOKEN not in err.value.body
    else:
        kubexdp.create(body)
        want = "True" if case.ready else "False"
        wait(lambda: kubexdp.is_current(name, "Ready", want)
             and kubexdp.condition(name, "Ready")["reason"] == case.reason, 120,
             f"{name} Ready={want} reason {case.reason}")
        if not case.ready:
            assert kubexdp.condition(name, "Stalled")["status"] == "True"     # kstatus: a failure, not a wait
        said = _everything_said(kubexdp, name)     # the program's status, its attachments', Events
        for w in case.words:
            assert w in said, said[:3000]
        if case.reason in REFUSED_BEFORE_LOADING:            # not pinned: it never loaded
            for n in rig.nodes:
                assert pins_of(n.bpffs, name) == [], (n.name, pins_of(n.bpffs, name))
        assert TOKEN not in said
    # nothing of it on any hook of any node (lo included); the canary still on its own
    half = _half_attached(rig, canary)
    assert not half, half
    assert not evil.exists()                                 # no pin at a user's path
    # no process crashed
    assert processes() == before and all(before.values()), (before, processes())
    # the canary on the same nodes keeps counting
    for n in rig.nodes:
        entry = canary[n.name]
        count = _seen(entry)
        traffic.send_udp(n.src_netns, n.interfaces[1]["node_ip"], 9, 20)
        assert _seen(entry) - count >= 20, n.name


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, rig, kubexdp, canary, processes, secrets_on_disk):
    name = case.name or f"bad-{CASES.index(case)}"
    spec = _spec_of(case, rig.nodes[0].bpffs)
    body = {"apiVersion": names.API_VERSION, "kind": names.PROGRAM_KIND, "metadata": {"name": name}, "spec": spec}
    before = processes()
    for cm, data in (case.configmap or {}).items():
        kubexdp.core.create_namespaced_config_map("default", {"metadata": {"name": cm}, "data": data})
    try:
        _check_case(case, name, body, rig, kubexdp, canary, processes, before)
    except BaseException as failure:
        # clean up, but never let a clean-up error replace the case's own failure
        try:
            _clean_up(kubexdp, case, name)
        except Exception as cleanup_error:
            failure.add_note(f"clean-up after this failure also failed: {cleanup_error!r}")
        raise
    _clean_up(kubexdp, case, name)
    # nothing left of it anywhere: no pin, no hook on any interface of any node
    leftovers = [f"{n.name}: pins {pins_of(n.bpffs, name)}" for n in rig.nodes
                 if case.at == STATUS and pins_of(n.bpffs, name)]
    leftovers += _half_attached(rig, canary)
    assert not leftovers, leftovers


def test_the_catalogue_is_big_enough():
    assert len(CASES) >= 20
    assert len({c.id for c in CASES}) == len(CASES)


def test_every_cel_rule_of_the_program_is_in_the_catalogue():
    assert {c.rule.name for c in CASES if c.rule is not None} == set(schema.CEL_RULES)


@pytest.mark.parametrize("case", [c for c in CASES if c.at == ADMISSION], ids=lambda c: c.id)
def test_what_admission_refuses_the_shared_validator_refuses_too(case):
    """Defence in depth: the operator and the root agent refuse it as well, whatever the
    API server (an older CRD, a server without a rule) let through, with this reason."""
    with pytest.raises(SpecError) as refused:
        if case.name is not None:
            validate_program_name(case.name)
        ProgramSpec.from_dict(_spec_of(case, "/sys/fs/bpf"))
    assert refused.value.reason == case.validator


def test_where_the_cases_are_refused(capsys):
    """The accounting the docstring states, printed from the data."""
    at = {where: [c.id for c in CASES if c.at == where] for where in (ADMISSION, STATUS)}
    by_cel = [c.id for c in CASES if c.rule is not None]
    with capsys.disabled():
        print(f"\nbad-input catalogue: {len(CASES)} cases, {len(at[ADMISSION])} refused at admission"
              f" ({len(by_cel)} by a CEL rule), {len(at[STATUS])} in status")
    assert len(at[ADMISSION]) + len(at[STATUS]) == len(CASES)


def test_without_the_source_rule_the_compiler_would_leak_the_file(secrets_on_disk):
    """Why the rule exists: handed straight to bcc (no validator, no confinement), an
    include of a host file puts its content into clang's diagnostics, which would be the
    status message. The same request through the agent's kernel layer is refused first."""
    from kube_xdp_agent.kernel.compile import CompileRequest, Compiler, validate_request
    from kube_xdp_agent.kernel.errors import CompileError

    req = CompileRequest(f'#include "{SECRET_ABS}"\n' + GOOD, "xdp_ok")
    with pytest.raises(CompileError) as refused:
        validate_request(req)
    assert refused.value.reason == "InvalidSpec" and TOKEN not in str(refused.value)
    compiler = Compiler()
    try:
        import kube_xdp_agent.kernel.compile as compile_mod
        real = compile_mod.validate_request
        compile_mod.validate_request = lambda r: None        # the guard removed, for this demonstration only
        try:
            with pytest.raises(CompileError) as leaked:
                compiler.load(req)
        finally:
            compile_mod.validate_request = real
        assert TOKEN in leaked.value.output                    # the danger is real
    finally:
        compiler.close()
