"""Saved views: named, shareable selections kept as ``DATASET/views/<name>.json``.

A view is a :class:`biomedica_kit.analysis.filters.Filters` (filters + sort order) under a name,
with who saved it, when, against which dataset version and the predicate it made then. The
explorer and the subset builder save and load views; ``biomedica subset DATASET --view NAME``
exports one (:func:`selection` gives the CLI its predicate). The filters are stored, not only
the predicate, so a view reopens in the widgets as it was saved and its predicate is made
afresh for the dataset as it is now (labels or MeSH terms may have arrived since).

Files are written atomically (temp file, fsync, rename); names are letters, digits, ``.``,
``_`` and ``-``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from biomedica_kit.analysis.filters import Filters
from biomedica_kit.base.atomic import atomic_write_bytes

if TYPE_CHECKING:
    import duckdb

__all__ = [
    "FORMAT", "Selection", "VIEWS_DIR", "View", "check_name", "delete_view", "list_views",
    "load_view", "save_view", "selection", "view_path",
]

VIEWS_DIR = "views"
FORMAT = 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass(frozen=True)
class View:
    """One saved view."""

    name: str
    filters: Filters
    description: str = ""
    author: str | None = None
    saved_at: str | None = None
    dataset_version: str | None = None
    where: str | None = None  # the predicate when saved (for reading; recomputed on use)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The JSON document written to ``views/<name>.json``."""
        return {"format": FORMAT, "name": self.name, "description": self.description,
                "filters": self.filters.to_dict(), "author": self.author,
                "saved_at": self.saved_at, "dataset_version": self.dataset_version,
                "where": self.where, **({"extra": self.extra} if self.extra else {})}


def check_name(name: str) -> str:
    """``name`` if it can name a view file; ValueError otherwise."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"bad view name {name!r}: use letters, digits, '.', '_' and '-' "
                         "(starting with a letter or digit)")
    return name


def view_path(dataset: str | os.PathLike, name: str) -> Path:
    """Where view ``name`` of ``dataset`` is stored."""
    return Path(dataset) / VIEWS_DIR / f"{check_name(name)}.json"


def save_view(dataset: str | os.PathLike, name: str, filters: Filters, *,
              description: str = "", con: duckdb.DuckDBPyConnection | None = None,
              overwrite: bool = True, author: str | None = None) -> View:
    """Save ``filters`` as view ``name`` and return it.

    With ``con`` the predicate is checked against the dataset first (a filter the dataset
    cannot answer raises) and recorded. ``overwrite=False`` refuses to replace a view.
    """
    from biomedica_kit.analysis.curation import current_user

    path = view_path(dataset, name)
    if path.exists() and not overwrite:
        raise FileExistsError(f"view {name!r} exists ({path}); pass overwrite=True")
    manifest = Path(dataset) / "manifest.json"
    version = json.loads(manifest.read_text())["dataset_version"] if manifest.is_file() else None
    view = View(name=name, filters=filters, description=description,
                author=author or current_user(),
                saved_at=datetime.now(UTC).isoformat(timespec="seconds"),
                dataset_version=version, where=filters.where(con) if con is not None else None)
    data = json.dumps(view.to_json(), indent=2, ensure_ascii=False) + "\n"
    atomic_write_bytes(path, data.encode("utf-8"))
    return view


def load_view(dataset: str | os.PathLike, name: str) -> View:
    """View ``name`` of ``dataset``; FileNotFoundError listing the saved ones when absent."""
    path = view_path(dataset, name)
    if not path.is_file():
        known = ", ".join(list_views(dataset)) or "none saved"
        raise FileNotFoundError(f"no view {name!r} in {dataset} (views: {known})")
    doc = json.loads(path.read_text(encoding="utf-8"))
    return View(name=doc.get("name", name), filters=Filters.from_dict(doc.get("filters", {})),
                description=doc.get("description", ""), author=doc.get("author"),
                saved_at=doc.get("saved_at"), dataset_version=doc.get("dataset_version"),
                where=doc.get("where"), extra=doc.get("extra", {}))


def list_views(dataset: str | os.PathLike) -> list[str]:
    """Names of the dataset's saved views, sorted."""
    d = Path(dataset) / VIEWS_DIR
    return sorted(p.stem for p in d.glob("*.json") if _NAME.match(p.stem)) if d.is_dir() else []


def delete_view(dataset: str | os.PathLike, name: str) -> bool:
    """Remove view ``name``; False when there was none."""
    path = view_path(dataset, name)
    if not path.is_file():
        return False
    path.unlink()
    return True


@dataclass(frozen=True)
class Selection:
    """What :func:`biomedica_kit.tables.subset.subset` needs to export a view: a predicate, or
    (for views that filter on curation tags, which live beside the shards) the matching
    keys."""

    where: str | None
    keys: list[str] | None
    view: View


def selection(dataset: str | os.PathLike, name: str) -> Selection:
    """The view's selection for ``biomedica subset DATASET --view NAME``.

    The predicate is made afresh on the dataset as it is now. A view that filters on curation
    tags (``tags`` / ``decision``) resolves to its keys here, because the tags table is not
    one of the views a subset's read-only connection has; the CLI then calls
    ``subset(dataset, None, out, keys=selection.keys)``.
    """
    from biomedica_kit.analysis import curation
    from biomedica_kit.tables.connect import connect

    view = load_view(dataset, name)
    con = connect(dataset)
    try:
        curation.attach(con, dataset)
        where = view.filters.where(con)
        if not (view.filters.tags or view.filters.decision):
            return Selection(where=where, keys=None, view=view)
        keys = [r[0] for r in con.execute(
            f"SELECT key FROM figures WHERE ({where}) ORDER BY key").fetchall()]
        return Selection(where=None, keys=keys, view=view)
    finally:
        con.close()
