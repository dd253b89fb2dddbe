"""MeSH roll-up: descriptors -> NLM's 16 top-level tree categories and second-level trees.

:func:`load_mesh_descriptors` streams NLM's descriptor file (``descYYYY.xml``, ~300 MB);
:func:`mesh_top_categories` and :func:`mesh_rollup` map tree numbers or descriptor UIs to
categories. Pure and dataset-free: the query layer, charts and enrichment all use it.
"""

from __future__ import annotations

import gzip
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from lxml import etree

from biomedica_kit.base.xml import collapsed_text

__all__ = ["MESH_CATEGORIES", "MeshCategories", "MeshDescriptors", "load_mesh_descriptors",
           "mesh_rollup", "mesh_top_categories"]

#: NLM's 16 top-level MeSH tree categories, keyed by tree letter.
MESH_CATEGORIES: dict[str, str] = {
    "A": "Anatomy",
    "B": "Organisms",
    "C": "Diseases",
    "D": "Chemicals and Drugs",
    "E": "Analytical, Diagnostic and Therapeutic Techniques, and Equipment",
    "F": "Psychiatry and Psychology",
    "G": "Phenomena and Processes",
    "H": "Disciplines and Occupations",
    "I": "Anthropology, Education, Sociology, and Social Phenomena",
    "J": "Technology, Industry, and Agriculture",
    "K": "Humanities",
    "L": "Information Science",
    "M": "Named Groups",
    "N": "Health Care",
    "V": "Publication Characteristics",
    "Z": "Geographicals",
}


_TREE_NUMBER = re.compile(r"^([A-NVZ])(\d{2})(?:\.\d{3})*$")


class MeshDescriptors(dict[str, list[str]]):
    """``{descriptor UI: [tree numbers]}`` from NLM's descriptor file, plus names.

    ``names`` maps UI -> preferred name; ``tree_names`` maps a second-level tree number
    (e.g. ``C04``) to the name of the descriptor heading that tree (``Neoplasms``).
    """

    def __init__(self) -> None:
        super().__init__()
        self.names: dict[str, str] = {}
        self.tree_names: dict[str, str] = {}


def load_mesh_descriptors(path: str | os.PathLike[str]) -> MeshDescriptors:
    """Stream NLM's MeSH descriptor XML (``descYYYY.xml``, optionally gzipped).

    Reads only each DescriptorRecord's own DescriptorUI / DescriptorName/String /
    TreeNumberList: the same element names recur inside cross-references
    (SeeRelatedList, PharmacologicalActionList, ...), which must not leak in.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    result = MeshDescriptors()
    with opener(path, "rb") as fh:
        for _, rec in etree.iterparse(
            fh,
            events=("end",),
            tag="DescriptorRecord",
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            huge_tree=True,
        ):
            ui = (rec.findtext("DescriptorUI") or "").strip()
            if ui:
                trees = (collapsed_text(e) for e in rec.iterfind("TreeNumberList/TreeNumber"))
                result[ui] = [t for t in trees if t]
                name = collapsed_text(rec.find("DescriptorName/String"))
                if name:
                    result.names[ui] = name
                    for tree in result[ui]:
                        if "." not in tree:
                            result.tree_names[tree] = name
            # Free what has been read: the full file is ~300 MB.
            rec.clear()
            while rec.getprevious() is not None:
                del rec.getparent()[0]
    return result


@dataclass(frozen=True)
class MeshCategories:
    """Top-level categories and second-level trees reached by some tree numbers."""

    codes: tuple[str, ...]  # category letters, e.g. ("B", "C")
    names: tuple[str, ...]  # the same categories by name, e.g. ("Organisms", "Diseases")
    trees: tuple[str, ...]  # second-level trees, e.g. ("B01", "C04")
    unknown_uis: tuple[str, ...] = ()  # descriptor UIs absent from the descriptor file


def mesh_top_categories(tree_numbers: Iterable[str]) -> MeshCategories:
    """Map MeSH tree numbers (``C04.588.180``) to their top category and second-level tree.

    Results are de-duplicated and sorted. Raises ``ValueError`` on a malformed tree number.
    """
    codes: set[str] = set()
    trees: set[str] = set()
    for tree in tree_numbers:
        match = _TREE_NUMBER.match(tree.strip())
        if not match:
            raise ValueError(f"not a MeSH tree number: {tree!r}")
        codes.add(match.group(1))
        trees.add(match.group(1) + match.group(2))
    ordered = tuple(sorted(codes))
    return MeshCategories(ordered, tuple(MESH_CATEGORIES[c] for c in ordered), tuple(sorted(trees)))


def mesh_rollup(
    descriptor_uis: Iterable[str], descriptors: Mapping[str, list[str]]
) -> MeshCategories:
    """Categories and trees of a record's MeSH descriptors (by UI, e.g. ``record["mesh"]``)."""
    uis = list(descriptor_uis)
    known = [t for ui in uis if ui in descriptors for t in descriptors[ui]]
    result = mesh_top_categories(known)
    unknown = tuple(dict.fromkeys(ui for ui in uis if ui not in descriptors))
    return MeshCategories(result.codes, result.names, result.trees, unknown)

