"""Metadata export: shards -> ``metadata/figures.parquet`` + ``metadata/articles.parquet``.

Public API (stable; notebooks and the report call it)::

    export(dataset, *, force=False, workers=None) -> ExportSummary
    is_current(dataset) -> bool                # the tables describe the current version
    read_shard_records(path) -> list[dict]     # one shard's locations, captions, json
    records_table(records) -> pyarrow.Table
    article_columns(figure_columns) -> list[str]

**Export** reads only the ``.txt`` and ``.json`` members of each shard: the tar headers
(parsed by :func:`iter_tar_files`) give every member's data offset and size, so images are
seeked over, never read or decoded. One row per sample goes to ``figures.parquet`` with the
sample's location (``shard``, ``image_offset``/``image_length``, ``txt_*``, ``json_*``) and
every key of its json as a column. The column set is the union of the keys found in the data,
so fields added later (``mesh_terms``, ``primary_label``, Entrez fields...) appear without code
changes. Type rules (docs/data_dictionary.md lists every column):

- scalars and lists map to their Arrow types (lists of objects become ``list<struct>``, e.g.
  ``inline_refs`` is ``list<struct<paragraph, section, sentences>>``);
- a top-level json *object* (free-form mapping such as ``image_context``, keyed by file name)
  is stored as JSON text, because its keys are data, not a schema;
- a column whose values cannot share one Arrow type (e.g. int in one shard, list in another)
  is stored as JSON text too; such columns are listed in the file's metadata
  (``biomedica_kit.json_columns``) and in :attr:`ExportSummary.json_columns`;
- a column that is null everywhere is typed ``string`` (``list<string>`` for empty lists).

``caption`` is the text of the ``.txt`` member (what training reads); the json's identical
``caption`` key is not duplicated. A json key that collides with a location column is kept
with a ``json_`` prefix.

**Incremental:** each shard's rows are cached in ``metadata/parts/<shard sha256>.parquet``.
An export re-reads only shards whose checksum (from the manifest) has no part yet, then
re-assembles ``figures.parquet`` from the parts and rebuilds ``articles.parquet`` with DuckDB.
When ``figures.parquet`` already describes the manifest's ``dataset_version`` (and the report
tables are unchanged) export does nothing. Every file is written to a temporary name and
renamed, so readers never see a half-written table. Parts of shards that left the manifest are
deleted.

``articles.parquet`` has one row per article that has at least one sample: the article-level
fields of its samples, ``n_figures`` (samples written), the shard paths holding it, and, from
``report/`` where present, ``n_fig_elements``, ``n_images`` and ``n_skipped``.

The query layer over these tables is :mod:`biomedica_kit.tables.connect`.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from biomedica_kit.base.atomic import atomic_path, write_parquet_atomic
from biomedica_kit.dataset.manifest import Manifest, read_manifest
from biomedica_kit.dataset.tario import iter_tar_files
from biomedica_kit.tables.sql import quote_ident, sql_literal

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["EXPORT_FORMAT", "LOCATION_COLUMNS", "META_DIR", "PARTS_DIR", "ExportSummary",
           "article_columns", "export", "is_current", "read_shard_records", "records_table"]

EXPORT_FORMAT = "1"
META_DIR = "metadata"
PARTS_DIR = "parts"
_META_FORMAT = b"biomedica_kit.export_format"
_META_VERSION = b"biomedica_kit.dataset_version"
_META_REPORT = b"biomedica_kit.analysis.report"
_META_JSON_COLUMNS = b"biomedica_kit.json_columns"

#: Columns every figures row has, in this order, before the json fields (sorted by name).
LOCATION_COLUMNS = ("key", "shard", "subset", "dataset_version", "image_ext", "image_offset",
                    "image_length", "txt_offset", "txt_length", "json_offset", "json_length",
                    "caption")
# Added when figures.parquet is assembled (a part is content-addressed, so it cannot hold them).
_ASSEMBLY_COLUMNS = ("shard", "subset", "dataset_version")
# Article-level keys written by schema.article_fields() beside the jats.Article fields.
_ARTICLE_EXTRA = ("package", "citation", "last_updated", "file_list_license", "subset")
_ARTICLE_PREFIXES = ("article_", "entrez_")
_ARTICLE_FIRST = ("article_id", "pmcid", "pmid", "doi", "title", "journal", "year",
                  "license_category", "license_code", "subset", "publisher", "article_type")


@dataclass
class ExportSummary:
    """What :func:`export` did."""

    dataset: str
    dataset_version: str
    figures_path: str
    articles_path: str
    shards: int
    shards_read: list[str] = field(default_factory=list)  # shard paths re-read this run
    shards_cached: int = 0  # shards whose cached part was reused
    parts_removed: int = 0  # parts of shards no longer in the manifest
    rows: int = 0
    articles: int = 0
    columns: list[str] = field(default_factory=list)
    json_columns: list[str] = field(default_factory=list)  # columns stored as JSON text
    up_to_date: bool = False  # True when nothing had to be written
    seconds: float = 0.0

    def format_lines(self) -> list[str]:
        """The summary as the CLI prints it."""
        state = "up to date" if self.up_to_date else (
            f"{len(self.shards_read)} shards read, {self.shards_cached} cached")
        return [f"{self.figures_path}: {self.rows} figures, {len(self.columns)} columns",
                f"{self.articles_path}: {self.articles} articles",
                f"version {self.dataset_version}: {state}  ({self.seconds:.2f} s)"]


# ---------------------------------------------------------------------------- shard reading


def _open_shard(path: Path):
    """Open a shard for reading (a seam so tests can count the bytes export reads)."""
    return open(path, "rb")


def read_shard_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Location and metadata of every sample of one shard, reading only txt/json members.

    Each record holds the location columns (without shard/subset/dataset_version), the
    caption text, and ``meta`` (the parsed json, or ``{}`` when the sample has none).
    Members are grouped into samples by key as WebDataset does (adjacent, same key).
    """
    path = Path(path)
    records: list[dict[str, Any]] = []
    cur: dict[str, Any] | None = None
    with _open_shard(path) as f:
        for name, offset, size in iter_tar_files(f, path):
            base = name.rsplit("/", 1)[-1]
            key = name[: len(name) - len(base)] + base.partition(".")[0]
            ext = base.partition(".")[2].lower()
            if cur is None or cur["key"] != key:
                cur = {"key": key, "image_ext": None, "image_offset": None,
                       "image_length": None, "txt_offset": None, "txt_length": None,
                       "json_offset": None, "json_length": None, "caption": None, "meta": {}}
                records.append(cur)
            slot = ext if ext in ("txt", "json") else "image"
            if cur[f"{slot}_offset"] is not None:
                raise ValueError(f"{path}: sample {key} has two {slot} members")
            cur[f"{slot}_offset"], cur[f"{slot}_length"] = offset, size
            if slot == "image":
                cur["image_ext"] = ext
                continue
            f.seek(offset)
            data = f.read(size)
            if slot == "txt":
                cur["caption"] = data.decode("utf-8")
            else:
                try:
                    cur["meta"] = json.loads(data)
                except ValueError as exc:
                    raise ValueError(f"{path}: sample {key} has invalid json: {exc}") from None
    return records


def _json_text(v: Any) -> str | None:
    return None if v is None else json.dumps(v, ensure_ascii=False, sort_keys=True)


def _denull(t: pa.DataType) -> pa.DataType:
    """``t`` with every null type (all-null column, empty lists) replaced by string."""
    import pyarrow as pa

    if pa.types.is_null(t):
        return pa.string()
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return pa.list_(_denull(t.value_type))
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, _denull(f.type)) for f in t])
    return t


def records_table(records: list[dict[str, Any]]) -> pa.Table:
    """The part table of one shard: location columns then json fields (see module doc)."""
    import pyarrow as pa

    base = [c for c in LOCATION_COLUMNS if c not in _ASSEMBLY_COLUMNS]
    ints = {c for c in base if c.endswith(("_offset", "_length"))}
    cols: dict[str, pa.Array] = {
        c: pa.array([r[c] for r in records], pa.int64() if c in ints else pa.string())
        for c in base}
    keys = sorted({k for r in records for k in r["meta"]} - {"key", "caption"})
    json_cols = []
    for k in keys:
        name = f"json_{k}" if k in LOCATION_COLUMNS else k
        values = [r["meta"].get(k) for r in records]
        if any(isinstance(v, dict) for v in values):
            arr, is_json = pa.array([_json_text(v) for v in values], pa.string()), True
        else:
            try:
                arr, is_json = pa.array(values), False
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
                arr, is_json = pa.array([_json_text(v) for v in values], pa.string()), True
        cols[name] = arr
        if is_json:
            json_cols.append(name)
    table = pa.table(cols)
    return table.replace_schema_metadata({
        _META_FORMAT: EXPORT_FORMAT.encode(), _META_JSON_COLUMNS: json.dumps(json_cols).encode()})


def _export_shard(shard: str, part: str) -> int:
    """Read one shard and write its part file (module-level so a process pool can run it)."""
    table = records_table(read_shard_records(shard))
    write_parquet_atomic(table, Path(part))
    return table.num_rows


# ------------------------------------------------------------------------------ assembling


def _unify(schemas: list[pa.Schema]) -> tuple[pa.Schema, set[str]]:
    """One schema for all parts; columns whose types cannot be unified become JSON text."""
    import pyarrow as pa

    json_cols: set[str] = set()
    for s in schemas:
        json_cols |= set(json.loads((s.metadata or {}).get(_META_JSON_COLUMNS, b"[]")))
    names: list[str] = []
    for s in schemas:
        names += [n for n in s.names if n not in names]
    out = []
    for n in names:
        types = [s.field(n).type for s in schemas if n in s.names]
        if n in json_cols:
            out.append(pa.field(n, pa.string()))
            continue
        try:
            merged = pa.unify_schemas([pa.schema([pa.field(n, t)]) for t in types],
                                      promote_options="permissive")
            # All-null columns (null type in every part) are typed as strings only now, so
            # one shard's missing values never conflict with another shard's real type.
            out.append(pa.field(n, _denull(merged.field(n).type)))
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            json_cols.add(n)
            out.append(pa.field(n, pa.string()))
    return pa.schema(out), json_cols


def _conform(table: pa.Table, schema: pa.Schema, json_cols: set[str]) -> pa.Table:
    """Cast one part to the unified schema (missing columns null, JSON columns re-encoded)."""
    import pyarrow as pa

    part_json = set(json.loads((table.schema.metadata or {}).get(_META_JSON_COLUMNS, b"[]")))
    arrays = []
    for f in schema:
        if f.name not in table.column_names:
            arrays.append(pa.nulls(table.num_rows, f.type))
            continue
        col = table.column(f.name)
        if f.name in json_cols and f.name not in part_json:
            arrays.append(pa.array([_json_text(v) for v in col.to_pylist()], pa.string()))
        elif col.type == f.type:
            arrays.append(col)
        else:
            try:
                arrays.append(col.cast(f.type))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                # e.g. structs with different field sets: rebuild from Python values.
                arrays.append(pa.array(col.to_pylist(), f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _order(names: Iterable[str]) -> list[str]:
    names = list(names)
    lead = [c for c in LOCATION_COLUMNS if c in names]
    return lead + sorted(n for n in names if n not in LOCATION_COLUMNS)


def _assemble(root: Path, manifest: Manifest, parts: dict[str, Path], report_fp: str
              ) -> tuple[int, list[str], list[str]]:
    """Write figures.parquet from the parts, in manifest order; return rows, columns, json."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    shards = manifest.get("shards", [])
    schemas = [pq.read_schema(parts[s["sha256"]]) for s in shards]
    if not schemas:
        schemas = [records_table([]).schema]
    unified, json_cols = _unify(schemas)
    extra = [pa.field("shard", pa.string()), pa.field("subset", pa.string()),
             pa.field("dataset_version", pa.string())]
    full = pa.schema(list(unified) + extra)
    full = pa.schema([full.field(n) for n in _order(full.names)], metadata={
        _META_FORMAT: EXPORT_FORMAT.encode(),
        _META_VERSION: manifest["dataset_version"].encode(),
        _META_REPORT: report_fp.encode(),
        _META_JSON_COLUMNS: json.dumps(sorted(json_cols)).encode(),
    })
    path = root / META_DIR / "figures.parquet"
    rows = 0
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, full) as writer:
        for s in shards:
            part = pq.read_table(parts[s["sha256"]])
            n = part.num_rows
            part = _conform(part, unified, json_cols)
            for name, value in (("shard", s["path"]), ("subset", s["subset"]),
                                ("dataset_version", manifest["dataset_version"])):
                part = part.append_column(name, pa.array([value] * n, pa.string()))
            writer.write_table(part.select(full.names).cast(full))
            rows += n
    return rows, full.names, sorted(json_cols)


def article_columns(figure_columns: Iterable[str]) -> list[str]:
    """The figures columns that describe the article rather than the figure.

    jats.Article's fields (``id`` is ``article_id`` in samples), the extra article-level keys of
    schema.article_fields, the Entrez fields (enrich.ENTREZ_FIELDS: PubMed describes articles)
    and every ``article_*`` / ``entrez_*`` column.
    """
    from biomedica_kit.etl.jats import Article
    from biomedica_kit.etl.pubmed import ENTREZ_FIELDS

    known = {f.name for f in fields(Article)} - {"id", "figures"}
    known |= set(_ARTICLE_EXTRA) | set(ENTREZ_FIELDS)
    cols = [c for c in figure_columns if c != "article_id" and (
        c in known or c.startswith(_ARTICLE_PREFIXES))]
    first = [c for c in _ARTICLE_FIRST if c in cols]
    return first + sorted(c for c in cols if c not in first)


def _build_articles(root: Path, figure_columns: list[str], version: str) -> int:
    """articles.parquet from figures.parquet (+ report tables), written atomically by DuckDB."""
    import duckdb

    figs = root / META_DIR / "figures.parquet"
    path = root / META_DIR / "articles.parquet"
    rep, skips = root / "report" / "articles.parquet", root / "report" / "skips.parquet"
    con = duckdb.connect()
    try:
        with atomic_path(path) as tmp:
            if "article_id" not in figure_columns:  # an empty dataset: no samples, no articles
                body = "SELECT NULL::VARCHAR AS article_id, 0::BIGINT AS n_figures LIMIT 0"
            else:
                cols = article_columns(figure_columns)
                anys = "".join(f", any_value({quote_ident(c)}) AS {quote_ident(c)}"
                               for c in cols)
                f_sql = (f"SELECT article_id, count(*)::BIGINT AS n_figures, "
                         f"list_sort(list(DISTINCT shard)) AS shards{anys} "
                         f"FROM read_parquet({sql_literal(figs)}) GROUP BY article_id")
                if rep.is_file() and skips.is_file():
                    r_sql = (f"SELECT id, sum(n_figures)::BIGINT AS n_fig_elements, "
                             f"sum(n_images)::BIGINT AS n_images "
                             f"FROM read_parquet({sql_literal(rep)}) GROUP BY id")
                    s_sql = (f"SELECT article_id AS id, count(*)::BIGINT AS n_skipped "
                             f"FROM read_parquet({sql_literal(skips)}) GROUP BY article_id")
                else:
                    r_sql = ("SELECT NULL::VARCHAR AS id, NULL::BIGINT AS n_fig_elements, "
                             "NULL::BIGINT AS n_images LIMIT 0")
                    s_sql = "SELECT NULL::VARCHAR AS id, NULL::BIGINT AS n_skipped LIMIT 0"
                body = (
                    f"WITH f AS ({f_sql}), r AS ({r_sql}), s AS ({s_sql}) "
                    f"SELECT f.article_id{''.join(', f.' + quote_ident(c) for c in cols)}, "
                    f"f.n_figures, r.n_fig_elements, r.n_images, "
                    f"CASE WHEN r.id IS NULL THEN NULL ELSE coalesce(s.n_skipped, 0) "
                    f"END::BIGINT AS n_skipped, f.shards, {sql_literal(version)} AS "
                    f"dataset_version FROM f LEFT JOIN r ON r.id = f.article_id "
                    f"LEFT JOIN s ON s.id = f.article_id ORDER BY f.article_id")
            con.execute(f"COPY ({body}) TO {sql_literal(tmp)} (FORMAT parquet, KV_METADATA "
                        f"{{{json.dumps(_META_VERSION.decode())}: {sql_literal(version)}}})")
            (n,) = con.execute(
                f"SELECT count(*) FROM read_parquet({sql_literal(tmp)})").fetchone() or (0,)
    finally:
        con.close()
    return n


def _report_fingerprint(root: Path) -> str:
    """Size and mtime of the report tables: articles.parquet depends on them too."""
    out = []
    for name in ("articles.parquet", "skips.parquet"):
        p = root / "report" / name
        st = p.stat() if p.is_file() else None
        out.append(f"{name}:{st.st_size}:{st.st_mtime_ns}" if st else f"{name}:-")
    return ";".join(out)


def _file_meta(path: Path) -> dict[bytes, bytes]:
    import pyarrow.parquet as pq

    try:
        return pq.read_schema(path).metadata or {}
    except (OSError, ValueError):
        return {}


def is_current(dataset: str | os.PathLike) -> bool:
    """Whether the metadata tables describe the dataset's current manifest."""
    root = Path(dataset)
    figs, arts = root / META_DIR / "figures.parquet", root / META_DIR / "articles.parquet"
    if not (figs.is_file() and arts.is_file()):
        return False
    version = read_manifest(root)["dataset_version"].encode()
    fm, am = _file_meta(figs), _file_meta(arts)
    return (fm.get(_META_FORMAT) == EXPORT_FORMAT.encode() and fm.get(_META_VERSION) == version
            and fm.get(_META_REPORT) == _report_fingerprint(root).encode()
            and am.get(_META_VERSION) == version)


def export(dataset: str | os.PathLike, *, force: bool = False,
           workers: int | None = None) -> ExportSummary:
    """Export (or refresh) ``DATASET/metadata/{figures,articles}.parquet``; see module doc.

    ``force`` re-reads every shard. ``workers`` processes read shards in parallel (default:
    all cores; 1 reads in this process).
    """
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    root = Path(dataset)
    manifest = read_manifest(root)
    version = manifest["dataset_version"]
    meta_dir = root / META_DIR
    figs, arts = meta_dir / "figures.parquet", meta_dir / "articles.parquet"
    shards = manifest.get("shards", [])
    summary = ExportSummary(dataset=str(root), dataset_version=version,
                            figures_path=str(figs), articles_path=str(arts), shards=len(shards))
    if not force and is_current(root):
        md = pq.read_metadata(figs)
        summary.rows = md.num_rows
        summary.articles = pq.read_metadata(arts).num_rows
        summary.columns = md.schema.to_arrow_schema().names
        summary.json_columns = json.loads(_file_meta(figs).get(_META_JSON_COLUMNS, b"[]"))
        summary.shards_cached = len(shards)
        summary.up_to_date = True
        summary.seconds = round(time.perf_counter() - t0, 3)
        return summary

    parts_dir = meta_dir / PARTS_DIR
    parts_dir.mkdir(parents=True, exist_ok=True)
    parts = {s["sha256"]: parts_dir / f"{s['sha256']}.parquet" for s in shards}
    todo: list[tuple[str, Path]] = []
    for s in shards:
        part = parts[s["sha256"]]
        stale = force or _file_meta(part).get(_META_FORMAT) != EXPORT_FORMAT.encode()
        if stale and all(t[1] != part for t in todo):  # identical shards share one part
            todo.append((s["path"], part))
    _read_parts(root, todo, workers)
    summary.shards_read = [t[0] for t in todo]
    summary.shards_cached = len(shards) - len(todo)
    keep = {p.name for p in parts.values()}
    for p in parts_dir.iterdir():
        if p.suffix == ".parquet" and p.name not in keep:
            p.unlink()
            summary.parts_removed += 1

    rows, columns, json_cols = _assemble(root, manifest, parts, _report_fingerprint(root))
    summary.rows, summary.columns, summary.json_columns = rows, columns, json_cols
    summary.articles = _build_articles(root, columns, version)
    summary.seconds = round(time.perf_counter() - t0, 3)
    return summary


def _read_parts(root: Path, todo: list[tuple[str, Path]], workers: int | None) -> None:
    workers = workers or os.cpu_count() or 1
    jobs = [(str(root / rel), str(part)) for rel, part in todo]
    if workers <= 1 or len(jobs) <= 1:
        for shard, part in jobs:
            _export_shard(shard, part)
        return
    # A fork server, not fork: a forked worker would inherit the caller's dataset lock (export
    # runs inside apply-labels and enrich) and, outliving a killed caller, hold it for good.
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context) as pool:
        for fut in [pool.submit(_export_shard, shard, part) for shard, part in jobs]:
            fut.result()
