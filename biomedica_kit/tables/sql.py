"""SQL quoting for the few places DuckDB takes no parameters (identifiers, DDL, COPY)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import duckdb

__all__ = ["quote_ident", "scalar", "sql_literal"]


def quote_ident(name: str) -> str:
    """A DuckDB identifier, double-quoted (embedded quotes doubled)."""
    return '"' + str(name).replace('"', '""') + '"'


def sql_literal(value: str | os.PathLike) -> str:
    """A DuckDB string literal, for the few places parameters are not allowed (DDL, COPY)."""
    return "'" + str(value).replace("'", "''") + "'"


def scalar(con: duckdb.DuckDBPyConnection, sql: str, params: Any = None) -> Any:
    """The first column of the first row of ``sql`` (None when it returns no row)."""
    row = con.execute(sql, params).fetchone() if params is not None else \
        con.execute(sql).fetchone()
    return row[0] if row else None
