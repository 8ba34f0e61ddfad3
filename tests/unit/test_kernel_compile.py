"""Pure parts of compile.py: define validation, compile keys, refusal before bcc."""

from __future__ import annotations

import pytest

from kube_xdp_agent.kernel import compile as compile_mod
from kube_xdp_agent.kernel.compile import CompileRequest, Compiler, cflags, compile_key, validate_defines
from kube_xdp_agent.kernel.errors import CompileError, EntrypointNotFound, HeadersNotFound, InvalidDefine

SRC = "int xdp_main(struct xdp_md *ctx) { return XDP_PASS; }"


@pytest.mark.parametrize(
    "defines",
    [{}, {"A": "1"}, {"_x9": ""}, {"N" * 64: "v" * 128}, {"MODE": "1.2-rc+3_x"}, {f"D{i}": str(i) for i in range(32)}],
    ids=["empty", "simple", "empty-value", "max-lengths", "all-value-chars", "32-defines"],
)
def test_valid_defines(defines: dict[str, str]) -> None:
    validate_defines(defines)


@pytest.mark.parametrize(
    "defines",
    [
        {"1A": "1"}, {"A-B": "1"}, {"": "1"}, {"N" * 65: "1"}, {"A\n": "1"}, {"é": "1"},
        {"-fplugin": "x"}, {"A": "1 -o /etc/x"}, {"A": "a=b"}, {"A": "'q'"}, {"A": '"q"'}, {"A": "a/b"},
        {"A": "1\n"}, {"A": "$(id)"}, {"A": "v" * 129}, {"A": 1},
        {f"D{i}": "1" for i in range(33)},
    ],
    ids=[
        "digit-first", "dash", "empty-name", "long-name", "newline-name", "non-ascii", "flag-name",
        "space", "equals", "single-quote", "double-quote", "slash", "trailing-newline", "shell",
        "long-value", "not-a-string", "33-defines",
    ],
)
def test_invalid_defines(defines: dict) -> None:
    with pytest.raises(InvalidDefine) as exc_info:
        validate_defines(defines)
    assert exc_info.value.reason == "InvalidDefine"


@pytest.fixture
def no_bcc(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything reaches bcc."""

    def refuse() -> None:
        raise AssertionError("bcc was called")

    monkeypatch.setattr(compile_mod, "_bcc", refuse)
    monkeypatch.setattr(compile_mod, "_xdp_bpf_class", refuse)


def test_invalid_defines_rejected_before_bcc(no_bcc: None) -> None:
    compiler = Compiler(kernel_release="6.18.0-test", bcc_version="0.26.0")
    with pytest.raises(InvalidDefine):
        compiler.load(CompileRequest(SRC, "xdp_main", {"A": "1 -include /etc/shadow"}))
    assert compiler.cached_keys() == []


@pytest.mark.parametrize("defines", [{"P": "_Pragma"}, {"H": "__has_include"}, {"X": "__has_"}, {"_Pragma": "1"}])
def test_defines_that_could_become_file_reading_operators_are_rejected_before_bcc(no_bcc: None, defines) -> None:
    """The agent's last check before bcc applies the API's define rule too (a third line of
    defence after the operator's and the attachment's parse)."""
    compiler = Compiler(kernel_release="6.18.0-test", bcc_version="0.26.0")
    with pytest.raises(InvalidDefine):
        compiler.load(CompileRequest(SRC, "xdp_main", defines))
    assert compiler.cached_keys() == []


@pytest.mark.parametrize("entrypoint", ["", "1x", "a-b", "x" * 65, "main\n", "a b"])
def test_invalid_entrypoint_rejected_before_bcc(no_bcc: None, entrypoint: str) -> None:
    with pytest.raises(EntrypointNotFound):
        Compiler(kernel_release="r", bcc_version="v").load(CompileRequest(SRC, entrypoint))


def test_nul_in_source_rejected_before_bcc(no_bcc: None) -> None:
    with pytest.raises(CompileError) as exc_info:
        Compiler(kernel_release="r", bcc_version="v").load(CompileRequest(SRC + "\0 evil", "xdp_main"))
    assert "NUL" in str(exc_info.value)


def test_bad_device_rejected_before_bcc(no_bcc: None) -> None:
    with pytest.raises(CompileError):
        Compiler(kernel_release="r", bcc_version="v").load(CompileRequest(SRC, "xdp_main", device="../eth0"))


def test_missing_headers_rejected_before_bcc(no_bcc: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BCC_KERNEL_SOURCE", raising=False)
    monkeypatch.setattr(compile_mod.os.path, "exists", lambda path: False)
    with pytest.raises(HeadersNotFound) as exc_info:
        Compiler(kernel_release="0.0.0-no-such-kernel", bcc_version="v").load(CompileRequest(SRC, "xdp_main"))
    assert exc_info.value.reason == "HeadersNotFound"
    assert "/lib/modules/0.0.0-no-such-kernel/build" in str(exc_info.value)


def test_compile_key_is_canonical() -> None:
    base = CompileRequest(SRC, "xdp_main", {"A": "1", "B": "2"})
    key = compile_key(base, "6.18", "0.26.0")
    assert len(key) == 64 and int(key, 16) >= 0
    assert compile_key(CompileRequest(SRC, "xdp_main", {"B": "2", "A": "1"}), "6.18", "0.26.0") == key
    variants = [
        compile_key(CompileRequest(SRC + " ", "xdp_main", {"A": "1", "B": "2"}), "6.18", "0.26.0"),
        compile_key(CompileRequest(SRC, "xdp_other", {"A": "1", "B": "2"}), "6.18", "0.26.0"),
        compile_key(CompileRequest(SRC, "xdp_main", {"A": "1", "B": "3"}), "6.18", "0.26.0"),
        compile_key(CompileRequest(SRC, "xdp_main", {"A": "1"}), "6.18", "0.26.0"),
        compile_key(CompileRequest(SRC, "xdp_main", {"A": "1", "B": "2"}, device="eth0"), "6.18", "0.26.0"),
        compile_key(base, "6.19", "0.26.0"),
        compile_key(base, "6.18", "0.27.0"),
    ]
    assert len({key, *variants}) == len(variants) + 1
    # No ambiguity from concatenation: moving text between fields changes the key.
    assert compile_key(CompileRequest("ab", "c"), "r", "v") != compile_key(CompileRequest("a", "bc"), "r", "v")


def test_request_defines_are_frozen() -> None:
    defines = {"A": "1"}
    req = CompileRequest(SRC, "xdp_main", defines)
    defines["A"] = "2"
    assert req.defines["A"] == "1"
    with pytest.raises(TypeError):
        req.defines["A"] = "3"  # type: ignore[index]


def test_cflags_one_argument_per_define_sorted() -> None:
    assert cflags({"B": "2", "A": ""}) == ["-DA=", "-DB=2"]
