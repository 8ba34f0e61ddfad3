"""Typed, validated specs: XdpProgram and XdpAttachment spec dicts -> frozen dataclasses.

Defense in depth: the CRD schema (schema.py: OpenAPI and CEL rules) rejects bad specs at
the API server, but the agent runs as root and compiles what it is given, so it must not
trust that the schema was installed, current or complete. Every rule of the schema is
checked again here, plus the rules CEL cannot express:

- `pattern` compiles as a Python regex (the agent matches with Python's `re.fullmatch`;
  the API server has only RE2);
- what a source may make the preprocessor read (`source_file_access`: only
  `#include <relative/path.h>`, see docs/api.md "What a source may include"): a scan of
  the C text as the preprocessor reads it, and of a ConfigMap's text the API server never
  sees in the XdpProgram.

A broken rule raises `SpecError(reason, message)` with a stable reason from reasons.py:
`InvalidDefine` for defines, `InvalidSpec` for everything else. Unknown fields are
ignored (the API server prunes them; a newer operator may add fields an older agent does
not know).

The regex constants below are shared with schema.py (OpenAPI patterns and CEL rules).
They use only the syntax where Go's RE2 (the API server) and Python's `re` agree, and
Python applies them with `fullmatch` (so `$` never accepts a trailing newline).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kube_xdp_api import reasons

# --- Patterns and limits shared with the CRD schema ------------------------------------
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_LABEL_MAX = 63
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS_SUBDOMAIN_MAX = 253
CONFIGMAP_KEY = r"^[-._a-zA-Z0-9]+$"
CONFIGMAP_KEY_MAX = 253
C_IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]*$"
C_IDENTIFIER_MAX = 64
# A define value: C-token characters only; a leading '-' only before a digit or '.'
# (negative numbers), so a value never looks like a compiler flag. '..' is refused too
# (schema: a CEL rule; here: DEFINE_VALUE_FORBIDDEN).
DEFINE_VALUE = r"^(([A-Za-z0-9_.+]|-[0-9.])[A-Za-z0-9_.+-]*)?$"
DEFINE_VALUE_FORBIDDEN = r"\.\."
DEFINE_VALUE_MAX = 128
DEFINES_MAX = 32
INLINE_SOURCE_MAX_BYTES = 65536
# Linux interface names: 1-15 bytes; Linux refuses '/', ':' and whitespace, and the
# names '.' and '..'. We accept a conservative subset.
INTERFACE_NAME = r"^[A-Za-z0-9_.-]{1,15}$"
INTERFACE_NAMES_FORBIDDEN = (".", "..")
INTERFACE_NAMES_MAX = 32
INTERFACE_PATTERN_MAX = 256
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
LABEL_VALUE_MAX = 63
# A label key: optional DNS-subdomain prefix and '/', then a name of at most 63.
LABEL_KEY = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_KEY_MAX = DNS_SUBDOMAIN_MAX + 1 + 63
MATCH_LABELS_MAX = 64
MATCH_EXPRESSIONS_MAX = 32
EXPRESSION_VALUES_MAX = 64
SELECTOR_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
SOURCE_DIGEST = r"^[0-9a-f]{64}$"
UID_MAX = 128

MODES = ("offload", "native", "generic")
DEFAULT_MODE = "native"
DEFAULT_FALLBACK = ("generic",)
PRIORITY_MIN, PRIORITY_MAX, DEFAULT_PRIORITY = 0, 1000, 500


class SpecError(ValueError):
    """A spec breaks a rule: `reason` is a stable condition reason, `message` names the field."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


def source_digest(source_text: str) -> str:
    """sha256 hex digest of the UTF-8 bytes of a program's source (operator and agent)."""
    return hashlib.sha256(source_text.encode("utf-8")).hexdigest()


def define_flags(defines: Iterable[tuple[str, str]]) -> list[str]:
    """Compiler arguments for validated defines: one `-DNAME=VALUE` argv element each."""
    return [f"-D{name}={value}" for name, value in defines]


def validate_program_name(name: object) -> str:
    """An XdpProgram name must be a DNS label: it becomes a label value and a bpffs dir."""
    _check_string(name, "metadata.name", pattern=DNS_LABEL, max_len=DNS_LABEL_MAX)
    return name  # type: ignore[return-value]


# --- Value types ------------------------------------------------------------------------
@dataclass(frozen=True)
class ConfigMapRef:
    namespace: str
    name: str
    key: str

    def __post_init__(self) -> None:
        path = "spec.source.configMapRef"
        _check_string(self.namespace, f"{path}.namespace", pattern=DNS_LABEL, max_len=DNS_LABEL_MAX)
        _check_string(self.name, f"{path}.name", pattern=DNS_SUBDOMAIN, max_len=DNS_SUBDOMAIN_MAX)
        _check_string(self.key, f"{path}.key", pattern=CONFIGMAP_KEY, max_len=CONFIGMAP_KEY_MAX)

    def to_dict(self) -> dict[str, str]:
        return {"namespace": self.namespace, "name": self.name, "key": self.key}


@dataclass(frozen=True)
class Source:
    """Exactly one of `inline` (C source text) or `config_map_ref`."""

    inline: str | None = None
    config_map_ref: ConfigMapRef | None = None

    def __post_init__(self) -> None:
        if (self.inline is None) == (self.config_map_ref is None):
            raise SpecError(reasons.INVALID_SPEC, "spec.source: set exactly one of inline, configMapRef")
        if self.inline is not None:
            check_inline_source(self.inline, "spec.source.inline")
        elif not isinstance(self.config_map_ref, ConfigMapRef):
            raise SpecError(reasons.INVALID_SPEC, "spec.source.configMapRef: must be an object")

    def to_dict(self) -> dict[str, Any]:
        if self.inline is not None:
            return {"inline": self.inline}
        assert self.config_map_ref is not None
        return {"configMapRef": self.config_map_ref.to_dict()}


def check_inline_source(text: object, path: str = "source") -> str:
    """C source text: non-empty, UTF-8, no NUL, at most INLINE_SOURCE_MAX_BYTES bytes.

    Also used by the agent on source read from a ConfigMap.
    """
    if not isinstance(text, str) or not text:
        raise SpecError(reasons.INVALID_SPEC, f"{path}: must be a non-empty string")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise SpecError(reasons.INVALID_SPEC, f"{path}: not valid UTF-8 text") from exc
    if size > INLINE_SOURCE_MAX_BYTES:
        raise SpecError(reasons.INVALID_SPEC, f"{path}: {size} bytes, at most {INLINE_SOURCE_MAX_BYTES}")
    if "\x00" in text:
        raise SpecError(reasons.INVALID_SPEC, f"{path}: contains a NUL character")
    problem = source_file_access(text)
    if problem:
        raise SpecError(reasons.INVALID_SPEC, f"{path}: {problem}")
    return text


# --- What a source may make the preprocessor read ---------------------------------------
# The agent compiles as root on the node: the preprocessor must read nothing but headers
# under the compiler's include directories (the kernel headers and bcc's own). The rule:
#   - `#include <relative/path.h>` only: a header name of [A-Za-z0-9_.+-] components joined
#     by '/', no component starting with '.', no '..' anywhere, no leading '/';
#   - never `#include "..."` (a quoted name is searched in the source's and the compiler's
#     working directory first), never a computed include (`#include MACRO`), never
#     `#include_next`, `#import`, `#embed`, `#__include_macros`;
#   - `__has_include(<relative/path.h>)` under the same rule; `__has_include_next`,
#     `__has_embed` never;
#   - pragmas that read files or drive the compiler: `#pragma GCC|clang dependency` (looks
#     a file up by any path), `#pragma clang module` (loads/builds modules),
#     `#pragma clang __debug` (debugging commands: `crash` kills the compiler with SIGILL,
#     others read module maps), `#pragma include_alias` (maps a header name to any file);
#   - the operator `_Pragma` only as `_Pragma("...")` with one string literal (an encoding
#     prefix L, u, U, u8 is fine, a raw string is not) written in place on one line, whose
#     pragma passes the rule above and whose text passes this whole rule (a pragma's tokens
#     may be macro-expanded): `_Pragma(#x)`, `_Pragma(MACRO)` or a macro standing for
#     `_Pragma` are computed and cannot be checked; `__pragma` never (Microsoft mode);
#   - no identifier that token pasting (`a##b`, also through a header's macro) could grow
#     into `_Pragma`, `__pragma` or a `__has_*` operator: `_`, `_P` ... `_Pragm`, `__`,
#     `__has_`, `__has_inc` ... (a proper prefix of one of them). The same goes for
#     define values (`define_file_access`): a define is a macro too.
# Checked on the source as clang sees it: backslash-newlines spliced (also with blanks
# between backslash and newline, which clang accepts), comments removed (a comment may
# sit between '#' and 'include' or inside a pragma, and a multi-line comment may hide a
# line start or continue a directive), the digraph '%:' read as '#', universal character
# names in identifiers decoded (clang 14 refuses `\u0069nclude`; decoding costs nothing),
# string and character literals skipped (but a `_Pragma` string is read); and again with
# trigraphs replaced (clang ignores them in its default gnu mode; another mode might not).
# Conservative: a directive inside `#if 0` is checked too.
# Not refused, because nothing is read: `#line N "any/path"` and line markers (only the
# name diagnostics print), `__FILE__`, `__TIMESTAMP__` (of the source itself).
HEADER_NAME = r"[A-Za-z0-9_+-][A-Za-z0-9_.+-]*(/[A-Za-z0-9_+-][A-Za-z0-9_.+-]*)*"
HEADER_NAME_MAX = 255
_INCLUDE_DIRECTIVES = ("include", "include_next", "import", "embed", "__include_macros")
_HAS_INCLUDE = ("__has_include", "__has_include_next", "__has_embed")
# An identifier in a define value (define_file_access; the CRD's CEL rule uses the same).
IDENTIFIER_TOKEN = r"[A-Za-z_][A-Za-z0-9_]*"
# Identifiers the preprocessor treats as operators that read files or run pragmas.
GUARDED_OPERATORS = ("_Pragma", "__pragma") + _HAS_INCLUDE
# Their proper prefixes: what token pasting could complete into one of them.
GUARDED_PREFIXES = frozenset(op[:i] for op in GUARDED_OPERATORS for i in range(1, len(op))) - set(GUARDED_OPERATORS)
# Pragmas refused, after `GCC` or `clang` (compared case-insensitively: conservative).
_PRAGMAS_REFUSED = {
    "dependency": "it makes the compiler look a file up by any path",
    "module": "it makes the compiler load or build modules from files",
    "__debug": "it runs a compiler debugging command (one crashes the compiler, others read module maps)",
}
# Pragmas refused on their own (no namespace).
_PRAGMAS_REFUSED_ALONE = {
    "include_alias": "it maps a header name to any file",
}
_PRAGMA_OPERATOR_HELP = (
    '_Pragma is allowed only as _Pragma("...") with one plain string literal, on one line: a computed'
    " pragma (_Pragma(#x), _Pragma(MACRO), a macro standing for _Pragma) cannot be checked; use #pragma"
    ' or write the literal, e.g. _Pragma("unroll")'
)
_TRIGRAPHS = {"??=": "#", "??/": "\\", "??'": "^", "??(": "[", "??)": "]", "??!": "|", "??<": "{", "??>": "}",
              "??-": "~"}
_SPLICE = re.compile(r"\\[ \t\f\v]*(\r\n|\n|\r)")
_UCN = r"\\u[0-9A-Fa-f]{4}|\\U[0-9A-Fa-f]{8}"
_TOKEN = re.compile(
    r"(?P<nl>\r\n|\n|\r)|(?P<ws>[ \t\f\v]+)|(?P<lc>//[^\r\n]*)|(?P<bc>/\*(?s:.*?)(\*/|\Z))"
    r"|(?P<str>\"(\\.|[^\"\\\r\n])*(\"|(?=[\r\n])|\Z))|(?P<chr>'(\\.|[^'\\\r\n])*('|(?=[\r\n])|\Z))"
    rf"|(?P<id>([A-Za-z_]|{_UCN})([A-Za-z0-9_]|{_UCN})*)|(?P<hash>%:|#)|(?P<other>.)"
)
_STRING_LITERAL = re.compile(r"\"(\\.|[^\"\\\r\n])*\"")
_STRING_PREFIXES = ("L", "u", "U", "u8")


def source_file_access(text: str) -> str | None:
    """None when `text` makes the preprocessor read only headers allowed by the rule
    above; else what breaks it, with the line number (user text only, never a file's)."""
    if not any(s in text for s in ("#", "%:", "_", "??", "\\u", "\\U")):
        return None
    problem = _scan_source(_SPLICE.sub("", text))
    if problem is None and "??" in text:
        replaced = re.sub(r"\?\?[=/'()!<>-]", lambda m: _TRIGRAPHS[m.group(0)], text)
        problem = _scan_source(_SPLICE.sub("", replaced))
        if problem:
            problem += " (read with trigraphs)"
    return problem


def define_file_access(name: str, value: str) -> str | None:
    """None when the define `name=value` cannot stand for (or, pasted with `##`, grow into)
    `_Pragma`, `__pragma` or a `__has_*` operator; else why it is refused. `name` and
    `value` must already match C_IDENTIFIER and DEFINE_VALUE."""
    if name in GUARDED_OPERATORS:
        return f"the name {name} is a preprocessor operator"
    for ident in re.findall(IDENTIFIER_TOKEN, value):
        if ident in GUARDED_OPERATORS:
            return f"the value {value!r} names the preprocessor operator {ident}, whose use cannot be checked"
        if ident in GUARDED_PREFIXES:
            return (f"the value {value!r} holds {ident}, which token pasting (##) could complete into"
                    f" {_completions(ident)}, whose use cannot be checked")
    return None


def _completions(prefix: str) -> str:
    return " or ".join(op for op in GUARDED_OPERATORS if op.startswith(prefix) and op != prefix)


def _identifier(token: str) -> str:
    """An identifier token as the compiler names it: universal character names decoded."""
    if "\\" not in token:
        return token

    def decode(m: re.Match) -> str:
        code = int(m.group(0)[2:], 16)
        return chr(code) if code <= 0x10FFFF else m.group(0)

    return re.sub(_UCN, decode, token)


def _pragma_refusal(text: str, pos: int = 0) -> tuple[str, str] | None:
    """The pragma whose tokens start at `pos` of `text` (to the end of the line, comments
    being blanks): (its first words, why it is refused), or None when it is allowed."""
    words: list[str] = []
    n = len(text)
    while pos < n and len(words) < 2:
        m = _TOKEN.match(text, pos)
        kind = m.lastgroup
        if kind == "nl":
            break
        if kind not in ("ws", "lc", "bc"):
            words.append(_identifier(m.group(0)) if kind == "id" else m.group(0))
        pos = m.end()
    if not words:
        return None
    first = words[0].casefold()
    if first in _PRAGMAS_REFUSED_ALONE:
        return words[0], _PRAGMAS_REFUSED_ALONE[first]
    if len(words) == 2 and first in ("gcc", "clang") and words[1].casefold() in _PRAGMAS_REFUSED:
        return f"{words[0]} {words[1]}", _PRAGMAS_REFUSED[words[1].casefold()]
    return None


def _destringize(literal: str) -> str:
    """The text of a `_Pragma` string literal (quotes included) as the compiler reads it:
    quotes dropped, `\\\\` and `\\"` unescaped (C11 6.10.9), other escapes kept."""
    return re.sub(r"\\([\\\"])", r"\1", literal[1:-1])


def _scan_source(text: str, at_line_start: bool = True) -> str | None:
    pos, line, line_start, n = 0, 1, at_line_start, len(text)

    def skip_blank(p: int) -> int:
        """Skip blanks and comments on the current logical line (a block comment is a space)."""
        nonlocal line
        while p < n:
            m = _TOKEN.match(text, p)
            kind = m.lastgroup
            if kind in ("ws", "lc", "bc"):
                line += m.group(0).count("\n")
                p = m.end()
            else:
                break
        return p

    def header_at(p: int, what: str) -> tuple[int, str | None]:
        """A `<header>` at p: (end, problem or None)."""
        if p >= n or text[p] != "<":
            word = text[p:p + 40].split("\n", 1)[0]
            kind = "a quoted name" if word.startswith('"') else "a computed (macro) name"
            return p, f"line {line}: {what} {word} uses {kind}: only <relative/path.h> is allowed"
        end = text.find(">", p + 1)
        stop = text.find("\n", p + 1)
        if end < 0 or (0 <= stop < end):
            return p + 1, f"line {line}: {what} has no closing '>'"
        name = text[p + 1:end]
        if len(name) > HEADER_NAME_MAX or not re.fullmatch(HEADER_NAME, name) or ".." in name:
            return end + 1, (f"line {line}: {what} <{name[:80]}>: a header name must be a relative path of"
                             " [A-Za-z0-9_.+-] components without '..' or a leading '/'")
        return end + 1, None

    def pragma_operator_at(p: int) -> tuple[int, str | None]:
        """`_Pragma` ends at p: (end of `_Pragma("...")`, problem or None)."""
        where = line
        p = skip_blank(p)
        if p >= n or text[p] != "(":
            return p, f"line {where}: {_PRAGMA_OPERATOR_HELP}"
        p = skip_blank(p + 1)
        prefix = _TOKEN.match(text, p) if p < n else None
        if prefix and prefix.lastgroup == "id" and prefix.group(0) in _STRING_PREFIXES:
            p = prefix.end()
        s = _STRING_LITERAL.match(text, p)
        if s is None:
            return p, f"line {where}: {_PRAGMA_OPERATOR_HELP}"
        pragma = _destringize(s.group(0))
        refused = _pragma_refusal(pragma)
        if refused:
            return p, f'line {where}: _Pragma("{refused[0]} ...") is not allowed: {refused[1]}'
        inner = _scan_source(pragma, at_line_start=False)    # its tokens may be macro-expanded
        if inner:
            return p, f"line {where}: inside _Pragma(\"...\"): {inner.split(': ', 1)[1]}"
        p = skip_blank(s.end())
        if p >= n or text[p] != ")":
            return p, f"line {where}: {_PRAGMA_OPERATOR_HELP}"
        return p + 1, None

    while pos < n:
        m = _TOKEN.match(text, pos)
        kind, token = m.lastgroup, m.group(0)
        if kind == "nl":
            line, line_start = line + 1, True
            pos = m.end()
            continue
        if kind in ("ws", "lc"):
            pos = m.end()
            continue
        if kind == "bc":
            if "\n" in token:      # conservative: what follows may be read as a line start
                line += token.count("\n")
                line_start = True
            pos = m.end()
            continue
        if kind == "hash" and line_start:
            line_start = False
            p = skip_blank(m.end())
            d = _TOKEN.match(text, p) if p < n else None
            if d is None or d.lastgroup != "id":
                pos = p
                continue
            name = _identifier(d.group(0))
            what = f"#{name}"
            if name in _INCLUDE_DIRECTIVES:
                if name != "include":
                    return f"line {line}: {what} is not allowed: only #include <relative/path.h>"
                pos, problem = header_at(skip_blank(d.end()), what)
                if problem:
                    return problem
                continue
            if name == "pragma":
                refused = _pragma_refusal(text, d.end())
                if refused:
                    return f"line {line}: #pragma {refused[0]} is not allowed: {refused[1]}"
            pos = d.end()
            continue
        line_start = False
        ident = _identifier(token) if kind == "id" else None
        if ident == "_Pragma":
            pos, problem = pragma_operator_at(m.end())
            if problem:
                return problem
            continue
        if ident == "__pragma":
            return f"line {line}: __pragma is not allowed: use #pragma or _Pragma(\"...\")"
        if ident in _HAS_INCLUDE:
            if ident != "__has_include":
                return f"line {line}: {ident} is not allowed: only __has_include(<relative/path.h>)"
            p = skip_blank(m.end())
            if p >= n or text[p] != "(":
                return f"line {line}: __has_include must be followed by (<relative/path.h>)"
            p, problem = header_at(skip_blank(p + 1), "__has_include")
            if problem:
                return problem
            p = skip_blank(p)
            if p >= n or text[p] != ")":
                return f"line {line}: __has_include(<...>) is not closed"
            pos = p + 1
            continue
        if ident in GUARDED_PREFIXES:
            return (f"line {line}: the identifier {ident} is not allowed (rename it): token pasting (##) could"
                    f" complete it into {_completions(ident)}, whose use cannot be checked")
        pos = m.end()
    return None


@dataclass(frozen=True)
class Interfaces:
    """Which interfaces on a node: exactly one of `names`, `pattern`, `primary`."""

    names: tuple[str, ...] = ()
    pattern: str | None = None
    primary: bool = False

    def __post_init__(self) -> None:
        chosen = [bool(self.names), self.pattern is not None, self.primary is True]
        if sum(chosen) != 1:
            raise SpecError(reasons.INVALID_SPEC, "spec.interfaces: set exactly one of names, pattern, primary: true")
        if self.names:
            if len(self.names) > INTERFACE_NAMES_MAX:
                raise SpecError(reasons.INVALID_SPEC, f"spec.interfaces.names: at most {INTERFACE_NAMES_MAX} names")
            for i, name in enumerate(self.names):
                check_interface_name(name, f"spec.interfaces.names[{i}]")
            if len(set(self.names)) != len(self.names):
                raise SpecError(reasons.INVALID_SPEC, "spec.interfaces.names: duplicate names")
        if self.pattern is not None:
            _check_string(self.pattern, "spec.interfaces.pattern", max_len=INTERFACE_PATTERN_MAX, min_len=1)
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise SpecError(reasons.INVALID_SPEC, f"spec.interfaces.pattern: not a valid regex: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        if self.names:
            return {"names": list(self.names)}
        if self.pattern is not None:
            return {"pattern": self.pattern}
        return {"primary": True}


def check_interface_name(name: object, path: str = "interface") -> str:
    _check_string(name, path, pattern=INTERFACE_NAME, max_len=15)
    if name in INTERFACE_NAMES_FORBIDDEN:
        raise SpecError(reasons.INVALID_SPEC, f"{path}: {name!r} is not an interface name")
    return name  # type: ignore[return-value]


@dataclass(frozen=True)
class LabelSelectorRequirement:
    key: str
    operator: str
    values: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        path = f"spec.nodeSelector.matchExpressions[{self.key!r}]"
        check_label_key(self.key, "spec.nodeSelector.matchExpressions.key")
        if self.operator not in SELECTOR_OPERATORS:
            raise SpecError(reasons.INVALID_SPEC, f"{path}.operator: must be one of {', '.join(SELECTOR_OPERATORS)}")
        if self.operator in ("In", "NotIn") and not self.values:
            raise SpecError(reasons.INVALID_SPEC, f"{path}.values: required for operator {self.operator}")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise SpecError(reasons.INVALID_SPEC, f"{path}.values: must be empty for operator {self.operator}")
        if len(self.values) > EXPRESSION_VALUES_MAX:
            raise SpecError(reasons.INVALID_SPEC, f"{path}.values: at most {EXPRESSION_VALUES_MAX} values")
        for value in self.values:
            _check_string(value, f"{path}.values", pattern=LABEL_VALUE, max_len=LABEL_VALUE_MAX, min_len=0)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key": self.key, "operator": self.operator}
        if self.values:
            out["values"] = list(self.values)
        return out


@dataclass(frozen=True)
class LabelSelector:
    """A Kubernetes label selector; empty selects everything (matching: selectors.py)."""

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[LabelSelectorRequirement, ...] = ()

    def __post_init__(self) -> None:
        if len(self.match_labels) > MATCH_LABELS_MAX:
            raise SpecError(reasons.INVALID_SPEC, f"spec.nodeSelector.matchLabels: at most {MATCH_LABELS_MAX} labels")
        if len(self.match_expressions) > MATCH_EXPRESSIONS_MAX:
            raise SpecError(
                reasons.INVALID_SPEC, f"spec.nodeSelector.matchExpressions: at most {MATCH_EXPRESSIONS_MAX} expressions"
            )
        for key, value in self.match_labels:
            check_label_key(key, "spec.nodeSelector.matchLabels key")
            _check_string(
                value, f"spec.nodeSelector.matchLabels[{key}]", pattern=LABEL_VALUE, max_len=LABEL_VALUE_MAX, min_len=0
            )

    @classmethod
    def from_dict(cls, raw: object, path: str = "spec.nodeSelector") -> LabelSelector:
        if raw is None:
            return cls()
        raw = _mapping(raw, path)
        labels = _string_map(raw.get("matchLabels"), f"{path}.matchLabels", reasons.INVALID_SPEC)
        expressions = []
        for i, item in enumerate(_list(raw.get("matchExpressions"), f"{path}.matchExpressions")):
            item = _mapping(item, f"{path}.matchExpressions[{i}]")
            values = _list(item.get("values"), f"{path}.matchExpressions[{i}].values")
            expressions.append(
                LabelSelectorRequirement(
                    key=item.get("key"),  # type: ignore[arg-type]  (validated in __post_init__)
                    operator=item.get("operator"),  # type: ignore[arg-type]
                    values=tuple(values),
                )
            )
        return cls(match_labels=tuple(sorted(labels.items())), match_expressions=tuple(expressions))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.match_labels:
            out["matchLabels"] = dict(self.match_labels)
        if self.match_expressions:
            out["matchExpressions"] = [e.to_dict() for e in self.match_expressions]
        return out


def check_label_key(key: object, path: str) -> str:
    _check_string(key, path, pattern=LABEL_KEY, max_len=LABEL_KEY_MAX)
    prefix, _, _ = key.rpartition("/")  # type: ignore[union-attr]
    if len(prefix) > DNS_SUBDOMAIN_MAX:
        raise SpecError(reasons.INVALID_SPEC, f"{path}: prefix longer than {DNS_SUBDOMAIN_MAX}")
    return key  # type: ignore[return-value]


def check_defines(defines: Iterable[tuple[object, object]]) -> tuple[tuple[str, str], ...]:
    """Validate defines (name, value) pairs; returns them sorted by name."""
    pairs = list(defines)
    if len(pairs) > DEFINES_MAX:
        raise SpecError(reasons.INVALID_DEFINE, f"spec.defines: {len(pairs)} entries, at most {DEFINES_MAX}")
    for name, value in pairs:
        if not isinstance(name, str) or len(name) > C_IDENTIFIER_MAX or not re.fullmatch(C_IDENTIFIER, name):
            raise SpecError(
                reasons.INVALID_DEFINE,
                f"spec.defines: name {name!r} is not a C identifier of at most {C_IDENTIFIER_MAX} characters",
            )
        if (
            not isinstance(value, str)
            or len(value) > DEFINE_VALUE_MAX
            or not re.fullmatch(DEFINE_VALUE, value)
            or re.search(DEFINE_VALUE_FORBIDDEN, value)
        ):
            raise SpecError(
                reasons.INVALID_DEFINE,
                f"spec.defines[{name}]: value {value!r} must match {DEFINE_VALUE}, not contain '..',"
                f" and be at most {DEFINE_VALUE_MAX} characters",
            )
        problem = define_file_access(name, value)
        if problem:
            raise SpecError(reasons.INVALID_DEFINE, f"spec.defines[{name}]: {problem}")
    return tuple(sorted(pairs))  # type: ignore[arg-type]


@dataclass(frozen=True)
class CompileFields:
    """The small program fields copied into every XdpAttachment spec (not the source)."""

    entrypoint: str
    defines: tuple[tuple[str, str], ...] = ()
    interfaces: Interfaces = Interfaces(primary=True)
    mode: str = DEFAULT_MODE
    fallback: tuple[str, ...] = DEFAULT_FALLBACK
    priority: int = DEFAULT_PRIORITY
    take_over: bool = False

    def __post_init__(self) -> None:
        _check_string(self.entrypoint, "spec.entrypoint", pattern=C_IDENTIFIER, max_len=C_IDENTIFIER_MAX)
        object.__setattr__(self, "defines", check_defines(self.defines))
        if not isinstance(self.interfaces, Interfaces):
            raise SpecError(reasons.INVALID_SPEC, "spec.interfaces: must be an object")
        if self.mode not in MODES:
            raise SpecError(reasons.INVALID_SPEC, f"spec.mode: {self.mode!r} is not one of {', '.join(MODES)}")
        for m in self.fallback:
            if m not in MODES:
                raise SpecError(reasons.INVALID_SPEC, f"spec.fallback: {m!r} is not one of {', '.join(MODES)}")
        if len(set(self.fallback)) != len(self.fallback):
            raise SpecError(reasons.INVALID_SPEC, "spec.fallback: duplicate modes")
        if type(self.priority) is not int or not PRIORITY_MIN <= self.priority <= PRIORITY_MAX:
            raise SpecError(
                reasons.INVALID_SPEC, f"spec.priority: must be an integer from {PRIORITY_MIN} to {PRIORITY_MAX}"
            )
        if type(self.take_over) is not bool:
            raise SpecError(reasons.INVALID_SPEC, "spec.takeOver: must be a boolean")

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> CompileFields:
        return cls(
            entrypoint=raw.get("entrypoint"),  # type: ignore[arg-type]  (validated in __post_init__)
            defines=tuple(_string_map(raw.get("defines"), "spec.defines", reasons.INVALID_DEFINE).items()),
            interfaces=_parse_interfaces(raw.get("interfaces")),
            mode=raw.get("mode", DEFAULT_MODE),
            fallback=tuple(_list(raw.get("fallback", list(DEFAULT_FALLBACK)), "spec.fallback")),
            priority=raw.get("priority", DEFAULT_PRIORITY),
            take_over=raw.get("takeOver", False),
        )

    def to_dict(self) -> dict[str, Any]:
        """Canonical form: every field present, defines sorted, one interfaces key;
        `takeOver` only when true (absent means false, so attachments written before the
        field existed stay unchanged)."""
        out = {
            "entrypoint": self.entrypoint,
            "defines": dict(self.defines),
            "interfaces": self.interfaces.to_dict(),
            "mode": self.mode,
            "fallback": list(self.fallback),
            "priority": self.priority,
        }
        if self.take_over:
            out["takeOver"] = True
        return out

    def modes_to_try(self) -> tuple[str, ...]:
        """The preferred mode, then the fallback modes in order, each once."""
        return tuple(dict.fromkeys((self.mode, *self.fallback)))


@dataclass(frozen=True)
class ProgramSpec:
    """An XdpProgram's spec, parsed and validated (defaults applied as the schema does)."""

    source: Source
    fields: CompileFields
    node_selector: LabelSelector = LabelSelector()

    @classmethod
    def from_dict(cls, spec: object) -> ProgramSpec:
        spec = _mapping(spec, "spec")
        raw_source = _mapping(spec.get("source"), "spec.source")
        inline = raw_source.get("inline")
        ref = raw_source.get("configMapRef")
        if inline is not None and ref is not None:
            raise SpecError(reasons.INVALID_SPEC, "spec.source: set exactly one of inline, configMapRef")
        if ref is not None:
            ref = _mapping(ref, "spec.source.configMapRef")
            ref = ConfigMapRef(
                namespace=ref.get("namespace"),  # type: ignore[arg-type]  (validated in __post_init__)
                name=ref.get("name"),  # type: ignore[arg-type]
                key=ref.get("key"),  # type: ignore[arg-type]
            )
        return cls(
            source=Source(inline=inline, config_map_ref=ref),
            fields=CompileFields.from_dict(spec),
            node_selector=LabelSelector.from_dict(spec.get("nodeSelector")),
        )

    def compile_fields(self) -> dict[str, Any]:
        """The canonical fields copied into each XdpAttachment spec (see CompileFields)."""
        return self.fields.to_dict()

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source.to_dict(), **self.compile_fields(), "nodeSelector": self.node_selector.to_dict()}


@dataclass(frozen=True)
class AttachmentSpec:
    """An XdpAttachment's spec: written by the operator, read (and re-validated) by the agent."""

    node_name: str
    program_name: str
    program_uid: str
    program_generation: int
    source_digest: str
    fields: CompileFields

    def __post_init__(self) -> None:
        _check_string(self.node_name, "spec.nodeName", pattern=DNS_SUBDOMAIN, max_len=DNS_SUBDOMAIN_MAX)
        _check_string(self.program_name, "spec.programRef.name", pattern=DNS_LABEL, max_len=DNS_LABEL_MAX)
        _check_string(self.program_uid, "spec.programRef.uid", max_len=UID_MAX, min_len=1)
        if type(self.program_generation) is not int or self.program_generation < 1:
            raise SpecError(reasons.INVALID_SPEC, "spec.programGeneration: must be an integer >= 1")
        _check_string(self.source_digest, "spec.sourceDigest", pattern=SOURCE_DIGEST, max_len=64)
        if not isinstance(self.fields, CompileFields):
            raise SpecError(reasons.INVALID_SPEC, "spec: compile fields missing")

    @classmethod
    def from_dict(cls, spec: object) -> AttachmentSpec:
        spec = _mapping(spec, "spec")
        ref = _mapping(spec.get("programRef"), "spec.programRef")
        return cls(
            node_name=spec.get("nodeName"),  # type: ignore[arg-type]  (validated in __post_init__)
            program_name=ref.get("name"),  # type: ignore[arg-type]
            program_uid=ref.get("uid"),  # type: ignore[arg-type]
            program_generation=spec.get("programGeneration"),  # type: ignore[arg-type]
            source_digest=spec.get("sourceDigest"),  # type: ignore[arg-type]
            fields=CompileFields.from_dict(spec),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "nodeName": self.node_name,
            "programRef": {"name": self.program_name, "uid": self.program_uid},
            "programGeneration": self.program_generation,
            "sourceDigest": self.source_digest,
            **self.fields.to_dict(),
        }


# --- Parsing helpers ----------------------------------------------------------------------
def _parse_interfaces(raw: object) -> Interfaces:
    if raw is None:
        return Interfaces(primary=True)
    raw = _mapping(raw, "spec.interfaces")
    names = _list(raw.get("names"), "spec.interfaces.names")
    if "names" in raw and not names:
        raise SpecError(reasons.INVALID_SPEC, "spec.interfaces.names: at least one name")
    primary = raw.get("primary", False)
    if type(primary) is not bool:
        raise SpecError(reasons.INVALID_SPEC, "spec.interfaces.primary: must be a boolean")
    if "primary" in raw and primary is not True:
        raise SpecError(reasons.INVALID_SPEC, "spec.interfaces.primary: only true is allowed")
    return Interfaces(names=tuple(names), pattern=raw.get("pattern"), primary=primary)


def _check_string(
    value: object, path: str, *, pattern: str | None = None, max_len: int | None = None, min_len: int = 1
) -> None:
    if not isinstance(value, str):
        raise SpecError(reasons.INVALID_SPEC, f"{path}: must be a string")
    if len(value) < min_len:
        raise SpecError(reasons.INVALID_SPEC, f"{path}: must not be empty")
    if max_len is not None and len(value) > max_len:
        raise SpecError(reasons.INVALID_SPEC, f"{path}: longer than {max_len} characters")
    if pattern is not None and not re.fullmatch(pattern, value):
        raise SpecError(reasons.INVALID_SPEC, f"{path}: {value!r} does not match {pattern}")


def _mapping(value: object, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SpecError(reasons.INVALID_SPEC, f"{path}: must be an object")
    return value


def _list(value: object, path: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise SpecError(reasons.INVALID_SPEC, f"{path}: must be a list")
    return list(value)


def _string_map(value: object, path: str, reason: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(reason, f"{path}: must be an object")
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise SpecError(reason, f"{path}: keys and values must be strings")
    return dict(value)
