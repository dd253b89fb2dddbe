"""MeSH roll-up to NLM's tree categories (biomedica_kit.etl.mesh)."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from pubmed_corpus import (
    NO_RECORD_PMID,
)

from biomedica_kit.enrich.table import entrez_table
from biomedica_kit.etl.mesh import (
    MESH_CATEGORIES,
    load_mesh_descriptors,
    mesh_rollup,
    mesh_top_categories,
)

pytestmark = pytest.mark.usefixtures("loopback_only")


# ---------------------------------------------------------------------------------------------
# MeSH rollup
# ---------------------------------------------------------------------------------------------

def test_load_mesh_descriptors_reads_each_records_own_fields(descriptor_file: Path):
    desc = load_mesh_descriptors(descriptor_file)
    assert desc == {
        "D009369": ["C04"],
        "D001943": ["C04.588.180", "C17.800.090.500"],
        "D003920": ["C18.452.394.750", "C19.246"],
        "D000818": ["B01"],
        "D006801": ["B01.050.150.900.649.313.988.400.112.400.400"],
    }
    assert desc.names["D009369"] == "Neoplasms" and desc.names["D006801"] == "Humans"
    assert desc.tree_names == {"C04": "Neoplasms", "B01": "Animals"}
    gz = descriptor_file.with_suffix(".xml.gz")
    gz.write_bytes(gzip.compress(descriptor_file.read_bytes()))
    assert load_mesh_descriptors(gz) == desc


def test_mesh_top_categories_maps_to_the_16_categories_and_second_level_trees():
    assert len(MESH_CATEGORIES) == 16
    result = mesh_top_categories(
        ["C04.588.180", "C17.800.090.500", "B01.050.150.900.649.313.988.400.112.400.400", "C04"]
    )
    assert result.codes == ("B", "C")
    assert result.names == ("Organisms", "Diseases")
    assert result.trees == ("B01", "C04", "C17")
    assert mesh_top_categories(["Z01.107", "V02.600", "E01"]).names == (
        "Analytical, Diagnostic and Therapeutic Techniques, and Equipment",
        "Publication Characteristics",
        "Geographicals",
    )
    for bad in ("C4", "X01", "C04.58", "D009369"):
        with pytest.raises(ValueError, match="not a MeSH tree number"):
            mesh_top_categories([bad])


def test_mesh_rollup_of_a_real_record(descriptor_file: Path, parsed: dict[str, dict]):
    desc = load_mesh_descriptors(descriptor_file)
    rec = parsed["38147649"]  # Humans, Animals, Mice, ...
    result = mesh_rollup([m["ui"] for m in rec["mesh"]], desc)
    assert (result.codes, result.trees) == (("B",), ("B01",))
    assert "D006801" not in result.unknown_uis and "D051379" in result.unknown_uis
    assert len(result.unknown_uis) == len(rec["mesh"]) - 2
    diabetes = mesh_rollup(["D003920", "D001943"], desc)
    assert diabetes.trees == ("C04", "C17", "C18", "C19")


def test_entrez_table_fills_rollup_columns_with_descriptors(
    filled_cache: Path, descriptor_file: Path
):
    desc = load_mesh_descriptors(descriptor_file)
    table = entrez_table(["38147649", NO_RECORD_PMID], filled_cache, descriptors=desc)
    assert table.column("mesh_categories").to_pylist() == [["Organisms"], None]
    assert table.column("mesh_trees").to_pylist() == [["B01"], None]
    assert table.column("mesh_major_categories").to_pylist() == [[], None]
    assert entrez_table(["38147649"], filled_cache).column("mesh_categories").to_pylist() == [None]
