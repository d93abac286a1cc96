"""Load the rules file: YAML, `${VAR}` from the environment, the schema, compiled templates.

Every problem is collected and reported at once, each naming the rule, the field and the YAML
line, so `revor-bridge check` shows a user everything to fix in one go. Web and worker refuse to
start on any of them. An unset `${VAR}` is reported once (its placeholder's own schema error is
dropped), and `preview`, which sends nothing, may load a file whose destinations use unset
variables: they get placeholders and one warning instead of an error.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from jinja2 import TemplateSyntaxError
from marshmallow import ValidationError

from integration.rules.templates import Template
from schemas.rules import RulesFileSchema

if TYPE_CHECKING:
    from integration.writeback.body import BodyTemplate
    from integration.writeback.crm.config import CrmDestination

ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
MAX_FILE_BYTES = 1024 * 1024
# What an unset ${VAR} becomes when it is a destination's whole url or secret: valid values, so the rest of the
# file is still checked (attachments, templates) and nothing is reported twice. Nothing is ever sent to them:
# web, worker and check refuse a file with an unset variable; only preview (which sends nothing) accepts one.
PLACEHOLDER_URL = "http://unset.invalid/"
PLACEHOLDER_SECRET = "whsec_" + base64.b64encode(b"placeholder-for-an-unset-variable").decode()
# An unquoted `key: {{ ... }}` (or `- {{ ... }}`): YAML reads `{` as the start of a flow mapping.
UNQUOTED_TEMPLATE = re.compile(r"(?:^|[:\-\[,])\s*\{\{")


class _Yaml12Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false. YAML 1.1 reads `on:` (a destination's states) as True."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                    list("tTfF"))


class RulesError(ValueError):
    """The rules file is unusable; `problems` lists each as one line naming rule, field and line."""

    def __init__(self, path: Path | str, problems: list[str]) -> None:
        self.path = str(path)
        self.problems = problems
        super().__init__(f"{path}: " + "; ".join(problems))


@dataclass
class CompiledDispatch:
    account_id: str
    channel: str
    recipient: dict[str, Template]
    content: dict[str, Template]
    metadata: dict[str, Template]
    attachments: list[dict[str, str]]
    interval: list[int]


@dataclass
class CompiledRule:
    name: str
    index: int
    when: dict[str, Any]
    if_template: Template | None
    dispatch: CompiledDispatch
    once_per: Template | None
    suppress_if: Template | None
    writeback: list[str]
    enabled: bool


@dataclass
class RuleSet:
    path: str
    rules: list[CompiledRule]
    accounts: dict[str, str]
    defaults: dict[str, Any]
    destinations: dict[str, dict[str, Any]] = field(default_factory=dict)
    destination_bodies: dict[str, BodyTemplate] = field(default_factory=dict)
    crm_destinations: dict[str, CrmDestination] = field(default_factory=dict)  # kind hubspot/salesforce/pipedrive
    warnings: list[str] = field(default_factory=list)  # said once, e.g. by preview: placeholders in use
    sha256: str = ""  # of the file's bytes as loaded: workers and importers compare it (rules/fingerprint.py)

    def destination_statuses(self) -> dict[str, list[str]]:
        """Destination name -> the dispatch states it wants messages for (a CRM destination's
        activity statuses too: a note on `failed` needs a message even if `failed` sets no property)."""
        return {name: list(dict.fromkeys([*d["on"], *((d.get("activity") or {}).get("on") or [])]))
                for name, d in self.destinations.items()}


def _line_map(text: str) -> dict[tuple[Any, ...], int]:
    """Each YAML path -> its 1-based line, from the composed node tree."""
    lines: dict[tuple[Any, ...], int] = {}

    def walk(node: yaml.Node, path: tuple[Any, ...]) -> None:
        lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                walk(value, (*path, key.value))
                lines.setdefault((*path, key.value), key.start_mark.line + 1)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                walk(item, (*path, index))

    root = yaml.compose(text, Loader=_Yaml12Loader)
    if root is not None:
        walk(root, ())
    return lines


def _flatten(messages: Any, path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], str]]:
    if isinstance(messages, dict) and path and set(messages) == {"value"}:
        return _flatten(messages["value"], path)  # marshmallow's Dict field files a value's errors under "value"
    if isinstance(messages, dict):
        return [pair for key, value in messages.items() for pair in _flatten(value, (*path, key))]
    if isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        return [(path, " ".join(messages))]
    if isinstance(messages, list):
        return [pair for index, value in enumerate(messages) for pair in _flatten(value, (*path, index))]
    return [(path, str(messages))]


class _Reporter:
    def __init__(self, data: Any, lines: dict[tuple[Any, ...], int]) -> None:
        self.data, self.lines = data, lines
        self.problems: list[str] = []
        self.unset: set[tuple[Any, ...]] = set()  # where a ${VAR} was missing: already reported, once
        self.placeholders: list[str] = []  # unset variables a lenient (preview) load replaced, in order

    def already_unset(self, path: tuple[Any, ...]) -> bool:
        """Whether `path` (or a part above it) holds an unset ${VAR}: its schema error would repeat that."""
        return any(path[:n] in self.unset for n in range(1, len(path) + 1))

    def add(self, path: tuple[Any, ...], message: str, extra_lines: int = 0) -> None:
        where = ""
        probe = path
        while probe and probe not in self.lines:
            probe = probe[:-1]
        if probe in self.lines:
            where = f" (line {self.lines[probe] + extra_lines})"
        problem = f"{self._describe(path)}: {message}{where}"
        if problem not in self.problems:  # the schema and the raw-data checks may both see one problem
            self.problems.append(problem)

    def _describe(self, path: tuple[Any, ...]) -> str:
        if len(path) >= 2 and path[0] == "rules" and isinstance(path[1], int):
            rules = self.data.get("rules") if isinstance(self.data, dict) else None
            name = None
            if isinstance(rules, list) and path[1] < len(rules) and isinstance(rules[path[1]], dict):
                name = rules[path[1]].get("name")
            label = f"rule {name!r}" if isinstance(name, str) else f"rules[{path[1]}]"
            rest = ".".join(str(p) for p in path[2:])
            return f"{label} {rest}" if rest else label
        return ".".join(str(p) for p in path) or "file"


def _substitute(value: Any, environ: Mapping[str, str], path: tuple[Any, ...], report: _Reporter,
                lenient_destinations: bool = False) -> Any:
    if isinstance(value, dict):
        return {k: _substitute(v, environ, (*path, k), report, lenient_destinations) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, environ, (*path, i), report, lenient_destinations) for i, v in enumerate(value)]
    if isinstance(value, str):
        whole = ENV_REF.fullmatch(value) is not None

        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in environ:
                return environ[name]
            if default is not None:
                return default
            if lenient_destinations and path[:1] == ("destinations",):
                if name not in report.placeholders:
                    report.placeholders.append(name)
            else:
                report.add(path, f"${{{name}}} is not set in the environment")
            report.unset.add(path)
            if whole and path[:1] == ("destinations",) and path[-1:] in (("url",), ("secret",)):
                return PLACEHOLDER_URL if path[-1] == "url" else PLACEHOLDER_SECRET
            return "unset" if path[:1] == ("destinations",) else ""

        return ENV_REF.sub(replace, value)
    return value


def load_rules(path: Path | str, environ: Mapping[str, str] | None = None, *,
               lenient_destinations: bool = False) -> RuleSet:
    """The compiled rules of `path`, or RulesError listing every problem.

    `lenient_destinations` (for `preview`, which sends nothing): an unset `${VAR}` in a destination gets a
    placeholder and is named in `RuleSet.warnings` instead of being an error.
    """
    path = Path(path)
    environ = os.environ if environ is None else environ
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RulesError(path, [f"cannot read the file ({exc.strerror})"]) from None
    if len(raw) > MAX_FILE_BYTES:
        raise RulesError(path, [f"the file is larger than {MAX_FILE_BYTES} bytes"])
    try:
        text = raw.decode("utf-8")
        data = yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 - a SafeLoader subclass
        lines = _line_map(text)
    except UnicodeDecodeError:
        raise RulesError(path, ["the file is not UTF-8"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise RulesError(path, [f"not valid YAML: {getattr(exc, 'problem', exc)}{where}"
                                + _unquoted_template_hint(text, exc)]) from None
    if not isinstance(data, dict):
        raise RulesError(path, ["expected a mapping with version, accounts, defaults, rules, destinations"])
    report = _Reporter(data, lines)
    data = _substitute(data, environ, (), report, lenient_destinations)
    try:
        clean = RulesFileSchema().load(data)
    except ValidationError as exc:
        for field_path, message in _flatten(exc.messages_dict):
            if not report.already_unset(field_path):
                report.add(field_path, message)
        _check_unvalidated(data, path.parent, report)
        raise RulesError(path, report.problems) from None
    ruleset = _compile(clean, path, report)  # also when a ${VAR} is missing: its template errors belong in this run
    ruleset.sha256 = hashlib.sha256(raw).hexdigest()
    if report.problems:
        raise RulesError(path, report.problems)
    if report.placeholders:
        names = ", ".join(f"${{{name}}}" for name in report.placeholders)
        ruleset.warnings.append(f"{names} not set: destinations use placeholders here (nothing is sent); "
                                "web, worker and check need them set")
    return ruleset


def _unquoted_template_hint(text: str, exc: yaml.YAMLError) -> str:
    """How to fix the commonest YAML error in a rules file: a template left unquoted (`text: {{ x }}`)."""
    rows = text.splitlines()
    for mark in (getattr(exc, "problem_mark", None), getattr(exc, "context_mark", None)):
        if mark is None or mark.line >= len(rows):
            continue
        row = rows[mark.line]
        found = UNQUOTED_TEMPLATE.search(row)
        if found:
            key = row[:found.start()].strip(" -") or "text"
            return f'; a value starting with {{{{ must be quoted: {key}: "{{{{ ... }}}}"'
    return ""


def _check_unvalidated(data: dict[str, Any], folder: Path, report: _Reporter) -> None:
    """What a failed schema load leaves unchecked, read from the raw data: writeback and account references,
    attachment files, and every template's syntax.

    marshmallow skips the file-level reference checks when any field is wrong, and templates are compiled only
    from a valid file, so without this a user would fix schema errors, then unknown destinations, then template
    syntax, one kind per run. Only well-formed parts are looked at; the schema already reported the rest.
    """
    rules = data.get("rules")
    accounts = data.get("accounts")
    destinations = data.get("destinations")
    known = set(destinations) if isinstance(destinations, dict) else set()
    for index, rule in enumerate(rules if isinstance(rules, list) else []):
        if not isinstance(rule, dict):
            continue
        base = ("rules", index)
        names = rule.get("writeback", [])
        names = [names] if isinstance(names, str) else names
        missing = [n for n in names if isinstance(n, str) and n not in known] if isinstance(names, list) else []
        if missing and (destinations is None or isinstance(destinations, dict)):
            report.add((*base, "writeback"), f"Unknown destination(s) {missing}.")
        when, dispatch = rule.get("when"), rule.get("dispatch")
        if isinstance(when, dict):
            _syntax(when.get("if"), (*base, "when", "if"), report)
        _syntax(rule.get("once_per"), (*base, "once_per"), report)
        _syntax(rule.get("suppress_if"), (*base, "suppress_if"), report)
        if not isinstance(dispatch, dict):
            continue
        attachments = dispatch.get("attachments")
        for number, spec in enumerate(attachments if isinstance(attachments, list) else []):
            file = spec.get("file") if isinstance(spec, dict) else None
            if isinstance(file, str) and file and not (folder / file).is_file():
                report.add((*base, "dispatch", "attachments", number, "file"), f"no such file: {file}")
        account = dispatch.get("account")
        if (isinstance(account, str) and not account.startswith("connect_account_")
                and isinstance(accounts, dict | None) and account not in (accounts or {})):
            report.add((*base, "dispatch", "account"), f"{account!r} is not in accounts and not a connect_account_ id.")
        for part in ("recipient", "content", "metadata"):
            values = dispatch.get(part)
            for key, value in (values.items() if isinstance(values, dict) else ()):
                _syntax(value, (*base, "dispatch", part, key), report, html=(part, key) == ("content", "html"))
    for name, destination in (destinations.items() if isinstance(destinations, dict) else ()):
        if isinstance(destination, dict):
            _syntax(destination.get("body"), ("destinations", name, "body"), report)
            _syntax(destination.get("properties"), ("destinations", name, "properties"), report)
            activity = destination.get("activity")
            for part in ("subject", "body"):
                if isinstance(activity, dict):
                    _syntax(activity.get(part), ("destinations", name, "activity", part), report)


def _syntax(value: Any, where: tuple[Any, ...], report: _Reporter, html: bool = False) -> None:
    """Report a syntax error in every template string in `value` (a string, or the string leaves of a mapping)."""
    if isinstance(value, str):
        _template(value, where, report, html=html)
    elif isinstance(value, dict):
        for key, item in value.items():
            _syntax(item, (*where, key), report, html=html)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _syntax(item, (*where, index), report, html=html)


def _template(source: str | None, where: tuple[Any, ...], report: _Reporter, html: bool = False,
              native: bool = False) -> Template | None:
    if source is None:
        return None
    try:
        return Template(source, html=html, native=native)
    except TemplateSyntaxError as exc:
        report.add(where, f"template error: {exc.message}", extra_lines=max(0, (exc.lineno or 1) - 1))
        return None


def _compile(clean: dict[str, Any], path: Path, report: _Reporter) -> RuleSet:
    defaults = clean["defaults"]
    rules: list[CompiledRule] = []
    for index, rule in enumerate(clean["rules"]):
        base = ("rules", index)
        spec = rule["dispatch"]
        compiled = CompiledDispatch(
            account_id=clean["accounts"].get(spec["account"], spec["account"]),
            channel=spec["channel"],
            recipient={k: _template(v, (*base, "dispatch", "recipient", k), report)
                       for k, v in spec["recipient"].items()},
            content={k: _template(v, (*base, "dispatch", "content", k), report, html=k == "html")
                     for k, v in spec["content"].items()},
            metadata={k: _template(v, (*base, "dispatch", "metadata", k), report) for k, v in spec["metadata"].items()},
            attachments=_attachments(spec["attachments"], path.parent, defaults["attachment_max_bytes"],
                                     (*base, "dispatch", "attachments"), report),
            interval=spec["interval_seconds"] or defaults["interval_seconds"],
        )
        rules.append(CompiledRule(
            name=rule["name"], index=index, when=rule["when"],
            if_template=_template(rule["when"]["if_"], (*base, "when", "if"), report),
            dispatch=compiled,
            once_per=_template(rule["once_per"], (*base, "once_per"), report),
            suppress_if=_template(rule["suppress_if"], (*base, "suppress_if"), report),
            writeback=rule["writeback"], enabled=rule["enabled"],
        ))
    from integration.writeback.body import BodyTemplate, check_template

    bodies = {}
    for name, destination in clean["destinations"].items():
        if destination["body"] is None:
            continue
        where = ("destinations", name, "body")
        leaves = _body_leaves(destination["body"], where, report)
        if leaves is None:
            continue
        body = BodyTemplate(leaves)
        problem = check_template(body)
        if problem:
            report.add((*where, *problem.path), problem.reason)
        bodies[name] = body
    from integration.writeback.crm.config import compile_destination, sample_problem, shared_properties

    crm = {}
    for name, destination in clean["destinations"].items():
        if destination["kind"] == "webhook":
            continue
        where = ("destinations", name)
        properties = None
        if destination.get("properties"):
            properties = _body_leaves(destination["properties"], (*where, "properties"), report)
            if properties is None:
                continue
        activity = destination.get("activity") or {}
        subject = _template(activity.get("subject"), (*where, "activity", "subject"), report)
        text = _template(activity.get("body"), (*where, "activity", "body"), report)
        compiled = compile_destination(name, destination, properties, subject, text)
        problem = sample_problem(compiled)
        if problem:
            report.add((*where, *problem[0]), problem[1])
        crm[name] = compiled
    for first, second, common in shared_properties(crm):
        report.add(("destinations", second, "properties"),
                   f"{', '.join(common)} also set by destination {first!r} on the same {crm[first].kind} records: "
                   f"which status is newest is kept per destination, so merge the two or set different properties.")
    return RuleSet(str(path), rules, clean["accounts"], defaults, clean["destinations"], bodies, crm)


def _body_leaves(spec: Any, where: tuple[Any, ...], report: _Reporter) -> Any:
    """A destination body with each string leaf compiled (see integration/writeback/body.py); None on an error."""
    failed = False

    def walk(node: Any, path: tuple[Any, ...]) -> Any:
        nonlocal failed
        if isinstance(node, dict):
            return {k: walk(v, (*path, k)) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, (*path, i)) for i, v in enumerate(node)]
        if isinstance(node, str):
            template = _template(node, path, report, native=True)
            failed = failed or template is None
            return template
        return node

    leaves = walk(spec, where)
    return None if failed else leaves


def _attachments(specs: list[dict[str, Any]], folder: Path, limit: int, where: tuple[Any, ...],
                 report: _Reporter) -> list[dict[str, str]]:
    loaded = []
    for index, spec in enumerate(specs):
        file = (folder / spec["file"]).resolve()
        if not file.is_file():
            report.add((*where, index, "file"), f"no such file: {spec['file']}")
            continue
        size = file.stat().st_size
        if size > limit:
            report.add((*where, index, "file"), f"{spec['file']} is {size} bytes, over the {limit}-byte limit")
            continue
        loaded.append({"filename": spec["filename"] or file.name,
                       "contentBase64": base64.b64encode(file.read_bytes()).decode()})
    return loaded
