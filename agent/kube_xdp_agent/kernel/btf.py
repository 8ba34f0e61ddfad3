"""A minimal BTF reader: the signature of a loaded program's entry function.

Why: bcc loads any non-static function of the module as XDP if asked, and the verifier
accepts many that are not XDP programs at all (`int helper(void)` loads and returns
XDP_ABORTED on every packet; `int helper(int x)` treats the packet context as an int).
The compiler records each function's prototype in BTF, which the kernel validated at
load time; `entry_signature()` reads it back so the compiler can refuse anything that is
not ``int f(struct xdp_md *ctx)``.

Only what that check needs is decoded (header, type records, strings); the format is
include/uapi/linux/btf.h. Pure: takes bytes, touches nothing.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

BTF_MAGIC = 0xEB9F

KIND_INT, KIND_PTR, KIND_ARRAY, KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_FWD = range(1, 8)
KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_FUNC, KIND_FUNC_PROTO = range(8, 14)
KIND_VAR, KIND_DATASEC, KIND_FLOAT, KIND_DECL_TAG, KIND_TYPE_TAG, KIND_ENUM64 = range(14, 20)

_MODIFIERS = {KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG}

# Bytes that follow the 12-byte `struct btf_type` for each kind: (fixed, per vlen item).
_TRAILER = {
    KIND_INT: (4, 0),
    KIND_ARRAY: (12, 0),
    KIND_STRUCT: (0, 12),
    KIND_UNION: (0, 12),
    KIND_ENUM: (0, 8),
    KIND_FUNC_PROTO: (0, 8),
    KIND_VAR: (4, 0),
    KIND_DATASEC: (0, 12),
    KIND_DECL_TAG: (4, 0),
    KIND_ENUM64: (0, 12),
}


class BtfFormatError(ValueError):
    """The blob is not BTF this reader understands."""


@dataclass(frozen=True)
class BtfType:
    kind: int
    name: str
    vlen: int
    size_or_type: int  # `size` for INT/STRUCT/..., `type` for PTR/TYPEDEF/FUNC/...
    params: tuple[tuple[str, int], ...] = ()  # FUNC_PROTO: (name, type id)


class Btf:
    """Decoded type records of one BTF blob (ids start at 1; 0 is `void`)."""

    def __init__(self, data: bytes) -> None:
        if len(data) < 24:
            raise BtfFormatError("BTF blob shorter than its header")
        magic, _version, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
        if magic != BTF_MAGIC:
            raise BtfFormatError(f"bad BTF magic {magic:#x}")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
        types = data[hdr_len + type_off : hdr_len + type_off + type_len]
        self._strings = data[hdr_len + str_off : hdr_len + str_off + str_len]
        self.types: list[BtfType | None] = [None]  # id 0 is void
        pos = 0
        while pos + 12 <= len(types):
            name_off, info, size_or_type = struct.unpack_from("<III", types, pos)
            kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
            pos += 12
            params: tuple[tuple[str, int], ...] = ()
            if kind == KIND_FUNC_PROTO:
                params = tuple(
                    (self._string(p_name), p_type)
                    for p_name, p_type in (struct.unpack_from("<II", types, pos + 8 * i) for i in range(vlen))
                )
            fixed, per_item = _TRAILER.get(kind, (0, 0))
            pos += fixed + per_item * vlen
            self.types.append(BtfType(kind, self._string(name_off), vlen, size_or_type, params))

    def _string(self, offset: int) -> str:
        end = self._strings.find(b"\0", offset)
        return self._strings[offset : end if end >= 0 else None].decode("utf-8", "replace")

    def get(self, type_id: int) -> BtfType | None:
        if not 0 <= type_id < len(self.types):
            raise BtfFormatError(f"type id {type_id} out of range")
        return self.types[type_id]

    def strip(self, type_id: int) -> int:
        """Follow typedef/const/volatile/restrict/type-tag to the underlying type id."""
        for _ in range(64):
            t = self.get(type_id)
            if t is None or t.kind not in _MODIFIERS:
                return type_id
            type_id = t.size_or_type
        raise BtfFormatError("modifier chain too long")

    def render(self, type_id: int, depth: int = 0) -> str:
        """A C-like spelling of a type, enough for an error message."""
        t = self.get(type_id)
        if t is None:
            return "void"
        if depth > 8:
            return "..."
        if t.kind == KIND_PTR:
            return f"{self.render(t.size_or_type, depth + 1)} *"
        if t.kind in (KIND_STRUCT, KIND_FWD):
            return f"struct {t.name}"
        if t.kind == KIND_UNION:
            return f"union {t.name}"
        if t.kind in (KIND_ENUM, KIND_ENUM64):
            return f"enum {t.name}"
        if t.kind == KIND_CONST:
            return f"const {self.render(t.size_or_type, depth + 1)}"
        if t.kind == KIND_VOLATILE:
            return f"volatile {self.render(t.size_or_type, depth + 1)}"
        return t.name or "?"


@dataclass(frozen=True)
class FuncSignature:
    name: str
    returns: str
    params: tuple[tuple[str, str], ...]  # (C type, parameter name)
    is_xdp: bool  # returns an integer and takes exactly one `struct xdp_md *`

    def __str__(self) -> str:
        params = ", ".join(f"{ctype} {pname}".replace("* ", "*").strip() for ctype, pname in self.params)
        return f"{self.returns} {self.name}({params or 'void'})"


def entry_signature(data: bytes, func_type_id: int) -> FuncSignature:
    """The signature of the BTF FUNC `func_type_id` (from the program's func_info[0])."""
    btf = Btf(data)
    func = btf.get(func_type_id)
    if func is None or func.kind != KIND_FUNC:
        raise BtfFormatError(f"type {func_type_id} is not a FUNC")
    proto = btf.get(func.size_or_type)
    if proto is None or proto.kind != KIND_FUNC_PROTO:
        raise BtfFormatError(f"FUNC {func.name} has no FUNC_PROTO")
    ret = btf.get(btf.strip(proto.size_or_type))
    returns_int = ret is not None and ret.kind in (KIND_INT, KIND_ENUM, KIND_ENUM64)
    takes_xdp_md = False
    if len(proto.params) == 1:
        ptr = btf.get(btf.strip(proto.params[0][1]))
        if ptr is not None and ptr.kind == KIND_PTR:
            target = btf.get(btf.strip(ptr.size_or_type))
            takes_xdp_md = target is not None and target.kind in (KIND_STRUCT, KIND_FWD) and target.name == "xdp_md"
    return FuncSignature(
        name=func.name,
        returns=btf.render(proto.size_or_type),
        params=tuple((btf.render(ptype), pname) for pname, ptype in proto.params),
        is_xdp=returns_int and takes_xdp_md,
    )
