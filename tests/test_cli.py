"""The command line as users meet it (click's CliRunner, datasette's pattern): every option
documented, defaults read from the library, bad values refused before anything is written,
nothing-to-build and all-failed runs exit non-zero with a message saying why."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import click
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from eutils_server import EutilsServer, load_corpus_records

from biomedica_kit.cli.main import main
from biomedica_kit.cli.options import LazyDefault
from biomedica_kit.dataset.manifest import read_manifest
from biomedica_kit.etl.build import BuildConfig, build
from biomedica_kit.ingest.sources import LAST_UPDATED, write_file_list

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT.parent / "shared" / "corpus" / "figures"

#: Commands and options of the CLI before it was split into modules (users' scripts use them).
BEFORE = {
    "build": ["--cache", "--checkpoint-every", "--entrez-cache", "--fetch-threads", "--file-list",
              "--jpeg-quality", "--license", "--limit", "--max-side", "--no-resume", "--out",
              "--pmcids", "--pub-years", "--quiet", "--rate", "--ray", "--resume", "--retries",
              "--shard-bytes", "--shard-samples", "--since", "--source", "--timeout", "--until",
              "--workers"],
    "enrich": ["--api-key", "--cache", "--email", "--eutils-url", "--mesh-descriptors",
               "--offline", "--rate"],
    "export": ["--force", "--workers"],
    "parse": ["--indent"],
    "query": ["--format", "--full-session", "--out"],
    "report": ["--no-images", "--notebook", "--out", "--param", "--timeout", "-p"],
    "subset": ["--keys", "--out", "--shard-bytes", "--shard-samples", "--where"],
    "verify": [],
}


def options(cmd: click.Command) -> list[str]:
    return sorted(o for p in cmd.params for o in (*p.opts, *p.secondary_opts)
                  if o.startswith("-"))


def doc_sections() -> dict[str, str]:
    """docs/cli.md split at its headings, by the command each names (`biomedica NAME ...`,
    `biomedica GROUP NAME ...`)."""
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    out: dict[str, str] = {}
    for part in re.split(r"^#{2,3} ", text, flags=re.M)[1:]:
        m = re.match(r"`biomedica ([a-z][a-z-]*(?: [a-z][a-z-]*)*)", part)
        if m:
            out[m.group(1)] = part
    return out


def commands(group: click.Group = main, prefix: str = "") -> dict[str, click.Command]:
    """Every command by its full name, the subcommands of groups included."""
    out: dict[str, click.Command] = {}
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            out.update(commands(cmd, f"{prefix}{name} "))
        else:
            out[prefix + name] = cmd
    return out


def invoke(*args: str) -> click.testing.Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


# --------------------------------------------------------------------------- the surface


def test_the_commands_and_options_users_had_are_all_still_there():
    for name, opts in BEFORE.items():
        assert set(opts) <= set(options(main.commands[name])), name
    assert {"--refresh", "--max-negative-age"} <= set(options(main.commands["enrich"]))


def test_every_option_of_every_command_is_documented():
    sections = doc_sections()
    for name, cmd in commands().items():
        assert name in sections, f"docs/cli.md has no section for `biomedica {name}`"
        missing = [o for o in options(cmd) if f"`{o}" not in sections[name]
                   and f"/ `{o}`" not in sections[name]]
        assert not missing, f"docs/cli.md, `biomedica {name}`: {missing} not documented"


def test_defaults_are_the_librarys_and_the_docs_say_them():
    """Options whose default lives in the library show that value in --help and docs/cli.md."""
    from biomedica_kit.etl.config import CHECKPOINT_EVERY
    from biomedica_kit.ingest.fetch import FetchPolicy

    cfg, fetch = BuildConfig(), FetchPolicy()
    expected = {"--shard-samples": cfg.shard_max_samples, "--shard-bytes": cfg.shard_max_bytes,
                "--max-side": cfg.image.max_side, "--jpeg-quality": cfg.image.jpeg_quality,
                "--rate": fetch.rate, "--fetch-threads": fetch.threads,
                "--retries": fetch.retries, "--timeout": fetch.read_timeout,
                "--checkpoint-every": CHECKPOINT_EVERY}
    cmd = main.commands["build"]
    ctx = click.Context(cmd)
    lazy = {p.opts[0]: p for p in cmd.params if isinstance(p.default, LazyDefault)}
    assert set(lazy) == set(expected)
    section = doc_sections()["build"]
    help_text = invoke("build", "--help").output
    for opt, value in expected.items():
        assert lazy[opt].get_default(ctx) == value, opt
        row = next(line for line in section.splitlines() if line.startswith(f"| `{opt}`"))
        assert f"| {value} (" in row, (opt, row)
        assert f"[default: {value}" in " ".join(help_text.split()), opt


def test_cli_build_writes_what_the_library_build_writes(corpus, tmp_path):
    res = invoke("build", "--source", str(corpus), "--out", str(tmp_path / "cli"), "--quiet",
                 "--workers", "1")
    assert res.exit_code == 0, res.output
    s = build(corpus, tmp_path / "lib", workers=1, progress=False)
    assert res.output.splitlines() == [line.replace(str(tmp_path / "lib"), str(tmp_path / "cli"))
                                       for line in s.format_lines()[:-1]] + [
        res.output.splitlines()[-1]]
    cli, lib = read_manifest(tmp_path / "cli"), read_manifest(tmp_path / "lib")
    assert cli["config"] == lib["config"]
    assert cli["dataset_version"] == lib["dataset_version"] == s.dataset_version


# ------------------------------------------------------------------------ refused values


@pytest.mark.parametrize("args, says", [
    (["--max-side", "0"], "'--max-side': 0 is not in the range x>=1"),
    (["--max-side", "16"], "image max_side must be at least 32, got 16"),
    (["--jpeg-quality", "500"], "'--jpeg-quality': 500 is not in the range 1<=x<=100"),
    (["--since", "2025-13-45"], "'--since': not a date: '2025-13-45'"),
    (["--until", "2023-02-29"], "'--until': not a date: '2023-02-29'"),
    (["--license", "commercial,free"], "unknown licence categories ['free']"),
    (["--pub-years", "2020-2015"], "empty year range"),
    (["--pmcids", ",;"], "no PMCIDs in"),
    (["--shard-samples", "0"], "'--shard-samples': 0 is not in the range x>=1"),
    (["--workers", "0"], "'--workers': 0 is not in the range x>=1"),
    (["--timeout", "0"], "'--timeout': 0.0 is not in the range x>0"),
    (["--limit", "0"], "'--limit': 0 is not in the range x>=1"),
])
def test_bad_values_are_refused_before_anything_is_written(corpus, tmp_path, args, says):
    out = tmp_path / "ds"
    res = invoke("build", "--source", str(corpus), "--out", str(out), "--quiet", *args)
    assert res.exit_code == 2, res.output
    assert says in " ".join(res.output.split())
    assert not out.exists()


def test_library_config_refuses_what_the_cli_refuses():
    from biomedica_kit.etl.images import ImagePolicy
    from biomedica_kit.ingest.fetch import FetchPolicy

    with pytest.raises(ValueError, match="max_side must be at least 32, got 0"):
        BuildConfig(image=ImagePolicy(max_side=0))
    with pytest.raises(ValueError, match="jpeg_quality must be within 1..100"):
        BuildConfig(image=ImagePolicy(jpeg_quality=500))
    with pytest.raises(ValueError, match="threads must be at least 1"):
        FetchPolicy(threads=0)


# ----------------------------------------------------------------- nothing to build, failures


def test_a_folder_of_image_caption_pairs_is_not_a_source(tmp_path):
    out = tmp_path / "ds"
    res = invoke("build", "--source", str(FIGURES), "--out", str(out), "--quiet")
    assert res.exit_code == 1
    jpgs = len(list((FIGURES / "images").glob("*.jpg")))
    msg = " ".join(res.output.split())
    assert f"no packages in {FIGURES}: found {jpgs} .jpg" in msg
    assert "1 .jsonl" in msg and "no JATS/nXML article (.nxml, .xml)" in msg
    assert not out.exists()


def test_a_selection_matching_nothing_exits_1(corpus, tmp_path):
    from biomedica_kit.ingest.sources import discover_local

    res = invoke("build", "--source", str(corpus), "--out", str(tmp_path / "ds"), "--quiet",
                 "--pmcids", "PMC1", "--since", "2020")
    assert res.exit_code == 1
    assert (f"the selection (Last Updated >= 2020-01-01 00:00:00, 1 PMCIDs) matched none of "
            f"the {len(discover_local(corpus))} packages of {corpus}"
            ) in " ".join(res.output.split())
    assert not (tmp_path / "ds").exists()


def test_a_run_whose_every_package_failed_exits_1(corpus, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("PMC12419688.tar.gz", "elife-19405.tar.gz"):
        data = (corpus / name).read_bytes()
        (src / name).write_bytes(data[: len(data) // 2])  # truncated downloads
    out = tmp_path / "ds"
    res = invoke("build", "--source", str(src), "--out", str(out), "--quiet", "--workers", "1")
    assert res.exit_code == 1
    assert (f"all 2 packages processed by this run failed (truncated_archive=2); see {out}/"
            "report/articles.parquet") in " ".join(res.output.split())
    assert "packages 2  articles failed=2" in res.output  # the summary is printed first
    rows = pq.read_table(out / "report/articles.parquet").to_pylist()
    assert {r["reason"] for r in rows} == {"truncated_archive"}


def test_file_list_paths_outside_the_source_are_refused(corpus, tmp_path):
    src = tmp_path / "mirror"
    (src / "oa_package").mkdir(parents=True)
    shutil.copy(corpus / "elife-19405.tar.gz", src / "oa_package/elife-19405.tar.gz")
    outside = tmp_path / "elsewhere"  # a real package the file list must not reach
    outside.mkdir()
    shutil.copy(corpus / "PMC12419688.tar.gz", outside)
    row = {"Accession ID": "", LAST_UPDATED: "2025-01-01 00:00:00", "License": "CC BY"}
    write_file_list([{**row, "File": "oa_package/elife-19405.tar.gz"},
                     {**row, "File": "../elsewhere/PMC12419688.tar.gz"},
                     {**row, "File": str(outside / "PMC12419688.tar.gz")}],
                    src / "oa_file_list.csv")
    out = tmp_path / "ds"
    res = invoke("build", "--source", str(src), "--out", str(out), "--quiet", "--workers", "1")
    assert res.exit_code == 0, res.output
    rows = {r["package_id"]: r for r in
            pq.read_table(out / "report/articles.parquet").to_pylist()}
    assert rows["oa_package/elife-19405.tar.gz"]["status"] == "ok"
    for bad in ("../elsewhere/PMC12419688.tar.gz", str(outside / "PMC12419688.tar.gz")):
        assert (rows[bad]["status"], rows[bad]["reason"]) == ("failed", "unsafe_path")
        assert f"is outside {src}" in rows[bad]["detail"]
    keys = [k for s in read_manifest(out)["shards"] for k in [s["first_key"]]]
    assert keys == ["doi_10_7554_eLife_19405_fig1"]  # nothing was read from outside


# ---------------------------------------------------------------------------- enrich


WIRED_PMID = "23657305"  # a real PubMed record of the efetch corpus (see enrich/test_apply.py)


def test_enrich_refresh_and_max_negative_age(corpus, tmp_path):
    # Two real articles; the test's own file list gives elife-32671 the PMID of a real record.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("PMC12419688", "elife-32671"):
        shutil.copy(corpus / f"{name}.tar.gz", src)
    write_file_list([{"File": "PMC12419688.tar.gz", "PMID": "", "License": "CC BY"},
                     {"File": "elife-32671.tar.gz", "PMID": WIRED_PMID, "License": ""}],
                    src / "oa_file_list.csv")
    ds = tmp_path / "ds"
    build(src, ds, workers=1, progress=False)
    statuses = lambda: {r["pmid"]: r["status"]  # noqa: E731
                        for r in pq.read_table(ds / "metadata/entrez.parquet").to_pylist()}
    with EutilsServer({}) as empty:  # a server that answers empty sets
        res = invoke("enrich", str(ds), "--eutils-url", empty.base_url, "--rate", "50")
    assert res.exit_code == 0, res.output
    assert set(statuses().values()) == {"not_found"}
    with EutilsServer(load_corpus_records()) as good:
        res = invoke("enrich", str(ds), "--eutils-url", good.base_url, "--rate", "50")
        assert res.exit_code == 0 and not good.requests  # cached answers, not asked again
        assert statuses()[WIRED_PMID] == "not_found"
        res = invoke("enrich", str(ds), "--eutils-url", good.base_url, "--rate", "50",
                     "--refresh")
        assert res.exit_code == 0, res.output
        assert len(good.requests) == 1 and statuses()[WIRED_PMID] == "ok"
        assert "samples changed 5" in res.output
        # The other PMID is still not_found; a zero max age asks for it again, inf never.
        n = len(good.requests)
        invoke("enrich", str(ds), "--eutils-url", good.base_url, "--rate", "50",
               "--max-negative-age", "inf")
        assert len(good.requests) == n
        invoke("enrich", str(ds), "--eutils-url", good.base_url, "--rate", "50",
               "--max-negative-age", "0")
        assert len(good.requests) == n + 1
