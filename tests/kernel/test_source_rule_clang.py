"""The source rule (kube_xdp_api.spec.source_file_access, define_file_access) against the
real compiler, bcc's clang: every construct below is refused by the rule, and with the
guard removed clang really looks the host file up (so the refusal is not theoretical);
the constructs the rule allows (tests/unit/test_source_security.py ALLOWED) compile.

A missing probe path shows the look-up as clang's "'<path>' file not found"; for the
`__has_include` forms an existing file makes an `#error` fire. `#pragma clang __debug
crash` is not compiled here: it kills the compiling process with SIGILL (that is why the
rule refuses `__debug`).
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

import kube_xdp_agent.kernel.compile as compile_mod
from kube_xdp_agent.kernel import CompileError, CompileRequest, Compiler
from kube_xdp_api.spec import define_file_access, source_file_access
from tests.unit.test_source_security import ALLOWED

pytestmark = pytest.mark.kernel

XDP = "\nint f(struct xdp_md *ctx) { return XDP_PASS; }\n"
CAT = "#define CAT(a, b) a##b\n#define XCAT(a, b) CAT(a, b)\n"
MISSING = f"/tmp/kxs-probe-{secrets.token_hex(6)}/missing.h"      # never created
FOUND = "#error the compiler looked the file up\n"

# id: (source with @F@ for the path, defines); @F@ is MISSING, or an existing file for the
# __has_include forms (their look-up shows as the #error)
READS_A_FILE = {
    "pragma with a comment before the namespace": ('#pragma /* x */ GCC dependency "@F@"\n', {}),
    "pragma with a multi-line comment inside": ('#pragma GCC /*\n*/ dependency "@F@"\n', {}),
    "pragma clang dependency": ('#pragma clang dependency "@F@"\n', {}),
    "_Pragma GCC dependency": ('_Pragma("GCC dependency \\"@F@\\"")\n', {}),
    "_Pragma with a wide literal": ('_Pragma(L"GCC dependency \\"@F@\\"")\n', {}),
    "_Pragma with a comment inside the literal": ('_Pragma("/**/GCC dependency \\"@F@\\"")\n', {}),
    "_Pragma of a stringized macro argument": ('#define P(x) _Pragma(#x)\nP(GCC dependency "@F@")\n', {}),
    "_Pragma with its parenthesis from a macro": ('#define LP (\n_Pragma LP "GCC dependency \\"@F@\\"")\n', {}),
    "pasting _Pra##gma": (CAT + 'CAT(_Pra, gma)("GCC dependency \\"@F@\\"")\n', {}),
    "pasting inside a pragma's argument": (CAT + '#pragma message(XCAT(_Pra, gma)("GCC dependency \\"@F@\\""))\n',
                                           {}),
    "_Pragma whose pragma pastes one": (
        CAT + '_Pragma("message(CAT(_Pra, gma)(\\"GCC dependency \\\\\\"@F@\\\\\\"\\"))")\n', {}),
    "pasting __has_##include": (CAT + '#if CAT(__has_, include)("@F@")\n' + FOUND + "#endif\n", {}),
    "a define standing for _Pragma": ('P("GCC dependency \\"@F@\\"")\n', {"P": "_Pragma"}),
    "a define standing for __has_include": ('#if H("@F@")\n' + FOUND + "#endif\n", {"H": "__has_include"}),
    "a define holding a prefix to paste": (CAT + 'XCAT(A, gma)("GCC dependency \\"@F@\\"")\n', {"A": "_Pra"}),
}


@pytest.fixture()
def compiler():
    c = Compiler()
    yield c
    c.close()


@pytest.mark.parametrize("template, defines", READS_A_FILE.values(), ids=READS_A_FILE.keys())
def test_each_refused_construct_makes_clang_read_a_host_file(template, defines, compiler, tmp_path, monkeypatch):
    existing = tmp_path / "existing.h"
    existing.write_text("int kxs_probe;\n")
    has_include = "__has_" in template or "__has_include" in defines.values()
    path = str(existing) if has_include else MISSING
    source = template.replace("@F@", path) + XDP
    req = CompileRequest(source, "f", defines)
    # the rule refuses it (the source, or one of its defines) ...
    refused = source_file_access(source) or next(
        (p for p in (define_file_access(k, v) for k, v in defines.items()) if p), None)
    assert refused, source
    # ... and without the rule, clang looks the file up
    monkeypatch.setattr(compile_mod, "validate_request", lambda r: None)
    with pytest.raises(CompileError) as err:
        compiler.load(req)
    if has_include:
        assert "the compiler looked the file up" in err.value.output, err.value.output
    else:
        assert f"'{path}' file not found" in err.value.output, err.value.output


def test_the_probe_path_does_not_exist():
    assert not Path(MISSING).exists() and not Path(MISSING).parent.exists()


@pytest.mark.parametrize("source", ALLOWED.values(), ids=ALLOWED.keys())
def test_allowed_sources_compile_with_the_rule_in_place(source, compiler):
    loaded = compiler.load(CompileRequest(source, "f"))
    assert loaded.prog_id > 0
