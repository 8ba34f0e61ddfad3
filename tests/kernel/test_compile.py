"""Compile and load with bcc on the real kernel: ids, cache, and every failure kind."""

from __future__ import annotations

import errno
import gc
import re
import weakref

import pytest
from kube_xdp_agent.kernel import (
    BpfSyscallError,
    CompileError,
    CompileRequest,
    Compiler,
    EntrypointNotFound,
    EntrypointNotXdp,
    LoadedProgram,
    VerifierError,
    bpfsys,
)
from kube_xdp_agent.kernel.errors import OUTPUT_LIMIT

pytestmark = pytest.mark.kernel

OOB_SRC = r"""
int xdp_oob(struct xdp_md *ctx) {
    unsigned char *data = (void *)(long)ctx->data;
    /* no check against data_end: the verifier must refuse this read */
    return data[20] == 6 ? XDP_DROP : XDP_PASS;
}
"""


def test_load_counter_reads_back_id_and_tag(counter_prog: LoadedProgram) -> None:
    info = bpfsys.prog_info(counter_prog.prog_fd)
    assert counter_prog.prog_id == info.id > 0
    assert re.fullmatch(r"[0-9a-f]{16}", counter_prog.tag)
    assert counter_prog.tag == info.tag
    assert info.type == bpfsys.BPF_PROG_TYPE_XDP
    assert counter_prog.name == "xdp_count"
    # The kernel knows the program by id, independently of our fd.
    with bpfsys.prog_fd_by_id(counter_prog.prog_id) as fd:
        assert bpfsys.prog_info(fd.fd).tag == counter_prog.tag
    # Every map of the module, with the ids the program references.
    assert set(counter_prog.maps) == {"counter", "udp_hits", "by_port"}
    assert {m.id for m in counter_prog.maps.values()} == set(info.map_ids)
    assert counter_prog.maps["udp_hits"].info.type == bpfsys.BPF_MAP_TYPE_PERCPU_ARRAY
    assert counter_prog.maps["by_port"].info.key_size == 2


def test_cache_hit_same_key_miss_on_define_change(counter_request: CompileRequest) -> None:
    compiler = Compiler()
    src, defines = counter_request.source, dict(counter_request.defines)
    try:
        req = CompileRequest(src, "xdp_count", defines)
        cold = compiler.load(req)
        hit = compiler.load(CompileRequest(src, "xdp_count", dict(reversed(defines.items()))))
        assert not cold.cache_hit and hit.cache_hit
        assert hit.key == cold.key and hit.prog_id == cold.prog_id and hit.prog_fd == cold.prog_fd
        assert hit.duration_ms < 5 and cold.duration_ms > 10 * hit.duration_ms

        changed = compiler.load(CompileRequest(src, "xdp_count", {**defines, "COUNT_PORT": "9998"}))
        assert not changed.cache_hit
        assert changed.key != cold.key and changed.prog_id != cold.prog_id

        # release() frees the module: the program (neither pinned nor attached) is gone,
        # and so is the bcc object (bcc's atexit registration would keep it alive).
        bcc_module = weakref.ref(cold._module.bpf)  # type: ignore[union-attr]
        assert compiler.release(cold.key)
        assert cold.closed and hit.closed
        with pytest.raises(BpfSyscallError) as exc_info:
            bpfsys.prog_fd_by_id(cold.prog_id)
        assert exc_info.value.errno == errno.ENOENT
        assert not compiler.release(cold.key)
        again = compiler.load(req)
        assert not again.cache_hit and again.prog_id != cold.prog_id
        del cold, hit
        gc.collect()
        assert bcc_module() is None
    finally:
        compiler.close()


def test_invalid_c_is_compile_error(compiler: Compiler) -> None:
    with pytest.raises(CompileError) as exc_info:
        compiler.load(CompileRequest("int xdp_x(struct xdp_md *ctx) { return XDP_PASS +; }", "xdp_x"))
    err = exc_info.value
    assert err.reason == "CompileError"
    assert "error: expected expression" in err.output
    assert err.__cause__ is not None


def test_verifier_rejection(compiler: Compiler) -> None:
    with pytest.raises(VerifierError) as exc_info:
        compiler.load(CompileRequest(OOB_SRC, "xdp_oob"))
    err = exc_info.value
    assert err.reason == "VerifierRejected"
    assert "invalid access to packet" in err.output
    assert err.errno == errno.EACCES
    assert len(err.output.encode()) <= OUTPUT_LIMIT


def test_verifier_log_is_trimmed_to_its_tail(compiler: Compiler) -> None:
    # An unrolled loop makes a long log; the rejection is at its very end.
    body = "".join(f"    acc += ctx->ingress_ifindex * {i};\n" for i in range(300))
    src = (
        "int xdp_long(struct xdp_md *ctx) {\n    volatile u64 acc = 0;\n" + body
        + "    unsigned char *d = (void *)(long)ctx->data;\n    return d[40] + acc;\n}\n"
    )
    with pytest.raises(VerifierError) as exc_info:
        compiler.load(CompileRequest(src, "xdp_long"))
    output = exc_info.value.output
    assert len(output.encode()) <= OUTPUT_LIMIT
    assert "lines trimmed" in output
    assert "invalid access to packet" in output
    assert output.splitlines()[0].startswith("bpf: Failed to load program")


def test_missing_entrypoint(compiler: Compiler, counter_request: CompileRequest) -> None:
    with pytest.raises(EntrypointNotFound) as exc_info:
        compiler.load(CompileRequest(counter_request.source, "xdp_missing", counter_request.defines))
    assert exc_info.value.reason == "EntrypointNotFound"
    assert exc_info.value.available == ("xdp_count",)


def test_static_function_is_not_an_entrypoint(compiler: Compiler) -> None:
    src = "static __always_inline int helper(int x) { return x; }\n" + \
        "int xdp_main(struct xdp_md *ctx) { return helper(XDP_PASS); }"
    with pytest.raises(EntrypointNotFound):
        compiler.load(CompileRequest(src, "helper"))


@pytest.mark.parametrize(
    ("function", "signature"),
    [("helper_void", "int helper_void(void)"), ("helper_int", "int helper_int(int x)")],
)
def test_non_xdp_function_refused(compiler: Compiler, function: str, signature: str) -> None:
    # Both load as XDP with plain bcc: the verifier does not object to them.
    src = (
        "int helper_void(void) { return 0; }\n"
        "int helper_int(int x) { return x + 1; }\n"
        "int xdp_main(struct xdp_md *ctx) { return XDP_PASS; }\n"
    )
    with pytest.raises(EntrypointNotXdp) as exc_info:
        compiler.load(CompileRequest(src, function))
    err = exc_info.value
    assert err.reason == "EntrypointNotFound"
    assert err.signature == signature
    assert "struct xdp_md *ctx" in str(err)
    assert compiler.load(CompileRequest(src, "xdp_main")).prog_id > 0


def test_bcc_rewrites_extra_arguments_into_a_compile_error(compiler: Compiler) -> None:
    src = "int add(int a, int b) { return a + b; }\nint xdp_main(struct xdp_md *ctx) { return XDP_PASS; }"
    with pytest.raises(CompileError) as exc_info:
        compiler.load(CompileRequest(src, "add"))
    assert "error:" in exc_info.value.output


def test_tracing_functions_in_the_source_are_not_autoloaded(compiler: Compiler) -> None:
    # Plain bcc would load kprobe__* as a kprobe and attach it to sys_clone.
    src = (
        "int kprobe__sys_clone(void *ctx) { return 0; }\n"
        "int xdp_main(struct xdp_md *ctx) { return XDP_PASS + 0 * MARK; }\n"
    )
    loaded = compiler.load(CompileRequest(src, "xdp_main", {"MARK": "42"}))
    bcc_module = loaded._module.bpf  # type: ignore[union-attr]
    assert set(bcc_module.funcs) == {b"xdp_main"}
    assert not bcc_module.kprobe_fds
