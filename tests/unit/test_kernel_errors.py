"""Errors of the kernel layer: reasons, context rendering, output trimming."""

from __future__ import annotations

import errno

import pytest

from kube_xdp_agent.kernel import errors


def test_reasons_are_stable_camel_case() -> None:
    expected = {
        errors.CompileError: "CompileError",
        errors.HeadersNotFound: "HeadersNotFound",
        errors.VerifierError: "VerifierRejected",
        errors.EntrypointNotFound: "EntrypointNotFound",
        errors.EntrypointNotXdp: "EntrypointNotFound",
        errors.InvalidDefine: "InvalidDefine",
        errors.InterfaceNotFound: "InterfaceNotFound",
        errors.NetnsNotFound: "InterfaceNotFound",
        errors.HookBusy: "HookBusy",
        errors.AttachError: "AttachFailed",
        errors.PinError: "PinFailed",
    }
    for cls, reason in expected.items():
        assert cls("x").reason == reason
        assert issubclass(cls, errors.KernelError)


def test_reasons_are_in_the_api_catalogue() -> None:
    reasons = pytest.importorskip("kube_xdp_api.reasons")
    used = {"CompileError", "HeadersNotFound", "VerifierRejected", "EntrypointNotFound", "InvalidDefine",
            "InterfaceNotFound", "HookBusy", "AttachFailed", "DriverModeUnsupported", "DetachFailed", "PinFailed"}
    assert used <= set(reasons.CATALOGUE)


def test_reason_override_and_context_rendering() -> None:
    err = errors.AttachError("attach failed", reason="DriverModeUnsupported", interface="eth0",
                             netns="kxt-1", mode="native", errno=errno.EOPNOTSUPP)
    assert err.reason == "DriverModeUnsupported"
    assert str(err) == "attach failed (interface=eth0, netns=kxt-1, mode=native, errno=EOPNOTSUPP)"
    assert errors.AttachError("x").reason == "AttachFailed"  # the override is per instance
    assert str(errors.KernelError("plain")) == "plain"
    assert errors.PinError("p", errno=errno.EBUSY).context() == {"errno": "EBUSY"}


def test_hook_busy_carries_the_foreign_program() -> None:
    err = errors.HookBusy("busy", prog_id=42, attached_mode="native", interface="eth0", errno=errno.EBUSY)
    assert (err.prog_id, err.attached_mode, err.errno) == (42, "native", errno.EBUSY)


def test_verifier_log_keeps_first_line_and_tail() -> None:
    lines = ["bpf: Failed to load program: Permission denied"]
    lines += [f"{i}: (b7) r{i % 10} = {i}    ; R{i % 10}_w={i}" for i in range(2000)]
    lines += ["invalid access to packet, off=20 size=1", "processed 2002 insns (limit 1000000)"]
    out = errors.VerifierError("rejected", output="\n".join(lines)).output
    assert len(out.encode()) <= errors.OUTPUT_LIMIT
    kept = out.splitlines()
    assert kept[0] == lines[0]
    assert kept[1].startswith("... (") and "lines trimmed" in kept[1]
    assert kept[-2:] == lines[-2:]
    assert len(kept) - 2 + int(kept[1].split("(")[1].split()[0]) == len(lines) - 1


def test_verifier_log_short_is_untouched() -> None:
    assert errors.VerifierError("r", output="a\nb\n").output == "a\nb"


def test_verifier_log_one_huge_line_keeps_its_end() -> None:
    out = errors.trim_verifier_log("head\n" + "x" * 10000 + "THE END")
    assert out.endswith("THE END") and len(out.encode()) <= errors.OUTPUT_LIMIT


def test_compiler_output_keeps_the_first_errors() -> None:
    text = "\n".join(f"/virtual/main.c:{i}:1: error: number {i}" for i in range(1, 500))
    out = errors.CompileError("failed", output=text).output
    assert out.startswith("/virtual/main.c:1:1: error: number 1\n")
    assert out.endswith("more lines trimmed)") and len(out.encode()) <= errors.OUTPUT_LIMIT


def test_trim_counts_utf8_bytes() -> None:
    out = errors.trim_head("é" * 5000)
    assert len(out.encode()) <= errors.OUTPUT_LIMIT
