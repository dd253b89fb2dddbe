"""`biomedica query` is read-only by default (issue 9, item 13); --full-session opts out."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from biomedica_kit.cli import main
from biomedica_kit.tables.connect import ReadOnlySQL, check_read_only_sql, connect


def _run(ds: Path, *args: str):
    return CliRunner().invoke(main, ["query", str(ds), *args], catch_exceptions=False)


def test_select_runs_and_prints_rows(corpus_dataset: Path):
    res = _run(corpus_dataset, "SELECT count(*) AS n FROM figures")
    assert res.exit_code == 0, res.output
    assert "n" in res.output and "7" in res.output  # the real corpus builds 7 samples


@pytest.mark.parametrize("sql, kind", [
    ("COPY (SELECT * FROM figures) TO '{tmp}/leak.csv'", "COPY"),
    ("SELECT 1; COPY (SELECT 1) TO '{tmp}/leak.csv'", "COPY"),
    ("ATTACH '{tmp}/x.duckdb' AS x", "ATTACH"),
    ("INSTALL httpfs", "LOAD"),
    ("SET enable_external_access = true", "SET"),
    ("CREATE TABLE t AS SELECT 1", "CREATE"),
])
def test_writes_attach_installs_and_settings_are_refused(corpus_dataset: Path, tmp_path: Path,
                                                          sql: str, kind: str):
    res = _run(corpus_dataset, sql.format(tmp=tmp_path))
    assert res.exit_code != 0
    assert f"{kind} statements are refused" in res.output
    assert not list(tmp_path.iterdir())


def test_files_outside_the_dataset_cannot_be_read(corpus_dataset: Path, tmp_path: Path):
    secret = tmp_path / "secret.csv"
    secret.write_text("a\n42\n")
    res = _run(corpus_dataset, f"SELECT * FROM read_csv('{secret}')")
    assert res.exit_code != 0 and "42" not in res.output
    assert "Permission Error" in res.output or "disabled" in res.output, res.output


def test_full_session_allows_a_copy(corpus_dataset: Path, tmp_path: Path):
    res = _run(corpus_dataset, f"COPY (SELECT key FROM figures) TO '{tmp_path}/keys.csv'",
               "--full-session")
    assert res.exit_code == 0, res.output
    assert len((tmp_path / "keys.csv").read_text().splitlines()) == 8  # header + 7 keys


def test_the_check_sees_through_comments(corpus_dataset: Path):
    con = connect(corpus_dataset, read_only=True)
    with pytest.raises(ReadOnlySQL, match="COPY"):
        check_read_only_sql(con, "/* SELECT */ COPY (SELECT 1) TO 'x.csv' -- ;")
    check_read_only_sql(con, "-- a comment\nWITH a AS (SELECT 1) SELECT * FROM a")
