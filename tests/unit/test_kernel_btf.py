"""The BTF reader on hand-built blobs (the real-kernel counterpart: test_compile.py)."""

from __future__ import annotations

import struct

import pytest

from kube_xdp_agent.kernel import btf


class BtfBuilder:
    """Encodes BTF the way the kernel's UAPI describes it (just the kinds used here)."""

    def __init__(self) -> None:
        self.types = b""
        self.strings = b"\0"
        self.count = 0

    def _name(self, name: str) -> int:
        if not name:
            return 0
        offset = len(self.strings)
        self.strings += name.encode() + b"\0"
        return offset

    def _add(self, kind: int, name: str, vlen: int, size_or_type: int, trailer: bytes = b"") -> int:
        self.types += struct.pack("<III", self._name(name), (kind << 24) | vlen, size_or_type) + trailer
        self.count += 1
        return self.count

    def int_(self, name: str = "int", size: int = 4) -> int:
        return self._add(btf.KIND_INT, name, 0, size, struct.pack("<I", 32 | (1 << 24)))

    def struct_(self, name: str, members: list[tuple[str, int]]) -> int:
        trailer = b"".join(struct.pack("<III", self._name(m), t, 32 * i) for i, (m, t) in enumerate(members))
        return self._add(btf.KIND_STRUCT, name, len(members), 4 * len(members), trailer)

    def ptr(self, target: int) -> int:
        return self._add(btf.KIND_PTR, "", 0, target)

    def modifier(self, kind: int, target: int, name: str = "") -> int:
        return self._add(kind, name, 0, target)

    def proto(self, ret: int, params: list[tuple[str, int]]) -> int:
        trailer = b"".join(struct.pack("<II", self._name(p), t) for p, t in params)
        return self._add(btf.KIND_FUNC_PROTO, "", len(params), ret, trailer)

    def func(self, name: str, proto: int) -> int:
        return self._add(btf.KIND_FUNC, name, 1, proto)  # vlen carries the linkage

    def blob(self) -> bytes:
        header = struct.pack("<HBBIIIII", btf.BTF_MAGIC, 1, 0, 24, 0, len(self.types), len(self.types),
                             len(self.strings))
        return header + self.types + self.strings


@pytest.fixture
def b() -> BtfBuilder:
    builder = BtfBuilder()
    builder.int_()  # id 1: int
    u32 = builder.int_("unsigned int")  # id 2
    builder.struct_("xdp_md", [("data", u32), ("data_end", u32)])  # id 3
    return builder


def test_xdp_signature(b: BtfBuilder) -> None:
    fn = b.func("xdp_main", b.proto(1, [("ctx", b.ptr(3))]))
    sig = btf.entry_signature(b.blob(), fn)
    assert sig.is_xdp and str(sig) == "int xdp_main(struct xdp_md *ctx)"


def test_typedef_and_const_are_seen_through(b: BtfBuilder) -> None:
    xmd = b.modifier(btf.KIND_TYPEDEF, 3, "xmd")
    const_ptr = b.ptr(b.modifier(btf.KIND_CONST, xmd))
    u32_ret = b.modifier(btf.KIND_TYPEDEF, 2, "u32")
    fn = b.func("xdp_td", b.proto(u32_ret, [("ctx", const_ptr)]))
    sig = btf.entry_signature(b.blob(), fn)
    assert sig.is_xdp and str(sig) == "u32 xdp_td(const xmd *ctx)"


@pytest.mark.parametrize(
    ("build", "rendered"),
    [
        (lambda b: b.proto(1, []), "int f(void)"),
        (lambda b: b.proto(1, [("x", 1)]), "int f(int x)"),
        (lambda b: b.proto(1, [("ctx", b.ptr(b.struct_("__sk_buff", [])))]), "int f(struct __sk_buff *ctx)"),
        (lambda b: b.proto(0, [("ctx", b.ptr(3))]), "void f(struct xdp_md *ctx)"),
        (lambda b: b.proto(1, [("ctx", b.ptr(3)), ("y", 1)]), "int f(struct xdp_md *ctx, int y)"),
        (lambda b: b.proto(1, [("ctx", 3)]), "int f(struct xdp_md ctx)"),
    ],
    ids=["void", "int-arg", "skb", "returns-void", "two-args", "by-value"],
)
def test_non_xdp_signatures(b: BtfBuilder, build, rendered: str) -> None:
    fn = b.func("f", build(b))
    sig = btf.entry_signature(b.blob(), fn)
    assert not sig.is_xdp
    assert str(sig) == rendered


def test_bad_blobs(b: BtfBuilder) -> None:
    with pytest.raises(btf.BtfFormatError):
        btf.entry_signature(b"\0" * 30, 1)
    with pytest.raises(btf.BtfFormatError):
        btf.entry_signature(b"short", 1)
    with pytest.raises(btf.BtfFormatError):
        btf.entry_signature(b.blob(), 1)  # an INT, not a FUNC
    with pytest.raises(btf.BtfFormatError):
        btf.entry_signature(b.blob(), 99)
