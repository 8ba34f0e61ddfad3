"""The catalogue of condition reasons: stable, CamelCase, documented in one place.

A reason is part of the API: users alert on it, Argo CD/Flux show it, tests assert it.
Never rename one; add a new one instead. Every reason a controller writes (into a
condition, a status field or an Event) comes from this module (`CATALOGUE` maps each to
its meaning), and the writers refuse any other: `conditions.set_condition` and
`events.event_body` raise ValueError for a reason not in `CATALOGUE`, and so does
`require`, which the agent's status writers call on every `reason` field they fill
(tests/unit/test_reason_writers.py scans every writer of the operator and the agent for
a reason that is not catalogued).

Who sets what:
- the operator, on an XdpProgram: READY, PROGRESSING, AS_EXPECTED, NO_NODES_SELECTED,
  NODES_NOT_READY, ATTACHMENTS_FAILED, DELETING, INVALID_SPEC, INVALID_DEFINE, and a
  failing node's own reason when every failing node shares it;
- the agent, on an XdpAttachment: everything else; on its XdpNode: PROBED,
  HEADERS_NOT_FOUND.

`STALLING` lists the reasons that need a human (a wrong spec, a program the kernel
refuses, an interface that does not exist...): they go with `Stalled=True` so kstatus
readers (Flux, kpt, Argo CD) report a failure instead of waiting for a timeout. The agent
may still retry them slowly (a ConfigMap can be created later). Other failures are
transient: `Ready=False` with `Reconciling=True` and a retry.
"""

from __future__ import annotations

# --- Progress and success -------------------------------------------------------------
READY = "Ready"
ATTACHED = "Attached"
PROGRESSING = "Progressing"
AS_EXPECTED = "AsExpected"
NO_NODES_SELECTED = "NoNodesSelected"
DELETING = "Deleting"
PROBED = "Probed"

# --- Aggregates (XdpProgram, computed by the operator from its attachments) ------------
NODES_NOT_READY = "NodesNotReady"
ATTACHMENTS_FAILED = "AttachmentsFailed"

# --- Spec and source ------------------------------------------------------------------
INVALID_SPEC = "InvalidSpec"
INVALID_DEFINE = "InvalidDefine"
SOURCE_NOT_FOUND = "SourceNotFound"
SOURCE_DIGEST_MISMATCH = "SourceDigestMismatch"

# --- Compile and load (agent) ---------------------------------------------------------
HEADERS_NOT_FOUND = "HeadersNotFound"
COMPILE_ERROR = "CompileError"
ENTRYPOINT_NOT_FOUND = "EntrypointNotFound"
VERIFIER_REJECTED = "VerifierRejected"

# --- Interfaces and attach (agent) ----------------------------------------------------
INTERFACE_NOT_FOUND = "InterfaceNotFound"
NO_INTERFACES_MATCHED = "NoInterfacesMatched"
CONFLICT = "Conflict"
HOOK_BUSY = "HookBusy"
DRIVER_MODE_UNSUPPORTED = "DriverModeUnsupported"
OFFLOAD_UNSUPPORTED = "OffloadUnsupported"
PROGRAM_NOT_OFFLOADABLE = "ProgramNotOffloadable"
ATTACH_FAILED = "AttachFailed"
PIN_FAILED = "PinFailed"
DETACH_FAILED = "DetachFailed"

# --- Events (agent and operator): repairs and hand-overs ------------------------------
DRIFT_REPAIRED = "DriftRepaired"
PIN_REPAIRED = "PinRepaired"
TOOK_OVER = "TookOver"
CLEANUP_ABANDONED = "CleanupAbandoned"

CATALOGUE: dict[str, str] = {
    READY: "Every selected node runs the program as asked (XdpProgram).",
    ATTACHED: "The program is attached to every selected interface and read back (XdpAttachment).",
    PROGRESSING: "Work is under way: an object was created or changed and its controller has not finished.",
    AS_EXPECTED: "Nothing to report: used when Reconciling or Stalled is False.",
    NO_NODES_SELECTED: "The nodeSelector matches no node; the program is Ready with nothing to run.",
    DELETING: "The object is being deleted; programs are being detached and unpinned.",
    PROBED: "The node's XDP capabilities were read (XdpNode): kernel, bcc, headers, each interface's modes.",
    NODES_NOT_READY: "Some selected nodes have not reported their attachment Ready yet; none failed permanently.",
    ATTACHMENTS_FAILED: "Attachments on several nodes failed for different reasons (see failingNodes).",
    INVALID_SPEC: "The spec breaks a validation rule the API server did not (or could not) enforce.",
    INVALID_DEFINE: "A define's name is not a C identifier or its value could smuggle a flag or a path.",
    SOURCE_NOT_FOUND: "The source ConfigMap, or the key in it, does not exist.",
    SOURCE_DIGEST_MISMATCH: "The source the agent fetched differs from the attachment's digest (changed in flight).",
    HEADERS_NOT_FOUND: "The node has no kernel headers for bcc (/lib/modules/<release>/build or kheaders).",
    COMPILE_ERROR: "The C source does not compile; the message holds the compiler output (trimmed).",
    ENTRYPOINT_NOT_FOUND: "The compiled object has no function named spec.entrypoint.",
    VERIFIER_REJECTED: "The kernel verifier refused the program; the message holds the verifier log (trimmed).",
    INTERFACE_NOT_FOUND: "An interface named in spec.interfaces.names does not exist on the node.",
    NO_INTERFACES_MATCHED: "spec.interfaces (pattern or primary) matches no interface on the node.",
    CONFLICT: "The interface holds another program: an XdpProgram that outranks this one, or a foreign one (kept unless spec.takeOver).",
    HOOK_BUSY: "The interface's XDP hook changed under an attach or detach (another program is on it); left as it is.",
    DRIVER_MODE_UNSUPPORTED: "The driver refused the mode and every allowed fallback mode.",
    OFFLOAD_UNSUPPORTED: "The interface cannot offload XDP, or its device refused the HW attach (the kernel's "
                         "message says which); the next allowed mode is tried.",
    PROGRAM_NOT_OFFLOADABLE: "The program breaks a rule of offloaded programs (maps other than array/hash, per-CPU "
                             "maps, map flags, helpers a NIC cannot run) or the device refused its maps; the next "
                             "allowed mode is tried.",
    ATTACH_FAILED: "The kernel refused the attach for another reason (errno in the message); retried.",
    PIN_FAILED: "Pinning in bpffs failed (bpffs not mounted, permissions); retried.",
    DETACH_FAILED: "Detaching or unpinning failed during cleanup; retried before the finalizer goes.",
    DRIFT_REPAIRED: "Event: the program was detached or replaced behind kube-xdp's back; re-attached.",
    PIN_REPAIRED: "Event: the program's pins were removed behind kube-xdp's back; re-pinned from the running program.",
    TOOK_OVER: "Event: an interface's program was replaced atomically (higher priority, or spec.takeOver).",
    CLEANUP_ABANDONED: "Event: a node's agent did not confirm detaching in time; its attachment was released.",
}

# Reasons that need a human: set with Stalled=True (see the module docstring).
STALLING: frozenset[str] = frozenset(
    {
        ATTACHMENTS_FAILED,
        INVALID_SPEC,
        INVALID_DEFINE,
        SOURCE_NOT_FOUND,
        HEADERS_NOT_FOUND,
        COMPILE_ERROR,
        ENTRYPOINT_NOT_FOUND,
        VERIFIER_REJECTED,
        INTERFACE_NOT_FOUND,
        NO_INTERFACES_MATCHED,
        CONFLICT,
        HOOK_BUSY,
        DRIVER_MODE_UNSUPPORTED,
        OFFLOAD_UNSUPPORTED,
        PROGRAM_NOT_OFFLOADABLE,
    }
)


def is_stalling(reason: str) -> bool:
    """True when `reason` is a permanent failure (goes with Stalled=True)."""
    return reason in STALLING


def require(reason: str) -> str:
    """`reason`, if the catalogue has it; else ValueError (a writer never invents one)."""
    if reason not in CATALOGUE:
        raise ValueError(f"reason {reason!r} is not in kube_xdp_api.reasons.CATALOGUE: add it there (with its "
                         "meaning) before writing it")
    return reason
