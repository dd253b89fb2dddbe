"""The text an image trains with, and which labelled samples a run keeps.

A template over a sample's fields (``{caption}``, ``{refs}``: the sentences of the article
that cite the figure, ``{title}``, ``{primary_label}``, ``{secondary_label}``,
``{panel_type}``) or one of :data:`TEXT_PRESETS`. Standard library only, so the command line
can show the choices without loading the data layer.
"""

from __future__ import annotations

import string
from typing import Any

__all__ = ["FIELDS", "LABEL_FIELDS", "LABEL_FILTERS", "TEXT_PRESETS", "TextTemplate"]

TEXT_PRESETS: dict[str, str] = {
    "caption": "{caption}",
    "caption+refs": "{caption} {refs}",
    "label+caption": "{primary_label}, {secondary_label}: {caption}",
    "label": "a biomedical figure: {secondary_label} ({primary_label})",
}
#: Which samples a run keeps by label: all, any labelled one, or expert-decided ones only.
LABEL_FILTERS = ("none", "any", "reviewed")
LABEL_FIELDS = ("primary_label", "secondary_label", "panel_type")
FIELDS = ("caption", "refs", "title", *LABEL_FIELDS)


class TextTemplate:
    """The text a sample trains with: a preset name or a ``str.format`` template over
    ``caption``, ``refs``, ``title``, ``primary_label``, ``secondary_label``,
    ``panel_type``."""

    def __init__(self, text: str) -> None:
        self.spec = text
        self.template = TEXT_PRESETS.get(text, text)
        names = [f for _, f, _, _ in string.Formatter().parse(self.template) if f is not None]
        unknown = sorted(set(names) - set(FIELDS))
        if not names or unknown:
            raise ValueError(f"text {text!r}: use a preset ({', '.join(TEXT_PRESETS)}) or a "
                             f"template over {{{'}, {'.join(FIELDS)}}}"
                             + (f"; unknown field(s) {unknown}" if unknown else ""))
        self.fields = tuple(dict.fromkeys(names))

    @property
    def needs_labels(self) -> bool:
        """Whether the template uses a label field (labels must then be loaded)."""
        return any(f in LABEL_FIELDS for f in self.fields)

    def render(self, caption: str | None, meta: dict[str, Any],
               labels: dict[str, str | None] | None) -> str | None:
        """The sample's text, or None when a field the template needs is missing."""
        values: dict[str, str] = {}
        for f in self.fields:
            if f == "caption":
                v = caption
            elif f == "refs":
                v = " ".join(s for r in meta.get("inline_refs") or []
                             for s in (r.get("sentences") or []) if s) or None
            elif f == "title":
                v = meta.get("title") or meta.get("article_title")
            else:
                v = (labels or {}).get(f)
            if not v or not str(v).strip():
                return None
            values[f] = " ".join(str(v).split())
        return self.template.format(**values).strip()
