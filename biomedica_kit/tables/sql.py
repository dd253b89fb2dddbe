"""SQL quoting for the few places DuckDB takes no parameters (identifiers, DDL, COPY)."""

from __future__ import annotations

import os

__all__ = ["quote_ident", "sql_literal"]


def quote_ident(name: str) -> str:
    """A DuckDB identifier, double-quoted (embedded quotes doubled)."""
    return '"' + str(name).replace('"', '""') + '"'


def sql_literal(value: str | os.PathLike) -> str:
    """A DuckDB string literal, for the few places parameters are not allowed (DDL, COPY)."""
    return "'" + str(value).replace("'", "''") + "'"
