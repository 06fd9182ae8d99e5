"""The health report behind ``voxclone db check``: what is wrong with a database, in sentences.

:func:`inspect_database` runs on a synchronous connection (through ``run_sync``) and never
changes anything: SQLite ``integrity_check`` and ``foreign_key_check``, the stored schema
revision against this code's head, and every table and column of ``storage.schema``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, TypeVar

from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from storage.schema import metadata

MAX_REPORTED_LINES: Final = 5  # of integrity_check output; the rest is summarised
T = TypeVar("T")


@dataclass(frozen=True)
class CheckReport:
    """Whether a database is fit for this version of voxclone, and if not, why."""

    healthy: bool
    problems: list[str] = field(default_factory=list)
    dialect: str = ""
    current_revision: str | None = None
    head_revision: str = ""

    def summary(self) -> str:
        """Lines for the terminal: a verdict, then one line per problem."""
        revision = f"revision {self.current_revision or 'none'} (head {self.head_revision})"
        if self.healthy:
            return f"database healthy: {self.dialect}, {revision}"
        lines = [f"database NOT healthy: {self.dialect}, {revision}"]
        lines += [f"  - {problem}" for problem in self.problems]
        return "\n".join(lines)


def inspect_database(
    conn: Connection,
    head: str,
    known: frozenset[str],
    newer_message: Callable[[str, str], str],
) -> CheckReport:
    """Build the report for the database behind ``conn`` (read-only)."""
    problems: list[str] = []
    if conn.dialect.name == "sqlite":
        problems += (
            _attempt(conn, problems, "SQLite's integrity check", lambda: _sqlite_integrity(conn)) or []
        )
    failures = len(problems)
    current = _attempt(
        conn,
        problems,
        "Reading the schema revision",
        lambda: MigrationContext.configure(conn).get_current_revision(),
    )
    if len(problems) > failures:
        pass  # the revision could not be read: that is the problem to report
    elif current is None:
        problems.append("The database has no voxclone schema yet: run `voxclone db upgrade`.")
    elif current not in known:
        problems.append(newer_message(conn.engine.url.render_as_string(hide_password=True), current))
    else:
        if current != head:
            problems.append(
                f"The schema is at revision {current!r}, this voxclone needs {head!r}: "
                "run `voxclone db upgrade`."
            )
        problems += (
            _attempt(conn, problems, "Reading the tables", lambda: _missing_tables_and_columns(conn)) or []
        )
    conn.rollback()
    return CheckReport(
        healthy=not problems,
        problems=problems,
        dialect=conn.dialect.name,
        current_revision=current,
        head_revision=head,
    )


def _attempt(conn: Connection, problems: list[str], what: str, fn: Callable[[], T]) -> T | None:
    """``fn()``, or None with a problem added to ``problems`` if the database fails while read."""
    try:
        return fn()
    except DBAPIError as exc:
        conn.rollback()
        detail = exc.orig if exc.orig is not None else exc
        message = (
            f"{what} failed: {detail}. The file or server may be damaged: restore a backup, or on SQLite "
            "copy what is readable with the sqlite3 shell's .recover command into a new file."
        )
        problems.append(message)
        return None


def _sqlite_integrity(conn: Connection) -> list[str]:
    problems: list[str] = []
    lines = [str(row[0]) for row in conn.execute(text("PRAGMA integrity_check")).fetchall()]
    if lines != ["ok"]:
        shown = "; ".join(lines[:MAX_REPORTED_LINES])
        more = f" (and {len(lines) - MAX_REPORTED_LINES} more)" if len(lines) > MAX_REPORTED_LINES else ""
        problems.append(
            f"SQLite integrity_check failed: {shown}{more}. Restore a backup, or copy what is readable "
            "with the sqlite3 shell's .recover command into a new file."
        )
    orphans = conn.execute(text("PRAGMA foreign_key_check")).fetchall()
    if orphans:
        tables = sorted({str(row[0]) for row in orphans})
        problems.append(
            f"{len(orphans)} rows in {', '.join(tables)} point at voice profiles that no longer exist. "
            "Report this as a bug; deleting those rows is safe."
        )
    return problems


def _missing_tables_and_columns(conn: Connection) -> list[str]:
    inspector = inspect(conn)
    present = set(inspector.get_table_names())
    problems: list[str] = []
    for name, table in sorted(metadata.tables.items()):
        if name not in present:
            problems.append(f"Table {name!r} is missing although the revision says it exists.")
            continue
        have = {column["name"] for column in inspector.get_columns(name)}
        missing = [column.name for column in table.columns if column.name not in have]
        if missing:
            problems.append(f"Table {name!r} lacks the columns {', '.join(missing)}.")
    if problems:
        problems.append("The schema was changed by hand or a migration did not finish: restore a backup.")
    return problems
