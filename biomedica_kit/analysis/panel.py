"""The filter controls (ipywidgets) of the explorer and the subset builder, and the ONE
:class:`~biomedica_kit.analysis.filters.Filters` state they show: setting filters from code
moves the controls, moving a control changes the state."""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from biomedica_kit.analysis.filters import DECISIONS, SORTS, Facets, Filters, journals_matching
from biomedica_kit.tables import query

__all__ = [
    "ANY", "FilterPanel",
]

#: The "no filter" choice of a dropdown.
ANY = "(any)"


@dataclass
class _Range:
    """A range slider, its readout and its "include unknown" box.

    The readout is a label of its own: the slider's built-in one is a fixed-width box that
    clips a range of years to "2016 - 202".
    """

    slider: Any
    readout: Any
    unknown: Any
    span: tuple[int, int] | None

    def show(self) -> None:
        """Write the slider's range into the readout."""
        lo, hi = self.slider.value
        self.readout.value = f"{lo} – {hi}" if self.span else "no values"


class FilterPanel:
    """The filter controls of a dataset and the one :class:`Filters` they show.

    :attr:`filters` is the state. :meth:`set` changes it from code and moves the controls to
    match (values the dataset does not have are dropped, as a control could not show them); a
    change in a control changes the state. Either way ``on_change(filters)`` is called.
    """

    def __init__(self, con: Any, fa: Facets, initial: Filters,
                 on_change: Callable[[Filters], None] | None = None) -> None:
        import ipywidgets as w

        self.con, self.facets, self.on_change = con, fa, on_change
        self._muted = False
        wide = w.Layout(width="auto")
        short = {"description_width": "90px"}

        def multi(options: list[str], what: str) -> Any:
            return w.SelectMultiple(options=options, rows=max(1, min(4, len(options))),
                                    description=what, disabled=not options, layout=wide,
                                    style=short)

        self.licences = multi(fa.licences, "licence")
        self.kinds = multi(fa.kinds, "figure kind")
        self.article_types = multi(fa.article_types, "article type")
        self.label = w.Dropdown(options=[ANY, *fa.labels], description="label", style=short,
                                disabled=not fa.labels, layout=wide,
                                tooltip=None if fa.labels else "no taxonomy labels yet")
        self.years = self._range(fa.years, fa.years_unknown, "years")
        self.sizes = self._range(fa.sizes, fa.sizes_unknown, "size (px)")
        self.journal = w.Combobox(options=fa.journals[:30], description="journal", style=short,
                                  placeholder=f"type to search {fa.n_journals:,} journals",
                                  ensure_option=False, continuous_update=True,
                                  disabled=not fa.journals, layout=w.Layout(width="420px"))
        self.text = w.Text(description="caption", placeholder="text in the caption (literal)",
                           continuous_update=False, style=short,
                           layout=w.Layout(width="420px"))
        self.keywords = self._tags_input(fa.keywords, "keywords")
        self.mesh = self._tags_input(fa.mesh, "MeSH terms")
        self.tags = self._tags_input(fa.tags, "curation tags", free=False)
        self.decision = w.Dropdown(options=[ANY, *DECISIONS], description="decision",
                                   style=short, layout=wide)
        self.sort = w.Dropdown(options=[(v[0], k) for k, v in SORTS.items()],
                               description="sort", style=short, layout=wide)
        self.seed = w.BoundedIntText(min=0, max=2**31 - 1, description="seed", style=short,
                                     layout=w.Layout(width="180px"))
        self.message = w.HTML()
        self._filters = Filters()
        self.set(initial, notify=False)
        for c in self._controls():
            c.observe(self._changed, names="value")
        self.journal.observe(self._typed, names="value")
        self.widget = w.VBox([
            w.HBox([self.licences, self.kinds, self.article_types]),
            w.HBox([w.VBox([w.HBox([self.years.slider, self.years.readout]), self.years.unknown]),
                    w.VBox([w.HBox([self.sizes.slider, self.sizes.readout]),
                            self.sizes.unknown]),
                    w.VBox([self.label, self.decision])]),
            w.HBox([self.text, self.journal]),
            w.HBox([self.keywords, self.mesh, self.tags]),
            w.HBox([self.sort, self.seed]), self.message])

    @staticmethod
    def _range(span: tuple[int, int] | None, unknown: int, what: str) -> _Range:
        import ipywidgets as w

        lo, hi = span or (0, 0)
        slider = w.IntRangeSlider(min=lo, max=hi, value=(lo, hi), description=what,
                                  disabled=span is None, continuous_update=False, readout=False,
                                  style={"description_width": "90px"},
                                  layout=w.Layout(width="340px"))
        readout = w.Label(layout=w.Layout(width="110px"))
        box = w.Checkbox(value=True, description=f"include unknown ({unknown:,})",
                         disabled=span is None, indent=True, layout=w.Layout(width="440px"))
        return _Range(slider, readout, box, span)

    @staticmethod
    def _tags_input(options: list[str], what: str, *, free: bool = True) -> Any:
        import ipywidgets as w

        box = w.TagsInput(value=[], allowed_tags=list(options), allow_duplicates=False,
                          placeholder=f"{what}…" if options else f"no {what} in this dataset",
                          layout=w.Layout(width="32%"))
        box.free = free  # free: a value set from code may be added to the allowed list
        return box

    def _controls(self) -> list[Any]:
        return [self.licences, self.kinds, self.article_types, self.label, self.years.slider,
                self.years.unknown, self.sizes.slider, self.sizes.unknown, self.text,
                self.keywords, self.mesh, self.tags, self.decision, self.sort, self.seed]

    @property
    def filters(self) -> Filters:
        """The current selection."""
        return self._filters

    def set(self, filters: Filters, *, notify: bool = True) -> None:
        """Show ``filters`` in the controls and make them the state."""
        self._muted = True
        try:
            self.licences.value = tuple(v for v in filters.licences if v in self.licences.options)
            self.kinds.value = tuple(v for v in filters.kinds if v in self.kinds.options)
            self.article_types.value = tuple(v for v in filters.article_types
                                             if v in self.article_types.options)
            self.label.value = filters.label if filters.label in self.label.options else ANY
            for rng, values, unknown in ((self.years, filters.years, filters.years_unknown),
                                         (self.sizes, filters.sizes, filters.sizes_unknown)):
                if rng.span is None:
                    continue
                lo, hi = values if values is not None else rng.span
                rng.slider.value = (max(lo, rng.span[0]), min(hi, rng.span[1]))
                rng.unknown.value = values is None or unknown
            self.journal.value = filters.journal or ""
            self.text.value = filters.text or ""
            for box, chosen in ((self.keywords, filters.keywords), (self.mesh, filters.mesh),
                                (self.tags, filters.tags)):
                extra = [v for v in chosen if v not in box.allowed_tags]
                if extra and box.allowed_tags and box.free:
                    box.allowed_tags = [*box.allowed_tags, *extra]
                box.value = [v for v in chosen if not box.allowed_tags or v in box.allowed_tags]
            self.decision.value = filters.decision or ANY
            self.sort.value = filters.sort
            self.seed.value = int(filters.seed)
        finally:
            self._muted = False
        self._update(notify)

    def _read(self) -> Filters:
        def rng(r: _Range) -> tuple[tuple[int, int] | None, bool]:
            value, unknown = tuple(r.slider.value), bool(r.unknown.value)
            if r.span is None or (value == r.span and unknown):
                return None, False
            return value, unknown

        years, years_unknown = rng(self.years)
        sizes, sizes_unknown = rng(self.sizes)
        journal = self.journal.value.strip()
        return Filters(
            licences=tuple(self.licences.value), kinds=tuple(self.kinds.value),
            article_types=tuple(self.article_types.value),
            label=None if self.label.value == ANY else self.label.value,
            years=years, years_unknown=years_unknown, sizes=sizes, sizes_unknown=sizes_unknown,
            journal=journal if journal and self._is_journal(journal) else None,
            text=self.text.value or None, keywords=tuple(self.keywords.value),
            mesh=tuple(self.mesh.value), tags=tuple(self.tags.value),
            decision=None if self.decision.value == ANY else self.decision.value,
            sort=self.sort.value, seed=int(self.seed.value))

    def _is_journal(self, name: str) -> bool:
        return bool(query.has_column(self.con, "journal") and self.con.execute(
            "SELECT 1 FROM figures WHERE journal = ? LIMIT 1", [name]).fetchone())

    def _update(self, notify: bool) -> None:
        self._filters = self._read()
        self.years.show()
        self.sizes.show()
        self.seed.layout.display = None if self._filters.sort == "random" else "none"
        typed = self.journal.value.strip()
        self.message.value = (f"<i>journal “{html.escape(typed)}” is not in this dataset: pick "
                              "one of the suggestions</i>"
                              if typed and self._filters.journal is None else "")
        if notify and self.on_change is not None:
            self.on_change(self._filters)

    def _changed(self, _change: Any) -> None:
        if not self._muted:
            self._update(True)

    def _typed(self, change: Any) -> None:
        """Type-ahead: suggest the journals containing what was typed (most samples first)."""
        if self._muted:
            return
        self.journal.options = journals_matching(self.con, change["new"] or "")
        self._update(True)
