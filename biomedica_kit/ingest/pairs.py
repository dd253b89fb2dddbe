"""Image-caption pairs (ROCO, MedICaT, PMC-OA, or a user's own): the JSON Lines reader.

One object per line: ``image`` (a path relative to the file) and ``caption`` are required;
``pmcid``, ``doi``, ``license``, ``figure_label``, ``year``, ``journal`` (and ``title`` or
``paper_title``) are read when present; every other field is kept as it is and ends up in the
sample json. Rows of one article (same PMCID, else DOI, else paper title) form one
:class:`PairGroup`, which the build treats as one package; a row with none of these is an
article of its own. A malformed line is refused with its line number (:class:`PairsError`):
a pairs file is a table, so a broken row is an error in it, not bad input to skip.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["KNOWN_FIELDS", "PairGroup", "PairRow", "PairsError", "read_pairs"]

#: Fields with a meaning for the build; any other field is carried into the sample json.
KNOWN_FIELDS = ("image", "caption", "pmcid", "doi", "license", "figure_label", "year",
                "journal", "title", "paper_title")
_PMCID = re.compile(r"^PMC\d+$")


class PairsError(ValueError):
    """A pairs file that cannot be read (the message names the line)."""


@dataclass
class PairRow:
    """One image-caption pair."""

    line: int
    image: str
    caption: str
    fields: dict[str, Any]  # the known fields that were given (besides image and caption)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class PairGroup:
    """The pairs of one article: the unit the build processes (one "package")."""

    id: str  # file-name safe, unique in the file
    rows: list[PairRow]

    def field(self, name: str) -> Any:
        """The first non-empty value of a known field among the rows."""
        return next((r.fields[name] for r in self.rows if r.fields.get(name) not in
                     (None, "")), None)

    def digest(self) -> str:
        """A content hash of the rows (not the images)."""
        h = hashlib.sha256()
        for r in self.rows:
            h.update(json.dumps([r.image, r.caption, r.fields, r.extra], sort_keys=True,
                                default=str).encode())
        return h.hexdigest()


def _row(obj: Any, line: int, where: str) -> PairRow:
    if not isinstance(obj, dict):
        raise PairsError(f"{where}:{line}: expected a JSON object")
    image, caption = obj.get("image"), obj.get("caption")
    if not isinstance(image, str) or not image.strip():
        raise PairsError(f"{where}:{line}: 'image' (a path relative to the file) is required")
    if caption is not None and not isinstance(caption, str):
        raise PairsError(f"{where}:{line}: 'caption' must be a string")
    known = {k: obj[k] for k in KNOWN_FIELDS[2:] if k in obj}
    pmcid = known.get("pmcid")
    if pmcid is not None and not (isinstance(pmcid, str) and _PMCID.match(pmcid)):
        raise PairsError(f"{where}:{line}: pmcid {pmcid!r} is not of the form PMC<digits>")
    extra = {k: v for k, v in obj.items() if k not in KNOWN_FIELDS}
    return PairRow(line, image, caption or "", known, extra)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:80] or "article"


def read_pairs(path: str | os.PathLike[str]) -> list[PairGroup]:
    """The pairs of a JSON Lines file grouped by article, in order of first appearance."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PairsError(f"{p}: cannot read: {exc}") from None
    groups: dict[str, PairGroup] = {}
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PairsError(f"{p}:{n}: not JSON: {exc}") from None
        row = _row(obj, n, str(p))
        f = row.fields
        ident = (f"pmcid:{f['pmcid']}" if f.get("pmcid") else f"doi:{f['doi']}" if f.get("doi")
                 else f"title:{f.get('paper_title') or f.get('title')}"
                 if f.get("paper_title") or f.get("title") else f"line:{n}")
        if ident not in groups:
            base = _safe(ident.split(":", 1)[1]) if not ident.startswith("line:") \
                else f"pair{n:06d}"
            gid = base if all(g.id != base for g in groups.values()) else f"{base}_{n}"
            groups[ident] = PairGroup(gid, [])
        groups[ident].rows.append(row)
    return list(groups.values())
