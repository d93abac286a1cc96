"""Look before sending: what an import of a file would do, row by row, without writing anything.

Every row goes through the same steps as a real import, minus every write: the reader, the row's
event (rows.py), the store's dedupe (is the event already stored, by an earlier import of this
file or of one that overlaps it?), the rules engine's pure plan (rules/build.py `plan_event`,
the exact Revor body included) and the worker's guards, read-only: the suppression list
(SISMEMBER), the `once_per` holder (GET, never the worker's SET NX) and whether the dispatch
already exists (an earlier import sent it). Those reads go in one pipeline per CHUNK rows, so a
million-row file costs a few thousand round trips, not millions.

What the file itself would do to those guards is simulated too: a second row with the same event
id is a duplicate (the store keeps the first), a second row with the same `once_per` value is
skipped. Both are remembered in `SeenKeys` (an 8-byte fingerprint and the first line per
distinct key, in flat arrays at most half full), never the rows: about 25 MB per million
distinct keys, whatever the rows hold. Everything else is counters, reasons grouped (at most MAX_GROUPS each, with
up to EXAMPLE_LINES line numbers) and three example bodies.

The projected schedule: Revor runs an account's tasks on one channel one after the other, each at
least its `min_channel_task_interval_seconds` after the previous one; the rules draw that value
per dispatch from `interval_seconds` (`[180, 360]`: uniform, so 270 s on average). n tasks on one
account and channel take about n times the mean interval: 10,000 emails at 180–360 s, 31 days.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import textwrap
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from integration.dispatches import state
from integration.imports.reader import DELIMITER_NAMES, ENCODING_NAMES
from integration.imports.rows import default_type
from integration.inbound.store import event_key
from integration.rules.build import Plan, plan_event
from integration.rules.guards import SUPPRESSION_KEY
from integration.rules.loader import RuleSet
from integration.rules.preview import guard_verdict, once_key

CHUNK = 500  # rows planned between two Redis round trips
MAX_GROUPS = 100  # distinct reasons kept per list; later new ones are counted as "other reasons"
EXAMPLE_LINES = 5
EXAMPLES = 3
TOP_REASONS = 10  # reasons shown per list in the text report
SECONDS_PER_DAY = 86400
CHANNEL_NOUNS = {"email": "emails", "whatsapp": "WhatsApp messages", "linkedin": "LinkedIn messages"}
ASSUMPTION = ("Revor runs the tasks of one account on one channel one after the other, each at least its "
              "min_channel_task_interval_seconds after the previous one (the rule's interval_seconds; a range "
              "is drawn per task, so its mean counts). Other accounts and channels run side by side; tasks "
              "already waiting on the same account and channel come first and make it longer.")

# Verdicts of a matched rule for one row, in the order the report shows them.
WOULD_SEND, INVALID = "would_send", "invalid"
SKIPPED_ONCE_PER, SKIPPED_SUPPRESSION, SKIPPED_SUPPRESS_IF = "skipped_once_per", "skipped_suppression", \
    "skipped_suppress_if"
ALREADY_DISPATCHED = "already_dispatched"
VERDICT_LABELS = {
    WOULD_SEND: "would send",
    INVALID: "invalid",
    SKIPPED_ONCE_PER: "skipped by once_per",
    SKIPPED_SUPPRESSION: "skipped by the suppression list",
    SKIPPED_SUPPRESS_IF: "skipped by suppress_if",
    ALREADY_DISPATCHED: "already dispatched by an earlier import",
}

_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_NUMBER = re.compile(r"\d+")


class SeenKeys:
    """Keys seen so far and the line of the first, in two flat arrays (open addressing over 8-byte
    fingerprints of the key): 12 bytes a slot, half full at most, instead of a Python set of strings
    (about 100 bytes a key). Two different keys sharing a fingerprint (under one chance in ten million
    for a million keys) would read as the same: the dry run says so in its notes."""

    def __init__(self, slots: int = 1 << 12) -> None:
        self._fingerprints = array("Q", [0]) * slots
        self._lines = array("I", [0]) * slots
        self._mask = slots - 1
        self.count = 0

    @staticmethod
    def fingerprint(key: str) -> int:
        value = int.from_bytes(hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")
        return value or 1  # 0 marks an empty slot

    def add(self, key: str, line: int) -> int | None:
        """None when the key is new (now remembered with `line`), else the line it was first seen on."""
        fingerprint = self.fingerprint(key)
        slot = self._find(fingerprint)
        if self._fingerprints[slot]:
            return int(self._lines[slot])
        self._fingerprints[slot], self._lines[slot] = fingerprint, line
        self.count += 1
        if self.count * 2 > len(self._fingerprints):
            self._grow()
        return None

    def _find(self, fingerprint: int) -> int:
        fingerprints, mask = self._fingerprints, self._mask
        slot = fingerprint & mask
        while fingerprints[slot] and fingerprints[slot] != fingerprint:
            slot = (slot + 1) & mask
        return slot

    def _grow(self) -> None:
        old_fingerprints, old_lines = self._fingerprints, self._lines
        size = len(old_fingerprints) * 2
        self._fingerprints, self._lines = array("Q", [0]) * size, array("I", [0]) * size
        self._mask = size - 1
        for fingerprint, line in zip(old_fingerprints, old_lines, strict=True):
            if fingerprint:
                slot = self._find(fingerprint)
                self._fingerprints[slot], self._lines[slot] = fingerprint, line

    @property
    def bytes_used(self) -> int:
        return len(self._fingerprints) * (self._fingerprints.itemsize + self._lines.itemsize)


@dataclass
class _Group:
    text: str  # the first reason of the group, shown when every reason in it reads the same
    count: int = 0
    lines: list[int] = field(default_factory=list)
    varies: bool = False


class Reasons:
    """Reasons grouped by their wording (quoted values and numbers aside: "no first name in '…'"),
    each with a count and its first few line numbers; at most MAX_GROUPS groups."""

    def __init__(self) -> None:
        self.groups: dict[str, _Group] = {}
        self.total = 0
        self.other = 0  # rows whose reason came after MAX_GROUPS distinct ones
        self.other_lines: list[int] = []

    @staticmethod
    def shape(reason: str) -> str:
        return _NUMBER.sub("N", _QUOTED.sub("'…'", reason))[:300]

    def add(self, reason: str, line: int) -> None:
        self.total += 1
        key = self.shape(reason)
        group = self.groups.get(key)
        if group is None:
            if len(self.groups) >= MAX_GROUPS:
                self.other += 1
                if len(self.other_lines) < EXAMPLE_LINES:
                    self.other_lines.append(line)
                return
            group = self.groups[key] = _Group(reason[:300])
        elif not group.varies and group.text != reason[:300]:
            group.varies = True
        group.count += 1
        if len(group.lines) < EXAMPLE_LINES:
            group.lines.append(line)

    def top(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The groups, most frequent first: reason (its common shape when the wording varies), count, lines."""
        ranked = sorted(self.groups.items(), key=lambda item: -item[1].count)
        shown = [{"reason": key if group.varies else group.text, "count": group.count, "lines": list(group.lines)}
                 for key, group in ranked[:limit]]
        hidden = ranked[limit:] if limit is not None else []
        rest = self.other + sum(group.count for _, group in hidden)
        if rest:
            lines = (self.other_lines or [line for _, group in hidden for line in group.lines])[:EXAMPLE_LINES]
            shown.append({"reason": "other reasons", "count": rest, "lines": lines})
        return shown


@dataclass
class RuleTally:
    name: str
    channel: str | None = None
    account_id: str | None = None
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(VERDICT_LABELS, 0))
    reasons: dict[str, Reasons] = field(default_factory=dict)  # per verdict except would_send
    not_matched: Reasons = field(default_factory=Reasons)

    def add(self, verdict: str, line: int, reason: str | None = None) -> None:
        self.counts[verdict] += 1
        if reason is not None:
            self.reasons.setdefault(verdict, Reasons()).add(reason, line)


@dataclass
class Bucket:
    """The would-send tasks of one Revor account on one channel, for the schedule."""
    account_id: str
    channel: str
    tasks: int = 0
    seconds: float = 0.0  # the sum of the tasks' mean intervals
    low: int = 0
    high: int = 0

    def add(self, interval: tuple[int, int]) -> None:
        low, high = (max(60, min(86400, value)) for value in interval)  # Revor: below 60 counts as 60
        self.low = low if not self.tasks else min(self.low, low)
        self.high = high if not self.tasks else max(self.high, high)
        self.tasks += 1
        self.seconds += (low + high) / 2

    @property
    def days(self) -> float:
        return self.seconds / SECONDS_PER_DAY

    def describe(self) -> str:
        noun = CHANNEL_NOUNS.get(self.channel, f"{self.channel} tasks")
        if self.tasks == 1:
            noun = noun.rstrip("s") if noun.endswith("s") else noun
        spacing = f"{self.low} s" if self.low == self.high else f"{self.low}–{self.high} s"
        return f"{self.tasks:,} {noun} from account {self.account_id} at {spacing} apart: {about(self.seconds)}"

    def as_dict(self) -> dict[str, Any]:
        return {"account_id": self.account_id, "channel": self.channel, "tasks": self.tasks,
                "interval_seconds": [self.low, self.high], "seconds": round(self.seconds), "days": round(self.days, 2),
                "text": self.describe()}


def about(seconds: float) -> str:
    """A duration as people say it: about 31 days, about 5 hours, about 12 minutes."""
    for unit, size in (("day", SECONDS_PER_DAY), ("hour", 3600), ("minute", 60)):
        if seconds >= 2 * size:
            value = round(seconds / size)
            return f"about {value:,} {unit}s"
    value = round(seconds)
    return f"about {value} second{'s' if value != 1 else ''}"


@dataclass
class DryRun:
    """What an import would do. `render()` for people, `as_dict()` for scripts."""
    source: str
    file: dict[str, Any] = field(default_factory=dict)  # name, format, encoding, delimiter, id_column, type
    rows: int = 0  # rows read, bad ones included
    events: int = 0
    bad: Reasons = field(default_factory=Reasons)
    duplicates: Reasons = field(default_factory=Reasons)  # the same event id as an earlier row of the file
    already_stored: Reasons = field(default_factory=Reasons)  # stored by an earlier import
    no_match: Reasons = field(default_factory=Reasons)  # rows no rule matched
    no_match_why: dict[str, Reasons] = field(default_factory=dict)  # of those rows: why, per rule
    rules: dict[str, RuleTally] = field(default_factory=dict)
    examples: list[dict[str, Any]] = field(default_factory=list)
    schedule: list[Bucket] = field(default_factory=list)
    checked_redis: bool = False
    rules_loaded: bool = True
    notes: list[str] = field(default_factory=list)

    @property
    def would_send(self) -> int:
        return sum(tally.counts[WOULD_SEND] for tally in self.rules.values())

    @property
    def longest(self) -> Bucket | None:
        return max(self.schedule, key=lambda bucket: bucket.seconds, default=None)

    def refusal(self, max_days: float) -> str | None:
        """The line that refuses an import whose longest schedule is over `max_days` (without --yes)."""
        longest = self.longest
        if longest is None or longest.days <= max_days:
            return None
        return (f"the longest schedule is {longest.describe()}, more than --max-days {max_days:g}: "
                f"pass --yes to import anyway, or split the list")

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source, "file": self.file, "rows": self.rows, "events": self.events,
            "would_send": self.would_send,
            "bad": {"count": self.bad.total, "reasons": self.bad.top()},
            "duplicates_in_file": {"count": self.duplicates.total, "reasons": self.duplicates.top()},
            "already_stored": {"count": self.already_stored.total, "reasons": self.already_stored.top()},
            "no_rule_matched": {"count": self.no_match.total, "lines": self.no_match.top()[0]["lines"]
                                if self.no_match.total else [],
                                "why": {rule: reasons.top(TOP_REASONS) for rule, reasons in self.no_match_why.items()}},
            "rules": [{"name": tally.name, "channel": tally.channel, "account_id": tally.account_id,
                       "counts": dict(tally.counts),
                       "reasons": {verdict: reasons.top() for verdict, reasons in tally.reasons.items()},
                       "not_matched": tally.not_matched.top(TOP_REASONS)} for tally in self.rules.values()],
            "examples": self.examples,
            "schedule": [bucket.as_dict() for bucket in self.schedule],
            "assumption": ASSUMPTION,
            "checked_redis": self.checked_redis, "rules_loaded": self.rules_loaded, "notes": self.notes,
        }

    def render(self, max_days: float | None = None, *, examples: bool = True) -> str:
        """The report people read; `examples=False` (a real import, whose summary must stay on
        screen) puts one line pointing at `--dry-run` in place of the example bodies."""
        out: list[str] = []
        info = self.file
        described = ", ".join(f"{name} {info[key]}" if name else str(info[key]) for key, name in
                              (("format", "format"), ("encoding", ""), ("delimiter_name", ""),
                               ("type", "type"), ("id_column", "id column")) if info.get(key))
        out.append(f"Dry run: {info.get('name', '?')} as {self.source}" + (f" ({described})" if described else "")
                   + ". Nothing was sent or stored.")
        if info.get("type_note"):
            out.append(f"Type {info.get('type')}: {info['type_note']}.")
        out.append(f"Rows: {self.rows:,} read, {self.events:,} events, {self.bad.total:,} bad, "
                   f"{self.duplicates.total:,} repeated in this file (imported once), {self.already_stored.total:,} "
                   f"already imported by an earlier run (never sent twice).")
        out.append(f"Would send {self.would_send:,} Revor task{'s' if self.would_send != 1 else ''}.")
        if not self.rules_loaded:
            out.append("No rules are loaded (RULES_FILE is unset): nothing would be sent.")
        for tally in self.rules.values():
            where = f" ({tally.channel} from {tally.account_id})" if tally.channel else ""
            out.append("")
            out.append(f"Rule {tally.name}{where}:")
            for verdict, label in VERDICT_LABELS.items():
                if not tally.counts[verdict] and verdict != WOULD_SEND:
                    continue
                out.append(f"  {label + ':':<42}{tally.counts[verdict]:>10,}")
                if verdict in tally.reasons:
                    out.extend(_reason_lines(tally.reasons[verdict], "    "))
            matched = sum(tally.counts.values())
            if tally.not_matched.total and not matched:
                out.append(f"  {'no match:':<42}{tally.not_matched.total:>10,}")
                out.extend(_reason_lines(tally.not_matched, "    ", limit=3))
        for title, reasons in (("No rule matched", self.no_match), ("Bad rows (not imported)", self.bad),
                               ("Repeated in this file (imported once)", self.duplicates),
                               ("Already imported by an earlier run (not sent again)", self.already_stored)):
            if reasons.total:
                out.append("")
                out.append(f"{title}: {reasons.total:,}")
                out.extend(_reason_lines(reasons, "  "))
                if reasons is self.no_match:
                    for rule, why in self.no_match_why.items():
                        out.append(f"  rule {rule} did not match them:")
                        out.extend(_reason_lines(why, "  ", limit=3))
        if self.examples and not examples:
            out.append("")
            out.append(f"Example payloads: {len(self.examples)} exact Revor request bodies are shown by the same "
                       "command with --dry-run.")
        elif self.examples:
            out.append("")
            out.append(f"Example payloads: the Revor request {'bodies' if len(self.examples) > 1 else 'body'} "
                       f"(shown indented; min_channel_task_interval_seconds is drawn again for each real dispatch):")
            for example in self.examples:
                out.append(f"  line {example['line']}, rule {example['rule']}, dispatch {example['dispatch_id']}:")
                pretty = json.dumps(json.loads(example["body"]), indent=2, ensure_ascii=False)
                out.extend("    " + line for line in pretty.splitlines())
        out.append("")
        if self.schedule:
            out.append("Projected schedule:")
            for bucket in sorted(self.schedule, key=lambda b: -b.seconds):
                out.append(f"  {bucket.describe()}")
            out.extend(textwrap.wrap(f"(Assumption: {ASSUMPTION})", 100, initial_indent="  ", subsequent_indent="   "))
            refusal = self.refusal(max_days) if max_days is not None else None
            if refusal:
                out.append(f"  This is more than --max-days {max_days:g}: the import needs --yes.")
        else:
            out.append("Projected schedule: nothing to send.")
        if not self.checked_redis:
            out.append("(Redis was not read: the suppression list, once_per and earlier imports are not checked.)")
        out.extend(f"({note})" for note in self.notes)
        return "\n".join(out)


def _reason_lines(reasons: Reasons, indent: str, limit: int = TOP_REASONS) -> list[str]:
    lines = []
    for group in reasons.top(limit):
        where = ", ".join(str(n) for n in group["lines"])
        more = ", …" if group["count"] > len(group["lines"]) else ""
        lines.append(f"{indent}{group['count']:>8,}  {group['reason']}  (line{'s' if group['count'] > 1 else ''} "
                     f"{where}{more})")
    return lines


class Planner:
    """Feeds rows through the plan one at a time; reads Redis for a CHUNK of rows at once."""

    def __init__(self, ruleset: RuleSet | None, connection: Any = None, *, source: str, chunk: int = CHUNK,
                 rng: random.Random | None = None) -> None:
        self.ruleset = ruleset
        self.connection = connection
        self.chunk = chunk
        self.rng = rng or random.Random(0)  # a dry run prints the same figures every time
        self.result = DryRun(source=source, checked_redis=connection is not None, rules_loaded=ruleset is not None)
        self.events_seen = SeenKeys()
        self.once_seen = SeenKeys()
        self._pending: list[tuple[int, dict[str, Any]]] = []
        self._buckets: dict[tuple[str, str], Bucket] = {}
        self._example_rules: set[str] = set()
        self._spare_examples: list[dict[str, Any]] = []
        self._intervals: dict[str, tuple[int, int]] = {}
        for rule in ruleset.rules if ruleset is not None else []:
            if rule.enabled:
                self.result.rules[rule.name] = RuleTally(rule.name, rule.dispatch.channel, rule.dispatch.account_id)
                low, high = rule.dispatch.interval  # the loader makes a fixed interval [n, n]
                self._intervals[rule.name] = (int(low), int(high))

    def bad(self, line: int, reason: str) -> None:
        self.result.rows += 1
        self.result.bad.add(reason, line)

    def row(self, line: int, event: dict[str, Any]) -> None:
        self.result.rows += 1
        self.result.events += 1
        self._pending.append((line, event))
        if len(self._pending) >= self.chunk:
            self._flush()

    def finish(self, file_info: dict[str, Any] | None = None) -> DryRun:
        self._flush()
        result = self.result
        result.file.update(file_info or {})
        result.schedule = list(self._buckets.values())
        result.examples = (result.examples + self._spare_examples)[:EXAMPLES]
        if max(self.events_seen.count, self.once_seen.count) > 1_000_000:
            result.notes.append("repeated rows and once_per values within the file are matched by 64-bit "
                                "fingerprints: a false match is about one chance in ten million")
        return result

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        if not pending:
            return
        items: list[tuple[int, str, list[Plan]]] = []
        for line, event in pending:
            key = event_key(event["source"], event["event_id"])
            first = self.events_seen.add(key, line)
            if first is not None:
                self.result.duplicates.add(f"the same event id as line {first}", line)
                continue
            plans = plan_event(self.ruleset, event, None, self.rng) if self.ruleset is not None else []
            items.append((line, key, plans))
        reads = self._read(items)
        for (line, _key, plans), (stored, guards) in zip(items, reads, strict=True):
            if stored:
                self.result.already_stored.add("the event was stored by an earlier import", line)
                continue
            self._decide(line, plans, guards)

    def _read(self, items: list[tuple[int, str, list[Plan]]]) -> list[tuple[bool, list[tuple[bool, Any, bool]]]]:
        """Per row: is its event stored; per plan: (suppressed, once_per holder, dispatch exists). One pipeline."""
        if self.connection is None:
            return [(False, [(False, None, False)] * len(plans)) for _, _, plans in items]
        with self.connection.pipeline(transaction=False) as pipe:
            for _, key, plans in items:
                pipe.exists(key)
                for plan in plans:
                    if plan.matched and plan.dispatch_id:
                        pipe.exists(state.key_for(plan.dispatch_id))
                    if plan.status == "ready":
                        if plan.recipient_key:
                            pipe.sismember(SUPPRESSION_KEY, plan.recipient_key)
                        if plan.once_per_key:
                            pipe.get(once_key(plan))
            answers = iter(pipe.execute())
        out = []
        for _, _, plans in items:
            stored = bool(next(answers))
            guards = []
            for plan in plans:
                exists = bool(next(answers)) if plan.matched and plan.dispatch_id else False
                suppressed = bool(next(answers)) if plan.status == "ready" and plan.recipient_key else False
                holder = next(answers) if plan.status == "ready" and plan.once_per_key else None
                guards.append((suppressed, holder, exists))
            out.append((stored, guards))
        return out

    def _decide(self, line: int, plans: list[Plan], guards: list[tuple[bool, Any, bool]]) -> None:
        """The worker's verdicts, in its order (dispatches/create.py `_create`)."""
        matched = False
        for plan, (suppressed, holder, exists) in zip(plans, guards, strict=True):
            tally = self.result.rules[plan.rule]
            if not plan.matched:
                tally.not_matched.add(plan.reason, line)
                continue
            matched = True
            if exists:
                tally.add(ALREADY_DISPATCHED, line, "the dispatch exists")
            elif plan.status == "invalid":
                tally.add(INVALID, line, plan.reason)
            elif plan.status == "skipped":
                tally.add(SKIPPED_SUPPRESS_IF, line, plan.reason)
            elif (reason := guard_verdict(plan, suppressed, holder)) is not None:
                if suppressed:
                    tally.add(SKIPPED_SUPPRESSION, line, reason)
                else:
                    tally.add(SKIPPED_ONCE_PER, line, "once_per value already used by an earlier dispatch")
            elif plan.once_per_key and (first := self.once_seen.add(f"{plan.rule}\x1f{plan.once_per_key}",
                                                                     line)) is not None:
                tally.add(SKIPPED_ONCE_PER, line, f"once_per value already used by line {first} of this file")
            else:
                tally.add(WOULD_SEND, line)
                self._would_send(line, plan)
        if not matched:
            self.result.no_match.add("no rule matched", line)
            for plan in plans:  # why each rule passed the row by (what the JSON says per rule, for these rows)
                if plan.reason:
                    self.result.no_match_why.setdefault(plan.rule, Reasons()).add(plan.reason, line)

    def _would_send(self, line: int, plan: Plan) -> None:
        low, high = self._intervals[plan.rule]
        bucket_key = (plan.account_id or "", plan.channel or "")
        bucket = self._buckets.get(bucket_key)
        if bucket is None:
            bucket = self._buckets[bucket_key] = Bucket(*bucket_key)
        bucket.add((low, high))
        example = {"line": line, "rule": plan.rule, "dispatch_id": plan.dispatch_id,
                   "body": plan.body.decode("utf-8") if plan.body else ""}
        if plan.rule not in self._example_rules and len(self.result.examples) < EXAMPLES:
            self._example_rules.add(plan.rule)  # one per rule first, then more of the same
            self.result.examples.append(example)
        elif len(self._spare_examples) < EXAMPLES:
            self._spare_examples.append(example)


def plan(prepared: Any, *, ruleset: RuleSet | None, connection: Any = None,
         on_row: Callable[[int], None] | None = None) -> DryRun:
    """The dry run of an import (a runner.Prepared: the file opened, its headers mapped, as the real
    import reads it): reads the file once as a stream and writes nothing. `connection` (Redis) adds the
    read-only checks; `on_row(rows_so_far)` is called per row, for a progress line."""
    options = prepared.options
    planner = Planner(ruleset, connection, source=options.source)
    count = 0
    for line, event, reason in prepared.events():
        count += 1
        if event is None:
            planner.bad(line, reason or "unreadable row")
        else:
            planner.row(line, event.event)
        if on_row is not None:
            on_row(count)
    info = {"name": Path(options.path).name, "format": prepared.hmap.format,
            "encoding": ENCODING_NAMES.get(prepared.table.encoding, prepared.table.encoding),
            "delimiter": prepared.table.delimiter,
            "delimiter_name": f"{DELIMITER_NAMES[prepared.table.delimiter]}-separated"
            if prepared.table.delimiter in DELIMITER_NAMES else "",
            "type": options.event_type or default_type(prepared.hmap), "id_column": prepared.id_column,
            "type_note": getattr(prepared, "type_note", "")}
    result = planner.finish(info)
    result.notes.extend(getattr(prepared, "notes", []))
    return result


def plan_file(path: Path, *, source: str, ruleset: RuleSet | None, connection: Any = None,
              event_type: str = "contact.imported", fmt: str | None = None,
              id_column: str | None = None) -> DryRun:
    """`plan` of a file by its path and the import's options (reader.NotCsv for a file that is not CSV)."""
    from integration.imports.runner import ImportOptions, prepare

    return plan(prepare(ImportOptions(Path(path), source, event_type=event_type, fmt=fmt, id_column=id_column)),
                ruleset=ruleset, connection=connection)
