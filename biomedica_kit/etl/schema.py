"""The sample json: every field of a figure sample, plus BIOMEDICA's published key names.

Our own fields are flat (``pmcid``, ``caption``, ``image_width``...) so the Parquet export maps
them one to one onto columns. BIOMEDICA's keys (``article_accession_id``, ``image_size``...)
are written beside them where we have an equivalent, so loaders written for the published
BIOMEDICA shards read ours; docs/schema.md lists the keys whose meaning differs.
"""

from __future__ import annotations

import calendar
import hashlib
import json
import re
from collections import Counter
from dataclasses import asdict

from biomedica_kit.etl.images import StoredImage
from biomedica_kit.etl.jats import Article, Figure, Graphic
from biomedica_kit.ingest.sources import PackageRef

__all__ = ["SCHEMA_VERSION", "article_fields", "biomedica_compat", "sample_key", "sample_keys",
           "sample_record", "sanitize_key"]

SCHEMA_VERSION = 1

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_NOT_DASHED = re.compile(r"[^A-Za-z0-9-]+")
_PMCID = re.compile(r"PMC[0-9]+")
_PMCID_PREFIX = re.compile(r"PMC[0-9]+(?:_|$)")


def sanitize_key(s: str) -> str:
    """A WebDataset-safe key part: no dots (WebDataset splits keys at the first dot), no slashes."""
    return _UNSAFE.sub("_", s).strip("_") or "x"


def _article_part(article_id: str) -> tuple[str, bool]:
    """(key part, whether the id can be read back from it) of an article id.

    The part is :func:`sanitize_key` of the id. It is *plain* when the id is recovered from it:
    a PMCID as is; ``doi_10.NNNN/suffix`` by reading the first ``_`` after the registrant as
    ``/`` and every other ``_`` as ``.``; any other id (a package or file name) by reading every
    ``_`` as ``.``, provided it does not look like a PMCID or DOI part. Two different plain ids
    therefore never share a part.
    """
    part = sanitize_key(article_id)
    if _PMCID.fullmatch(article_id):
        return part, True
    if part.startswith("doi_"):
        head, _, rest = part.removeprefix("doi_10_").partition("_")
        decoded = f"doi_10.{head}/{rest.replace('_', '.')}" if part.startswith("doi_10_") else ""
        return part, decoded == article_id and bool(head) and bool(rest)
    return part, part.replace("_", ".") == article_id and not _PMCID_PREFIX.match(part)


def _digest(*fields: object) -> str:
    return hashlib.sha256(json.dumps(fields, ensure_ascii=False).encode()).hexdigest()[:16]


def sample_key(article_id: str, figure_id: str, graphic_index: int, n_graphics: int, *,
               ordinal: int | None = None) -> str:
    """``{article}_{figure}`` (+ ``-{n}`` when a figure has several separate images).

    Keys stay as they always were for ordinary ids, and are unique by construction: where the
    article part is not plain (:func:`_article_part`; e.g. DOIs ``10.5555/a.b`` and
    ``10.5555/a_b`` both sanitise to ``doi_10_5555_a_b``) the key ends in ``__`` and 16 hex
    digits of a sha256 of the raw ids, a form a plain key never takes (no ``__``). The figure part
    never contains ``_`` beside an article part that does (non-PMCID articles write the
    figure id's dots as ``-``), so the article a plain key belongs to is always readable from it.
    Collisions inside one article (figure ``F1`` with two graphics beside a figure ``F1-1``,
    repeated figure ids) are resolved by :func:`sample_keys`, which passes ``ordinal`` (the
    figure's index) for the keys that would collide.
    """
    part, plain = _article_part(article_id)
    if _PMCID.fullmatch(article_id):
        fig = sanitize_key(figure_id)
        plain = plain and "__" not in fig
    else:
        fig = _NOT_DASHED.sub("-", figure_id).strip("-") or "x"
    key = f"{part}_{fig}"
    if n_graphics > 1:
        key = f"{key}-{graphic_index + 1}"
    if plain and ordinal is None:
        return key
    number = graphic_index + 1 if n_graphics > 1 else 0
    return f"{key}__{_digest(article_id, figure_id, number, ordinal)}"


def sample_keys(article_id: str, figures: list[Figure]) -> list[list[str]]:
    """The key of every graphic of every figure of one article (``[figure][graphic]``), unique
    within the article: keys that :func:`sample_key` would give twice are all made distinct
    with the figure's index (deterministic: the XML's document order)."""
    keys = [[sample_key(article_id, f.id, gi, len(f.graphics)) for gi in range(len(f.graphics))]
            for f in figures]
    counts = Counter(k for row in keys for k in row)
    return [[sample_key(article_id, f.id, gi, len(f.graphics), ordinal=fi)
             if counts[k] > 1 else k for gi, k in enumerate(row)]
            for fi, (f, row) in enumerate(zip(figures, keys, strict=True))]


def article_fields(article: Article, ref: PackageRef) -> dict:
    """Article-level fields shared by all samples of an article (also the articles table)."""
    d = asdict(article)
    d.pop("figures")
    d["article_id"] = d.pop("id")
    d["package"] = ref.name
    d["citation"] = ref.citation
    d["last_updated"] = ref.last_updated
    d["file_list_license"] = ref.license
    if not d.get("pmid") and ref.pmid:
        d["pmid"] = ref.pmid
    return d


def sample_record(
    *,
    key: str,
    art: dict,
    fig: Figure,
    graphic: Graphic,
    image: StoredImage,
    figure_index: int,
    image_set: list[dict],
) -> dict:
    """The json member of one sample."""
    rec = {
        "key": key,
        "schema_version": SCHEMA_VERSION,
        **art,
        "figure_id": fig.id,
        "figure_label": fig.label,
        "figure_kind": fig.kind,
        "figure_index": figure_index,
        "figure_group": fig.group_id,
        "sub_article": fig.sub_article,
        "caption": fig.caption,
        "caption_title": fig.caption_title,
        "inline_refs": [asdict(r) for r in fig.inline_refs],
        "n_inline_refs": len(fig.inline_refs),
        "graphic_href": graphic.href,
        "image_file": graphic.file,
        "image_alternatives": graphic.alternatives,
        "image_format": image.ext,
        "image_source_format": image.source_format,
        "image_source_bytes": image.source_bytes,
        "image_bytes": len(image.data),
        "image_width": image.width,
        "image_height": image.height,
        "image_sha256": image.sha256,
        "image_phash": image.phash,
        "image_converted": image.converted,
        "duplicate_of": None,
    }
    rec.update(biomedica_compat(rec, image_set))
    return rec


def biomedica_compat(rec: dict, image_set: list[dict]) -> dict:
    """BIOMEDICA's published json keys, filled from our fields where an equivalent exists."""
    file_name = (rec.get("image_file") or rec.get("graphic_href") or "").rsplit("/", 1)[-1]
    return {
        "image_file_name": file_name,
        "image_cluster_id": file_name.rsplit(".", 1)[0],  # BIOMEDICA: the image id (file stem)
        "image_hash": rec["image_sha256"],
        "image_size": [rec["image_width"], rec["image_height"]],
        "image_set": image_set,
        "image_context": {file_name: [r["paragraph"] for r in rec["inline_refs"]]},
        "article_accession_id": rec.get("pmcid") or rec.get("article_id"),
        "article_title": rec.get("title"),
        "article_journal": rec.get("journal"),
        "article_date": _unix_date(rec.get("pub_date")),
        "article_abstract": rec.get("abstract"),
        "article_keywords": rec.get("keywords") or [],
        "article_subject": rec.get("subjects") or [],
        "article_citation": rec.get("citation"),
        "article_license": rec.get("file_list_license") or rec.get("license_code"),
    }


def _unix_date(iso: str | None) -> str | None:
    if not iso:
        return None
    parts = [int(x) for x in iso.split("-")] + [1, 1]
    return str(calendar.timegm((parts[0], parts[1], parts[2], 0, 0, 0)))
