"""The sample json: every field of a figure sample, plus BIOMEDICA's published key names.

Our own fields are flat (``pmcid``, ``caption``, ``image_width``...) so the Parquet export maps
them one to one onto columns. BIOMEDICA's keys (``article_accession_id``, ``image_size``...)
are written beside them where we have an equivalent, so loaders written for the published
BIOMEDICA shards read ours; docs/schema.md lists the keys whose meaning differs.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import asdict

from biomedica_kit.etl.images import StoredImage
from biomedica_kit.etl.jats import Article, Figure, Graphic
from biomedica_kit.ingest.sources import PackageRef

SCHEMA_VERSION = 1

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def sanitize_key(s: str) -> str:
    """A WebDataset-safe key part: no dots (WebDataset splits keys at the first dot), no slashes."""
    return _UNSAFE.sub("_", s).strip("_") or "x"


def sample_key(article_id: str, figure_id: str, graphic_index: int, n_graphics: int) -> str:
    """``{article}_{figure}`` (+ ``-{n}`` when a figure has several separate images)."""
    key = f"{sanitize_key(article_id)}_{sanitize_key(figure_id)}"
    return f"{key}-{graphic_index + 1}" if n_graphics > 1 else key


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
