"""Licence codes and BIOMEDICA's three licence categories.

commercial    = CC0, CC BY, CC BY-SA, CC BY-ND
noncommercial = CC BY-NC, CC BY-NC-SA, CC BY-NC-ND
other         = anything else (no machine-readable licence, custom terms, public-domain marks)

Sources are tried in a fixed order and the one that decided is recorded: the PMC file list's
``License`` column (when given), then ``<license>`` (``xlink:href``, ``ali:license_ref``, its
text, ``license-type``), then the copyright statement.

Reading a value never upgrades a licence: Unicode dashes (U+2010 hyphen, U+2011 non-breaking
hyphen, en and em dashes, minus...) and spaces (no-break, thin...) are normalised first, so
``CC BY‑NC‑ND`` is NC-ND and never a bare CC BY; a mention inside a negation ("not CC BY") does
not count; and a value naming two different licences is not guessed at (None, i.e. "other").
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

__all__ = ["CATEGORIES", "COMMERCIAL", "NONCOMMERCIAL", "LicenseInfo", "category_of",
           "classify_license", "license_code", "normalise", "with_file_list"]

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


# Every Unicode dash and hyphen (Pd) and the minus signs become "-"; every space separator and
# the tab/newline family become " "; soft hyphens and zero-width characters disappear.
_INVISIBLE = dict.fromkeys(map(ord, "\u00ad\u200b\u200c\u200d\u2060\ufeff"), None)
_MINUS = "\u2212\u2043\u02d7\u2796"


def normalise(value: str) -> str:
    """Lower-cased ``value`` with dashes as ``-``, spaces as one ``' '``, invisibles removed."""
    v = unicodedata.normalize("NFKC", value).translate(_INVISIBLE)
    v = "".join("-" if unicodedata.category(c) == "Pd" or c in _MINUS else
                " " if c.isspace() or unicodedata.category(c) == "Zs" else c for c in v)
    return " ".join(v.lower().split())


_CC0 = re.compile(r"publicdomain/zero|\bcc0\b|\bcc[ -]zero\b|\bcreative commons zero\b")
_CC_URL = re.compile(r"creativecommons\.org/licen[cs]es/([a-z-]+)")
_CC_SHORT = re.compile(r"\bcc[ _-]?(by(?:[ _-]?(?:nc|sa|nd)\b)*)(?![a-z0-9])")
_CC_PROSE = re.compile(r"creative ?commons")
# Negation words before a mention, in the same clause ("not CC BY", "is not licensed under").
_NEGATION = re.compile(r"\b(?:not|never|without|neither|nor|cannot)\b|n't\b"
                       r"|\bno\b(?!\s*-?\s*deriv)")
_CLAUSE_END = re.compile(r"[;!?]|\.(?:\s|$)")
_DATA = re.compile(r"\bdata\b")


def license_code(value: str | None) -> str | None:
    """Recognise a Creative Commons licence in a URL, short name or prose; None if none found.

    Handles URLs (``creativecommons.org/licenses/by-nc/4.0``), file-list names (``CC BY-NC-SA``,
    with any Unicode dash), and prose ("Creative Commons Attribution-NonCommercial License").
    Mentions preceded by a negation in their clause are ignored; if the remaining mentions name
    different licences, the value is not recognised (None): "other" rather than a guess.
    """
    if not value:
        return None
    v = normalise(value)
    codes = []
    for start, code in _mentions(v):
        if code is not None and not _negated(v, start):
            codes.append(code)
    distinct = set(codes)
    return codes[0] if len(distinct) == 1 else None


def _mentions(v: str) -> list[tuple[int, str | None]]:
    """(position, code) of every licence mention in a normalised value, in text order."""
    # CC0 "applies to the data" (BMC's waiver beside a CC BY licence) is not the article's licence.
    out: list[tuple[int, str | None]] = [(m.start(), "cc0") for m in _CC0.finditer(v)
                                         if not _DATA.search(_clause_around(v, m.start()))]
    urls = list(_CC_URL.finditer(v))
    out += [(m.start(), _code_from_parts(m.group(1).split("-"))) for m in urls]
    in_url = [(m.start(), m.end()) for m in urls]
    for m in _CC_SHORT.finditer(v):
        if not any(a <= m.start() < b for a, b in in_url):
            out.append((m.start(), _code_from_parts(re.split(r"[ _-]", m.group(1)))))
    for m in _CC_PROSE.finditer(v):
        if any(a <= m.start() < b for a, b in in_url):
            continue
        clause = v[m.start():]
        end = _CLAUSE_END.search(clause, m.end() - m.start())
        clause = clause[: end.start() if end else 240][:240]
        if "attribution" not in clause:
            continue  # "a Creative Commons licence" without saying which: not recognised
        flat = re.sub(r"[\s-]+", "", clause)
        parts = ["by"]
        if "noncommercial" in flat:
            parts.append("nc")
        if "sharealike" in flat:
            parts.append("sa")
        if "noderiv" in flat:
            parts.append("nd")
        out.append((m.start(), _code_from_parts(parts)))
    return sorted(out, key=lambda x: x[0])


def _clause_around(v: str, pos: int) -> str:
    """The clause of ``v`` holding position ``pos``."""
    before = list(_CLAUSE_END.finditer(v, 0, pos))
    start = before[-1].end() if before else 0
    after = _CLAUSE_END.search(v, pos)
    return v[start: after.start() if after else len(v)]


def _negated(v: str, start: int) -> bool:
    """Whether the clause before ``start`` (up to 80 characters) holds a negation."""
    window = v[max(0, start - 80): start]
    ends = list(_CLAUSE_END.finditer(window))
    if ends:
        window = window[ends[-1].end():]
    return bool(_NEGATION.search(window))


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
