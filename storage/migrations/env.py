"""Alembic environment for voxclone, driven only by ``storage.migrate`` (``voxclone db upgrade``).

``storage.migrate`` opens the connection and passes it in ``config.attributes["connection"]``;
there is no alembic.ini and no offline (``--sql``) mode. Each migration runs in its own
transaction (SQLite and PostgreSQL both have transactional DDL), so a process killed half-way
leaves the database at the previous revision and the next upgrade starts that migration again.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from alembic import context
from alembic.runtime.migration import MigrationContext, MigrationInfo
from sqlalchemy import text
from sqlalchemy.engine import Connection

from storage.errors import MigrationError
from storage.schema import metadata


def _check_foreign_keys(
    ctx: MigrationContext, step: MigrationInfo, heads: Collection[Any], run_args: Mapping[str, Any]
) -> None:
    """Inside each SQLite migration's transaction: refuse to commit rows that lost their parent.

    Migrations run with SQLite foreign keys off (rebuilding a table must not cascade), so this
    check is what keeps a migration from committing orphans.
    """
    connection = ctx.connection
    if connection is None:
        return
    orphans = connection.execute(text("PRAGMA foreign_key_check")).fetchall()
    if orphans:
        tables = sorted({str(row[0]) for row in orphans})
        raise MigrationError(
            f"Migration {step.up_revision_id} would leave {len(orphans)} rows without their parent in "
            f"{', '.join(tables)}; it was rolled back. Report this as a bug in voxclone."
        )


def run_migrations() -> None:
    if context.is_offline_mode():
        raise MigrationError("voxclone migrations run against a database only: use `voxclone db upgrade`.")
    connection = context.config.attributes.get("connection")
    if not isinstance(connection, Connection):
        raise MigrationError(
            "Run migrations with `voxclone db upgrade` (storage.migrate), not the alembic CLI."
        )
    sqlite = connection.dialect.name == "sqlite"
    context.configure(
        connection=connection,
        target_metadata=metadata,
        transaction_per_migration=True,
        transactional_ddl=True,
        render_as_batch=sqlite,  # SQLite alters tables by rebuilding them
        compare_type=True,
        on_version_apply=_check_foreign_keys if sqlite else None,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
