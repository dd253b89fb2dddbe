"""Licence codes and BIOMEDICA's three licence categories.

commercial    = CC0, CC BY, CC BY-SA, CC BY-ND
noncommercial = CC BY-NC, CC BY-NC-SA, CC BY-NC-ND
other         = anything else (no machine-readable licence, custom terms, public-domain marks)

Sources are tried in a fixed order and the one that decided is recorded: the PMC file list's
``License`` column (when given), then ``<license>`` (``xlink:href``, ``ali:license_ref``, its
text, ``license-type``), then the copyright statement.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

COMMERCIAL = frozenset({"cc0", "cc-by", "cc-by-sa", "cc-by-nd"})
NONCOMMERCIAL = frozenset({"cc-by-nc", "cc-by-nc-sa", "cc-by-nc-nd"})
CATEGORIES = ("commercial", "noncommercial", "other")


@dataclass(frozen=True)
class LicenseInfo:
    """What the article says about its licence, and what we concluded from it."""

    url: str | None
    type: str | None
    text: str | None
    code: str  # cc0, cc-by, ..., or "other" / "none"
    category: str  # commercial / noncommercial / other
    source: str  # file_list / href / ali / text / license_type / copyright / none


def category_of(code: str) -> str:
    """Licence category of a licence code."""
    if code in COMMERCIAL:
        return "commercial"
    if code in NONCOMMERCIAL:
        return "noncommercial"
    return "other"


def license_code(value: str | None) -> str | None:
    """Recognise a Creative Commons licence in a URL, short name or prose; None if none found.

    Handles URLs (``creativecommons.org/licenses/by-nc/4.0``), file-list names (``CC BY-NC-SA``),
    and prose ("Creative Commons Attribution-NonCommercial License").
    """
    if not value:
        return None
    v = value.lower()
    if "publicdomain/zero" in v or re.search(r"\bcc0\b|\bcc[ -]zero\b", v):
        return "cc0"
    m = re.search(r"creativecommons\.org/licenses/([a-z-]+)", v)
    if m:
        return _code_from_parts(m.group(1).split("-"))
    m = re.search(r"\bcc[ -_]?(by(?:[ -_](?:nc|sa|nd))*)\b", v)
    if m:
        return _code_from_parts(re.split(r"[ -_]", m.group(1)))
    if "creative commons" in v or "creativecommons" in v:
        if "attribution" not in v and "cc by" not in v and "cc-by" not in v:
            return None
        flat = re.sub(r"[\s-]+", "", v)
        parts = ["by"]
        if "noncommercial" in flat:
            parts.append("nc")
        if "sharealike" in flat:
            parts.append("sa")
        if "noderiv" in flat:
            parts.append("nd")
        return _code_from_parts(parts)
    return None


def _code_from_parts(parts: list[str]) -> str | None:
    parts = [p for p in parts if p]
    if not parts or parts[0] != "by":
        return None
    flags = [f for f in ("nc", "sa", "nd") if f in parts[1:]]
    if "sa" in flags and "nd" in flags:
        return None  # no such licence; treat as unrecognised
    return "-".join(["cc", "by", *flags])


def classify_license(
    *,
    file_list: str | None = None,
    url: str | None = None,
    ali: str | None = None,
    text: str | None = None,
    license_type: str | None = None,
    copyright: str | None = None,
) -> LicenseInfo:
    """Decide the licence code and category from every source, in priority order."""
    for source, value in (
        ("file_list", file_list),
        ("href", url),
        ("ali", ali),
        ("text", text),
        ("license_type", license_type),
        ("copyright", copyright),
    ):
        code = license_code(value)
        if code:
            return LicenseInfo(url or ali, license_type, text, code, category_of(code), source)
    has_any = any((file_list, url, ali, text, license_type))
    return LicenseInfo(url or ali, license_type, text, "other" if has_any else "none", "other",
                       "none")


def with_file_list(info: LicenseInfo, file_list_value: str | None) -> LicenseInfo:
    """Re-decide a licence when the PMC file list's ``License`` column is known (it wins)."""
    code = license_code(file_list_value)
    if not file_list_value:
        return info
    if code is None:
        # The file list says something we do not recognise (e.g. "NO-CC CODE"): it still wins.
        return LicenseInfo(info.url, info.type, info.text, "other", "other", "file_list")
    return LicenseInfo(info.url, info.type, info.text, code, category_of(code), "file_list")
