"""Metadata export, the DuckDB/Polars query layer, query helpers and the query CLI, on real data."""

from __future__ import annotations

import csv
import io
import json
import re
import tarfile
from collections import Counter
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from corpus_paths import ROOT, SAMPLE

from biomedica_kit.cli.main import main
from biomedica_kit.dataset.changes import apply_changes
from biomedica_kit.dataset.manifest import read_manifest
from biomedica_kit.dataset.shards import iter_samples
from biomedica_kit.dataset.tario import iter_tar_files
from biomedica_kit.etl.build import BuildConfig, build
from biomedica_kit.tables import export as metadata
from biomedica_kit.tables import query
from biomedica_kit.tables.connect import connect, lazy


@pytest.fixture(scope="module")
def sample_ds(tmp_path_factory) -> Path:
    """data/sample/packages in shards of 3 samples (several shards to cache and re-read)."""
    out = tmp_path_factory.mktemp("meta") / "sample"
    build(SAMPLE, out, workers=1, progress=False, config=BuildConfig(shard_max_samples=3))
    metadata.export(out, workers=1)
    return out


@pytest.fixture(scope="module")
def corpus_ds(corpus_dataset) -> Path:
    """The real shared corpus (commercial and other subsets), exported."""
    metadata.export(corpus_dataset, workers=1)
    return corpus_dataset


@pytest.fixture
def fresh_ds(tmp_path) -> Path:
    """A dataset a test may change (new versions, labels...)."""
    out = tmp_path / "ds"
    build(SAMPLE, out, workers=1, progress=False, config=BuildConfig(shard_max_samples=3))
    return out


def shard_samples(ds: Path) -> dict[str, tuple[str, dict[str, bytes]]]:
    """Every sample of the current manifest read straight from the tars: key -> (shard, group)."""
    out = {}
    for s in read_manifest(ds)["shards"]:
        for key, group in iter_samples(ds / s["path"]):
            out[key] = (s["path"], group)
    return out


def figures(ds: Path) -> list[dict]:
    return pq.read_table(ds / "metadata" / "figures.parquet").to_pylist()


# ----------------------------------------------------------------------------------- export


@pytest.mark.parametrize("name", ["sample_ds", "corpus_ds"])
def test_one_row_per_sample_with_manifest_location(name, request):
    ds = request.getfixturevalue(name)
    manifest = read_manifest(ds)
    rows = figures(ds)
    assert len(rows) == manifest["counts"]["samples"] > 0
    assert len({r["key"] for r in rows}) == len(rows)
    by_path = {s["path"]: s for s in manifest["shards"]}
    per_shard = Counter(r["shard"] for r in rows)
    assert per_shard == {p: s["samples"] for p, s in by_path.items()}
    for r in rows:
        assert r["subset"] == by_path[r["shard"]]["subset"] == r["license_category"]
        assert r["dataset_version"] == manifest["dataset_version"]
    arts = pq.read_table(ds / "metadata" / "articles.parquet").to_pylist()
    assert len(arts) == len({r["article_id"] for r in rows})
    assert sum(a["n_figures"] for a in arts) == len(rows)


@pytest.mark.parametrize("name", ["sample_ds", "corpus_ds"])
def test_offsets_and_captions_round_trip(name, request):
    ds = request.getfixturevalue(name)
    truth = shard_samples(ds)
    rows = figures(ds)
    assert {r["key"] for r in rows} == set(truth)
    for r in rows:
        shard, group = truth[r["key"]]
        assert r["shard"] == shard
        with open(ds / shard, "rb") as f:
            for member, ext in (("image", r["image_ext"]), ("txt", "txt"), ("json", "json")):
                f.seek(r[f"{member}_offset"])
                assert f.read(r[f"{member}_length"]) == group[ext], (r["key"], member)
        assert r["caption"] == group["txt"].decode("utf-8")
        meta = json.loads(group["json"])
        for k, v in meta.items():
            if k in ("key", "caption"):
                continue
            col = f"json_{k}" if k in metadata.LOCATION_COLUMNS else k
            expected = json.dumps(v, ensure_ascii=False, sort_keys=True) \
                if isinstance(v, dict) else v
            got = r[col]
            if isinstance(v, list) and v and isinstance(v[0], dict):
                got = [{kk: vv for kk, vv in d.items() if kk in v[i]} for i, d in enumerate(got)]
            assert got == expected, (r["key"], k)


def test_inline_refs_are_list_of_structs(corpus_ds):
    schema = pq.read_schema(corpus_ds / "metadata" / "figures.parquet")
    t = schema.field("inline_refs").type
    assert pa.types.is_list(t) and pa.types.is_struct(t.value_type)
    assert {f.name for f in t.value_type} == {"paragraph", "sentences", "section"}
    assert schema.field("image_context").type == pa.string()  # free-form mapping: JSON text
    assert json.loads(schema.metadata[b"biomedica_kit.json_columns"]) == ["image_context"]
    assert schema.field("year").type == pa.int64()  # null in one shard, int in another


class _CountingFile:
    """A file that records every (path, offset, size) read through it."""

    def __init__(self, path, reads):
        self.f = open(path, "rb")  # noqa: SIM115 - closed by __exit__
        self.path = Path(path)
        self.reads = reads

    def read(self, n=-1):
        pos = self.f.tell()
        data = self.f.read(n)
        self.reads.append((self.path, pos, len(data)))
        return data

    def seek(self, *a):
        return self.f.seek(*a)

    def tell(self):
        return self.f.tell()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_export_never_reads_image_bytes(fresh_ds, monkeypatch):
    reads: list[tuple[Path, int, int]] = []
    monkeypatch.setattr(metadata, "_open_shard", lambda p: _CountingFile(p, reads))
    metadata.export(fresh_ds, workers=1)
    rows = figures(fresh_ds)
    images: dict[Path, list] = {}
    for r in rows:
        images.setdefault(fresh_ds / r["shard"], []).append((r["image_offset"],
                                                             r["image_length"]))
    assert {p for p, _, _ in reads} == set(images)
    for path, pos, n in reads:  # no read touches any image's data
        for off, length in images[path]:
            assert pos + n <= off or pos >= off + length, (path, pos, n)
    total = sum(s["bytes"] for s in read_manifest(fresh_ds)["shards"])
    image_bytes = sum(length for spans in images.values() for _, length in spans)
    assert sum(n for _, _, n in reads) < total - image_bytes


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_tar_header_reader_matches_tarfile(fmt):
    long = "ü" * 120 if fmt != tarfile.USTAR_FORMAT else "u"
    members = [("a.jpg", b"x" * 1000), ("d" * 60 + "/" + "k" * 80 + ".txt", b"hello"),
               (long + ".json", b"{}"), ("empty.txt", b""), ("big.png", b"\1" * 70_000)]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        folder = tarfile.TarInfo("somedir")
        folder.type = tarfile.DIRTYPE
        t.addfile(folder)  # not a regular file: skipped
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    buf.seek(0)
    with tarfile.open(fileobj=buf) as t:
        ref = [(m.name, m.offset_data, m.size) for m in t if m.isfile()]
    buf.seek(0)
    assert list(iter_tar_files(buf)) == ref
    for name, off, size in ref:
        assert buf.getvalue()[off:off + size] == dict(members)[name]
    bad = bytearray(buf.getvalue())
    bad[ref[1][1] - 512 + 130] ^= 1  # flip a bit inside the second header's size field
    with pytest.raises(ValueError, match="checksum"):
        list(iter_tar_files(io.BytesIO(bytes(bad))))
    with pytest.raises(ValueError, match="truncated"):
        list(iter_tar_files(io.BytesIO(buf.getvalue()[:700])))


def test_incremental_export_rereads_only_changed_shards(fresh_ds, monkeypatch):
    calls: list[str] = []
    real = metadata._export_shard
    monkeypatch.setattr(metadata, "_export_shard",
                        lambda shard, part: calls.append(shard) or real(shard, part))
    first = metadata.export(fresh_ds, workers=1)
    n_shards = len(read_manifest(fresh_ds)["shards"])
    assert n_shards >= 3 and len(calls) == n_shards == len(first.shards_read)

    calls.clear()
    again = metadata.export(fresh_ds, workers=1)
    assert again.up_to_date and calls == [] and again.rows == first.rows

    # A new version adds future columns (taxonomy label, MeSH) to one sample only.
    target = "PMC12419688_koaf197-F1"
    apply_changes(fresh_ds, {target: {"primary_label": "Illustrative Diagrams",
                                      "mesh_terms": ["Arabidopsis", "Plants"]}},
                  kind="labels", fields=["primary_label", "mesh_terms"])
    changed = [s["path"] for s in read_manifest(fresh_ds)["shards"]
               if s["sha256"] not in {p.stem for p in (fresh_ds / "metadata" / "parts").iterdir()}]
    assert len(changed) == 1
    s = metadata.export(fresh_ds, workers=1)
    assert s.shards_read == changed and s.shards_cached == n_shards - 1
    assert [Path(c).relative_to(fresh_ds).as_posix() for c in calls] == changed
    assert s.parts_removed == 1
    assert len(list((fresh_ds / "metadata" / "parts").glob("*.parquet"))) == n_shards
    rows = {r["key"]: r for r in figures(fresh_ds)}
    assert len(rows) == first.rows
    assert rows[target]["primary_label"] == "Illustrative Diagrams"
    assert rows[target]["mesh_terms"] == ["Arabidopsis", "Plants"]
    assert all(r["primary_label"] is None for k, r in rows.items() if k != target)
    arts = {a["article_id"]: a for a in
            pq.read_table(fresh_ds / "metadata" / "articles.parquet").to_pylist()}
    assert arts["PMC12419688"]["mesh_terms"] == ["Arabidopsis", "Plants"]
    assert "primary_label" not in arts["PMC12419688"]  # a figure field, not an article field

    calls.clear()
    forced = metadata.export(fresh_ds, force=True, workers=1)
    assert len(calls) == n_shards and forced.rows == first.rows
    assert not [p for p in (fresh_ds / "metadata").rglob(".tmp-*")]


def test_conflicting_types_become_json_text(fresh_ds):
    shards = read_manifest(fresh_ds)["shards"]
    k1 = next(iter_samples(fresh_ds / shards[0]["path"]))[0]
    k2 = next(iter_samples(fresh_ds / shards[-1]["path"]))[0]
    apply_changes(fresh_ds, {k1: {"custom": 5}, k2: {"custom": ["a", "b"]}}, kind="test",
                  fields=["custom"])
    s = metadata.export(fresh_ds, workers=1)
    assert "custom" in s.json_columns
    rows = {r["key"]: r for r in figures(fresh_ds)}
    assert json.loads(rows[k1]["custom"]) == 5
    assert json.loads(rows[k2]["custom"]) == ["a", "b"]


def test_articles_table_real_values(sample_ds):
    arts = {a["article_id"]: a for a in
            pq.read_table(sample_ds / "metadata" / "articles.parquet").to_pylist()}
    report = pq.read_table(sample_ds / "report" / "articles.parquet").to_pylist()
    skips = Counter(r["article_id"] for r in
                    pq.read_table(sample_ds / "report" / "skips.parquet").to_pylist())
    plant = arts["PMC12419688"]
    assert (plant["pmcid"], plant["journal"], plant["year"], plant["license_category"]) == (
        "PMC12419688", "The Plant Cell", 2025, "commercial")
    assert plant["doi"] == "10.1093/plcell/koaf197" and plant["pmid"] == "40795775"
    per_article = Counter(r["article_id"] for r in figures(sample_ds))
    for aid, a in arts.items():
        rep = [r for r in report if r["id"] == aid]
        assert a["n_figures"] == per_article[aid]
        assert a["n_images"] == sum(r["n_images"] for r in rep)
        assert a["n_skipped"] == skips[aid]
        assert a["n_images"] == a["n_figures"] + a["n_skipped"]
        assert a["shards"] == sorted({r["shard"] for r in figures(sample_ds)
                                      if r["article_id"] == aid})


# ------------------------------------------------------------------------------ query layer


def test_connect_views_and_optional_tables(fresh_ds):
    con = connect(fresh_ds)
    assert {"figures", "articles", "report_articles", "skips"} <= set(query.views(con))
    assert not {"labels", "entrez", "embeddings", "figures_labeled"} & set(query.views(con))
    keys = [r[0] for r in con.execute("SELECT key FROM figures ORDER BY key").fetchall()]

    (fresh_ds / "labels").mkdir()
    pq.write_table(pa.table({"key": keys[:2], "primary_label": ["Microscopy", "Plots"]}),
                   fresh_ds / "labels" / "v1.parquet")
    pq.write_table(pa.table({"pmid": ["40795775"], "status": ["ok"],
                             "mesh_terms": [["Arabidopsis"]]}),
                   fresh_ds / "metadata" / "entrez.parquet")
    (fresh_ds / "embeddings" / "clip").mkdir(parents=True)
    pq.write_table(pa.table({"key": keys, "vector": [[0.5, 1.0]] * len(keys)}),
                   fresh_ds / "embeddings" / "clip" / "part-0.parquet")
    con = connect(fresh_ds)
    assert {"labels", "entrez", "embeddings", "figures_labeled"} <= set(query.views(con))
    assert con.execute("SELECT DISTINCT model FROM embeddings").fetchall() == [("clip",)]
    lab = query.label_counts(con)
    assert dict(zip(lab["primary_label"], lab["n"], strict=True)) == {
        "Microscopy": 1, "Plots": 1, None: len(keys) - 2}
    mesh = query.mesh_counts(con)
    n_articles = con.execute("SELECT count(DISTINCT article_id) FROM figures").fetchone()[0]
    assert n_articles == 14  # the bundled sample's articles with samples
    assert mesh.to_dicts() == [{"mesh_terms": "Arabidopsis", "n": 1, "share": 1 / n_articles}]
    lf = lazy(fresh_ds, "figures")
    assert lf.select(pl.len()).collect().item() == len(keys)


def test_read_only_connection_cannot_touch_other_files(sample_ds, tmp_path):
    con = connect(sample_ds, read_only=True)
    assert con.execute("SELECT count(*) FROM figures").fetchone()[0] > 0
    with pytest.raises(duckdb.Error):
        con.execute(f"COPY figures TO '{tmp_path / 'x.csv'}'")
    with pytest.raises(duckdb.Error):
        con.execute("SELECT * FROM read_text('/etc/hostname')")
    with pytest.raises(duckdb.Error):
        con.execute("SET enable_external_access = true")
    assert not (tmp_path / "x.csv").exists()


def _expected(rows, col, *, unnest=False):
    c: Counter = Counter()
    for r in rows:
        for v in (set(r[col] or []) if unnest else [r[col]]):
            c[v] += 1
    return c


def test_helpers_count_the_real_content(corpus_ds):
    con = connect(corpus_ds)
    truth = [json.loads(g["json"]) for _, g in shard_samples(corpus_ds).values()]
    arts = {m["article_id"]: m for m in truth}
    # Known articles of the corpus: PMC12419688 is CC BY (commercial), eLife 32671 has no licence.
    assert arts["PMC12419688"]["license_category"] == "commercial"
    assert arts["elife-32671"]["license_category"] == "other"

    lic = query.license_counts(con)
    assert dict(zip(lic["license_category"], lic["n"], strict=True)) == \
        _expected(truth, "license_category")
    assert lic["share"].sum() == pytest.approx(1.0)
    lic_a = query.license_counts(con, per="articles")
    assert dict(zip(lic_a["license_category"], lic_a["n"], strict=True)) == \
        _expected(arts.values(), "license_category")
    years = query.year_counts(con)
    assert dict(zip(years["year"], years["n"], strict=True)) == _expected(truth, "year")
    assert years["year"].to_list()[-1] is None  # unknown year last, years ascending
    j = query.journal_counts(con)
    assert dict(zip(j["journal"], j["n"], strict=True)) == _expected(arts.values(), "journal")
    kw = query.keyword_counts(con, per="figures", limit=None)
    assert dict(zip(kw["keywords"], kw["n"], strict=True)) == \
        _expected(truth, "keywords", unnest=True)
    subj = query.subject_counts(con, limit=None)
    assert dict(zip(subj["subjects"], subj["n"], strict=True)) == \
        _expected(arts.values(), "subjects", unnest=True)
    at = query.article_type_counts(con)
    assert dict(zip(at["article_type"], at["n"], strict=True)) == \
        _expected(arts.values(), "article_type")

    fpa = query.figures_per_article(con)
    assert dict(zip(fpa["n_figures"], fpa["articles"], strict=True)) == \
        Counter(Counter(m["article_id"] for m in truth).values())

    ct = query.crosstab(con, "year", "license_category")
    expected = Counter((m["year"], m["license_category"]) for m in truth)
    for row in ct.to_dicts():
        for cat in ct.columns[1:]:
            assert row[cat] == expected.get((row["year"], cat), 0)
    assert ct.select(pl.exclude("year")).sum().sum_horizontal().item() == len(truth)

    top = query.top_n(con, "figure_kind", 1)
    kind, n = Counter(m["figure_kind"] for m in truth).most_common(1)[0]
    assert top.to_dicts()[0]["figure_kind"] == kind and top["n"][0] == n
    ov = query.overview(con)
    assert ov["figures"] == len(truth) and ov["articles"] == len(arts)


def test_missing_facets_return_none_with_a_message(corpus_ds):
    con = connect(corpus_ds)
    with pytest.warns(query.NotAvailable, match="MeSH"):
        assert query.mesh_counts(con) is None
    with pytest.warns(query.NotAvailable, match="primary_label"):
        assert query.label_counts(con) is None
    with pytest.warns(query.NotAvailable):
        assert query.count_by(con, "mesh_terms") is None
    with pytest.warns(query.NotAvailable):
        assert query.crosstab(con, "year", "primary_label") is None


def test_filters_are_bound_not_formatted(corpus_ds):
    con = connect(corpus_ds)
    total = con.execute("SELECT count(*) FROM figures").fetchone()[0]
    hostile = "x' OR '1'='1"
    assert query.select(con, filters={"key": hostile}).height == 0
    drop = "commercial'; DROP VIEW figures; --"
    assert query.count_by(con, "license_category", filters={"license_category": drop}).height == 0
    assert con.execute("SELECT count(*) FROM figures").fetchone()[0] == total
    with pytest.raises(ValueError, match="unknown column"):
        query.count_by(con, "year", filters={"year; DROP VIEW figures": 1})
    with pytest.raises(ValueError, match="unknown column"):
        query.select(con, cols=['key" FROM figures; --'])
    # Real filters: equality, IN, operators, list membership.
    got = query.select(con, cols=["key"], filters={"license_category": "commercial",
                                                     "year__ge": 2016}, order_by=["key"])
    want = con.execute("SELECT key FROM figures WHERE license_category = 'commercial' "
                       "AND year >= 2016 ORDER BY key").fetchall()
    assert got["key"].to_list() == [w[0] for w in want] and want
    kw = con.execute("SELECT keywords[1] FROM figures WHERE len(keywords) > 0").fetchone()[0]
    got = query.select(con, cols=["key"], filters={"keywords": kw})
    want = con.execute("SELECT key FROM figures WHERE list_contains(keywords, ?)", [kw]).fetchall()
    assert sorted(got["key"]) == sorted(w[0] for w in want) and want
    assert query.select(con, filters={"year": None}).height == con.execute(
        "SELECT count(*) FROM figures WHERE year IS NULL").fetchone()[0]
    assert query.select(con, filters={"license_category": ["other", "noncommercial"]}).height == \
        con.execute("SELECT count(*) FROM figures WHERE license_category <> 'commercial'"
                    ).fetchone()[0]


# ------------------------------------------------------------------------------------- CLI


SQL = "SELECT key, year, keywords FROM figures ORDER BY key"


def test_export_cli(fresh_ds):
    r = CliRunner().invoke(main, ["export", str(fresh_ds)])
    assert r.exit_code == 0, r.output
    n = read_manifest(fresh_ds)["counts"]["samples"]
    assert f": {n} figures" in r.output
    r = CliRunner().invoke(main, ["export", str(fresh_ds)])
    assert r.exit_code == 0 and "up to date" in r.output


def test_query_cli_formats(corpus_ds, tmp_path):
    want = duckdb.connect().execute(
        f"SELECT key, year, keywords FROM read_parquet('{corpus_ds}/metadata/figures.parquet') "
        "ORDER BY key").fetchall()
    runner = CliRunner()

    r = runner.invoke(main, ["query", str(corpus_ds), SQL])
    assert r.exit_code == 0, r.output
    assert f"({len(want)} rows)" in r.output and want[0][0] in r.output

    r = runner.invoke(main, ["query", str(corpus_ds), SQL, "--format", "csv"])
    assert r.exit_code == 0, r.output
    rows = list(csv.reader(io.StringIO(r.output)))
    assert rows[0] == ["key", "year", "keywords"]
    assert [(k, int(y) if y else None, json.loads(kw)) for k, y, kw in rows[1:]] == \
        [tuple(w) for w in want]

    r = runner.invoke(main, ["query", str(corpus_ds), SQL, "--format", "json"])
    assert r.exit_code == 0, r.output
    assert [tuple(json.loads(line).values()) for line in r.output.splitlines()] == \
        [tuple(w) for w in want]

    out = tmp_path / "q.parquet"
    r = runner.invoke(main, ["query", str(corpus_ds), SQL, "--format", "parquet", "--out",
                             str(out)])
    assert r.exit_code == 0, r.output
    assert [tuple(d.values()) for d in pq.read_table(out).to_pylist()] == [tuple(w) for w in want]

    out_csv = tmp_path / "q.csv"
    r = runner.invoke(main, ["query", str(corpus_ds), SQL, "--format", "csv", "--out",
                             str(out_csv)])
    assert r.exit_code == 0 and len(out_csv.read_text().splitlines()) == len(want) + 1

    r = runner.invoke(main, ["query", str(corpus_ds), SQL, "--format", "parquet"])
    assert r.exit_code != 0 and "--out" in r.output
    r = runner.invoke(main, ["query", str(corpus_ds), "SELECT nope FROM figures"])
    assert r.exit_code == 1 and "nope" in r.output


def test_data_dictionary_lists_every_column(corpus_ds):
    """docs/data_dictionary.md documents every exported column (and the enrichment fields)."""
    from biomedica_kit.etl.pubmed import ENTREZ_FIELDS

    doc = (ROOT / "docs" / "data_dictionary.md").read_text()
    documented = set(re.findall(r"^\| `([a-z0-9_]+)` \|", doc, flags=re.M))
    for table in ("figures", "articles"):
        names = pq.read_schema(corpus_ds / "metadata" / f"{table}.parquet").names
        assert set(names) - documented == set(), table
    assert set(ENTREZ_FIELDS) - documented == set()


def test_parallel_export_equals_serial(fresh_ds):
    metadata.export(fresh_ds, workers=1)
    serial = pq.read_table(fresh_ds / "metadata" / "figures.parquet")
    s = metadata.export(fresh_ds, force=True, workers=2)  # a spawned process pool
    assert len(s.shards_read) == len(read_manifest(fresh_ds)["shards"]) > 1
    assert pq.read_table(fresh_ds / "metadata" / "figures.parquet").equals(serial)
