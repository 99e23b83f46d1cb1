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

from sqlalchemy import Table, bindparam, insert, update
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection

Converter = Callable[[Any], Any]


@functools.cache
def _insert(table: Table, columns: tuple[str, ...], dialect: Dialect) -> tuple[str, tuple[str, ...]]:
    """The INSERT of `columns` as SQLAlchemy words it, and the order its parameters take."""
    compiled = insert(table).values({name: bindparam(name) for name in columns}).compile(dialect=dialect)
    return str(compiled), tuple(compiled.positiontup or ())


@functools.cache
def _converters(table: Table, columns: tuple[str, ...], dialect: Dialect) -> tuple[Converter | None, ...]:
    return tuple(table.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in columns)


def _converted(value: Any, convert: Converter, memo: dict[Any, Any]) -> Any:  # noqa: ANN401
    try:
        return memo[value]
    except KeyError:
        memo[value] = converted = convert(value)
        return converted
    except TypeError:  # unhashable (a JSON document)
        return convert(value)


def _params(
    table: Table, columns: tuple[str, ...], rows: Iterable[Sequence[Any]], dialect: Dialect
) -> list[tuple[Any, ...]]:
    """Each row's values (in `columns` order) as the driver takes them, each distinct value of a
    column converted once."""
    converters = _converters(table, columns, dialect)
    memos: list[dict[Any, Any]] = [{} for _ in columns]
    return [
        tuple(
            value if convert is None else _converted(value, convert, memo)
            for value, convert, memo in zip(row, converters, memos, strict=True)
        )
        for row in rows
    ]


async def insert_rows(conn: AsyncConnection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """INSERT `rows` (dicts with the same keys) into `table` with one executemany."""
    if not rows:
        return
    if conn.dialect.name != "sqlite":
        await conn.execute(insert(table), rows)
        return
    statement, order = _insert(table, tuple(rows[0]), conn.dialect)
    params = _params(table, order, ([row[name] for name in order] for row in rows), conn.dialect)
    await conn.exec_driver_sql(statement, params)


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


async def update_rows(
    conn: AsyncConnection, table: Table, columns: tuple[str, ...], keys: tuple[str, ...], rows: Sequence[Sequence[Any]]
) -> int:
    """SQLite: ``UPDATE table SET columns WHERE keys`` for each row (its values for `columns`,
    then for `keys`) with one executemany; how many rows it changed."""
    statement, order = _update(table, columns, keys, conn.dialect)
    given = {f"v_{name}": at for at, name in enumerate(columns)} | {
        f"k_{name}": len(columns) + at for at, name in enumerate(keys)
    }
    positions = [given[name] for name in order]
    named = tuple(name[2:] for name in order)
    params = _params(table, named, ([row[at] for at in positions] for row in rows), conn.dialect)
    result = await conn.exec_driver_sql(statement, params)
    return int(result.rowcount)
