"""Subsets: a predicate (or a key list) over ``figures`` -> a new dataset of exactly those samples.

Public API::

    subset(dataset, where, out, *, keys=None, params=None, shard_max_samples=None,
           shard_max_bytes=None) -> SubsetSummary
    select_rows(dataset, where=None, *, keys=None, params=None) -> pyarrow.Table
    validate_predicate(where) -> str          # raises PredicateError
    read_keys(path) -> list[str]

DataComp's filter-then-reshard: the selection is decided first and written as a decision file,
``NEW/subset/keys.parquet`` (``key``, ``parent_shard``), then the new shards are written from
it. The selection is either ONE SQL boolean expression over the ``figures`` view (e.g.
``license_category = 'commercial' AND year >= 2020``; ``?`` placeholders take ``params``) or
a key list (``keys``: a ``.parquet`` with a ``key`` column, a text file with one key per line,
or a list of keys).

The predicate is checked before it runs: it must tokenize without comments or ``;``, keep its
parentheses balanced (so it cannot close the ``WHERE (...)`` it is placed in), contain no
statement keywords (COPY, ATTACH, INSTALL, LOAD, PRAGMA, CREATE, SET...) and form exactly one
SELECT with it. It then runs on a connection that can only read files under the dataset and
whose configuration is locked.

Resharding copies every member of a matching sample byte for byte, by the offsets in
``figures.parquet``, from the parent shards (only shards holding matches are opened) through
:class:`biomedica_kit.dataset.shards.ShardWriter`: shards are atomic, deterministic and split by the
same licence subsets. The manifest (``shards.write_manifest``) records the selection under
``derived_from`` (parent path, parent ``dataset_version``, predicate or keys file).

Report tables are derived so ``biomedica verify NEW`` reconciles: ``report/articles.parquet``
keeps the parent's rows of every article with a selected sample (``n_samples`` = selected
samples), and ``report/skips.parquet`` keeps those articles' parent skips plus one
``not_selected`` row per parent sample the selection left out. So, as in a build, each figure
image of those articles is a sample or a skip with a reason. Samples keep their json as is:
a ``duplicate_of`` may name a key that is not in the subset.

The label table travels with the samples: the rows of the parent's ``labels`` view (its newest
label version, :func:`biomedica_kit.tables.connect.latest_labels`) for the selected keys become
the subset's first label version, ``labels/000001.parquet`` (same columns; ``label_version``
set to it; the file's ``biomedica_kit.label_change`` metadata names the parent dataset and label
version, also recorded in the manifest under ``derived_from.labels``). So the subset has the
``labels`` and ``figures_labeled`` views, and a predicate that selected by label (e.g.
``key IN (SELECT key FROM labels WHERE primary_label = 'Microscopy')``) selects the same
samples when re-run on the subset. Cluster runs are not carried (their per-cluster statistics,
exemplars, montages and map describe the parent's samples); the labels keep each sample's
``cluster`` and ``run``. Split decision files travel too (``splits/<name>.parquet`` cut to
the selected keys, seed and fractions kept, the parent recorded), so a sample stays on the
side of the train / test line it was on, in the subset and in any split made of it later.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from biomedica_kit.base.atomic import is_temporary, write_parquet_atomic
from biomedica_kit.dataset.licenses import CATEGORIES
from biomedica_kit.dataset.lock import WRITER_FILE, dataset_lock
from biomedica_kit.dataset.manifest import MANIFEST, Manifest, read_manifest, write_manifest
from biomedica_kit.dataset.shards import ShardWriter
from biomedica_kit.tables.connect import connect, latest_labels
from biomedica_kit.tables.export import META_DIR
from biomedica_kit.tables.samples import ROW_COLUMNS, read_samples
from biomedica_kit.tables.sql import quote_ident, sql_literal

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["DECISION_FILE", "LABELS_FILE", "SELECT_COLUMNS", "PredicateError", "SubsetSummary",
           "read_keys", "select_rows", "subset", "validate_predicate"]

DECISION_FILE = "subset/keys.parquet"
#: The subset's label table (its first version, in the format of biomedica_kit.labels.table).
LABELS_FILE = "labels/000001.parquet"
_FORBIDDEN = frozenset({
    "ABORT", "ALTER", "ANALYZE", "ATTACH", "BEGIN", "CALL", "CHECKPOINT", "COMMIT", "COPY",
    "CREATE", "DEALLOCATE", "DELETE", "DETACH", "DROP", "EXECUTE", "EXPORT", "GRANT", "IMPORT",
    "INSERT", "INSTALL", "LOAD", "MERGE", "PRAGMA", "PREPARE", "QUERY", "QUERY_TABLE", "RESET",
    "REVOKE", "ROLLBACK", "SET", "TRANSACTION", "TRUNCATE", "UPDATE", "UPSERT", "USE",
    "VACUUM",
})
# Columns the resharding and the derived report need (those present are selected).
SELECT_COLUMNS = (*ROW_COLUMNS, "article_id", "figure_id", "graphic_href", "package",
                  "duplicate_of")


class PredicateError(ValueError):
    """A subset predicate that is refused (not one read-only boolean expression) or fails."""


@dataclass
class SubsetSummary:
    """What :func:`subset` wrote."""

    out: str
    dataset_version: str
    parent: str
    parent_version: str
    predicate: str | None
    keys_file: str | None
    samples: int
    shards: int
    samples_by_subset: dict[str, int] = field(default_factory=dict)
    articles: int = 0
    skips: dict[str, int] = field(default_factory=dict)
    report_reconciles: bool | None = None  # None when the parent has no report tables
    seconds: float = 0.0

    def format_lines(self) -> list[str]:
        """The summary as the CLI prints it."""
        lines = [f"dataset {self.out} version {self.dataset_version} (from {self.parent} "
                 f"version {self.parent_version})",
                 f"samples {self.samples}  articles {self.articles}  shards {self.shards}  "
                 "by subset " + " ".join(f"{k}={v}" for k, v in self.samples_by_subset.items())]
        if self.report_reconciles is not None:
            lines.append(f"report reconciles: {'yes' if self.report_reconciles else 'NO'}")
        return lines


# ---------------------------------------------------------------------------- selection


def validate_predicate(where: str) -> str:
    """Return ``where`` stripped if it is one read-only boolean expression; else raise."""
    import duckdb

    if not isinstance(where, str) or not where.strip():
        raise PredicateError("empty predicate")
    where = where.strip()
    try:
        tokens = duckdb.tokenize(where)
    except duckdb.Error as exc:
        raise PredicateError(f"predicate does not parse: {exc}") from None
    depth = 0
    for i, (pos, kind) in enumerate(tokens):
        end = tokens[i + 1][0] if i + 1 < len(tokens) else len(where)
        text = where[pos:end].strip()
        if kind == duckdb.token_type.comment:
            raise PredicateError("comments are not allowed in a predicate")
        if kind == duckdb.token_type.operator:
            for ch in text:
                if ch == ";":
                    raise PredicateError("';' is not allowed: a predicate is one expression")
                depth += (ch == "(") - (ch == ")")
                if depth < 0:
                    raise PredicateError("unbalanced ')' in predicate")
        elif kind in (duckdb.token_type.keyword, duckdb.token_type.identifier) and \
                text.upper() in _FORBIDDEN:
            raise PredicateError(f"{text!r} is not allowed in a predicate (read-only "
                                 "boolean expressions over the figures view only)")
    if depth:
        raise PredicateError("unbalanced '(' in predicate")
    try:
        stmts = duckdb.extract_statements(f"SELECT key FROM figures WHERE ({where})")
    except duckdb.Error as exc:
        raise PredicateError(f"predicate does not parse: {exc}") from None
    if len(stmts) != 1 or stmts[0].type != duckdb.StatementType.SELECT:
        raise PredicateError("predicate must form exactly one SELECT statement")
    return where


def read_keys(path: str | os.PathLike) -> list[str]:
    """Keys from a ``.parquet`` (column ``key``, or its only column) or a text file (one per
    line; blank lines ignored), de-duplicated in first-seen order."""
    p = Path(path)
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        names = pq.read_schema(p).names
        col = "key" if "key" in names else names[0] if len(names) == 1 else None
        if col is None:
            raise ValueError(f"{p}: no 'key' column (columns: {names})")
        values = pq.read_table(p, columns=[col]).column(col).to_pylist()
    else:
        values = p.read_text(encoding="utf-8").splitlines()
    keys = [str(v).strip() for v in values if v is not None and str(v).strip()]
    return list(dict.fromkeys(keys))


def select_rows(dataset: str | os.PathLike, where: str | None = None, *,
                keys: str | os.PathLike | Iterable[str] | None = None,
                params: Sequence[Any] | dict[str, Any] | None = None) -> pa.Table:
    """The figures rows (location + article columns) of the selection, in shard order.

    Exactly one of ``where`` (a predicate, validated) and ``keys`` must be given. Unknown keys
    raise ValueError: a decision file must match the dataset it is applied to.
    """
    import duckdb
    import pyarrow as pa

    if (where is None) == (keys is None):
        raise ValueError("give exactly one of a predicate (where) or keys")
    pred = validate_predicate(where) if where is not None else None
    con = connect(dataset, read_only=True)
    try:
        have = {r[0] for r in con.execute("DESCRIBE figures").fetchall()}
        cols = ", ".join(f"f.{quote_ident(c)}" for c in SELECT_COLUMNS if c in have)
        order = " ORDER BY f.shard, f.image_offset"
        if pred is not None:
            try:
                return con.sql(f"SELECT {cols} FROM figures f WHERE ({pred}){order}",
                               params=params or None).to_arrow_table()
            except duckdb.Error as exc:
                raise PredicateError(f"predicate failed: {exc}") from None
        key_list = read_keys(keys) if isinstance(keys, (str, os.PathLike)) else list(
            dict.fromkeys(keys or ()))
        con.register("wanted", pa.table({"key": pa.array(key_list, pa.string())}))
        missing = [r[0] for r in con.execute(
            "SELECT w.key FROM wanted w ANTI JOIN figures f ON f.key = w.key").fetchall()]
        if missing:
            raise ValueError(f"{len(missing)} key(s) not in {dataset}: {missing[:5]}")
        return con.sql(f"SELECT {cols} FROM figures f SEMI JOIN wanted w ON w.key = f.key"
                       f"{order}").to_arrow_table()
    finally:
        con.close()


# ---------------------------------------------------------------------------- resharding


def _copy_samples(parent: Path, rows: pa.Table, writers: dict[str, ShardWriter],
                  out: Path, max_samples: int, max_bytes: int) -> None:
    """Copy each selected sample's members, byte for byte, into the subset's writers."""
    data = rows.select([c for c in rows.column_names if c in ROW_COLUMNS]).to_pylist()
    # Selection order is kept: read_samples sorts by offset, which is the same order here.
    for r, members in read_samples(parent, data):
        if r["subset"] not in writers:
            writers[r["subset"]] = ShardWriter(out, r["subset"], max_samples=max_samples,
                                               max_bytes=max_bytes)
        writers[r["subset"]].write(r["key"], members)


def _derive_report(parent: Path, out: Path, rows: pa.Table, detail: str) -> dict | None:
    """Write the subset's report tables; return counts for its manifest (None: no report)."""
    import duckdb
    import pyarrow as pa
    import pyarrow.parquet as pq

    rep, skips = parent / "report" / "articles.parquet", parent / "report" / "skips.parquet"
    if not (rep.is_file() and skips.is_file()):
        return None
    figs = parent / META_DIR / "figures.parquet"
    con = duckdb.connect()
    try:
        con.register("sel", rows.select(["key", "article_id"]))
        have = set(pq.read_schema(figs).names)
        col = {c: f"f.{quote_ident(c)}" if c in have else "NULL"
               for c in ("figure_id", "graphic_href", "package")}
        con.execute("CREATE TEMP TABLE counts AS SELECT article_id, count(*) AS n "
                    "FROM sel GROUP BY article_id")
        ambiguous = con.execute(
            f"SELECT id FROM read_parquet({sql_literal(rep)}) WHERE n_samples > 0 "
            f"AND id IN (SELECT article_id FROM counts) GROUP BY id HAVING count(*) > 1"
        ).fetchall()
        if ambiguous:
            raise ValueError(f"parent report has several rows with samples for article "
                             f"{ambiguous[0][0]}; cannot derive the subset's report")
        arts = con.sql(
            f"SELECT r.* REPLACE (CASE WHEN r.n_samples > 0 THEN c.n ELSE 0 END AS n_samples) "
            f"FROM read_parquet({sql_literal(rep)}) r JOIN counts c ON c.article_id = r.id "
            f"ORDER BY r.id, r.package").to_arrow_table()
        sk = con.sql(
            f"SELECT * FROM read_parquet({sql_literal(skips)}) "
            f"WHERE article_id IN (SELECT article_id FROM counts) "
            f"UNION ALL BY NAME "
            f"SELECT f.article_id, {col['figure_id']} AS figure_id, f.key, "
            f"{col['graphic_href']} AS graphic, 'not_selected' AS reason, ? AS detail, "
            f"{col['package']} AS package FROM read_parquet({sql_literal(figs)}) f "
            f"WHERE f.article_id IN (SELECT article_id FROM counts) "
            f"AND f.key NOT IN (SELECT key FROM sel)", params=[detail]).to_arrow_table()
    finally:
        con.close()
    arts = arts.select(pq.read_schema(rep).names).cast(pq.read_schema(rep).remove_metadata())
    skip_schema = pq.read_schema(skips).remove_metadata()
    sk = pa.Table.from_arrays([sk.column(n).cast(skip_schema.field(n).type) if n in
                               sk.column_names else pa.nulls(sk.num_rows, skip_schema.field(n).type)
                               for n in skip_schema.names], schema=skip_schema)
    write_parquet_atomic(arts, out / "report" / "articles.parquet")
    write_parquet_atomic(sk, out / "report" / "skips.parquet")
    a = arts.to_pydict()
    status: dict[str, int] = {}
    for s in a["status"]:
        status[s] = status.get(s, 0) + 1
    reasons: dict[str, int] = {}
    for s in sk.column("reason").to_pylist():
        reasons[s] = reasons.get(s, 0) + 1
    return {"packages": len({p for p in a["package"] if p is not None}), "articles": status,
            "figures": sum(a["n_figures"]), "images": sum(a["n_images"]), "skips": reasons}


def _carry_labels(parent: Path, out: Path, rows: pa.Table, selection: dict) -> dict | None:
    """Write the parent's label rows of the selected keys as the subset's first label version;
    return what was carried (None: the parent has no label table joined on ``key``)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    src = latest_labels(parent)
    if src is None or "key" not in pq.read_schema(src).names:
        return None
    table = pq.read_table(src)
    table = table.filter(pc.is_in(table.column("key"), value_set=rows.column("key")))
    table = table.take(pc.sort_indices(table, [("key", "ascending")]))
    version = Path(LABELS_FILE).stem
    if "label_version" in table.column_names:
        i = table.column_names.index("label_version")
        field = table.schema.field(i)
        table = table.set_column(i, field, pa.array([version] * table.num_rows, field.type))
    carried = {"from": src.relative_to(parent).as_posix(),
               "label_version": src.stem if src.stem.isdigit() else None,
               "file": LABELS_FILE, "rows": table.num_rows}
    change = {"kind": "subset", "dataset": selection["dataset"],
              "dataset_version": selection["dataset_version"], **carried}
    meta = {**(table.schema.metadata or {}), b"biomedica_kit.label_parent": b"",
            b"biomedica_kit.label_change": json.dumps(change).encode()}
    write_parquet_atomic(table.replace_schema_metadata(meta), out / LABELS_FILE)
    return carried


def _carry_splits(parent: Path, out: Path, rows: pa.Table, selection: dict) -> list[str]:
    """Write each of the parent's split files (``splits/<name>.parquet``) cut to the selected
    keys, seed and fractions kept: the subset's samples stay on their side, and a later
    ``biomedica split`` of the subset keeps them there. Returns the names carried."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from biomedica_kit.tables.splits import SPLIT_META, SPLITS_DIR

    names = []
    for src in sorted((parent / SPLITS_DIR).glob("*.parquet")):
        if is_temporary(src):
            continue
        table = pq.read_table(src)
        table = table.filter(pc.is_in(table.column("key"), value_set=rows.column("key")))
        meta = dict(table.schema.metadata or {})
        info = json.loads(meta.get(SPLIT_META, b"{}"))
        info["derived_from"] = {"dataset": selection["dataset"],
                                "dataset_version": selection["dataset_version"]}
        meta[SPLIT_META] = json.dumps(info).encode()
        (out / SPLITS_DIR).mkdir(parents=True, exist_ok=True)
        write_parquet_atomic(table.replace_schema_metadata(meta), out / SPLITS_DIR / src.name)
        names.append(src.stem)
    return names


def subset(dataset: str | os.PathLike, where: str | None, out: str | os.PathLike, *,
           keys: str | os.PathLike | Iterable[str] | None = None,
           params: Sequence[Any] | dict[str, Any] | None = None,
           shard_max_samples: int | None = None,
           shard_max_bytes: int | None = None) -> SubsetSummary:
    """Write the samples selected by ``where`` (or ``keys``) as a new dataset at ``out``.

    Shard size limits default to the parent's. The parent's metadata is exported first (a
    no-op when current). ``out`` is written under its dataset lock (a second subset into the
    same folder is refused); what an interrupted subset left there is removed first. Raises
    PredicateError for a refused or failing predicate, FileExistsError when ``out`` already
    holds a dataset (the parent included) or files that are not a subset's.
    """
    t0 = time.perf_counter()
    parent, out = Path(dataset), Path(out)
    if where is not None:
        where = validate_predicate(where)  # refuse before touching anything
    if (out / MANIFEST).exists():
        raise FileExistsError(f"{out} already holds a dataset; choose a new --out")
    # Select before creating OUT: a failing predicate or keys file leaves nothing behind.
    manifest = read_manifest(parent)
    rows = select_rows(parent, where, keys=keys, params=params)
    with dataset_lock(out, "subset"):
        if (out / MANIFEST).exists():  # finished by another process meanwhile
            raise FileExistsError(f"{out} already holds a dataset; choose a new --out")
        _clear_interrupted(out)
        return _subset(parent, manifest, rows, where, out, keys=keys, params=params,
                       shard_max_samples=shard_max_samples, shard_max_bytes=shard_max_bytes,
                       started=t0)


#: What a subset writes into its folder before the manifest makes it a dataset.
_OWN_ENTRIES = frozenset({"shards", "report", "versions", "metadata", DECISION_FILE.split("/")[0],
                          LABELS_FILE.split("/")[0], WRITER_FILE})


def _clear_interrupted(out: Path) -> None:
    """Remove what an interrupted subset left in ``out`` (no manifest yet: nothing there is
    a dataset); refuse a folder holding anything a subset does not write."""
    import shutil

    foreign = sorted(p.name for p in out.iterdir()
                     if p.name not in _OWN_ENTRIES and not is_temporary(p))
    if foreign:
        raise FileExistsError(f"{out} is not empty ({', '.join(foreign[:5])}); "
                              f"choose a new or empty --out")
    for p in out.iterdir():
        if p.name == WRITER_FILE:
            continue
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()


def _subset(parent: Path, manifest: Manifest, rows: pa.Table, where: str | None, out: Path, *,
            keys: str | os.PathLike | Iterable[str] | None,
            params: Sequence[Any] | dict[str, Any] | None,
            shard_max_samples: int | None, shard_max_bytes: int | None,
            started: float) -> SubsetSummary:
    import pyarrow as pa

    t0 = started
    keys_file = str(keys) if isinstance(keys, (str, os.PathLike)) else None
    selection = {"dataset": str(parent.resolve()), "dataset_version": manifest["dataset_version"],
                 "predicate": where, "params": json.loads(json.dumps(params, default=str)),
                 "keys_file": keys_file, "decision_file": DECISION_FILE, "selected": rows.num_rows}

    decision = pa.table({"key": rows.column("key"), "parent_shard": rows.column("shard")})
    decision = decision.replace_schema_metadata(
        {"biomedica_kit.derived_from": json.dumps(selection)})
    write_parquet_atomic(decision, out / DECISION_FILE)

    cfg = manifest.get("config", {})
    max_samples = shard_max_samples or cfg.get("shard_max_samples", 10_000)
    max_bytes = shard_max_bytes or cfg.get("shard_max_bytes", 1 << 30)
    writers: dict[str, ShardWriter] = {}
    try:
        _copy_samples(parent, rows, writers, out, max_samples, max_bytes)
        shards = [info for w in writers.values() for info in w.close()]
    except BaseException:
        for w in writers.values():
            w.abort()
        raise

    how = f"excluded by predicate: {where}" if where is not None else \
        f"not in keys {keys_file or '(list)'}"
    counts = _derive_report(parent, out, rows, how) or {}
    labels = _carry_labels(parent, out, rows, selection)
    if labels is not None:
        selection["labels"] = labels
    splits = _carry_splits(parent, out, rows, selection)
    if splits:
        selection["splits"] = splits
    by_subset = dict.fromkeys(CATEGORIES, 0)
    for s in shards:
        by_subset[s.subset] = by_subset.get(s.subset, 0) + s.samples
    dup = rows.column("duplicate_of").drop_null() if "duplicate_of" in rows.column_names else []
    counts.update(samples_by_subset=by_subset, exact_duplicates=len(dup))
    new = write_manifest(out, shards, parent=None,
                         config={**cfg, "shard_max_samples": max_samples,
                                 "shard_max_bytes": max_bytes},
                         counts=counts, extra={"derived_from": selection})
    reconciles = None
    if "images" in counts:
        reconciles = counts["images"] == rows.num_rows + sum(counts["skips"].values())
    return SubsetSummary(
        out=str(out), dataset_version=new["dataset_version"], parent=str(parent),
        parent_version=manifest["dataset_version"], predicate=where, keys_file=keys_file,
        samples=rows.num_rows, shards=len(shards), samples_by_subset=by_subset,
        articles=len(set(rows.column("article_id").to_pylist()))
        if "article_id" in rows.column_names else 0,
        skips=counts.get("skips", {}), report_reconciles=reconciles,
        seconds=round(time.perf_counter() - t0, 3))
