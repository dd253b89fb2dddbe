"""Sources: file list parsing, selection, package identity and hashing, archive checks."""

from __future__ import annotations

import gzip
import shutil
import zipfile

import pytest
from mirror_server import build_mirror, citation, package_path, tar_folder

from biomedica_kit.ingest.fetch import archive_problem
from biomedica_kit.ingest.sources import (
    LAST_UPDATED,
    PackageRef,
    Selection,
    citation_year,
    discover_local,
    iter_file_list,
    license_category,
    package_sha256,
    parse_date_bound,
    parse_pmcids,
    parse_years,
    refs_from_file_list,
    stat_package,
    unsafe_file_path,
)


@pytest.fixture(scope="module")
def mirror(tmp_path_factory, corpus):
    root = tmp_path_factory.mktemp("mirror")
    build_mirror(corpus, root)
    return root


def test_file_list_rows_and_refs(mirror):
    rows = list(iter_file_list(mirror / "oa_file_list.csv"))
    assert [r["File"] for r in rows][:2] == [package_path("PMC12419688"),
                                             package_path("PMC7417471")]
    row = rows[0]
    assert row["Accession ID"] == "PMC12419688" and row[LAST_UPDATED] == "2025-09-12 10:01:02"
    assert row["Article Citation"].startswith("Plant Cell. 2025")  # built from the real XML
    local = list(refs_from_file_list(rows[:1], str(mirror)))[0]
    remote = list(refs_from_file_list(rows[:1], "https://ftp.ncbi.nlm.nih.gov/pub/pmc/"))[0]
    assert local.location == str(mirror / row["File"]) and local.id == row["File"]
    assert remote.location == "https://ftp.ncbi.nlm.nih.gov/pub/pmc/" + row["File"]
    assert (local.name, local.pmcid, local.license) == ("PMC12419688", "PMC12419688", "CC BY")
    assert discover_local(mirror) == list(refs_from_file_list(rows, str(mirror)))


def test_file_list_needs_its_columns():
    with pytest.raises(ValueError, match="lacks columns"):
        list(iter_file_list(b"a,b\n1,2\n"))


@pytest.mark.parametrize("text, year", [
    ("Nucleic Acids Res. 2024 Sep 5; 52(15):e74", 2024),
    ("3 Biotech. 2012 Mar; 2(1):1-10", 2012),
    ("Breast Cancer Res. 2001 Nov 2; 3(1):55-60", 2001),
    ("", None), (None, None),
])
def test_citation_year(text, year):
    assert citation_year(text) == year


def test_license_categories_of_file_list_values():
    assert [license_category(v) for v in ("CC BY", "CC0", "CC BY-NC-ND", "CC BY-NC",
                                          "NO-CC CODE", "", None)] == [
        "commercial", "commercial", "noncommercial", "noncommercial", "other", None, None]


def test_selection_criteria(mirror):
    refs = discover_local(mirror)

    def names(sel):
        return [r.name for r in sel.apply(refs)]

    assert names(Selection(licenses=frozenset({"commercial"}))) == [
        "PMC12419688", "elife-19405", "PMC3460867", "PMC6385181", "PMC2599765", "PMC99999999"]
    assert names(Selection(licenses=frozenset({"other"}))) == ["elife-32671"]
    # A bare date includes its whole day; bounds are inclusive.
    assert names(Selection(since="2025-09-12", until="2025-09-12")) == ["PMC12419688"]
    assert names(Selection(since="2025-09-12 10:01:03")) == []
    assert names(Selection(until="2012")) == ["PMC3460867", "PMC2599765"]
    assert names(Selection(years=parse_years("2019-"))) == [
        "PMC12419688", "PMC7417471", "PMC6385181", "PMC12354728", "PMC99999999"]
    assert names(Selection(pmcids=parse_pmcids("pmc2599765, 3460867"))) == [
        "PMC3460867", "PMC2599765"]
    # Criteria combine; limit counts selected packages, in file-list order.
    assert names(Selection(licenses=frozenset({"commercial"}), since="2016", limit=2)) == [
        "PMC12419688", "elife-19405"]
    assert names(Selection(limit=0)) == []


def test_selection_rejects_bad_values():
    with pytest.raises(ValueError, match="licence categories"):
        Selection(licenses=frozenset({"cc-by"}))
    with pytest.raises(ValueError, match="not a date"):
        Selection(since="last week")
    with pytest.raises(ValueError, match="year range"):
        parse_years("recent")
    assert parse_years("2018") == (2018, 2018) and parse_years("-2001") == (0, 2001)
    with pytest.raises(ValueError, match="empty year range"):
        parse_years("2020-2015")


@pytest.mark.parametrize("value, start, end", [
    ("2024", "2024-01-01 00:00:00", "2024-12-31 23:59:59"),
    ("2024-02", "2024-02-01 00:00:00", "2024-02-31 23:59:59"),  # an upper bound, not a day
    ("2024-02-29", "2024-02-29 00:00:00", "2024-02-29 23:59:59"),
    ("2024-02-29T10:05", "2024-02-29 10:05:00", "2024-02-29 10:05:59"),
    ("2024-02-29 10:05:07", "2024-02-29 10:05:07", "2024-02-29 10:05:07"),
])
def test_date_bounds(value, start, end):
    assert (parse_date_bound(value), parse_date_bound(value, end=True)) == (start, end)


@pytest.mark.parametrize("value", ["2025-13-45", "2023-02-29", "2024-1-5", "2024-00", "20245",
                                   "2024-02-29 24:00", "yesterday"])
def test_dates_that_do_not_exist_are_refused(value):
    with pytest.raises(ValueError, match="not a date"):
        Selection(since=value)


def test_file_list_paths_must_stay_inside_a_local_source(tmp_path):
    assert [unsafe_file_path(p) for p in ("oa_package/1e/a1/PMC1.tar.gz", "../x.tar.gz",
                                          "/etc/passwd", "a/../../x", "C:\\x", "")] == [
        False, True, True, True, True, True]
    rows = [{"File": "oa_package/PMC1.tar.gz", "Accession ID": "PMC1"},
            {"File": "../PMC2.tar.gz", "Accession ID": "PMC2"}]
    good, bad = refs_from_file_list(rows, str(tmp_path))
    assert good.location == str(tmp_path / "oa_package/PMC1.tar.gz") and good.failure is None
    assert bad.failure.startswith("unsafe_path: file list path '../PMC2.tar.gz' is outside")
    # A remote mirror is left to the downloader, which refuses the same paths itself.
    (remote,) = refs_from_file_list(rows[1:], "https://example.org/pmc/")
    assert remote.failure is None


def test_licence_filter_excludes_packages_without_a_file_list(corpus, tmp_path):
    shutil.copy(corpus / "PMC12419688.tar.gz", tmp_path)
    refs = discover_local(tmp_path)
    assert Selection(licenses=frozenset({"commercial"})).apply(refs) == []
    assert Selection(pmcids=frozenset({"PMC12419688"})).apply(refs) == refs


def test_pmcids_from_a_file(tmp_path):
    f = tmp_path / "ids.txt"
    f.write_text("PMC1\n2, PMC3\n\n")
    assert parse_pmcids(str(f)) == {"PMC1", "PMC2", "PMC3"}
    assert parse_pmcids(["PMC4", "5"]) == {"PMC4", "PMC5"}


def test_package_ids_distinguish_archive_and_folder(corpus, tmp_path):
    shutil.copy(corpus / "PMC12419688.tar.gz", tmp_path)
    shutil.copytree(corpus / "PMC12419688", tmp_path / "PMC12419688")
    ids = sorted(r.id for r in discover_local(tmp_path))
    assert ids == ["PMC12419688", "PMC12419688.tar.gz"]
    assert PackageRef("x", "/a/b/PMC1.tar.gz", file="oa_package/aa/bb/PMC1.tar.gz").id == (
        "oa_package/aa/bb/PMC1.tar.gz")


def test_package_hash_is_of_content_only(corpus, tmp_path):
    a, b = tmp_path / "a" / "PMC12419688", tmp_path / "b" / "PMC12419688"
    shutil.copytree(corpus / "PMC12419688", a)
    shutil.copytree(corpus / "PMC12419688", b)
    import os

    os.utime(b / "koaf197.nxml", (4e9, 4e9))  # newer than anything copied
    assert package_sha256(a) == package_sha256(b)
    assert stat_package(a)[0] == stat_package(b)[0] and stat_package(a)[1] != stat_package(b)[1]
    (b / "koaf197f1.gif").unlink()
    assert package_sha256(a) != package_sha256(b)
    tgz = corpus / "PMC12419688.tar.gz"
    import hashlib

    assert package_sha256(tgz) == hashlib.sha256(tgz.read_bytes()).hexdigest()
    assert stat_package(tmp_path / "nope") is None


def test_archive_checks(corpus, tmp_path):
    good = tar_folder(corpus / "PMC3460867", "PMC3460867")
    p = tmp_path / "x.tar.gz"
    p.write_bytes(good)
    assert archive_problem(p, p.name) is None
    p.write_bytes(good[:-20])  # truncated: gzip trailer missing
    assert archive_problem(p, p.name)
    bad_crc = bytearray(good)
    bad_crc[-8] ^= 0xFF  # gzip CRC32 of the tar no longer matches
    p.write_bytes(bytes(bad_crc))
    assert "CRC" in archive_problem(p, p.name) or "crc" in archive_problem(p, p.name).lower()
    p.write_bytes(gzip.compress(b"not a tar at all" * 64))
    assert archive_problem(p, p.name)
    z = tmp_path / "x.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("a.xml", "<a/>" * 100)
    assert archive_problem(z, z.name) is None
    data = bytearray(z.read_bytes())
    data[40] ^= 0xFF  # inside the member's data
    z.write_bytes(bytes(data))
    assert archive_problem(z, z.name)


def test_citation_is_in_ncbi_format(corpus):
    c = citation((corpus / "PMC3460867" / "pone.0046493.nxml").read_bytes())
    assert c.startswith("PLoS ONE. 2012") or c.startswith("PLoS One. 2012"), c
    assert citation_year(c) == 2012 and "\n" not in c
