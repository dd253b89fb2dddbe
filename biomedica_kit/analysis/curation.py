"""Curation decisions beside the shards: sample tags, accept/reject and notes.

Decisions live in ONE table, ``DATASET/tags/tags.parquet``, never in the shards: a curator can
tag, accept, reject and annotate samples while the dataset stays byte-for-byte what was built
and verified. :func:`apply` turns the decisions into a new dataset version when they are
final (json fields ``curation_decision``, ``curation_tags``, ``curation_note`` through
:func:`biomedica_kit.dataset.changes.apply_changes`, which rewrites only the shards holding a
decided sample).

One row per decision::

    key         sample key
    kind        "tag" | "decision" | "note"
    value       the tag; "accept" / "reject"; the note's text
    author      who decided (the OS user unless given)
    created_at  when (UTC)
    origin      how: "card", "bulk: <predicate>", "code", ...
    dataset_version   the version the curator was looking at

A sample has any number of tags, at most one decision and one note (a new one replaces the
old). Every change is also appended to ``tags/log.jsonl`` (what, how many keys, who, when), so
removals stay on record. Writes hold an exclusive lock on ``tags/.lock`` and replace the table
atomically (temp file, fsync, rename): two kernels tagging at once lose nothing, and a reader
sees the old table or the new one.

:func:`attach` exposes the table as the ``tags`` view on a query connection (an empty view
when nothing is decided yet), which :class:`biomedica_kit.analysis.filters.Filters` uses for
its ``tags`` / ``decision`` filters.
"""

from __future__ import annotations

import fcntl
import getpass
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from biomedica_kit.base.atomic import atomic_path, fsync_file
from biomedica_kit.tables.sql import sql_literal

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

    from biomedica_kit.dataset.changes import ChangeSummary

__all__ = [
    "APPLIED_FIELDS", "DECISION_VALUES", "KINDS", "LOG_FILE", "TAGS_FILE", "TagStore", "apply",
    "attach", "current_user", "read", "schema", "tags_path",
]

TAGS_FILE = "tags/tags.parquet"
LOG_FILE = "tags/log.jsonl"
KINDS = ("tag", "decision", "note")
DECISION_VALUES = ("accept", "reject")
#: The json fields :func:`apply` writes into the samples.
APPLIED_FIELDS = ("curation_decision", "curation_tags", "curation_note")
_COLUMNS = ("key", "kind", "value", "author", "created_at", "origin", "dataset_version")


def schema() -> pa.Schema:
    """The Arrow schema of ``tags/tags.parquet``."""
    import pyarrow as pa

    return pa.schema([("key", pa.string()), ("kind", pa.string()), ("value", pa.string()),
                      ("author", pa.string()), ("created_at", pa.timestamp("us", tz="UTC")),
                      ("origin", pa.string()), ("dataset_version", pa.string())])


def tags_path(dataset: str | os.PathLike) -> Path:
    """Where a dataset's decision table is (it may not exist yet)."""
    return Path(dataset) / TAGS_FILE


def read(dataset: str | os.PathLike) -> pa.Table:
    """The decision table (empty, with its schema, when nothing is decided yet)."""
    import pyarrow.parquet as pq

    p = tags_path(dataset)
    return pq.read_table(p) if p.is_file() else schema().empty_table()


def attach(con: duckdb.DuckDBPyConnection, dataset: str | os.PathLike) -> None:
    """Create (or replace) the ``tags`` view on ``con`` over the dataset's decision table."""
    p = tags_path(dataset).resolve()
    if p.is_file():
        con.execute(f"CREATE OR REPLACE VIEW tags AS SELECT * FROM read_parquet("
                    f"{sql_literal(str(p))})")
    else:
        con.execute("CREATE OR REPLACE VIEW tags AS SELECT NULL::VARCHAR AS key, "
                    "NULL::VARCHAR AS kind, NULL::VARCHAR AS value, NULL::VARCHAR AS author, "
                    "NULL::TIMESTAMPTZ AS created_at, NULL::VARCHAR AS origin, "
                    "NULL::VARCHAR AS dataset_version LIMIT 0")


@contextmanager
def _locked(dataset: Path) -> Iterator[None]:
    lock = dataset / "tags" / ".lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _version(dataset: Path) -> str | None:
    try:
        return json.loads((dataset / "manifest.json").read_text())["dataset_version"]
    except (OSError, ValueError, KeyError):
        return None


class TagStore:
    """Read and change one dataset's decisions (see the module doc).

    ``author`` defaults to the OS user. Every method that changes something returns the number
    of rows it added or removed and writes the table before returning.
    """

    def __init__(self, dataset: str | os.PathLike, *, author: str | None = None) -> None:
        self.dataset = Path(dataset)
        if not (self.dataset / "manifest.json").is_file():
            raise FileNotFoundError(f"{self.dataset} is not a dataset (no manifest.json)")
        self.author = author or current_user()

    # ---------------------------------------------------------------------------- reads

    def table(self) -> pa.Table:
        """The whole decision table."""
        return read(self.dataset)

    def decisions(self, keys: Iterable[str] | None = None) -> dict[str, str]:
        """``{key: "accept" | "reject"}`` (of ``keys`` only, when given)."""
        return self._latest("decision", keys)

    def notes(self, keys: Iterable[str] | None = None) -> dict[str, str]:
        """``{key: note}`` (of ``keys`` only, when given)."""
        return self._latest("note", keys)

    def tags_of(self, keys: Iterable[str] | None = None) -> dict[str, list[str]]:
        """``{key: [tags, sorted]}`` (of ``keys`` only, when given)."""
        want = None if keys is None else set(keys)
        out: dict[str, list[str]] = {}
        t = self.table().to_pydict()
        for k, kind, v in zip(t["key"], t["kind"], t["value"], strict=True):
            if kind == "tag" and (want is None or k in want):
                out.setdefault(k, []).append(v)
        return {k: sorted(v) for k, v in out.items()}

    def summary(self) -> dict[str, Any]:
        """Counts: samples accepted / rejected / with a note, and samples per tag."""
        d = self.decisions()
        return {"accepted": sum(v == "accept" for v in d.values()),
                "rejected": sum(v == "reject" for v in d.values()),
                "notes": len(self.notes()),
                "tags": dict(sorted(Counter(v for vs in self.tags_of().values() for v in vs
                                            ).items(), key=lambda kv: (-kv[1], kv[0])))}

    def _latest(self, kind: str, keys: Iterable[str] | None) -> dict[str, str]:
        want = None if keys is None else set(keys)
        t = self.table().to_pydict()
        return {k: v for k, kd, v in zip(t["key"], t["kind"], t["value"], strict=True)
                if kd == kind and (want is None or k in want)}

    # -------------------------------------------------------------------------- changes

    def tag(self, keys: Iterable[str], tag: str, *, origin: str = "code") -> int:
        """Add ``tag`` to every sample of ``keys`` (already tagged ones are left as they are)."""
        tag = _clean(tag, "tag")
        return self._change("tag", keys, tag, origin=origin, replace_kind=False)

    def untag(self, keys: Iterable[str], tag: str, *, origin: str = "code") -> int:
        """Remove ``tag`` from the samples of ``keys``."""
        return self._remove("tag", keys, tag, origin=origin)

    def decide(self, keys: Iterable[str], decision: str | None, *, origin: str = "code") -> int:
        """Accept (``"accept"``), reject (``"reject"``) or undecide (None) the samples."""
        if decision is None:
            return self._remove("decision", keys, None, origin=origin)
        if decision not in DECISION_VALUES:
            raise ValueError(f"decision must be one of {DECISION_VALUES} or None, "
                             f"not {decision!r}")
        return self._change("decision", keys, decision, origin=origin, replace_kind=True)

    def note(self, key: str, text: str | None, *, origin: str = "code") -> int:
        """Set (or, with an empty ``text``, remove) the note of one sample."""
        if not text or not text.strip():
            return self._remove("note", [key], None, origin=origin)
        return self._change("note", [key], text.strip(), origin=origin, replace_kind=True)

    def tag_where(self, con: duckdb.DuckDBPyConnection, where: str, tag: str) -> int:
        """Tag every sample matching ``where`` (a predicate over ``figures`` on ``con``):
        bulk-tagging the current filter. The predicate is recorded as the origin."""
        keys = [r[0] for r in con.execute(f"SELECT key FROM figures WHERE ({where})").fetchall()]
        return self.tag(keys, tag, origin=f"bulk: {where}")

    def decide_where(self, con: duckdb.DuckDBPyConnection, where: str,
                     decision: str | None) -> int:
        """Accept / reject / undecide every sample matching ``where``."""
        keys = [r[0] for r in con.execute(f"SELECT key FROM figures WHERE ({where})").fetchall()]
        return self.decide(keys, decision, origin=f"bulk: {where}")

    def _change(self, kind: str, keys: Iterable[str], value: str, *, origin: str,
                replace_kind: bool) -> int:
        import pyarrow as pa

        keys = list(dict.fromkeys(keys))
        if not keys:
            return 0
        with _locked(self.dataset):
            old = self.table()
            rows = old.to_pydict()
            triples = list(zip(rows["key"], rows["kind"], rows["value"], strict=True))
            if replace_kind:  # a new decision or note replaces the sample's old one
                drop = set(keys)
                kept = [i for i, (k, kd, _v) in enumerate(triples)
                        if not (k in drop and kd == kind)]
            else:  # a tag already there stays (with its first author and time)
                have = {k for k, kd, v in triples if kd == kind and v == value}
                keys = [k for k in keys if k not in have]
                kept = list(range(old.num_rows))
            now, version = datetime.now(UTC), _version(self.dataset)
            new = pa.table({"key": keys, "kind": [kind] * len(keys),
                            "value": [value] * len(keys), "author": [self.author] * len(keys),
                            "created_at": [now] * len(keys), "origin": [origin] * len(keys),
                            "dataset_version": [version] * len(keys)}, schema=schema())
            self._write(pa.concat_tables([old.take(pa.array(kept, pa.int64())), new]))
            self._log("set", kind, value, len(keys), origin)
        return len(keys)

    def _remove(self, kind: str, keys: Iterable[str], value: str | None, *,
                origin: str) -> int:
        import pyarrow as pa

        drop = set(keys)
        with _locked(self.dataset):
            old = self.table()
            rows = old.to_pydict()
            kept = [i for i, (k, kd, v) in enumerate(zip(rows["key"], rows["kind"],
                                                         rows["value"], strict=True))
                    if not (k in drop and kd == kind and (value is None or v == value))]
            removed = old.num_rows - len(kept)
            if removed:
                self._write(old.take(pa.array(kept, pa.int64())))
                self._log("remove", kind, value, removed, origin)
        return removed

    def _write(self, table: pa.Table) -> None:
        import pyarrow.parquet as pq

        with atomic_path(tags_path(self.dataset)) as tmp:
            pq.write_table(table.select(list(_COLUMNS)).cast(schema()), tmp)

    def _log(self, op: str, kind: str, value: str | None, n: int, origin: str) -> None:
        entry = {"op": op, "kind": kind, "value": value if kind != "note" else None,
                 "samples": n, "origin": origin, "author": self.author,
                 "at": datetime.now(UTC).isoformat(timespec="seconds")}
        path = self.dataset / LOG_FILE
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, ensure_ascii=False) + "\n")
        fsync_file(path)


def apply(dataset: str | os.PathLike, *, note: str | None = None) -> ChangeSummary | None:
    """Write the decisions into the samples as a new dataset version.

    Every decided sample's json gets ``curation_decision`` ("accept" / "reject" / null),
    ``curation_tags`` (sorted list) and ``curation_note`` (text or null); other samples are
    untouched. Returns None when there is nothing to apply. The decision table stays, so
    curation can go on against the new version (keys do not change).
    """
    from biomedica_kit.dataset.changes import apply_changes

    store = TagStore(dataset)
    decisions, notes, tags = store.decisions(), store.notes(), store.tags_of()
    keys = sorted(set(decisions) | set(notes) | set(tags))
    if not keys:
        return None
    changes = {k: {"curation_decision": decisions.get(k), "curation_tags": tags.get(k, []),
                   "curation_note": notes.get(k)} for k in keys}
    return apply_changes(Path(dataset), changes, kind="curation", fields=list(APPLIED_FIELDS),
                         note=note or f"curation decisions of {len(keys)} samples")


def current_user() -> str:
    """The OS user name, recorded as the author of decisions and views."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return "unknown"


def _clean(value: str, what: str) -> str:
    value = (value or "").strip()
    if not value:
        raise ValueError(f"empty {what}")
    return value

