"""Sample and article records for the server, from the dataset's metadata views.

:class:`Records` holds one read-only DuckDB connection
(:func:`biomedica_kit.tables.connect.connect` with ``read_only=True``: confined to the
dataset folder, no extensions, configuration locked) and gives each thread its own cursor.
Every statement is fixed text with the request's values as parameters, so nothing a client
sends is ever SQL.
"""

from __future__ import annotations

import datetime
import os
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    import duckdb

__all__ = ["Records", "jsonable", "normalise_pmcid"]

_PMCID = re.compile(r"^(?:PMC)?(\d+)$", re.IGNORECASE)


def normalise_pmcid(text: str) -> str:
    """``123`` or ``pmc123`` -> ``PMC123``; anything else unchanged (an article id)."""
    m = _PMCID.match(text.strip())
    return f"PMC{m.group(1)}" if m else text.strip()


def jsonable(value: Any) -> Any:
    """A DuckDB value as JSON can carry it (dates as ISO text, bytes dropped)."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (datetime.date, datetime.datetime, datetime.time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return None
    if isinstance(value, float) and value != value:  # NaN
        return None
    return value


def _urls(key: str) -> dict[str, str]:
    k = quote(key, safe="")
    return {"url": f"/samples/{k}", "image_url": f"/samples/{k}/image",
            "thumbnail_url": f"/samples/{k}/thumbnail"}


class Records:
    """Sample and article lookups over one dataset (see module doc)."""

    def __init__(self, dataset: str | os.PathLike[str]) -> None:
        from biomedica_kit.tables.connect import connect

        self.dataset = Path(dataset)
        self.con = connect(self.dataset, refresh=False, read_only=True)
        views = {r[0] for r in self.con.execute(
            "SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
        self.figures = "figures_labeled" if "figures_labeled" in views else "figures"
        self._local = threading.local()

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        cur = getattr(self._local, "cursor", None)
        if cur is None:
            cur = self._local.cursor = self.con.cursor()
        return cur

    def _dicts(self, sql: str, params: list[Any]) -> list[dict[str, Any]]:
        cur = self._cursor().execute(sql, params)
        names = [d[0] for d in cur.description or ()]
        return [{n: jsonable(v) for n, v in zip(names, row, strict=True)}
                for row in cur.fetchall()]

    def sample(self, key: str) -> dict[str, Any] | None:
        """Every figures column of one sample (labels joined when there are any), or None."""
        rows = self._dicts(f"SELECT * FROM {self.figures} WHERE key = $1 LIMIT 1", [key])
        if not rows:
            return None
        rec = rows[0]
        art = rec.get("pmcid") or rec.get("article_id")
        rec.update(_urls(key))
        rec["article_url"] = f"/articles/{quote(str(art), safe='')}" if art else None
        return rec

    def article(self, ident: str) -> dict[str, Any] | None:
        """An article by PMCID or article id: its row, and its figures (caption, label,
        inline references, URLs) in document order; None when there is no such article."""
        pmcid = normalise_pmcid(ident)
        rows = self._dicts("SELECT * FROM articles WHERE pmcid = $1 OR article_id = $2 "
                           "LIMIT 1", [pmcid, ident])
        if not rows:
            return None
        art = rows[0]
        figures = self._dicts(
            "SELECT key, figure_id, figure_label, figure_kind, caption, inline_refs, "
            "n_inline_refs FROM figures WHERE article_id = $1 ORDER BY figure_index, key",
            [art["article_id"]])
        for f in figures:
            f.update(_urls(f["key"]))
        return {"article": art, "figures": figures}
