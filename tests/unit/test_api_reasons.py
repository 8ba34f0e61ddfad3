"""The catalogue of condition reasons (kube_xdp_api.reasons)."""

from __future__ import annotations

import re

from kube_xdp_api import conditions, reasons

CONSTANTS = {name: value for name, value in vars(reasons).items() if name.isupper() and isinstance(value, str)}


def test_every_reason_constant_is_in_the_catalogue():
    assert set(CONSTANTS.values()) == set(reasons.CATALOGUE)


def test_reasons_are_camel_case_with_a_one_line_meaning():
    for reason, meaning in reasons.CATALOGUE.items():
        assert re.fullmatch(r"[A-Z][A-Za-z]+", reason), reason
        assert re.fullmatch(conditions.REASON_PATTERN, reason), reason
        assert meaning and "\n" not in meaning, reason


def test_stalling_reasons_are_catalogued():
    assert reasons.STALLING <= set(reasons.CATALOGUE)
    assert reasons.is_stalling(reasons.COMPILE_ERROR)
    assert not reasons.is_stalling(reasons.ATTACH_FAILED)
    assert not reasons.is_stalling(reasons.PROGRESSING)


def test_required_reasons_exist():
    required = {"Ready", "Attached", "Progressing", "InvalidSpec", "SourceNotFound", "SourceDigestMismatch",
                "CompileError", "VerifierRejected", "EntrypointNotFound", "InvalidDefine", "InterfaceNotFound",
                "NoInterfacesMatched", "HookBusy", "Conflict", "DriverModeUnsupported", "AttachFailed",
                "PinFailed", "NoNodesSelected", "NodesNotReady", "AttachmentsFailed", "Deleting"}
    assert required <= set(reasons.CATALOGUE)
