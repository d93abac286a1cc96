"""Sandboxed Jinja for rule templates: no secrets, no files, bounded work, no silent blanks.

- `ImmutableSandboxedEnvironment`: no attribute starting with `_`, no mutation of lists or
  dicts, nothing unsafe callable. Templates see only the event; settings and the environment
  are never in their context.
- `StrictUndefined`: a missing value fails the render with a reason naming it (the dispatch
  becomes `invalid`); it never renders "Hi ,". Values that are None or "" count as missing, so
  `{{ contact.firstname | default("there") }}` is how a rule asks for a fallback.
- Bounded: every `for` loop draws on one budget of iterations per render, `range` is capped,
  numeric arguments and string repetition are capped, output stops at a size limit, and the
  whole render at a time limit. A CRM value that looks like a template is only ever data.
- Auto-escaping only for `content.html`.
"""

from __future__ import annotations

import contextvars
import functools
import time
from dataclasses import dataclass
from typing import Any

from jinja2 import StrictUndefined, TemplateError, Undefined, UndefinedError, nodes, pass_eval_context
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.utils import missing

MAX_ITERATIONS = 10_000
MAX_RANGE = 1_000
MAX_INT_ARGUMENT = 10_000
MAX_SECONDS = 1.0
DEFAULT_MAX_CHARS = 20_000


class RenderError(Exception):
    """A template could not be rendered; the message is the reason a dispatch is invalid."""


class TemplateLimit(RenderError):
    pass


@dataclass
class _Budget:
    deadline: float
    iterations: int

    def tick(self) -> None:
        self.iterations -= 1
        if self.iterations < 0:
            raise TemplateLimit(f"template loops ran more than {MAX_ITERATIONS} times")
        if time.monotonic() > self.deadline:
            raise TemplateLimit(f"template took longer than {MAX_SECONDS} s")


_budget: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("template_budget", default=None)


def _tick() -> None:
    budget = _budget.get()
    if budget is not None:
        budget.tick()


def _bounded(iterable: Any) -> Any:
    for item in iterable:
        _tick()
        yield item


def _range(*args: int) -> range:
    numbers = range(*args)
    if len(numbers) > MAX_RANGE:
        raise TemplateLimit(f"range() is limited to {MAX_RANGE} items in rule templates")
    return numbers


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


def _check_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT_ARGUMENT:
            raise TemplateLimit(f"numbers passed to functions are limited to {MAX_INT_ARGUMENT} in rule templates")


def _guarded(function: Any) -> Any:
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _check_arguments(args[1:], kwargs)  # the first argument is the value being filtered
        _tick()
        return function(*args, **kwargs)

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


class BridgeSandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})

    def __init__(self, autoescape: bool = False) -> None:
        super().__init__(undefined=NamedUndefined, autoescape=autoescape, keep_trailing_newline=True,
                         extensions=[])
        self.filters = {name: _guarded(self.filters[name]) for name in ALLOWED_FILTERS}
        self.filters["first_name"] = _guarded(first_name)
        self.filters["tojson"] = _strict_tojson(self.filters["tojson"])
        self.globals = {"range": _range, "rb_bounded": _bounded}
        self.tests = dict(self.tests)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int | float) and abs(right) > 64:
            raise TemplateLimit("exponents above 64 are not allowed in rule templates")
        if operator == "*" and (isinstance(left, str | list | tuple) or isinstance(right, str | list | tuple)):
            count = right if isinstance(left, str | list | tuple) else left
            if isinstance(count, int) and count > MAX_INT_ARGUMENT:
                raise TemplateLimit("repeating text more than 10000 times is not allowed in rule templates")
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        _check_arguments(args, kwargs)
        _tick()
        return super().call(__context, __obj, *args, **kwargs)

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        """Route every `for` loop through the per-render iteration budget."""
        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(nodes.For):
            loop.iter = nodes.Call(nodes.Name("rb_bounded", "load", lineno=loop.lineno), [loop.iter], [], None, None,
                                   lineno=loop.lineno)
        return tree


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


class Template:
    """A compiled rule template; `source` is kept to show in previews and errors."""

    def __init__(self, source: str, html: bool = False) -> None:
        self.source = source
        self.html = html
        self.compiled = environment(html).from_string(source)  # raises TemplateSyntaxError

    def render(self, context: dict[str, Any], max_chars: int = DEFAULT_MAX_CHARS) -> str:
        token = _budget.set(_Budget(time.monotonic() + MAX_SECONDS, MAX_ITERATIONS))
        try:
            size, chunks = 0, []
            for chunk in self.compiled.generate(context):
                size += len(chunk)
                if size > max_chars:
                    raise TemplateLimit(f"rendered text is longer than {max_chars} characters")
                _tick()
                chunks.append(chunk)
            return "".join(chunks)
        except RenderError:
            raise
        except UndefinedError as exc:
            raise RenderError(str(exc)) from None
        except SecurityError as exc:
            raise RenderError(f"not allowed in a rule template: {exc}") from None
        except (TemplateError, ArithmeticError, TypeError, ValueError, LookupError, RecursionError) as exc:
            raise RenderError(f"{type(exc).__name__}: {exc}") from None
        finally:
            _budget.reset(token)


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
