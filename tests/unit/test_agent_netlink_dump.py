"""The agent's own rtnetlink link dump (kernel/netlink.py): the request, the split of an
answer into messages, the decoding of RTM_NEWLINK, and the read loop (batches, retries
of an interrupted dump, errors), on hand-built bytes. The same code against the kernel,
compared with pyroute2 and iproute2: tests/kernel/test_netlink.py."""

from __future__ import annotations

import errno
import itertools
import socket
import struct

import pytest

from kube_xdp_agent.kernel import netlink as nlmod
from kube_xdp_agent.kernel.errors import InterfaceNotFound, KernelError
from kube_xdp_agent.kernel.netlink import (
    DumpError,
    LinkInfo,
    XdpState,
    decode_link,
    link_dump_request,
    link_get_request,
    rtattrs,
    split_dump,
    xdp_state_from_attrs,
)

NESTED = 0x8000


def attr(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def u32(v: int) -> bytes:
    return struct.pack("=I", v)


def xdp(attached: int, **ids: int) -> bytes:
    kinds = {"prog": 4, "drv": 5, "skb": 6, "hw": 7}
    return attr(43 | NESTED, attr(2, bytes([attached])) + b"".join(attr(kinds[k], u32(v)) for k, v in ids.items()))


def link(index: int, name: str | None, *extra: bytes, mac: bytes | None = b"\x02\x00\x00\x00\x00\x07",
         oper: int | None = 6, kind: str | None = "veth") -> bytes:
    body = struct.pack("=BxHiII", 0, 1, index, 0, 0)
    if name is not None:
        body += attr(3, name.encode() + b"\0")
    body += attr(4, u32(1500))                                         # IFLA_MTU: not read
    if mac is not None:
        body += attr(1, mac)
    if oper is not None:
        body += attr(16, bytes([oper]))
    if kind is not None:
        body += attr(18 | NESTED, attr(1, kind.encode() + b"\0") + attr(2 | NESTED, attr(1, u32(5))))
    return body + b"".join(extra)


def message(kind: int, payload: bytes, seq: int, flags: int = 0x2) -> bytes:
    raw = struct.pack("=IHHII", 16 + len(payload), kind, flags, seq, 4242) + payload
    return raw + b"\0" * (-len(raw) % 4)


def done(seq: int, code: int = 0) -> bytes:
    return message(3, struct.pack("=i", code), seq)


# --- attributes --------------------------------------------------------------------------
def test_attributes_are_aligned_and_their_flags_masked():
    buf = attr(3, b"ab\0") + attr(18 | NESTED, attr(1, b"veth\0")) + attr(7, b"")
    attrs = rtattrs(buf)
    assert bytes(attrs[3]) == b"ab\0" and set(attrs) == {3, 18, 7} and bytes(attrs[7]) == b""
    assert bytes(rtattrs(attrs[18])[1]) == b"veth\0"


@pytest.mark.parametrize("buf", [struct.pack("=HH", 3, 1) + b"\0\0\0\0", struct.pack("=HH", 12, 1) + b"abcd"],
                         ids=["shorter-than-a-header", "past-the-end"])
def test_a_malformed_attribute_is_an_error_not_a_guess(buf):
    with pytest.raises(DumpError):
        rtattrs(buf)


# --- IFLA_XDP ----------------------------------------------------------------------------
@pytest.mark.parametrize("code, mode", [(0, None), (1, "native"), (2, "generic"), (3, "offload"), (4, "multi"),
                                        (9, "unknown(9)")])
def test_xdp_attached_modes(code, mode):
    assert xdp_state_from_attrs(memoryview(xdp(code))[4:]).attached == mode


def test_xdp_prog_ids_and_no_xdp_attribute():
    state = xdp_state_from_attrs(memoryview(xdp(4, drv=7, hw=8))[4:])
    assert state == XdpState(attached="multi", drv_prog_id=7, hw_prog_id=8)
    assert state.occupant == (7, "native")
    assert xdp_state_from_attrs(memoryview(xdp(1, prog=7, drv=7, skb=0))[4:]) == \
        XdpState(attached="native", prog_id=7, drv_prog_id=7)
    assert xdp_state_from_attrs(None) == XdpState()


# --- RTM_NEWLINK -------------------------------------------------------------------------
def test_a_link_is_decoded_and_the_attributes_not_needed_skipped():
    got = decode_link(link(3, "eth0", xdp(2, prog=41, skb=41), attr(100, b"future attribute")))
    assert got == LinkInfo(index=3, name="eth0", mac="02:00:00:00:00:07", oper_state="up", kind="veth",
                           xdp=XdpState(attached="generic", prog_id=41, skb_prog_id=41))


@pytest.mark.parametrize("kw, field, value", [
    ({"mac": None}, "mac", None),
    ({"mac": b"\x0a\x00\x00\x01"}, "mac", "0a:00:00:01"),         # a tunnel's IPv4 "address"
    ({"kind": None}, "kind", None),
    ({"oper": None}, "oper_state", "unknown"),
    ({"oper": 2}, "oper_state", "down"),
    ({"oper": 3}, "oper_state", "lowerlayerdown"),
    ({"oper": 42}, "oper_state", "unknown"),
])
def test_link_fields_absent_or_unusual(kw, field, value):
    assert getattr(decode_link(link(1, "x", **kw)), field) == value
    assert decode_link(link(1, "x", **kw)).xdp == XdpState()


@pytest.mark.parametrize("payload", [b"\0" * 8, link(5, None)], ids=["short", "no-name"])
def test_a_link_message_without_what_identifies_it_is_an_error(payload):
    with pytest.raises(DumpError):
        decode_link(payload)


# --- the request and the answer ----------------------------------------------------------
def test_the_request_dumps_every_link_without_statistics():
    raw = link_dump_request(77)
    length, kind, flags, seq, pid = struct.unpack_from("=IHHII", raw)
    assert (length, kind, flags, seq, pid) == (len(raw), 18, 0x1 | 0x300, 77, 0)
    assert struct.unpack_from("=BxHiII", raw, 16) == (socket.AF_UNSPEC, 0, 0, 0, 0)
    assert {k: struct.unpack("=I", bytes(v))[0] for k, v in rtattrs(raw, 32).items()} == {29: 1 << 3}


@pytest.mark.parametrize("name", ["eth0", "a", "abcdefghijklmno"])
def test_the_request_for_one_link_names_it_and_is_not_a_dump(name):
    raw = link_get_request(78, name)
    length, kind, flags, seq, pid = struct.unpack_from("=IHHII", raw)
    assert (length, kind, flags, seq, pid) == (len(raw), 18, 0x1, 78, 0) and length % 4 == 0
    attrs = rtattrs(raw, 32)
    assert bytes(attrs[3]) == name.encode() + b"\0" and struct.unpack("=I", bytes(attrs[29]))[0] == 1 << 3


def test_an_answer_is_split_into_its_messages_and_other_dumps_skipped():
    data = message(16, link(1, "lo"), 5) + message(16, link(9, "old"), 4) + message(16, link(2, "eth0"), 5)
    part = split_dump(data, 5)
    assert [decode_link(p).name for _, p in part.payloads] == ["lo", "eth0"]
    assert not part.done and not part.interrupted
    last = split_dump(done(4) + message(16, link(3, "eth1"), 5) + done(5) + message(16, link(4, "after"), 5), 5)
    assert [decode_link(p).name for _, p in last.payloads] == ["eth1"] and last.done


def test_an_interrupted_dump_is_flagged():
    part = split_dump(message(16, link(1, "lo"), 5, flags=0x2 | 0x10) + done(5), 5)
    assert part.interrupted and part.done


@pytest.mark.parametrize("data, code", [
    (message(2, struct.pack("=i", -errno.EPERM) + b"\0" * 16, 5), errno.EPERM),
    (done(5, -errno.ENOBUFS), errno.ENOBUFS),
], ids=["nlmsgerr", "done-with-error"])
def test_the_kernel_refusing_the_dump_is_an_error_with_its_errno(data, code):
    with pytest.raises(DumpError) as info:
        split_dump(data, 5)
    assert info.value.errno == code


def test_an_ack_is_not_part_of_the_answer_and_a_malformed_message_is_an_error():
    assert split_dump(message(2, struct.pack("=i", 0) + b"\0" * 16, 5) + done(5), 5).payloads == []
    with pytest.raises(DumpError):
        split_dump(struct.pack("=IHHII", 400, 16, 2, 5, 0) + b"\0" * 20, 5)


# --- the read loop -----------------------------------------------------------------------
class FakeSocket:
    """Answers each dump request with `script(seq, attempt)`: a list of recv() results
    (bytes, or an exception to raise), by attempt."""

    def __init__(self, script) -> None:
        self.script, self.sent, self.queue, self.closed = script, [], [], False

    def send(self, data: bytes) -> int:
        seq = struct.unpack_from("=IHHII", data)[3]
        self.sent.append(seq)
        self.queue = list(self.script(seq, len(self.sent) - 1))
        return len(data)

    def recvmsg(self, size: int):
        item = self.queue.pop(0)
        if isinstance(item, BaseException):
            raise item
        if isinstance(item, tuple):        # (bytes, flags)
            return item[0], [], item[1], None
        return item, [], 0, None

    def close(self) -> None:
        self.closed = True


def handle(sock: FakeSocket) -> nlmod.Netlink:
    """A Netlink whose dump socket is `sock` (no pyroute2 socket: the dump does not use it)."""
    nl = nlmod.Netlink.__new__(nlmod.Netlink)
    nl.netns, nl._dump_sock, nl._ioctl_sock, nl._seq = "node", sock, None, itertools.count(1)
    nl._driver = lambda name: "veth"      # type: ignore[method-assign]
    return nl


def test_an_answer_in_several_batches_is_read_to_its_end():
    sock = FakeSocket(lambda seq, _: [message(16, link(2, "eth0"), seq), message(16, link(1, "lo"), seq),
                                      message(16, link(3, "eth1"), seq) + done(seq)])
    got = handle(sock).interfaces()
    assert [(i.index, i.name, i.driver) for i in got] == [(1, "lo", "veth"), (2, "eth0", "veth"), (3, "eth1", "veth")]
    assert len(sock.sent) == 1


def test_an_interrupted_dump_is_read_again_then_given_up():
    flags = 0x2 | 0x10
    sock = FakeSocket(lambda seq, n: [message(16, link(1, "lo"), seq, flags=flags if n < 2 else 0x2) + done(seq)])
    assert [i.name for i in handle(sock).interfaces()] == ["lo"]
    assert len(sock.sent) == 3 and len(set(sock.sent)) == 3

    always = FakeSocket(lambda seq, n: [message(16, link(1, "lo"), seq, flags=flags) + done(seq)])
    nl = handle(always)
    with pytest.raises(KernelError) as info:
        nl.interfaces()
    assert len(always.sent) == nlmod.DUMP_RETRIES + 1 and "interrupted" in str(info.value)
    assert info.value.errno == errno.EINTR and always.closed and nl._dump_sock is None


@pytest.mark.parametrize("answer, what", [
    ((b"\0" * 16, socket.MSG_TRUNC), "did not fit"),
    (TimeoutError("timed out"), "timed out"),
], ids=["truncated", "timeout"])
def test_a_failed_read_is_a_kernel_error_and_the_socket_replaced(answer, what):
    sock = FakeSocket(lambda seq, _: [answer])
    nl = handle(sock)
    with pytest.raises(KernelError) as info:
        nl.interfaces()
    assert what in str(info.value) and "listing interfaces failed" in str(info.value)
    assert sock.closed and nl._dump_sock is None        # what is left of that answer is never read


# --- one link by name --------------------------------------------------------------------
def error(seq: int, code: int) -> bytes:
    return message(2, struct.pack("=i", -code) + b"\0" * 16, seq)


def test_one_link_is_read_by_name_skipping_other_answers():
    sock = FakeSocket(lambda seq, _: [message(16, link(9, "old"), seq - 1) + message(16, link(3, "eth1", xdp(2, prog=5, skb=5)), seq)])
    got = handle(sock).interface("eth1")
    assert (got.index, got.name, got.driver, got.kind) == (3, "eth1", "veth", "veth")
    assert got.xdp == XdpState(attached="generic", prog_id=5, skb_prog_id=5)
    assert handle(FakeSocket(lambda seq, _: [message(16, link(3, "eth1", xdp(1, prog=6, drv=6)), seq)])) \
        .read_xdp("eth1").drv_prog_id == 6


@pytest.mark.parametrize("code", [errno.ENODEV, errno.ENOENT])
def test_no_such_link_is_interface_not_found_and_the_socket_kept(code):
    sock = FakeSocket(lambda seq, _: [error(seq, code)])
    nl = handle(sock)
    with pytest.raises(InterfaceNotFound):
        nl.interface("eth9")
    assert not sock.closed and nl._dump_sock is sock          # the error was the whole answer


@pytest.mark.parametrize("answer, what", [
    (None, "Operation not permitted"),
    ((b"\0" * 16, socket.MSG_TRUNC), "did not fit"),
    (TimeoutError("timed out"), "timed out"),
], ids=["refused", "truncated", "timeout"])
def test_a_failed_read_of_one_link_is_a_kernel_error_and_the_socket_replaced(answer, what):
    sock = FakeSocket(lambda seq, _: [error(seq, errno.EPERM) if answer is None else answer])
    nl = handle(sock)
    with pytest.raises(KernelError) as info:
        nl.read_xdp("eth0")
    assert not isinstance(info.value, InterfaceNotFound)
    assert what in str(info.value) and "reading interface 'eth0' failed" in str(info.value)
    assert sock.closed and nl._dump_sock is None


@pytest.mark.parametrize("name", ["", "a/b", "has space", "x" * 16, "a:b", "a\0b", ".", "..", "é" * 8])
def test_a_name_that_is_not_an_interface_name_is_never_sent(name):
    sock = FakeSocket(lambda seq, _: [])
    with pytest.raises(InterfaceNotFound):
        handle(sock).interface(name)
    assert sock.sent == []
