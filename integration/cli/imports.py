"""`revor-bridge import`: a CSV file (a CRM export, a spreadsheet) as events, sent exactly once.

    revor-bridge import FILE --source csv:<name> [--type T] [--format F] [--id-column COL]
                         [--dry-run] [--yes] [--max-days N] [--max-pending N] [--no-wait]
                         [--result PATH]
    revor-bridge import status RUN [--csv PATH]
    revor-bridge import cancel RUN
    revor-bridge import list [--limit N]

`import` reads FILE, shows what it would do (the dry run: integration/imports/dryrun.py), and
unless that is all it was asked for (`--dry-run`) or the schedule is longer than `--max-days`
without `--yes`, stores every row as an event through the webhooks' store (runner.py), watches
the workers turn them into dispatches (progress.py) and writes the result CSV (result.py).

`status`, `cancel` and `list` are subcommands when they are the first word after `import`
(`import status RUN`); a file named like one is imported as `import ./status`.

Exit codes: 0 done; 1 refused or stopped (a schedule longer than --max-days without --yes, no
rules loaded or other rules than the live workers run, an option that does not fit the file or
the run, the source's storage ceiling, the run cancelled); 2 not a CSV file or unreadable;
3 Redis unreachable at the start; 130 interrupted (Ctrl-C: the current batch finishes, the
checkpoint is saved, and the command to continue is printed).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import sys
import threading
from pathlib import Path
from typing import Any, NoReturn

import click
import redis

from integration.cli import EXIT_FINAL, EXIT_UNREACHABLE, EXIT_USAGE, cli, load_settings, redis_unreachable

EXIT_INTERRUPTED = 130
SOURCE = re.compile(r"^csv:[a-z0-9_-]{1,64}$")
FORMAT_CHOICES = ("hubspot", "salesforce", "pipedrive", "plain")


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"revor-bridge import: {message}", err=True)
    sys.exit(code)


def continue_command(argv: list[str] | None = None) -> str:
    """The command that continues this import: the same one (a run is named by its file and source)."""
    args = sys.argv[1:] if argv is None else argv
    return "revor-bridge " + shlex.join(args)


class _ImportCommand(click.Command):
    """`import FILE ...`, or `import status|cancel|list ...` when the first word is one of those."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        sub = SUBCOMMANDS.get(args[0]) if args else None
        if sub is not None:
            return sub.make_context(f"{info_name} {args[0]}", args[1:], parent=parent, **extra)
        return super().make_context(info_name, args, parent=parent, **extra)


@cli.command("import", cls=_ImportCommand)
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--source", required=True, help="csv:<name>: what rules select with when.source (a-z, 0-9, _ and -).")
@click.option("--type", "event_type", help="The events' type (default contact.imported; deal.imported for a "
                                            "deals export): <object>.imported or any <object>.<verb>.")
@click.option("--format", "fmt", type=click.Choice(FORMAT_CHOICES),
              help="The export's header map (detected when it is obvious; plain: only contact.email-style headers).")
@click.option("--id-column", help="The column holding each row's stable id (default: the export's record id "
                                  "column; else an id from the row's content).")
@click.option("--dry-run", is_flag=True, help="Show what the import would do, and stop.")
@click.option("--yes", is_flag=True, help="Go ahead even when the schedule is longer than --max-days.")
@click.option("--max-days", type=click.FloatRange(min=0, min_open=True), default=7.0, show_default=True,
              help="A longer projected schedule (per Revor account and channel) needs --yes.")
@click.option("--max-pending", type=click.IntRange(min=0), default=1000, show_default=True,
              help="At most this many of the import's events wait for a worker (0: no limit).")
@click.option("--no-wait", is_flag=True, help="Return once every row is stored, without waiting for the workers "
                                              "(the same command without it later waits and writes the result).")
@click.option("--result", "result_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the result CSV (default: <file stem>.result.csv next to FILE).")
@click.option("--json", "as_json", is_flag=True, help="With --dry-run: print the dry run as JSON, for scripts.")
@click.option("--progress-every", type=click.FloatRange(min=0, min_open=True), hidden=True,
              help="Seconds between two progress lines (default 0.2 in a terminal, 10 elsewhere); for tests.")
def import_command(file: Path, source: str, event_type: str | None, fmt: str | None, id_column: str | None,
                   dry_run: bool, yes: bool, max_days: float, max_pending: int, no_wait: bool,
                   result_path: Path | None, as_json: bool, progress_every: float | None) -> None:
    """Import FILE (CSV) as events of source csv:<name>; `import status RUN` shows a run's rows."""
    from integration.imports import reader, runner
    from schemas.events import EVENT_TYPE

    if not SOURCE.fullmatch(source):  # fullmatch: `$` lets a trailing line break through
        _fail(f"--source {source!r}: expected csv:<name>, the name of a-z, 0-9, _ and - (at most 64)", EXIT_FINAL)
    if event_type is not None and not EVENT_TYPE.regex.fullmatch(event_type):
        _fail(f"--type {event_type!r}: {EVENT_TYPE.error}", EXIT_FINAL)
    settings = load_settings()
    options = runner.ImportOptions(path=file, source=source, event_type=event_type, fmt=fmt, id_column=id_column,
                                   max_pending=max_pending, max_stored_bytes=settings.inbound_max_stored_bytes,
                                   retention_seconds=settings.dispatch_retention_seconds, wait=not no_wait)
    try:
        prepared = runner.prepare(options)
    except reader.NotCsv as error:
        _fail(str(error), EXIT_USAGE)
    except runner.OptionMismatch as error:
        _fail(str(error), EXIT_FINAL)
    except OSError as error:
        _fail(f"cannot read {file}: {error.strerror or error}", EXIT_USAGE)
    result_file = result_path or _default_result(file)
    if not dry_run and (problem := _result_problem(result_file, file)):
        _fail(problem, EXIT_USAGE)  # said before anything is stored, not after the whole import
    for warning in prepared.table.warnings:
        click.echo(f"(warning: {warning})", err=True)
    connection = _connection(settings)
    try:
        found = runs_load(connection, prepared.run)
    except redis.RedisError as exc:
        redis_unreachable(exc)
    resuming = found is not None and (found.checkpoint > 0 or found.status in ("stored", "done"))
    ruleset = _ruleset(settings)
    if found is not None and found.status == "cancelled":
        click.echo(f"{file.name} was imported as {prepared.run}, which was cancelled: nothing more is stored or "
                   "sent; its result follows", err=True)
        _finish(connection, prepared, found, result_file)
        sys.exit(EXIT_FINAL)
    if found is None or found.status not in ("stored", "done"):  # rows will be stored: by the workers' rules?
        _same_rules(connection, ruleset, dry_run=dry_run)
    if dry_run or not resuming:
        try:
            refusal = _look_first(ruleset, connection, prepared, max_days, as_json=as_json and dry_run,
                                  examples=dry_run)
        except KeyboardInterrupt:  # a dry run of a long file takes minutes: Ctrl-C stops it, nothing written
            _fail("interrupted during the dry run: nothing was stored or sent", EXIT_INTERRUPTED)
        if dry_run:
            return
        if refusal and not yes:
            _fail(refusal, EXIT_FINAL)
    elif found is not None and found.status == "done":
        click.echo(f"{file.name} was imported already as {prepared.run} ({found.counts['read']:,} rows): "
                   "nothing is sent again; its result follows", err=True)
    else:
        assert found is not None
        click.echo(f"continuing {prepared.run} of {file.name} after line {found.checkpoint:,} "
                   f"({found.counts['read']:,} rows read before)", err=True)
    _run(settings, connection, prepared, result_file, progress_every)


def _result_problem(result_file: Path, source: Path) -> str | None:
    """Why the result CSV cannot be written to `result_file`, or None. Never over the file being
    imported (it is the user's list, and a rerun reads it again to continue): `--result` naming
    it, a link to it or the same file by another path is refused."""
    try:
        if result_file.exists() and result_file.samefile(source):
            return f"--result {result_file} is the file being imported: choose another path for the result CSV"
    except OSError:
        pass
    if result_file.is_dir():
        return f"--result {result_file} is a folder: name a file"
    folder = result_file.parent
    if not folder.is_dir():
        return f"cannot write the result CSV to {result_file}: the folder {folder} does not exist"
    if not os.access(folder, os.W_OK) or (result_file.exists() and not os.access(result_file, os.W_OK)):
        return f"cannot write the result CSV to {result_file}: permission denied (use --result PATH)"
    return None


def runs_load(connection: redis.Redis, run: str) -> Any:
    from integration.imports import runs

    return runs.load(connection, run)


def _connection(settings: Any) -> redis.Redis:
    from integration.cli.processes import redis_settings
    from integration.storage import connect

    connection = connect(redis_settings(settings).redis_url or "")
    try:
        connection.ping()
    except redis.RedisError as exc:
        redis_unreachable(exc)
    return connection


def _default_result(file: Path) -> Path:
    from integration.imports import result

    return result.default_path(file)


def _ruleset(settings: Any) -> Any:
    """The rules of RULES_FILE (exit 1 listing their problems when they do not load), or None."""
    from integration.cli.rules import rules_or_exit

    return rules_or_exit(settings) if settings.rules_file else None


def _same_rules(connection: redis.Redis, ruleset: Any, *, dry_run: bool) -> None:
    """Refuse (exit 1) to store rows planned with other rules than the live workers run, or with
    none; with no worker running, say so and go on (the rows wait for one). A dry run only warns."""
    from integration.rules import fingerprint

    try:
        verdict = fingerprint.check(connection, ruleset)
    except redis.RedisError as exc:
        redis_unreachable(exc)
    if verdict.refusal and not dry_run:
        _fail(verdict.refusal, EXIT_FINAL)
    if verdict.refusal or verdict.warning:
        click.echo(f"(warning: {verdict.refusal or verdict.warning})", err=True)


def _look_first(ruleset: Any, connection: redis.Redis, prepared: Any, max_days: float, *,
                as_json: bool = False, examples: bool = True) -> str | None:
    """The dry run (dryrun.py) printed; returns why the import needs --yes, or None.

    The seam for the dry run: `dryrun.plan(prepared, ...)` reads the whole file as the import
    will (runner.Prepared) without writing anything,
    `render(max_days)` is what people read, `refusal(max_days)` the one line that asks for --yes."""
    from integration.imports import dryrun, progress

    planned: dict[str, Any] = {"read": 0, "done": False}  # a line on stderr when planning takes over 2 s

    def on_row(count: int) -> None:
        planned["read"] = count

    try:
        with progress.PlanProgress(lambda: planned, total=progress.estimate_rows(prepared.options.path)):
            plan = dryrun.plan(prepared, ruleset=ruleset, connection=connection, on_row=on_row)
            planned["done"] = True
    except redis.RedisError as exc:
        redis_unreachable(exc)
    refusal = plan.refusal(max_days)
    if as_json:
        click.echo(json.dumps({**plan.as_dict(), "max_days": max_days, "needs_yes": refusal is not None}, indent=2,
                              ensure_ascii=False))
    else:
        click.echo(plan.render(max_days, examples=examples))
    return refusal


def _run(settings: Any, connection: redis.Redis, prepared: Any, result_file: Path,
         progress_every: float | None = None) -> None:
    """The real import, with Ctrl-C finishing the batch in hand, and the end: result and summary."""
    from rq import Queue

    from integration.imports import progress, runner, runs

    stop = threading.Event()
    interrupts = [0]

    def on_sigint(signum: int, frame: Any) -> None:
        interrupts[0] += 1
        if interrupts[0] > 1:  # a second Ctrl-C: stop now (the rerun stores that batch again, safely)
            raise KeyboardInterrupt
        stop.set()
        click.echo("\nstopping after the current batch (Ctrl-C again to stop at once)...", err=True)

    def counters() -> dict[str, Any]:
        found = runs.load(connection, prepared.run)
        return found.as_dict() if found is not None else {}

    queue = Queue("default", connection=connection, serializer="json")
    work = runner.Runner(connection, queue, prepared, stop=stop,
                         notify=lambda text: click.echo(f"\n{text}" if sys.stderr.isatty() else text, err=True))
    previous = signal.signal(signal.SIGINT, on_sigint)
    display = progress.Progress(counters, total=progress.estimate_rows(prepared.options.path), every=progress_every)
    try:
        with display:
            outcome = work.run()
    except KeyboardInterrupt:  # a second Ctrl-C: stopped at once, wherever it was
        state = work.last_state()
        if state.status == "running":  # nothing reads it any more: `import status` and the dashboard say so
            try:
                runs.set_status(connection, prepared.run, "interrupted")
                state.status = "interrupted"
            except redis.RedisError:
                pass  # the checkpoint is what counts, and it is saved
        outcome = runner.RunResult("interrupted", state)
    except runs.Busy as error:
        _fail(str(error), EXIT_FINAL)
    except runner.OptionMismatch as error:
        _fail(str(error), EXIT_FINAL)
    finally:
        signal.signal(signal.SIGINT, previous)
    if outcome.status == "full":
        _fail(outcome.message, EXIT_FINAL)
    if outcome.status == "interrupted":
        waiting = outcome.state.pending
        click.echo(f"interrupted: {_tally(outcome.state)}; every row up to line {outcome.state.checkpoint:,} is "
                   f"stored or reported, nothing is sent twice.\n"
                   + (f"the workers still process the {waiting:,} stored rows not processed yet (and send what the "
                      f"rules say); to stop them too: revor-bridge import cancel {prepared.run}\n" if waiting else "")
                   + f"continue with: {continue_command()}", err=True)
        sys.exit(EXIT_INTERRUPTED)
    if outcome.status == "cancelled":
        click.echo(f"\ncancelled: run {prepared.run} was cancelled (revor-bridge import cancel), so nothing more "
                   f"is stored; {_tally(outcome.state)}", err=True)
        _finish(connection, prepared, outcome.state, result_file)
        sys.exit(EXIT_FINAL)
    if outcome.status == "stored":  # --no-wait
        waiting = [arg for arg in sys.argv[1:] if arg != "--no-wait"]
        click.echo(f"stored: {_tally(outcome.state)}; {outcome.state.pending:,} wait for the workers.\n"
                   f"meanwhile: revor-bridge import status {prepared.run}\n"
                   f"the summary and the result CSV once they are done: {continue_command(waiting)}", err=True)
        return
    _finish(connection, prepared, outcome.state, result_file)


def _tally(state: Any) -> str:
    counts = state.counts
    return (f"{counts['read']:,} rows read, {counts['stored']:,} stored, {_repeats(counts)}, "
            f"{counts['bad']:,} bad")


def _repeats(counts: dict[str, int], *, long: bool = False) -> str:
    """Rows not stored again, in two kinds: the same row twice in this file (stored once), and a
    row an earlier run (or a webhook) stored already (never sent again)."""
    if long:
        return (f"{counts['repeated']:,} repeated in this file (imported once), {counts['duplicate']:,} already "
                "imported by an earlier run (not sent again)")
    return f"{counts['repeated']:,} repeated in this file, {counts['duplicate']:,} already imported by an earlier run"


def _finish(connection: redis.Redis, prepared: Any, state: Any, result_file: Path) -> None:
    """The summary and the result CSV of a run whose rows are all processed."""
    from integration.imports import result, runs

    try:
        written = result.write(connection, prepared, result_file)
        bad = runs.bad_rows(connection, prepared.run, 0, 5)
    except redis.RedisError as exc:
        redis_unreachable(exc)
    except OSError as error:  # the folder went away, a full disk: the import itself is done
        _fail(f"cannot write the result CSV to {result_file}: {error.strerror or error}; every row is imported: "
              f"run the same command with --result PATH to write it", EXIT_USAGE)
    counts = state.counts
    done = "imported" if state.status != "cancelled" else "cancelled import of"
    click.echo(f"{done} {prepared.options.path.name} as {prepared.options.source} (run {prepared.run}): "
               f"{counts['read']:,} rows read")
    if prepared.type_note:
        click.echo(f"  type {prepared.options.event_type}: {prepared.type_note}")
    for note in prepared.notes:
        click.echo(f"  ({note})")
    click.echo(f"  {counts['dispatched']:,} dispatched, {counts['invalid']:,} invalid, {counts['skipped']:,} skipped, "
               f"{counts['no_match']:,} no rule matched, {counts['failed']:,} failed"
               + (f", {counts['cancelled']:,} cancelled (not sent: the import was cancelled)"
                  if counts["cancelled"] else ""))
    if state.status == "cancelled" and state.pending:
        click.echo(f"  {state.pending:,} stored rows wait for a worker, which skips them (the import is cancelled)")
    click.echo(f"  {_repeats(counts, long=True)}, {counts['bad']:,} bad rows")
    for line, reason in bad:
        click.echo(f"    line {line}: {reason}")
    if counts["bad"] > len(bad):
        click.echo(f"    ... and {counts['bad'] - len(bad):,} more in the result file")
    shown = ", ".join(f"{count:,} {status}" for status, count in sorted(written.items()))
    click.echo(f"result: {result_file} ({shown})")
    click.echo(f"later: revor-bridge import status {prepared.run}")


# ---- import status RUN -----------------------------------------------------------------------------


@click.command("status")
@click.argument("run")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write every dispatch of the run to this CSV file, in the result CSV's columns "
                   "(line, event_id, dispatch_id, rule, recipient, status, reason).")
def status_command(run: str, csv_path: Path | None) -> None:
    """A run's counters and its rows' dispatches by current status (as Revor reported them)."""
    import csv
    from collections import Counter

    from integration.dispatches import state
    from integration.imports import result, runs

    connection = _connection(load_settings())
    try:
        found = runs.load(connection, run)
        if found is None:
            _fail(f"no import run {run!r} (it may have expired)", EXIT_FINAL)
        statuses: Counter[str] = Counter()
        try:
            handle = csv_path.open("w", newline="", encoding="utf-8") if csv_path else None
        except OSError as error:
            _fail(f"cannot write {csv_path}: {error.strerror or error}", EXIT_USAGE)
        writer = csv.writer(handle) if handle else None
        if writer:
            writer.writerow(result.COLUMNS)  # the result CSV's columns
        after = 0
        while page := runs.dispatch_page(connection, run, after):
            records = state.load_many(connection, [dispatch_id for dispatch_id, _ in page])
            for (dispatch_id, line), (record, _) in zip(page, records, strict=True):
                status = record["status"] if record else "expired"
                statuses[status] += 1
                if writer:
                    crm = (record or {}).get("crm") or {}
                    writer.writerow(result.safe_row((line, crm.get("event_id") or "", dispatch_id,
                                                     (record or {}).get("rule") or "", result.recipient_of(record),
                                                     status, (record or {}).get("reason") or "")))
            after = page[-1][1]
        if handle:
            handle.close()
    except redis.RedisError as exc:
        redis_unreachable(exc)
    meta, counts = found.meta, found.counts
    click.echo(f"{run}: {meta['file']} as {meta['source']}, {found.status}")
    click.echo(f"  rows: {counts['read']:,} read, {counts['stored']:,} stored, {_repeats(counts)}, "
               f"{counts['bad']:,} bad; {found.pending:,} waiting for a worker")
    click.echo(f"  events: {counts['dispatched']:,} dispatched, {counts['invalid']:,} invalid, "
               f"{counts['skipped']:,} skipped, {counts['no_match']:,} no rule matched, {counts['failed']:,} failed"
               + (f", {counts['cancelled']:,} cancelled" if counts["cancelled"] else ""))
    click.echo("  dispatches now: " + (", ".join(f"{count:,} {status}" for status, count in
                                                  sorted(statuses.items(), key=lambda item: (-item[1], item[0])))
                                        or "none"))
    if csv_path:
        click.echo(f"  written to {csv_path}")


# ---- import cancel RUN ------------------------------------------------------------------------------


@click.command("cancel")
@click.argument("run")
def cancel_command(run: str) -> None:
    """Cancel a run: nothing more is stored, and nothing of it that Revor does not have yet is sent."""
    from integration.dispatches import state
    from integration.imports import runs

    settings = load_settings()
    connection = _connection(settings)
    try:
        before = runs.load(connection, run)
        if before is None:
            _fail(f"no import run {run!r} (it may have expired)", EXIT_FINAL)
        found = runs.cancel(connection, run, retention_seconds=settings.dispatch_retention_seconds)
        assert found is not None
        by_status: dict[str, int] = {}
        after = 0
        while page := runs.dispatch_page(connection, run, after):
            with connection.pipeline(transaction=False) as pipe:
                for dispatch_id, _ in page:
                    pipe.hget(state.key_for(dispatch_id), "status")
                for status in pipe.execute():
                    name = status.decode() if status else "expired"
                    by_status[name] = by_status.get(name, 0) + 1
            after = page[-1][1]
    except redis.RedisError as exc:
        redis_unreachable(exc)
    was = "was cancelled already" if before.status == "cancelled" else f"was {before.status}"
    click.echo(f"cancelled {run} ({found.meta['file']} as {found.meta['source']}; it {was})")
    if before.status in ("running", "interrupted"):
        click.echo("  the importer stores no more rows: a running one stops at its next batch; running the "
                   "import again stores nothing")
    click.echo(f"  {found.pending:,} stored rows not processed yet: the workers skip them (reason: import cancelled)")
    pending = by_status.get("pending", 0)
    click.echo(f"  {pending:,} dispatches not submitted to Revor yet: they end cancelled when their submit runs")
    accepted = sum(count for status, count in by_status.items() if status in ("accepted", "scheduled", "running"))
    click.echo(f"  {accepted:,} dispatches Revor accepted already are left alone: Revor's API v1 has no way to "
               "cancel a task, so they run as Revor scheduled them")
    finished = sum(count for status, count in by_status.items() if status not in ("pending", "accepted", "scheduled",
                                                                                   "running"))
    if finished:
        click.echo(f"  {finished:,} dispatches had ended already (sent, invalid, skipped, ...)")
    click.echo(f"  follow it: revor-bridge import status {run}")


# ---- import list -----------------------------------------------------------------------------------


@click.command("list")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True,
              help="How many runs, newest first.")
def list_command(limit: int) -> None:
    """Recent import runs: id, source, file, status and counters, newest first."""
    from integration.imports import runs

    connection = _connection(load_settings())
    try:
        recent = runs.recent(connection, limit)
        with connection.pipeline(transaction=False) as pipe:
            for found in recent:
                pipe.get(runs.lock_key(found.run))
            holders = pipe.execute()
    except redis.RedisError as exc:
        redis_unreachable(exc)
    if not recent:
        click.echo("no import runs (runs expire DISPATCH_RETENTION_DAYS after they end)")
        return
    for found, holder in zip(recent, holders, strict=True):
        counts = found.counts
        status = found.status
        if status == "running" and (holder is None or runs._dead_here(holder.decode())):  # noqa: SLF001
            status = "interrupted (its importer stopped: run the same command to continue)"
        click.echo(f"{found.run}  {found.meta['source']}  {found.meta['file']}  {status}")
        click.echo(f"    {counts['read']:,} read, {counts['stored']:,} stored, "
                   f"{_repeats(counts)}, "
                   f"{counts['bad']:,} bad; {counts['dispatched']:,} dispatched, {counts['invalid']:,} invalid, "
                   f"{counts['skipped']:,} skipped, {counts['no_match']:,} no rule matched, {counts['failed']:,} failed"
                   + (f", {counts['cancelled']:,} cancelled" if counts["cancelled"] else "")
                   + (f"; {found.pending:,} waiting for a worker" if found.pending else ""))


SUBCOMMANDS: dict[str, click.Command] = {"status": status_command, "cancel": cancel_command, "list": list_command}

__all__ = ["EXIT_INTERRUPTED", "EXIT_UNREACHABLE", "cancel_command", "import_command", "list_command",
           "status_command"]
