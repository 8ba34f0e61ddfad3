"""The bad-input catalogue: every way a user can get an XdpProgram wrong, and what kube-xdp
does about it, on the real rig.

Each case has its expected outcome: the API server refuses it (HTTP 422, the CRD's
structural schema), or the program's status says why (a stable reason, with words the
message must contain). For every case, whatever the outcome:
- no process crashed: the operator and every agent are the same processes as before;
- a canary program on the same nodes (eth1, every node) keeps counting real packets;
- nothing is half-attached: while the bad program exists it holds no hook (unless the
  case expects it to), and once it is deleted no hook and no pin of it remains. Every
  interface of every node namespace is read (lo included, through iproute2): each hook is
  empty but the canary's on eth1.
A failing case still deletes what it created; a clean-up failure then is added to the
case's own error as a note, never in its place.

Security cases (docs/api.md "What a source may include") also prove that no byte of a
host file reaches a status, a message or an Event: the file holds a random token that is
looked for everywhere afterwards.
"""

from __future__ import annotations

import json
import secrets
import struct
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import kubernetes
import pytest
from kubernetes.client.rest import ApiException

from kube_xdp_agent.kernel.bpfsys import BpfMap
from kube_xdp_api import names
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


@dataclass
class Case:
    id: str
    expect: str                         # "422" or the reason of the program's Ready condition
    words: tuple[str, ...] = ()         # each must appear in the API error / condition message
    spec: dict = field(default_factory=dict)     # merged over the good spec (None values delete)
    name: str | None = None             # metadata.name, default bad-<n>
    raw_spec: dict | None = None        # the whole spec, instead of the good one + `spec`
    ready: bool = False                 # the outcome is Ready=True (with reason `expect`)
    configmap: dict | None = None       # a ConfigMap to create first {name: {key: text}}


def src(body: str) -> dict:
    return {"source": {"inline": "#include <uapi/linux/bpf.h>\n" + body}, "entrypoint": "xdp_bad"}


CASES = [
    # --- refused by the API server (structural schema) -------------------------------------
    Case("empty-spec", "422", ("spec.source", "Required"), raw_spec={}),
    Case("name-with-dotdot", "422", (), name="bad..name"),
    Case("name-with-slash", "422", (), name="bad/name"),
    Case("name-non-ascii", "422", (), name="prögram"),
    Case("name-uppercase", "422", (), name="BadName"),
    Case("interface-with-slash", "422", ("spec.interfaces.names",), spec={"interfaces": {"names": ["eth0/x"]}}),
    Case("interface-dotdot", "422", ("spec.interfaces.names",), spec={"interfaces": {"names": [".."]}}),
    Case("define-value-is-a-flag", "422", ("spec.defines",), spec={"defines": {"X": "-include/etc/shadow"}}),
    Case("define-value-is-a-path", "422", ("spec.defines",), spec={"defines": {"X": "/etc/passwd"}}),
    Case("define-value-with-space", "422", ("spec.defines",), spec={"defines": {"X": "1 -I/"}}),
    Case("define-value-dotdot", "422", ("spec.defines",), spec={"defines": {"X": "a..b"}}),
    Case("source-over-the-limit", "422", ("spec.source.inline",),
         spec={"source": {"inline": "// " + "x" * 70000 + "\n" + GOOD}}),
    Case("source-empty", "422", ("spec.source.inline",), spec={"source": {"inline": ""}}),
    Case("two-sources", "422", ("spec.source",), spec={"source": {"inline": GOOD, "configMapRef": {
        "namespace": "default", "name": "x", "key": "k"}}}),
    Case("entrypoint-not-an-identifier", "422", ("spec.entrypoint",), spec={"entrypoint": "xdp-ok"}),
    Case("priority-out-of-range", "422", ("spec.priority",), spec={"priority": 5000}),
    Case("mode-unknown", "422", ("spec.mode",), spec={"mode": "turbo"}),
    Case("configmap-key-with-slash", "422", ("spec.source.configMapRef.key",), spec={"source": {"configMapRef": {
        "namespace": "default", "name": "x", "key": "../etc/passwd"}}}),
    # --- accepted by the schema, refused by the shared validator (operator: Stalled) -------
    Case("source-over-the-limit-in-bytes", "InvalidSpec", ("bytes",),
         spec={"source": {"inline": "// " + "é" * 40000 + "\n" + GOOD}}),
    Case("define-name-not-an-identifier", "InvalidDefine", ("A-B",), spec={"defines": {"A-B": "1"}}),
    Case("define-name-is-a-flag", "InvalidDefine", ("-include",), spec={"defines": {"-include": "1"}}),
    Case("invalid-regex", "InvalidSpec", ("not a valid regex",), spec={"interfaces": {"pattern": "eth["}}),
    Case("include-host-file", "InvalidSpec", ("quoted name",),
         spec={"source": {"inline": f'#include "{SECRET_ABS}"\n' + GOOD}}),
    Case("include-dotdot", "InvalidSpec", ("relative path",),
         spec={"source": {"inline": "#include <linux/../../../../../../tmp/x.h>\n" + GOOD}}),
    Case("include-computed-by-a-macro", "InvalidSpec", ("computed",),
         spec={"source": {"inline": f'#define F "{SECRET_ABS}"\n#include F\n' + GOOD}}),
    Case("include-digraph-and-continuation", "InvalidSpec", ("quoted name",),
         spec={"source": {"inline": f'%:\\\ninclude "{SECRET_ABS}"\n' + GOOD}}),
    # a crafted define (a value the schema accepts: a header-name-like token) used as the
    # header: the source is refused as a computed name, whatever the define holds
    Case("define-names-the-include", "InvalidSpec", ("computed (macro) name", "HDR"),
         spec={"defines": {"HDR": SECRET_REL}, "source": {"inline": "#include HDR\n" + GOOD}}),
    Case("define-names-the-has-include", "InvalidSpec", ("computed (macro) name", "__has_include"),
         spec={"defines": {"HDR": SECRET_REL},
               "source": {"inline": "#if __has_include(HDR)\n#error found\n#endif\n" + GOOD}}),
    # the _Pragma operator: `#pragma GCC dependency` looks any file up; as _Pragma it hides in a string
    Case("pragma-operator-gcc-dependency", "InvalidSpec", ('_Pragma("GCC dependency ...") is not allowed',),
         spec={"source": {"inline": f'_Pragma("GCC dependency \\"{SECRET_ABS}\\"")\n' + GOOD}}),
    Case("pragma-operator-computed", "InvalidSpec", ("computed",),
         spec={"source": {"inline": f'#define P(x) _Pragma(#x)\nP(GCC dependency "{SECRET_ABS}")\n' + GOOD}}),
    Case("pragma-operator-pasted", "InvalidSpec", ("identifier _Pra is not allowed",),
         spec={"source": {"inline": "#define CAT(a, b) a##b\n"
                                    f'CAT(_Pra, gma)("GCC dependency \\"{SECRET_ABS}\\"")\n' + GOOD}}),
    Case("define-stands-for-the-pragma-operator", "InvalidDefine", ("spec.defines[P]", "_Pragma"),
         spec={"defines": {"P": "_Pragma"},
               "source": {"inline": f'P("GCC dependency \\"{SECRET_ABS}\\"")\n' + GOOD}}),
    Case("configmap-missing", "SourceNotFound", ("does not exist",), spec={"source": {"configMapRef": {
        "namespace": "default", "name": "kxe-no-such-source", "key": "prog.c"}}}),
    Case("configmap-lacks-the-key", "SourceNotFound", ("has no key",), spec={"source": {"configMapRef": {
        "namespace": "default", "name": "kxe-source", "key": "prog.c"}}},
         configmap={"kxe-source": {"other.c": GOOD}}),
    Case("configmap-source-includes-a-host-file", "InvalidSpec", ("quoted name",), spec={"source": {"configMapRef": {
        "namespace": "default", "name": "kxe-evil-source", "key": "prog.c"}}},
         configmap={"kxe-evil-source": {"prog.c": f'#include "{SECRET_ABS}"\n' + GOOD}}),
    # --- refused by the node: compiler, verifier, kernel (agents: Stalled) --------------------
    Case("invalid-c", "CompileError", ("error:",), spec=src("int xdp_bad(struct xdp_md *ctx) { return XDP_PASS }")),
    Case("verifier-unbounded-loop", "VerifierRejected", ("infinite loop",), spec=src(
        "int xdp_bad(struct xdp_md *ctx) {\n  volatile int spin = 1;\n  while (spin) { }\n  return XDP_PASS;\n}\n")),
    Case("verifier-out-of-bounds-packet-access", "VerifierRejected", ("invalid access to packet",), spec=src(
        "int xdp_bad(struct xdp_md *ctx) {\n  unsigned char *p = (void *)(long)ctx->data;\n"
        "  return p[100] ? XDP_PASS : XDP_DROP;\n}\n")),
    Case("wrong-entrypoint-name", "EntrypointNotFound", ("no function 'xdp_nope'",),
         spec={"entrypoint": "xdp_nope"}),
    Case("not-an-xdp-function", "EntrypointNotFound", ("not an XDP entrypoint",), spec={
        "source": {"inline": "int kprobe__xdp_bad(struct pt_regs *ctx) { return 0; }\n"},
        "entrypoint": "kprobe__xdp_bad"}),
    Case("include-relative-to-the-working-directory", "CompileError", ("file not found",),
         spec={"source": {"inline": f"#include <{SECRET_REL}>\n" + GOOD}}),
    Case("pinned-map-at-a-user-path", "CompileError", ("Operation not permitted",), spec=src(
        'BPF_TABLE_PINNED("hash", u32, u64, evil, 4, "@BPFFS@/kxe-evil");\n'
        "int xdp_bad(struct xdp_md *ctx) { u32 k = 0; return evil.lookup(&k) ? XDP_DROP : XDP_PASS; }\n")),
    Case("interface-missing", "InterfaceNotFound", ("eth9",), spec={"interfaces": {"names": ["eth9"]}}),
    Case("loopback-never-matched-by-pattern", "NoInterfacesMatched", ("pattern",),
         spec={"interfaces": {"pattern": "lo"}}),
    Case("loopback-by-name-has-no-native-xdp", "DriverModeUnsupported", ("native",),
         spec={"interfaces": {"names": ["lo"]}, "mode": "native", "fallback": []}),
    Case("same-interface-as-a-higher-priority-program", "Conflict", (CANARY, "priority 500 vs 100"),
         spec={"interfaces": {"names": ["eth1"]}, "priority": 100}),
    # --- not an error, but nothing to do ----------------------------------------------------
    Case("selector-matching-no-node", "NoNodesSelected", ("matches no node",),
         spec={"nodeSelector": {"matchLabels": {"kxe-no-such-label": "x"}}}, ready=True),
]


# Outcomes where the program never reaches the kernel (nothing may be pinned); for the
# others (an interface problem, a conflict) the program is loaded and pinned, unattached.
REFUSED_BEFORE_LOADING = {"InvalidSpec", "InvalidDefine", "SourceNotFound", "CompileError", "VerifierRejected",
                          "EntrypointNotFound", "NoNodesSelected"}


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
        if case.expect != "422":
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
    if case.expect == "422":
        with pytest.raises(ApiException) as err:
            kubexdp.create(body)
        assert err.value.status == 422, err.value.body
        for w in case.words:
            assert w in err.value.body, err.value.body
        assert kubexdp.get(name) is None if "/" not in name else True
    else:
        kubexdp.create(body)
        want = "True" if case.ready else "False"
        wait(lambda: kubexdp.is_current(name, "Ready", want)
             and kubexdp.condition(name, "Ready")["reason"] == case.expect, 120,
             f"{name} Ready={want} reason {case.expect}")
        if not case.ready:
            assert kubexdp.condition(name, "Stalled")["status"] == "True"     # kstatus: a failure, not a wait
        said = _everything_said(kubexdp, name)     # the program's status, its attachments', Events
        for w in case.words:
            assert w in said, said[:3000]
        if case.expect in REFUSED_BEFORE_LOADING:            # not pinned: it never loaded
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
    base = {"source": {"inline": GOOD}, "entrypoint": "xdp_ok", "interfaces": {"names": ["eth0"]}}
    spec = case.raw_spec if case.raw_spec is not None else _merge(base, case.spec)
    if "@BPFFS@" in json.dumps(spec):
        spec = json.loads(json.dumps(spec).replace("@BPFFS@", rig.nodes[0].bpffs))
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
                 if case.expect != "422" and pins_of(n.bpffs, name)]
    leftovers += _half_attached(rig, canary)
    assert not leftovers, leftovers


def test_the_catalogue_is_big_enough():
    assert len(CASES) >= 20
    assert len({c.id for c in CASES}) == len(CASES)


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
