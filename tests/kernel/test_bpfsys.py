"""bpf(2) through ctypes on the real kernel: maps (hash, per-CPU), ids, test runs."""

from __future__ import annotations

import errno
import struct

import pytest

from kube_xdp_agent.kernel import LoadedProgram, PinStore, bpfsys

pytestmark = pytest.mark.kernel

DIGEST = "feedfacecafe"


def udp_frame(dport: int, payload: bytes = b"kube-xdp") -> bytes:
    """Ethernet + IPv4 (198.18.0.2 -> 198.18.0.1) + UDP."""
    eth = b"\x02\x00\x00\x00\x00\x01" + b"\x02\x00\x00\x00\x00\x02" + struct.pack("!H", 0x0800)
    udp = struct.pack("!HHHH", 40000, dport, 8 + len(payload), 0) + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, bytes([198, 18, 0, 2]), bytes([198, 18, 0, 1])
    )
    return eth + ip + udp


def test_prog_test_run_returns_the_verdict(counter_prog: LoadedProgram) -> None:
    dropped = bpfsys.prog_test_run(counter_prog.prog_fd, udp_frame(7777))
    passed = bpfsys.prog_test_run(counter_prog.prog_fd, udp_frame(53))
    assert dropped.retval == bpfsys.XDP_DROP == 1
    assert passed.retval == bpfsys.XDP_PASS == 2
    assert passed.data_out == udp_frame(53)  # the program does not rewrite packets
    many = bpfsys.prog_test_run(counter_prog.prog_fd, udp_frame(53), repeat=1000)
    assert many.retval == 2 and 0 < many.duration_ns < 100_000


def test_hash_map_through_its_pin(bpffs: str, counter_prog: LoadedProgram) -> None:
    store = PinStore(bpffs)
    store.pin_program("maps", DIGEST, counter_prog)
    port = (4242).to_bytes(2, "little")
    with store.open_map("maps", DIGEST, "by_port") as by_port:
        assert by_port.info.type == bpfsys.BPF_MAP_TYPE_HASH
        assert (by_port.info.key_size, by_port.info.value_size, by_port.info.max_entries) == (2, 8, 64)
        assert by_port.lookup(port) is None
        for _ in range(3):
            bpfsys.prog_test_run(counter_prog.prog_fd, udp_frame(4242))
        assert by_port.lookup(port) == struct.pack("<Q", 3)  # written by the program
        by_port.update(port, struct.pack("<Q", 100))
        bpfsys.prog_test_run(counter_prog.prog_fd, udp_frame(4242))
        assert by_port.lookup(port) == struct.pack("<Q", 101)
        assert port in set(by_port.keys())
        with pytest.raises(bpfsys.BpfSyscallError) as exc_info:
            by_port.update(port, struct.pack("<Q", 1), flags=bpfsys.BPF_NOEXIST)
        assert exc_info.value.errno == errno.EEXIST
        assert by_port.delete(port) and not by_port.delete(port)
        assert by_port.lookup(port) is None
        with pytest.raises(ValueError):
            by_port.lookup(b"\0" * 4)  # wrong key size: refused before the syscall


def test_percpu_array_values_are_per_possible_cpu(bpffs: str, counter_prog: LoadedProgram) -> None:
    store = PinStore(bpffs)
    store.pin_program("percpu", DIGEST, counter_prog)
    ncpu = bpfsys.possible_cpus()
    with store.open_map("percpu", DIGEST, "udp_hits") as hits:
        assert hits.info.percpu and hits.info.value_size == 4  # rounded up to 8 per CPU by the kernel
        before = hits.lookup(b"\0" * 4)
        assert isinstance(before, list) and len(before) == ncpu and all(len(v) == 4 for v in before)
        for _ in range(7):
            bpfsys.prog_test_run(counter_prog.prog_fd, udp_frame(9999))
        after = hits.lookup(b"\0" * 4)
        total = sum(struct.unpack("<I", v)[0] for v in after) - sum(struct.unpack("<I", v)[0] for v in before)
        assert total == 7
        values = [struct.pack("<I", 10 + cpu) for cpu in range(ncpu)]
        hits.update(b"\1\0\0\0", values)
        assert hits.lookup(b"\1\0\0\0") == values
        hits.update(b"\1\0\0\0", struct.pack("<I", 5))  # one value: written to every CPU
        assert hits.lookup(b"\1\0\0\0") == [struct.pack("<I", 5)] * ncpu
        with pytest.raises(ValueError):
            hits.update(b"\1\0\0\0", values[:-1] if ncpu > 1 else [])


def test_ids_and_info(counter_prog: LoadedProgram) -> None:
    with bpfsys.prog_fd_by_id(counter_prog.prog_id) as fd:
        info = bpfsys.prog_info(fd.fd)
    assert (info.id, info.tag, info.name) == (counter_prog.prog_id, counter_prog.tag, "xdp_count")
    for name, loaded_map in counter_prog.maps.items():
        with bpfsys.map_fd_by_id(loaded_map.id) as fd:
            minfo = bpfsys.map_info(fd.fd)
        assert minfo.id == loaded_map.id and minfo.name == name[:15]
    with pytest.raises(bpfsys.BpfSyscallError) as exc_info:
        bpfsys.obj_get("/sys/fs/bpf-does-not-exist/x")
    assert exc_info.value.errno == errno.ENOENT and exc_info.value.cmd == "BPF_OBJ_GET"
