"""Many rows into one table with one executemany, and on SQLite without SQLAlchemy's work per row:
bulk inserts, and the guarded UPDATE of a transaction's changed tasks.

SQLAlchemy converts every parameter of every row through its column type (a timestamp to
SQLite's text, 4 µs each): 30 µs of a bulk-created task, spent while the transaction holds
SQLite's one writer, which every other write waits for. The rows of one statement share their
timestamps (the transaction's ``now``), so here each distinct value is converted once, by the
same column type's own converter, and the statement's text is built once per set of columns.
The statement still runs through the engine (``exec_driver_sql``), so its hooks see it.
PostgreSQL keeps SQLAlchemy's insert (asyncpg takes typed values).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, Table, bindparam, insert, update
from sqlalchemy.engine import Dialect

Converter = Callable[[Any], Any]


@functools.cache
def _insert(table: Table, columns: tuple[str, ...], dialect: Dialect) -> tuple[str, tuple[str, ...]]:
    """The INSERT of `columns` as SQLAlchemy words it, and the order its parameters take."""
    compiled = insert(table).values({name: bindparam(name) for name in columns}).compile(dialect=dialect)
    return str(compiled), tuple(compiled.positiontup or ())


@functools.cache
def _converters(table: Table, columns: tuple[str, ...], dialect: Dialect) -> tuple[Converter | None, ...]:
    return tuple(table.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in columns)


def _column(values: list[Any], convert: Converter | None) -> list[Any]:
    """One column's values as the driver takes them, each distinct value converted once."""
    if convert is None:
        return values
    try:
        converted = {value: convert(value) for value in set(values)}
    except TypeError:  # unhashable (a JSON document)
        return [convert(value) for value in values]
    return list(map(converted.__getitem__, values))


def _params(
    table: Table, columns: tuple[str, ...], values: Iterable[list[Any]], dialect: Dialect
) -> list[tuple[Any, ...]]:
    """The rows' parameters from their values column by column (`values`: one list per name of
    `columns`, in its order): a column at a time, as a bulk's rows share most of their values."""
    converters = _converters(table, columns, dialect)
    converted = [_column(column, convert) for column, convert in zip(values, converters, strict=True)]
    return list(zip(*converted, strict=True))


def insert_rows(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """INSERT `rows` (dicts with the same keys) into `table` with one executemany."""
    if not rows:
        return
    if conn.dialect.name != "sqlite":
        conn.execute(insert(table), rows)
        return
    statement, order = _insert(table, tuple(rows[0]), conn.dialect)
    params = _params(table, order, ([row[name] for row in rows] for name in order), conn.dialect)
    conn.exec_driver_sql(statement, params)


@functools.cache
def _update(
    table: Table, columns: tuple[str, ...], keys: tuple[str, ...], dialect: Dialect
) -> tuple[str, tuple[str, ...]]:
    """The UPDATE of `columns` where `keys` match, as SQLAlchemy words it, and the order its
    parameters take (``k_`` for a key's, ``v_`` for a value's)."""
    where = [table.c[name] == bindparam(f"k_{name}") for name in keys]
    compiled = (
        update(table).where(*where).values({name: bindparam(f"v_{name}") for name in columns}).compile(dialect=dialect)
    )
    return str(compiled), tuple(compiled.positiontup or ())


def update_rows(
    conn: Connection, table: Table, columns: tuple[str, ...], keys: tuple[str, ...], rows: Sequence[Sequence[Any]]
) -> int:
    """SQLite: ``UPDATE table SET columns WHERE keys`` for each row (its values for `columns`,
    then for `keys`) with one executemany; how many rows it changed."""
    statement, order = _update(table, columns, keys, conn.dialect)
    given = {f"v_{name}": at for at, name in enumerate(columns)} | {
        f"k_{name}": len(columns) + at for at, name in enumerate(keys)
    }
    positions = [given[name] for name in order]
    named = tuple(name[2:] for name in order)
    params = _params(table, named, ([row[at] for row in rows] for at in positions), conn.dialect)
    result = conn.exec_driver_sql(statement, params)
    return int(result.rowcount)
