"""bpfsys layouts against the kernel UAPI, and the CPU list parser."""

from __future__ import annotations

import ctypes

import pytest

from kube_xdp_agent.kernel import bpfsys


@pytest.mark.parametrize(
    ("struct", "size", "offsets"),
    [
        (bpfsys._ProgInfo, 232, {"tag": 8, "map_ids": 56, "name": 64, "ifindex": 80, "netns_dev": 88,
                                 "btf_id": 128, "func_info": 136, "nr_func_info": 144, "run_time_ns": 192,
                                 "run_cnt": 200, "verified_insns": 216}),
        (bpfsys._MapInfo, 88, {"max_entries": 16, "name": 24, "ifindex": 40, "netns_dev": 48, "btf_id": 64,
                               "map_extra": 80}),
        (bpfsys._BtfInfo, 32, {"btf_size": 8, "id": 12, "name": 16, "kernel_btf": 28}),
        (bpfsys._MapElemAttr, 32, {"key": 8, "value": 16, "flags": 24}),
        (bpfsys._ObjAttr, 16, {"bpf_fd": 8, "file_flags": 12}),
        (bpfsys._InfoAttr, 16, {"info": 8}),
        (bpfsys._TestRunAttr, 80, {"data_in": 16, "data_out": 24, "repeat": 32, "duration": 36,
                                   "ctx_in": 48, "ctx_out": 56, "flags": 64, "cpu": 68, "batch_size": 72}),
    ],
    ids=["bpf_prog_info", "bpf_map_info", "bpf_btf_info", "map_elem", "obj", "info", "test_run"],
)
def test_layouts_match_uapi(struct: type[ctypes.Structure], size: int, offsets: dict[str, int]) -> None:
    assert ctypes.sizeof(struct) == size
    for field, offset in offsets.items():
        assert getattr(struct, field).offset == offset, field


@pytest.mark.parametrize(("text", "count"), [("0\n", 1), ("0-1\n", 2), ("0-3,8,10-11", 7), ("0,2", 2)])
def test_parse_cpu_list(text: str, count: int) -> None:
    assert bpfsys.parse_cpu_list(text) == count


def test_fd_closes_once(tmp_path) -> None:
    import os

    raw = os.open(tmp_path, os.O_RDONLY)
    fd = bpfsys.Fd(raw)
    with fd:
        assert fd.fileno() == raw
    assert fd.closed
    fd.close()  # idempotent
    with pytest.raises(ValueError):
        _ = fd.fd
    with pytest.raises(OSError):
        os.fstat(raw)
