"""Sandboxed Jinja for rule templates: no secrets, no files, bounded work, no silent blanks.

- `ImmutableSandboxedEnvironment`: no attribute starting with `_`, no mutation of lists or
  dicts, nothing unsafe callable. Templates see only the event; settings and the environment
  are never in their context.
- `StrictUndefined`: a missing value fails the render with a reason naming it (the dispatch
  becomes `invalid`); it never renders "Hi ,". Values that are None or "" count as missing, so
  `{{ contact.firstname | default("there") }}` is how a rule asks for a fallback.
- Bounded work: every `for` loop draws on one budget of iterations per render, `range` is
  capped, numbers that set a size (`truncate(n)`, `center(n)`, `indent(n)`, `round(x, n)`, ...)
  are capped, and the whole render has a time limit.
- Bounded memory: a template can build nothing longer than `MAX_STRING_CHARS` characters (or a
  list of more than `MAX_LIST_ITEMS` items), and one render builds and outputs at most
  `MAX_BUILT_CHARS` characters in all. Operations that can grow a value (`*`, `+`, `%`, `~`,
  `format`, `str.format`, `replace`, `join`, `center`, `indent`, `ljust`, `expandtabs`, `tojson`,
  `translate`, ...) work out the size of their result *before* building it and refuse when it is
  too large, so a hostile template fails with a reason instead of taking the worker's memory.
  Whatever still goes wrong (MemoryError, RecursionError, OverflowError) is a `RenderError` too.
- A CRM value that looks like a template is only ever data.
- Auto-escaping only for `content.html`.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import itertools
import json
import math
import re
import string
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any

from jinja2 import (
    StrictUndefined,
    TemplateError,
    TemplateSyntaxError,
    Undefined,
    UndefinedError,
    nodes,
    pass_eval_context,
)
from jinja2.runtime import markup_join
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.utils import _PassArg, missing
from jinja2.visitor import NodeTransformer

MAX_ITERATIONS = 10_000
MAX_RANGE = 1_000
MAX_INT_ARGUMENT = 10_000
MAX_SECONDS = 1.0
DEFAULT_MAX_CHARS = 20_000
MAX_STRING_CHARS = 1_000_000
MAX_LIST_ITEMS = 100_000
MAX_BUILT_CHARS = 10_000_000
MAX_INT_BITS = 4096
MAX_JSON_INDENT = 8


class RenderError(Exception):
    """A template could not be rendered; the message is the reason a dispatch is invalid."""


class TemplateLimit(RenderError):
    pass


@dataclass
class _Budget:
    deadline: float
    iterations: int
    chars: int = MAX_BUILT_CHARS

    def tick(self) -> None:
        self.iterations -= 1
        if self.iterations < 0:
            raise TemplateLimit(f"template loops ran more than {MAX_ITERATIONS} times")
        if time.monotonic() > self.deadline:
            raise TemplateLimit(f"template took longer than {MAX_SECONDS} s")

    def spend(self, chars: int) -> None:
        self.chars -= chars
        if self.chars < 0:
            raise TemplateLimit(f"template builds more than {MAX_BUILT_CHARS} characters in one render")


_budget: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("template_budget", default=None)


def _check_time() -> None:
    """The render's time limit, for work inside one operation (measuring a large value)."""
    budget = _budget.get()
    if budget is not None and time.monotonic() > budget.deadline:
        raise TemplateLimit(f"template took longer than {MAX_SECONDS} s")


def _tick() -> None:
    budget = _budget.get()
    if budget is not None:
        budget.tick()


def _spend(chars: int) -> None:
    budget = _budget.get()
    if budget is not None:
        budget.spend(chars)


# ---- sizes: what a value costs as text, checked before anything large is built --------------------


def size_of(value: Any, seen: dict[int, int] | None = None) -> int:
    """About how many characters `value` takes as text (what `str()` or `tojson` of it builds).

    Shared items (`[s] * 100` holds one string a hundred times) are measured once but counted
    every time, so the answer is the size of the text while the work stays proportional to the
    number of distinct objects.
    """
    if isinstance(value, str | bytes):
        return len(value)
    if value is None or isinstance(value, bool):
        return 5
    if isinstance(value, int):
        return value.bit_length() // 3 + 2
    if isinstance(value, float):
        return 24
    if not isinstance(value, list | tuple | dict | set | frozenset):
        return 16
    return repr_size(value, seen)


def repr_size(value: Any, seen: dict[int, int] | None = None, ascii_only: bool = False) -> int:
    """An upper bound for `len(repr(value))` (`ascii()` with `ascii_only`); a container's `str()` is its repr.

    A string's repr escapes what is not printable (`ascii()` also what is not ASCII): at most 4
    characters for an ASCII one (`\\x00`), 10 for any other (`\\U000e0001`).
    """
    if isinstance(value, str | bytes):
        seen = {} if seen is None else seen
        if id(value) not in seen:  # a long string shared by many items is scanned once
            if isinstance(value, bytes):
                seen[id(value)] = 4 * len(value) + 3
            elif value.isprintable() and (value.isascii() or not ascii_only):
                seen[id(value)] = len(value) + value.count("\\") + value.count("'") + 2
            else:
                seen[id(value)] = (4 if value.isascii() else 10) * len(value) + 2
        return seen[id(value)]
    if not isinstance(value, list | tuple | dict | set | frozenset):
        return size_of(value)
    seen = {} if seen is None else seen
    key = id(value)
    if key not in seen:
        seen[key] = 0  # a container that holds itself (impossible in the sandbox) counts as empty
        if isinstance(value, dict):
            seen[key] = 2 + sum(repr_size(k, seen, ascii_only) + repr_size(v, seen, ascii_only) + 4
                                for k, v in value.items())
        else:
            total, previous, previous_size = 2, seen, 0
            for item in value:
                if item is not previous:  # `[s] * n`: one look at `s`
                    previous, previous_size = item, repr_size(item, seen, ascii_only) + 2
                total += previous_size
            seen[key] = total
    return seen[key]


_JSON_CHUNK = 65_536
_HTML_ESCAPED = ("<", ">", "&", "'")  # tojson writes each as \u003c (6 characters)
_HTML_CHARACTER = re.compile("[<>&']")


def _json_string_size(text: str, limit: int) -> int:
    """Exactly how long `tojson` writes `text`: ASCII-only JSON, \\u escapes counted (12 for an emoji).

    Encoded a slice at a time, so measuring never holds more than one slice's escapes.
    """
    if len(text) <= _JSON_CHUNK:
        size = len(encode_basestring_ascii(text))
    else:
        size = 2
        for start in range(0, len(text), _JSON_CHUNK):
            size += len(encode_basestring_ascii(text[start:start + _JSON_CHUNK])) - 2
            if size > limit:
                break
    return size + 5 * sum(map(text.count, _HTML_ESCAPED))


def _json_scalar_size(item: Any) -> int:
    """The JSON characters `tojson` writes for a string, number, boolean or null (TypeError for others)."""
    if isinstance(item, str):
        if len(item) > _JSON_CHUNK:
            return _json_string_size(item, MAX_STRING_CHARS)
        escapes = sum(map(item.count, _HTML_ESCAPED)) if _HTML_CHARACTER.search(item) else 0
        return len(encode_basestring_ascii(item)) + 5 * escapes
    if item is None or item is True:
        return 4
    if item is False:
        return 5
    if isinstance(item, int):
        return len(int.__repr__(item))  # ValueError past 4,300 digits, as json.dumps itself
    if isinstance(item, float):
        return len(float.__repr__(item)) if math.isfinite(item) else len(json.dumps(item))
    raise TypeError(f"Object of type {type(item).__name__} is not JSON serializable")


def json_size(value: Any, indent: str | None, limit: int = MAX_STRING_CHARS) -> int:
    """How many characters `tojson(indent)` writes for `value`; TemplateLimit as soon as it passes `limit`.

    The walk follows what `json.dumps(sort_keys=True, indent=...)` writes: with an indent every
    item sits on its own line behind `depth` indents, so deep nesting multiplies the indent. An
    object shared by several items (`[n] * 300`) is measured once per depth and counted every
    time, as the output repeats it; the walk stops once the count passes `limit`, so measuring
    costs about as much as the allowed output, never as much as the refused one.
    """
    memo: dict[tuple[int, int], int] = {}
    step = len(indent) if indent is not None else 0
    item_separator = 1 if indent is not None else 2  # "," then a new line, or ", "

    def over(size: int) -> int:
        if size > limit:
            raise TemplateLimit(f"template builds a string longer than {limit} characters (tojson)")
        return size

    def walk(item: Any, depth: int) -> int:
        if not isinstance(item, list | tuple | dict):
            return over(_json_scalar_size(item))
        memo_key = (id(item), depth)
        if memo_key in memo:
            return memo[memo_key]
        _check_time()
        size = 2
        if item:
            size += (len(item) - 1) * item_separator
            line = 0 if indent is None else 1 + step * (depth + 1)  # each item's new line and indent
            if indent is not None:
                size += 1 + step * depth  # the new line and indent before the closing bracket
            if isinstance(item, dict):
                for index, (key, child) in enumerate(item.items()):
                    # "key": value; a number, boolean or null key is written in quotes
                    size += _json_scalar_size(key) + (0 if isinstance(key, str) else 2) + 2
                    size += line + walk(child, depth + 1)
                    if size > limit or not index & 1023:
                        over(size)
                        _check_time()
            else:
                known: dict[int, int] = {}  # a list that repeats one container measures it once
                previous, previous_size = known, 0  # ... and `[s] * n` measures `s` once
                for index, child in enumerate(item):
                    if child is not previous:
                        if not isinstance(child, list | tuple | dict):
                            previous_size = line + _json_scalar_size(child)
                        elif (child_size := known.get(id(child))) is not None:
                            previous_size = child_size
                        else:
                            previous_size = known.setdefault(id(child), line + walk(child, depth + 1))
                        previous = child
                    size += previous_size
                    if size > limit or not index & 1023:
                        over(size)
                        _check_time()
        memo[memo_key] = over(size)
        return size

    return walk(value, 0)


def _expect(chars: int, items: int = 0, what: str = "a string") -> None:
    """Refuse an operation whose result would be `chars` long (or hold `items` items) before it runs."""
    if items > MAX_LIST_ITEMS:
        raise TemplateLimit(f"template builds a list longer than {MAX_LIST_ITEMS} items")
    if chars > MAX_STRING_CHARS:
        raise TemplateLimit(f"template builds {what} longer than {MAX_STRING_CHARS} characters")


def _built(value: Any) -> Any:
    """Check and account for a value an operation just built; other values pass unchanged."""
    if isinstance(value, str | bytes):
        _expect(len(value))
        _spend(len(value))
    elif isinstance(value, list | tuple | dict):
        chars = size_of(value)
        _expect(chars, len(value), "a value that is")
        _spend(chars)
    return value


def _number(text: str) -> int:
    """A width or precision from a format spec, without converting an absurd one."""
    return int(text) if len(text) <= 9 else MAX_STRING_CHARS + 1


_FLAGS = "-+ #0"
_NUMERIC = frozenset("diuxXoeEfFgG")


@dataclass
class _Spec:
    """One `%` conversion as CPython's `str % values` reads it (`key` is None without `(key)`)."""

    key: str | None
    width: str
    precision: str
    conversion: str


def _digits(text: str, i: int) -> int:
    """Where the run of ASCII digits starting at `i` ends (CPython reads only '0'-'9' here)."""
    while i < len(text) and "0" <= text[i] <= "9":
        i += 1
    return i


def printf_specs(text: str) -> Iterator[_Spec]:
    """The conversions of `text % values`, parsed exactly as CPython does (unicode_format_arg_parse).

    A key may hold balanced parentheses (`%(x())9s` is key `x()`, width 9); flags are any of
    `-+ #0`; a width or precision is `*` or ASCII digits; one `h`, `l` or `L` is skipped. The
    parse stops where CPython would raise (a key or spec cut short), because nothing after that
    point is built; a conversion CPython would refuse is still counted (an estimate may be high,
    never low).
    """
    i, n = 0, len(text)
    while (i := text.find("%", i)) >= 0:
        i += 1
        if i < n and text[i] == "%":  # only '%%' itself is a literal percent sign
            i += 1
            continue
        key = None
        if i < n and text[i] == "(":
            depth, start = 1, i + 1
            i += 1
            while depth and i < n:
                depth += {"(": 1, ")": -1}.get(text[i], 0)
                i += 1
            if depth:
                return  # "incomplete format key"
            key = text[start:i - 1]
        while i < n and text[i] in _FLAGS:
            i += 1
        width = precision = ""
        if i < n and text[i] == "*":
            width, i = "*", i + 1
        else:
            end = _digits(text, i)
            width, i = text[i:end], end
        if i < n and text[i] == ".":
            i += 1
            if i < n and text[i] == "*":
                precision, i = "*", i + 1
            else:
                end = _digits(text, i)
                precision, i = text[i:end] or "0", end
        if i < n and text[i] in "hlL":
            i += 1
        if i >= n:
            return  # "incomplete format"
        yield _Spec(key, width, precision, text[i])
        i += 1


def _converted_size(value: Any, conversion: str, precision: int) -> int:
    """An upper bound for the text one conversion makes of `value` (before its width pads it)."""
    if conversion == "c":
        return 1
    if conversion in ("r", "a"):
        return repr_size(value, ascii_only=conversion == "a")
    if conversion not in _NUMERIC:
        return size_of(value)
    digits = value.bit_length() // 3 + 2 if isinstance(value, int) else 310  # a float can have 309 digits
    if conversion in "eEfFgG":
        precision = max(precision, 6)  # the default precision; then a sign, a point and an exponent
    return digits + precision + 8


def printf_size(fmt: str | bytes, values: Any) -> int:
    """An upper bound for the length of `fmt % values`, reading each conversion as CPython does.

    Widths and precisions above the cap are refused before anything is sized, and a `*` (a
    width taken from the values) is refused outright.
    """
    text = fmt.decode("latin-1") if isinstance(fmt, bytes) else fmt
    mapping = values if isinstance(values, dict) else None
    positional = values if isinstance(values, tuple) else (values,)
    total, index = len(text), 0
    for spec in printf_specs(text):
        if "*" in (spec.width, spec.precision):
            raise TemplateLimit("'*' widths are not allowed in rule templates; write the width in the format")
        width, precision = _number(spec.width or "0"), _number(spec.precision or "0")
        _expect(max(width, precision))
        if spec.key is not None and mapping is not None:
            value = mapping.get(spec.key)
        elif index < len(positional):
            value, index = positional[index], index + 1
        else:
            value = None  # Python refuses: not enough arguments
        total += max(width, _converted_size(value, spec.conversion, precision))
    return total


def format_size(fmt: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """An upper bound for the length of `fmt.format(*args, **kwargs)`."""
    total, fields, widest, conversions = 0, 0, 0, set()
    for literal, name, spec, conversion in string.Formatter().parse(fmt):
        total += len(literal)
        if name is None:
            continue
        fields += 1
        conversions.add(conversion)
        if spec and "{" in spec:
            raise TemplateLimit("a format spec cannot take values from the arguments in rule templates")
        widest = max([widest, *(_number(n) for n in re.findall(r"\d+", spec or ""))])
    values = (*args, *kwargs.values())
    largest = max((_formatted_size(v) for v in values), default=0)
    if conversions & {"r", "a"}:  # `{!r}` and `{!a}` write the repr, which escapes characters
        largest = max([largest, *(repr_size(v, ascii_only="a" in conversions) for v in values)])
    return total + fields * (widest + largest)


def _formatted_size(value: Any) -> int:
    """An upper bound for one value formatted by `str.format` with any spec (before its width)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value.bit_length() * 5 // 4 + 8  # `{:_b}`: one digit per bit and a separator per four
    if isinstance(value, float):
        return 450  # `{:,f}` of 1e308: 309 digits, 102 commas, a sign and six decimals
    return size_of(value)


def _materialize(values: Any) -> list[Any]:
    """A list of at most MAX_LIST_ITEMS items, so its joined size can be known first."""
    if isinstance(values, Undefined):
        values._fail_with_undefined_error()
    items = values if isinstance(values, list | tuple) else list(itertools.islice(values, MAX_LIST_ITEMS + 1))
    _expect(0, len(items))
    return list(items)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def _replace_size(text: str | bytes, old: Any, new: Any, count: Any) -> int:
    if not isinstance(old, str | bytes) or not isinstance(new, str | bytes):
        return len(text)  # the call itself refuses the types
    found = text.count(old) if old else len(text) + 1
    if isinstance(count, int) and count >= 0:
        found = min(found, count)
    return len(text) + found * max(0, len(new) - len(old))


def _translate_size(text: str | bytes, table: Any) -> int:
    if isinstance(table, dict):
        values = table.values()
    elif isinstance(table, list | tuple | str | bytes):
        values = table
    elif table is None:
        values = ()
    else:
        raise TemplateLimit("translate() takes a mapping or a sequence in rule templates")
    longest = max((len(v) if isinstance(v, str | bytes) else 1 for v in values), default=1)
    return len(text) * max(1, longest)


def _width(args: tuple[Any, ...], kwargs: dict[str, Any], name: str, default: int) -> int:
    value = args[0] if args else kwargs.get(name, default)
    return value if isinstance(value, int) else 0


# Methods of str/bytes that can make a result larger than their input: the size they would build.
_METHOD_SIZES: dict[str, Callable[[Any, tuple[Any, ...], dict[str, Any]], int]] = {
    "center": lambda s, a, k: max(len(s), _width(a, k, "width", 0)),
    "ljust": lambda s, a, k: max(len(s), _width(a, k, "width", 0)),
    "rjust": lambda s, a, k: max(len(s), _width(a, k, "width", 0)),
    "zfill": lambda s, a, k: max(len(s), _width(a, k, "width", 0)),
    "expandtabs": lambda s, a, k: len(s) + s.count("\t" if isinstance(s, str) else b"\t") * max(
        0, _width(a, k, "tabsize", 8)),
    "replace": lambda s, a, k: _replace_size(s, *(a + (None, None))[:2], a[2] if len(a) > 2 else k.get("count", -1)),
    "translate": lambda s, a, k: _translate_size(s, a[0] if a else k.get("table")),
    "join": lambda s, a, k: sum(size_of(item) for item in a[0]) + len(s) * max(0, len(a[0]) - 1) if a else 0,
    "format": lambda s, a, k: format_size(s, a, k),
    "format_map": lambda s, a, k: format_size(s, (), dict(a[0]) if a and isinstance(a[0], dict) else {}),
}
_SIZE_ARGUMENT_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})


def _sized_method(owner: str | bytes, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    """A str/bytes method that refuses to build more than the limits allow."""
    estimate = _METHOD_SIZES.get(name)

    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        if name in _SIZE_ARGUMENT_METHODS:
            _check_arguments(args, kwargs)
        if name == "join" and args:
            args = (_materialize(args[0]), *args[1:])
        if estimate is not None:
            _expect(estimate(owner, args, kwargs))
        return _built(method(*args, **kwargs))

    return call


# ---- globals the rewritten templates call ---------------------------------------------------------


def _bounded(iterable: Any) -> Any:
    for item in iterable:
        _tick()
        yield item


def _range(*args: int) -> range:
    numbers = range(*args)
    if len(numbers) > MAX_RANGE:
        raise TemplateLimit(f"range() is limited to {MAX_RANGE} items in rule templates")
    return numbers


def _concat_markup(*values: Any) -> str:
    """`a ~ b` with auto-escaping: the size is known before the text is joined."""
    parts = [v if isinstance(v, str) else str(v) for v in values]  # str(Undefined) names the value
    _expect(sum(len(p) for p in parts))
    return _built(markup_join(parts))


def _concat_plain(*values: Any) -> str:
    """`a ~ b`: the size is known before the text is joined."""
    parts = [str(v) for v in values]
    _expect(sum(len(p) for p in parts))
    return _built("".join(parts))


def _output(value: Any) -> Any:
    """Every `{{ ... }}`, wherever it is (a macro, a `set` block), counts toward the render's budget.

    A value that is not text becomes its `str()` right after this: that string is held to the
    same limit as any other the template builds, before it exists.
    """
    chars = size_of(value)
    if not isinstance(value, str):
        _expect(chars)
    _spend(chars)
    return value


def _output_text(chars: int) -> str:
    """Literal text in a template counts too (a loop can repeat it)."""
    _spend(chars)
    return ""


_INTERNAL = frozenset({_bounded, _concat_markup, _concat_plain, _output, _output_text})


class _Bound(NodeTransformer):
    """Rewrites a parsed template so loops, `~` and output go through the budget above."""

    def __init__(self, concat: str) -> None:
        self.concat = concat

    @staticmethod
    def _call(name: str, args: list[nodes.Expr], lineno: int) -> nodes.Call:
        return nodes.Call(nodes.Name(name, "load", lineno=lineno), args, [], None, None, lineno=lineno)

    def visit_For(self, node: nodes.For) -> nodes.Node:
        node = self.generic_visit(node)
        node.iter = self._call("rb_bounded", [node.iter], node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        node = self.generic_visit(node)
        return self._call(self.concat, list(node.nodes), node.lineno)

    def visit_Output(self, node: nodes.Output) -> nodes.Node:
        node = self.generic_visit(node)
        literal = sum(len(child.data) for child in node.nodes if isinstance(child, nodes.TemplateData))
        children: list[nodes.Expr] = [child if isinstance(child, nodes.TemplateData)
                                      else self._call("rb_output", [child], child.lineno) for child in node.nodes]
        if literal:
            children.insert(0, self._call("rb_output_text", [nodes.Const(literal, lineno=node.lineno)], node.lineno))
        node.nodes = children
        return node


# ---- the context --------------------------------------------------------------------------------


class Record(dict):
    """A context map that knows its own name, so a missing value is reported as `contact.firstname`."""

    def __init__(self, name: str, values: dict[str, Any]) -> None:
        super().__init__(values)
        self.record_name = name


class NamedUndefined(StrictUndefined):
    """StrictUndefined whose error names the field: 'contact.firstname has no value'."""

    __slots__ = ()

    @property
    def _undefined_message(self) -> str:
        owner = self._undefined_obj
        if isinstance(owner, Record):
            return f"{owner.record_name}.{self._undefined_name} has no value"
        if self._undefined_hint:
            return self._undefined_hint
        if self._undefined_name is None:
            return "a value is undefined"
        if owner is missing:
            return f"{self._undefined_name!r} is undefined"
        return f"{type(owner).__name__} value has no attribute {self._undefined_name!r}"


def first_name(full_name: Any) -> str:
    """'Dana Lee' -> 'Dana'; 'Lee, Dana' -> 'Dana'; titles such as 'Dr.' are skipped."""
    text = str(full_name).strip()
    if "," in text:
        text = text.split(",", 1)[1].strip()
    parts = [p for p in text.split() if p.rstrip(".").lower() not in {"mr", "mrs", "ms", "dr", "prof", "mx"}]
    if not parts:
        raise RenderError(f"no first name in {str(full_name)[:40]!r}")
    return parts[0]


# ---- filters ------------------------------------------------------------------------------------


def _check_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Numbers that set a size or a count (`truncate(n)`, `center(n)`, `round(x, n)`) are capped."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, int | float) and not isinstance(value, bool) and abs(value) > MAX_INT_ARGUMENT:
            raise TemplateLimit(f"numbers passed to functions are limited to {MAX_INT_ARGUMENT} in rule templates")


def _indent_size(value: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    text = _text(value)
    width = args[0] if args else kwargs.get("width", 4)
    prefix = width if isinstance(width, int) else len(_text(width))
    return len(text) + (text.count("\n") + 1) * max(0, prefix)


def _join_size(value: list[Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    separator = _text(args[0] if args else kwargs.get("d", ""))
    return sum(size_of(item) for item in value) + len(separator) * max(0, len(value) - 1)


def _replace_filter_size(value: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    old, new = (args + (kwargs.get("old"), kwargs.get("new")))[:2]
    count = args[2] if len(args) > 2 else kwargs.get("count")
    return _replace_size(_text(value), _text(old), _text(new), -1 if count is None else count)


def _format_filter_size(value: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    return printf_size(_text(value), kwargs or args)


def _list_size(value: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    if hasattr(value, "__len__"):
        _expect(0, len(value))
    return 0


def _tojson_size(value: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """The exact size of the JSON text, measured before it is built (see json_size)."""
    indent = args[0] if args else kwargs.get("indent")
    if isinstance(indent, int):  # json.dumps indents by that many spaces (True is one, 0 or less none)
        indent = " " * max(0, min(indent, MAX_JSON_INDENT + 1))
    if isinstance(indent, str) and len(indent) > MAX_JSON_INDENT:
        raise TemplateLimit(f"tojson indent is limited to {MAX_JSON_INDENT} in rule templates")
    return json_size(value, indent if isinstance(indent, str) else None)


_FILTER_SIZES: dict[str, Callable[[Any, tuple[Any, ...], dict[str, Any]], int]] = {
    "center": lambda v, a, k: max(len(_text(v)), _width(a, k, "width", 80)),
    "indent": _indent_size, "join": _join_size, "replace": _replace_filter_size, "format": _format_filter_size,
    "list": _list_size, "tojson": _tojson_size,
}
# Filters whose arguments are values rather than sizes: their size is estimated instead.
_DATA_ARGUMENT_FILTERS = frozenset({"default", "d", "format", "replace", "join"})


def _guarded(name: str, function: Any) -> Any:
    """A filter that checks its size arguments and the size of what it would build, then ticks."""
    skip = 2 if _PassArg.from_obj(function) is not None else 1  # (context,) value, arguments...
    estimate = _FILTER_SIZES.get(name)

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if name not in _DATA_ARGUMENT_FILTERS:
            _check_arguments(args[skip:], kwargs)
        _tick()
        if estimate is not None and len(args) >= skip:
            value = args[skip - 1]
            if name == "join":
                value = _materialize(value)
                args = (*args[:skip - 1], value, *args[skip:])
            _expect(estimate(value, args[skip:], kwargs))
        return _built(function(*args, **kwargs))

    return wrapper


def _strict_tojson(original: Any) -> Any:
    """`tojson` of a missing value names it, like every other use of one (not a TypeError)."""

    @pass_eval_context
    def tojson(eval_context: Any, value: Any, indent: int | None = None) -> Any:
        if isinstance(value, Undefined):
            value._fail_with_undefined_error()
        return original(eval_context, value, indent)

    return tojson


ALLOWED_FILTERS = ("abs", "capitalize", "default", "d", "first", "float", "int", "join", "last", "length",
                   "lower", "replace", "round", "string", "title", "trim", "truncate", "upper", "wordcount",
                   "striptags", "escape", "e", "list", "min", "max", "sort", "unique", "center", "indent",
                   "format", "tojson")


def _is_sequence(value: Any) -> bool:
    return isinstance(value, str | bytes | list | tuple)


class BridgeSandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, autoescape: bool = False) -> None:
        super().__init__(undefined=NamedUndefined, autoescape=autoescape, keep_trailing_newline=True,
                         extensions=[])
        self.filters = {name: _guarded(name, self.filters[name]) for name in ALLOWED_FILTERS}
        self.filters["first_name"] = _guarded("first_name", first_name)
        self.filters["tojson"] = _strict_tojson(self.filters["tojson"])
        self.globals = {"range": _range, "rb_bounded": _bounded, "rb_concat": _concat_markup,
                        "rb_concat_plain": _concat_plain, "rb_output": _output, "rb_output_text": _output_text}
        self.tests = dict(self.tests)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        """`*`, `+`, `%` and `**` work out the size of their result before computing it."""
        both_ints = isinstance(left, int) and isinstance(right, int)
        if operator == "**":
            if isinstance(right, int | float) and abs(right) > 64:
                raise TemplateLimit("exponents above 64 are not allowed in rule templates")
            if both_ints and right > 0 and abs(left).bit_length() * right > MAX_INT_BITS:
                raise TemplateLimit(f"numbers in rule templates are limited to {MAX_INT_BITS} bits")
        elif operator == "*":
            if _is_sequence(left) or _is_sequence(right):
                sequence, count = (left, right) if _is_sequence(left) else (right, left)
                if isinstance(count, int) and count > 0:
                    text = isinstance(sequence, str | bytes)
                    _expect(size_of(sequence) * count, 0 if text else len(sequence) * count,
                            "a string" if text else "a list that is")
            elif both_ints and left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise TemplateLimit(f"numbers in rule templates are limited to {MAX_INT_BITS} bits")
        elif operator == "+":
            if _is_sequence(left) and _is_sequence(right):
                text = isinstance(left, str | bytes)
                _expect(size_of(left) + size_of(right), 0 if text else len(left) + len(right),
                        "a string" if text else "a list that is")
        elif operator == "%" and isinstance(left, str | bytes):
            _expect(printf_size(left, right))
        return _built(super().call_binop(context, operator, left, right))

    def wrap_str_format(self, value: Any) -> Callable[..., Any] | None:
        """Every public str/bytes method (not only `format`) is size-checked when it is looked up."""
        sandboxed = super().wrap_str_format(value)
        owner = getattr(value, "__self__", None)
        name = getattr(value, "__name__", "")
        if isinstance(owner, str | bytes) and callable(value) and not name.startswith("_"):
            return _sized_method(owner, name, sandboxed or value)
        return sandboxed

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        if __obj in _INTERNAL:
            return __context.call(__obj, *args, **kwargs)
        _tick()
        return super().call(__context, __obj, *args, **kwargs)

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        """Route loops, `~` and output through the per-render budget."""
        tree = super()._parse(source, name, filename)
        return _Bound("rb_concat" if self.autoescape else "rb_concat_plain").visit(tree)


_PLAIN: BridgeSandbox | None = None
_HTML: BridgeSandbox | None = None


def environment(html: bool = False) -> BridgeSandbox:
    """The shared sandbox (built on first use, not at import)."""
    global _PLAIN, _HTML
    if html:
        _HTML = _HTML or BridgeSandbox(autoescape=True)
        return _HTML
    _PLAIN = _PLAIN or BridgeSandbox()
    return _PLAIN


@contextlib.contextmanager
def _rendering() -> Iterator[None]:
    """One render's budget; every way a template can fail becomes a RenderError with a reason."""
    token = _budget.set(_Budget(time.monotonic() + MAX_SECONDS, MAX_ITERATIONS))
    try:
        yield
    except RenderError:
        raise
    except UndefinedError as exc:
        raise RenderError(str(exc)) from None
    except SecurityError as exc:
        raise RenderError(f"not allowed in a rule template: {exc}") from None
    except MemoryError:
        raise RenderError("template ran out of memory") from None
    except RecursionError:
        raise RenderError("template nests or recurses too deeply") from None
    except (TemplateError, ArithmeticError, TypeError, ValueError, LookupError) as exc:
        raise RenderError(f"{type(exc).__name__}: {exc}") from None
    finally:
        _budget.reset(token)


class Template:
    """A compiled rule template; `source` is kept to show in previews and errors.

    With `native=True` a template that is exactly one `{{ expression }}` (nothing around it) can
    also give the expression's value with its own type (`value()`): a number stays a number, a
    string stays a string, whatever it contains.
    """

    def __init__(self, source: str, html: bool = False, native: bool = False) -> None:
        self.source = source
        self.html = html
        self.expression: Any = None
        env = environment(html)
        try:
            self.compiled = env.from_string(source)  # raises TemplateSyntaxError
            if native:
                self.expression = _single_expression(env, source)
        except (RecursionError, MemoryError):
            raise TemplateSyntaxError("the template is nested too deeply", 1) from None

    def render(self, context: dict[str, Any], max_chars: int = DEFAULT_MAX_CHARS) -> str:
        with _rendering():
            size, chunks = 0, []
            for chunk in self.compiled.generate(context):
                size += len(chunk)
                if size > max_chars:
                    raise TemplateLimit(f"rendered text is longer than {max_chars} characters")
                _tick()
                chunks.append(chunk)
            return "".join(chunks)

    def value(self, context: dict[str, Any], max_chars: int = DEFAULT_MAX_CHARS) -> Any:
        """The single expression's own value (an undefined one fails), else the rendered text."""
        if self.expression is None:
            return self.render(context, max_chars)
        with _rendering():
            frame = self.expression.new_context(dict(context))
            for _ in self.expression.root_render_func(frame):
                pass
            result = frame.vars["result"]
            if isinstance(result, Undefined):
                result._fail_with_undefined_error()
            if size_of(result) > max_chars:
                raise TemplateLimit(f"the value is longer than {max_chars} characters")
            return result


def _single_expression(env: BridgeSandbox, source: str) -> Any:
    """A compiled `result = <expression>` when `source` is exactly one `{{ expression }}`, else None."""
    tree = env.parse(source)
    if len(tree.body) != 1 or not isinstance(tree.body[0], nodes.Output) or len(tree.body[0].nodes) != 1:
        return None
    expression = tree.body[0].nodes[0]
    if isinstance(expression, nodes.TemplateData):
        return None
    body = nodes.Template([nodes.Assign(nodes.Name("result", "store"), expression, lineno=1)], lineno=1)
    return env.from_string(body)


def truthy(rendered: str, what: str) -> bool:
    """How an `if` or `suppress_if` template's text reads as a decision."""
    text = rendered.strip().lower()
    if text in ("true", "yes", "1", "on"):
        return True
    if text in ("false", "no", "0", "off", "", "none"):
        return False
    raise RenderError(f"{what} must render true or false, got {rendered.strip()[:40]!r}")


def clean_context(event: dict[str, Any], context: dict[str, Any] | None = None) -> dict[str, Any]:
    """What templates see: the event, its context maps merged with hydrated ones, blanks removed."""
    hydrated = context or {}
    view: dict[str, Any] = {}
    for key in ("source", "event_id", "type", "occurred_at", "account"):
        if event.get(key) not in (None, ""):
            view[key] = event[key]
    view["object"] = Record("object", event.get("object") or {})
    view["properties"] = Record("properties", _present(event.get("properties") or {}))
    view["previous"] = Record("previous", _present(event.get("previous") or {}))
    for name in ("deal", "contact", "company", "owner"):
        merged = {**(hydrated.get(name) or {}), **(event.get(name) or {})}
        view[name] = Record(name, _present(merged))
    contacts = hydrated.get("contacts")
    if isinstance(contacts, list):
        view["contacts"] = [Record("contact", _present(c)) for c in contacts if isinstance(c, dict)]
    return view


def _present(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None and v != ""}
