"""What a user's strings can make the root agent's compiler read or pin (pure: no bcc).

The rule (docs/api.md, "What a source may include"): only `#include <relative/path.h>`
(and `__has_include(<relative/path.h>)`), no '..', no leading '/', no quoted, computed or
`_next` includes, no `#import`/`#embed`, no `#pragma GCC|clang dependency`, `clang module`,
`clang __debug`, `include_alias`; `_Pragma` only with a literal string holding an allowed
pragma, no `__pragma`, no identifier that `##` could grow into one of those operators;
define values cannot carry flags, quotes or paths, nor name (or begin) such an operator.
tests/kernel/test_source_rule_clang.py shows, with bcc's clang, that the refused forms
really make it look host files up and that the allowed ones compile. The shared validator (kube_xdp_api.spec) refuses a
source that breaks it with InvalidSpec, for the operator (ProgramSpec), for both when the
text comes from a ConfigMap (fetch.read_source) and again in the agent's kernel layer
(compile.validate_request) before bcc is called. The build worker's seccomp program is
checked here by running it in a small classic-BPF interpreter.
"""

from __future__ import annotations

import struct

import pytest

from kube_xdp_agent.build_worker import BPF_OBJ_GET, BPF_OBJ_PIN, seccomp_filter
from kube_xdp_agent.kernel.compile import CompileRequest, validate_request
from kube_xdp_agent.kernel.errors import CompileError, InvalidDefine
from kube_xdp_api import reasons
from kube_xdp_api.spec import (
    ProgramSpec,
    SpecError,
    check_inline_source,
    define_file_access,
    source_file_access,
)

XDP = "int f(struct xdp_md *ctx) { return XDP_PASS; }\n"

ALLOWED = {
    "uapi headers": "#include <uapi/linux/bpf.h>\n#include <linux/if_ether.h>\n" + XDP,
    "blanks and a comment around the directive": "  #  /* c */ include <linux/ip.h> // the IP header\n" + XDP,
    "digraph with a good header": "%:include <linux/udp.h>\n" + XDP,
    "has_include of a relative header": "#if __has_include(<linux/ip.h>)\n#endif\n" + XDP,
    "include text in a string": 'char *s = "#include \\"/etc/passwd\\"";\n' + XDP,
    "include text in a line comment": '// #include "/etc/shadow"\n' + XDP,
    "include text in a block comment": '/* #include "/etc/shadow" */\n' + XDP,
    "a string continued onto a line starting with #": 'char *s = "x\\\n#include \\"/etc/x\\"";\n' + XDP,
    "dots inside a name": "#include <linux/if_ether.h>\n#include <asm-generic/int-ll64.h>\n" + XDP,
    "pragma unroll and once": ("#pragma once\nint g(int n) {\n  int s = 0;\n#pragma clang loop unroll(full)\n"
                               "  for (int i = 0; i < 4; i++) s += i * n;\n  return s;\n}\n" + XDP),
    "stringizing and a null directive": "#\n#define S(x) #x\n" + XDP,
    # _Pragma with a literal: the form XDP authors write in macros
    "_Pragma with a literal in a macro": '#define UNROLL _Pragma("unroll")\n' + XDP,
    "_Pragma diagnostics, with encoding prefixes": (
        '_Pragma("GCC diagnostic push")\n_Pragma(L"GCC diagnostic ignored \\"-Wunused\\"")\n'
        '_Pragma(u8"GCC diagnostic pop")\n' + XDP),
    "_Pragma with blanks and comments around the literal": '_Pragma ( /* c */ "GCC diagnostic push" )\n' + XDP,
    "_Pragma message naming a dependency": '_Pragma("message(\\"GCC dependency is refused\\")")\n' + XDP,
    "_Pragma text in a string": 'char *s = "_Pragma(\\"GCC dependency \\\\\\"/etc/shadow\\\\\\"\\")";\n' + XDP,
    "_Pragma and pragma text in comments": (
        '// _Pragma("GCC dependency \\"/etc/shadow\\"")\n/* #pragma GCC dependency "/etc/shadow"\n'
        '   _Pragma(#x) __pragma(x) __has_include("/x") _Pra ## gma */\n' + XDP),
    "identifiers that merely contain operator names": (
        "int my_Pragma, _Pragmatic, __pragmas, __has_included, __hash, __u32x, _x, x_;\n" + XDP),
    "_Pragma in a character literal": "char c = '_'; char d = '\\'';\n" + XDP,
    "other pragmas": ('#pragma GCC diagnostic ignored "-Wunused"\n#pragma clang diagnostic push\n'
                      "#pragma GCC poison evil\n#pragma message(\"dependency module\")\n#pragma pack(1)\n" + XDP),
    "other __has_ operators": ("#if __has_feature(c_atomic) || __has_builtin(__builtin_memcpy) "
                               "|| __has_attribute(packed)\n#endif\n" + XDP),
    # nothing is read: #line and line markers only rename the source in diagnostics
    "#line and a line marker naming host paths": '#line 10 "/etc/shadow"\n# 20 "/etc/passwd" 3\n' + XDP,
    "__FILE__ and __TIMESTAMP__": "const char *file = __FILE__, *stamp = __TIMESTAMP__;\n" + XDP,
    "token pasting of ordinary names": "#define CAT(a, b) a##b\nint CAT(count, er);\n" + XDP,
}

REJECTED = {
    "absolute quoted": ('#include "/etc/shadow"\n', "quoted name"),
    "absolute angled": ("#include </etc/shadow>\n", "relative path"),
    "relative quoted with ..": ('#include "../../../etc/passwd"\n', "quoted name"),
    "relative angled with ..": ("#include <../../../etc/passwd>\n", "relative path"),
    "dotdot inside a header path": ("#include <linux/../../../etc/passwd>\n", "relative path"),
    "hidden component": ("#include <.ssh/id_rsa>\n", "relative path"),
    "quoted relative (searched in the working directory)": ('#include "secret.h"\n', "quoted name"),
    "computed include via a macro": ('#define F "/etc/passwd"\n#include F\n', "computed (macro) name"),
    "computed include via a function macro": ('#define S(x) #x\n#include S(/etc/passwd)\n', "computed"),
    "digraph %:include": ('%:include "/etc/passwd"\n', "quoted name"),
    "line-continued #\\ include": ('#\\\ninclude "/etc/passwd"\n', "quoted name"),
    "continuation with blanks after the backslash": ('#\\  \ninclude "/etc/passwd"\n', "quoted name"),
    "continuation inside the word include": ('#inc\\\nlude "/etc/passwd"\n', "quoted name"),
    "comment between # and include": ('# /* x */ include "/etc/passwd"\n', "quoted name"),
    "multi-line comment before #": ('int a; /*\n*/ #include "/etc/passwd"\n', "quoted name"),
    "multi-line comment inside the directive": ('#include /*\n*/ "/etc/passwd"\n', "quoted name"),
    "comment inside <>": ("#include </*x*/etc/passwd>\n", "relative path"),
    "trigraph ??=": ('??=include "/etc/passwd"\n', "trigraphs"),
    "include_next": ("#include_next <linux/bpf.h>\n", "#include_next is not allowed"),
    "import": ("#import <linux/bpf.h>\n", "#import is not allowed"),
    "embed": ("#embed </etc/shadow>\n", "#embed is not allowed"),
    "has_include quoted": ('#if __has_include("/etc/shadow")\n#endif\n', "quoted name"),
    "has_include_next": ("#if __has_include_next(<a.h>)\n#endif\n", "__has_include_next is not allowed"),
    "has_include via a macro": ("#define H __has_include\n", "__has_include must be followed"),
    "pragma GCC dependency": ('#pragma GCC dependency "/etc/shadow"\n', "#pragma GCC dependency"),
    "pragma clang dependency": ('#pragma clang dependency "/etc/shadow"\n', "#pragma clang dependency"),
    "pragma with a comment before the namespace": ('#pragma /* x */ GCC dependency "/etc/shadow"\n',
                                                   "#pragma GCC dependency"),
    "pragma with a multi-line comment inside": ('#pragma GCC /*\n*/ dependency "/etc/shadow"\n',
                                                "#pragma GCC dependency"),
    "pragma with a continuation inside the namespace": ('#pragma G\\\nCC dependency "/etc/shadow"\n',
                                                        "#pragma GCC dependency"),
    "digraph %:pragma": ('%:pragma GCC dependency "/etc/shadow"\n', "#pragma GCC dependency"),
    "trigraph ??=pragma": ('??=pragma GCC dependency "/etc/shadow"\n', "(read with trigraphs)"),
    "pragma namespace spelled with a UCN": ('#pragma \\u0047CC dependency "/etc/shadow"\n', "#pragma GCC dependency"),
    "directive name spelled with a UCN": ('#\\u0069nclude "/etc/shadow"\n', "quoted name"),
    "pragma clang module import": ("#pragma clang module import evil\n", "#pragma clang module"),
    "pragma clang __debug (crash kills the compiler)": ("#pragma clang __debug crash\n", "#pragma clang __debug"),
    "pragma include_alias": ('#pragma include_alias(<a.h>, "/etc/shadow")\n#include <a.h>\n',
                             "#pragma include_alias"),
    "#__include_macros": ('#__include_macros "/etc/shadow"\n', "#__include_macros is not allowed"),
    # the _Pragma operator: the string is the pragma
    "_Pragma GCC dependency": ('_Pragma("GCC dependency \\"/etc/shadow\\"")\n', '_Pragma("GCC dependency ...")'),
    "_Pragma clang dependency": ('_Pragma("clang dependency \\"/etc/shadow\\"")\n',
                                 '_Pragma("clang dependency ...")'),
    "_Pragma with a wide literal": ('_Pragma(L"GCC dependency \\"/etc/shadow\\"")\n', '_Pragma("GCC dependency'),
    "_Pragma with a u8 literal": ('_Pragma(u8"GCC dependency \\"/etc/shadow\\"")\n', '_Pragma("GCC dependency'),
    "_Pragma with a comment inside the literal": ('_Pragma("/**/GCC dependency \\"/etc/shadow\\"")\n',
                                                  '_Pragma("GCC dependency'),
    "_Pragma in a macro body": ('#define DEP _Pragma("GCC dependency \\"/etc/shadow\\"")\nDEP\n',
                                '_Pragma("GCC dependency'),
    "_Pragma clang __debug": ('_Pragma("clang __debug crash")\n', '_Pragma("clang __debug ...")'),
    "_Pragma clang module": ('_Pragma("clang module import evil")\n', '_Pragma("clang module ...")'),
    "_Pragma split by a line continuation": ('_Pra\\\ngma("GCC dependency \\"/etc/shadow\\"")\n',
                                             '_Pragma("GCC dependency'),
    "_Pragma spelled with a UCN": ('\\u005fPragma("GCC dependency \\"/etc/shadow\\"")\n', '_Pragma("GCC dependency'),
    "_Pragma of a stringized macro argument": ('#define P(x) _Pragma(#x)\nP(GCC dependency "/etc/shadow")\n',
                                               "computed"),
    "_Pragma of a macro": ('#define D "GCC dependency \\"/etc/shadow\\""\n_Pragma(D)\n', "computed"),
    "a macro standing for _Pragma": ('#define P _Pragma\nP("GCC dependency \\"/etc/shadow\\"")\n', "computed"),
    "_Pragma with its parenthesis from a macro": ('#define LP (\n_Pragma LP "GCC dependency \\"/etc/shadow\\"")\n',
                                                  "computed"),
    "_Pragma with a raw string": ('_Pragma(R"x(GCC dependency "/etc/shadow")x")\n', "computed"),
    "_Pragma of two concatenated literals": ('_Pragma("GCC " "dependency \\"/etc/shadow\\"")\n', "one plain string"),
    "_Pragma over two lines": ('_Pragma(\n"unroll")\n', "on one line"),
    "_Pragma whose pragma pastes one": ('_Pragma("message(CAT(_Pra, gma)(\\"x\\"))")\n', "inside _Pragma"),
    "__pragma (Microsoft)": ('__pragma(GCC dependency "/etc/shadow")\n', "__pragma is not allowed"),
    # token pasting could complete a guarded name: its first piece is refused
    "pasting _Pra##gma": ('#define CAT(a, b) a##b\nCAT(_Pra, gma)("GCC dependency \\"/etc/shadow\\"")\n',
                          "identifier _Pra is not allowed"),
    "pasting _##Pragma": ('#define CAT(a, b) a##b\nCAT(_, Pragma)("GCC dependency \\"/etc/shadow\\"")\n',
                          "identifier _ is not allowed"),
    "pasting __has_##include": ('#define CAT(a, b) a##b\n#if CAT(__has_, include)("/etc/shadow")\n#endif\n',
                                "identifier __has_ is not allowed"),
    "pasting __has_include##_next": ('#define CAT(a, b) a##b\n#if CAT(__has_include, _next)(<a.h>)\n#endif\n',
                                     "__has_include must be followed"),
    "pasting a prefix held by a macro": ("#define X __p\n", "identifier __p is not allowed"),
    "has_include of a macro argument": ("#define H(x) __has_include(x)\n", "computed"),
    "inside #if 0 (checked too)": ('#if 0\n#include "/etc/passwd"\n#endif\n', "quoted name"),
    "unterminated header name": ("#include <linux/bpf.h\n", "no closing"),
}


@pytest.mark.parametrize("source", ALLOWED.values(), ids=ALLOWED.keys())
def test_allowed_sources_pass_the_shared_validator(source):
    assert source_file_access(source) is None
    assert check_inline_source(source) == source
    validate_request(CompileRequest(source=source, entrypoint="f"))


@pytest.mark.parametrize("body, words", REJECTED.values(), ids=REJECTED.keys())
def test_file_reading_constructs_are_rejected_with_invalid_spec_before_the_compiler(body, words):
    source = body + XDP
    problem = source_file_access(source)
    assert problem and words in problem
    assert problem.startswith("line ")
    with pytest.raises(SpecError) as err:
        check_inline_source(source, "spec.source.inline")
    assert err.value.reason == reasons.INVALID_SPEC
    assert err.value.message.startswith("spec.source.inline: line ")
    # the operator's parse of a whole spec refuses it
    with pytest.raises(SpecError) as err:
        ProgramSpec.from_dict({"source": {"inline": source}, "entrypoint": "f"})
    assert err.value.reason == reasons.INVALID_SPEC
    # and the agent's kernel layer refuses it again before bcc is imported or called
    with pytest.raises(CompileError) as kerr:
        validate_request(CompileRequest(source=source, entrypoint="f"))
    assert kerr.value.reason == reasons.INVALID_SPEC


def test_a_configmap_source_is_held_to_the_same_rule():
    from kube_xdp_api.fetch import read_source

    class Core:
        def read_namespaced_config_map(self, name, namespace):
            return type("CM", (), {"data": {"prog.c": '#include "/etc/shadow"\n' + XDP}})()

    with pytest.raises(SpecError) as err:
        read_source(Core(), {"configMapRef": {"namespace": "default", "name": "src", "key": "prog.c"}})
    assert err.value.reason == reasons.INVALID_SPEC and "quoted name" in err.value.message


def test_messages_echo_the_users_line_never_more():
    source = "int x;\n" * 40 + '#include "/etc/shadow"\n' + XDP
    problem = source_file_access(source)
    assert problem.startswith("line 41: ")
    assert len(problem) < 200


@pytest.mark.parametrize("value", [
    '"/etc/shadow"', "/etc/shadow", "-include/etc/shadow", "1 -I/", "x;#include", "../etc", "a..b", "-Ifoo",
    "<etc/passwd>", "$(id)", "`id`", "1\n#include", "--sysroot=/",
], ids=repr)
def test_define_values_cannot_carry_flags_quotes_or_paths(value):
    with pytest.raises(SpecError) as err:
        ProgramSpec.from_dict({"source": {"inline": XDP}, "entrypoint": "f", "defines": {"X": value}})
    assert err.value.reason == reasons.INVALID_DEFINE
    with pytest.raises(InvalidDefine):
        validate_request(CompileRequest(source=XDP, entrypoint="f", defines={"X": value}))


@pytest.mark.parametrize("body", ["#include HDR\n", "#if __has_include(HDR)\n#endif\n",
                                  "#define Q(x) #x\n#include Q(HDR)\n"], ids=["include", "has_include", "stringized"])
def test_a_crafted_define_cannot_name_the_header(body):
    """A define value the schema accepts (a header-name-like token) used as the header name:
    refused as a computed name, whatever the value."""
    defines = {"HDR": "kxs_secret.h"}
    source = body + XDP
    with pytest.raises(SpecError) as err:
        ProgramSpec.from_dict({"source": {"inline": source}, "entrypoint": "f", "defines": defines})
    assert err.value.reason == reasons.INVALID_SPEC and "computed (macro) name" in err.value.message
    assert err.value.message.startswith("spec.source.inline: line ")
    with pytest.raises(CompileError) as kerr:
        validate_request(CompileRequest(source=source, entrypoint="f", defines=defines))
    assert kerr.value.reason == reasons.INVALID_SPEC


@pytest.mark.parametrize("name, value, words", [
    ("P", "_Pragma", "preprocessor operator _Pragma"),
    ("P", "__pragma", "preprocessor operator __pragma"),
    ("H", "__has_include", "preprocessor operator __has_include"),
    ("H", "__has_include_next", "preprocessor operator __has_include_next"),
    ("H", "__has_embed", "preprocessor operator __has_embed"),
    ("X", "1+_Pragma", "preprocessor operator _Pragma"),
    ("A", "_Pra", "could complete into _Pragma"),
    ("A", "_", "could complete into _Pragma or __pragma or __has_include"),
    ("A", "__has_", "could complete into __has_include or __has_include_next or __has_embed"),
    ("A", "1.5+__p", "could complete into __pragma"),
    ("_Pragma", "1", "the name _Pragma is a preprocessor operator"),
    ("__has_include", "1", "the name __has_include is a preprocessor operator"),
], ids=repr)
def test_defines_that_are_or_could_paste_into_an_operator_are_refused(name, value, words):
    problem = define_file_access(name, value)
    assert problem and words in problem, problem
    with pytest.raises(SpecError) as err:
        ProgramSpec.from_dict({"source": {"inline": XDP}, "entrypoint": "f", "defines": {name: value}})
    assert err.value.reason == reasons.INVALID_DEFINE
    assert err.value.message.startswith(f"spec.defines[{name}]: ")


@pytest.mark.parametrize("name, value", [
    ("X", "my_Pragma"), ("X", "_Pragmatic"), ("X", "__u32"), ("X", "__has_included"), ("X", "x_"),
    ("X", "secret.h"), ("X", "-1.5e+3"), ("X", ""), ("Pragma", "1"), ("has_include", "1"), ("_P1", "2"),
], ids=repr)
def test_ordinary_defines_pass(name, value):
    assert define_file_access(name, value) is None
    ProgramSpec.from_dict({"source": {"inline": XDP}, "entrypoint": "f", "defines": {name: value}})


@pytest.mark.parametrize("name", ["-include", "X=1 -I/", "a/b", "X Y", "1X", ""], ids=repr)
def test_define_names_are_c_identifiers(name):
    with pytest.raises(SpecError):
        ProgramSpec.from_dict({"source": {"inline": XDP}, "entrypoint": "f", "defines": {name: "1"}})


# --- the build worker's seccomp program ------------------------------------------------------
def _run_filter(prog, *, arch: int, nr: int, arg0: int) -> int:
    """A classic-BPF interpreter for the instructions the filter uses (ld abs, jeq k, ret k)."""
    data = struct.pack("<iIQ6Q", nr, arch, 0, arg0, 0, 0, 0, 0, 0)
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = prog[pc]
        if code == 0x20:
            acc = struct.unpack_from("<I", data, k)[0]
            pc += 1
        elif code == 0x15:
            pc += 1 + (jt if acc == k else jf)
        elif code == 0x06:
            return k
        else:
            raise AssertionError(f"unexpected instruction {code:#x}")


X86_64, I386, AARCH64 = 0xC000003E, 0x40000003, 0xC00000B7
ALLOW, EPERM = 0x7FFF0000, 0x00050001


@pytest.mark.parametrize("machine, arch, bpf_nrs, other_nr", [
    ("x86_64", X86_64, (321, 321 | 0x40000000), 1),
    ("x86_64", I386, (357,), 4),
    ("aarch64", AARCH64, (280,), 64),
])
def test_seccomp_filter_denies_only_pinning_and_opening_pins(machine, arch, bpf_nrs, other_nr):
    prog = seccomp_filter(machine)
    for nr in bpf_nrs:
        assert _run_filter(prog, arch=arch, nr=nr, arg0=BPF_OBJ_PIN) == EPERM
        assert _run_filter(prog, arch=arch, nr=nr, arg0=BPF_OBJ_GET) == EPERM
        for cmd in (0, 1, 2, 5, 13, 15, 19):      # map create, lookup, update, prog load, get fd by id, info
            assert _run_filter(prog, arch=arch, nr=nr, arg0=cmd) == ALLOW
    assert _run_filter(prog, arch=arch, nr=other_nr, arg0=BPF_OBJ_PIN) == ALLOW   # not bpf(2): untouched
    assert _run_filter(prog, arch=0x12345678, nr=bpf_nrs[0], arg0=0) == EPERM     # unknown arch: refused


def test_seccomp_filter_refuses_an_unknown_machine():
    with pytest.raises(OSError):
        seccomp_filter("sparc64")
