"""Interactive exploration and curation of a dataset in Jupyter: a filterable image gallery
(ipywidgets) on top of :mod:`~biomedica_kit.analysis.filters` (the selection and its SQL),
:mod:`~biomedica_kit.analysis.views` (saved views), :mod:`~biomedica_kit.analysis.curation`
(tags, accept/reject, notes) and :mod:`~biomedica_kit.analysis.gallery` (the cards).

:class:`Explorer` shows the filter controls (:class:`~biomedica_kit.analysis.panel.FilterPanel`),
saved views, bulk tagging of the current filter, a paged gallery whose cards have accept /
reject buttons and open a detail pane (large image, note, tags), and linked charts
(:meth:`Explorer.chart`) whose bar clicks filter the gallery. It also carries a static HTML
snapshot of its current view, so a notebook run headless (papermill, reports) still shows the
gallery. The subset builder is :mod:`biomedica_kit.analysis.builder`.

It works on a dataset without samples (a plain "nothing here yet"), on one without years or
licences (those controls are disabled) and on tables of millions of rows (journal type-ahead
instead of a list of every journal; facets are aggregate queries).
"""

from __future__ import annotations

import html
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from biomedica_kit.analysis import curation
from biomedica_kit.analysis import views as saved_views
from biomedica_kit.analysis.filters import (
    UNKNOWN,
    FilterError,
    Filters,
    count,
    count_unknown,
    facets,
    matches_table,
    search,
    tag_values,
)
from biomedica_kit.analysis.gallery import (
    EMPTY_DATASET,
    GALLERY_CSS,
    ZOOM_SIDE,
    article_links,
    card_html,
    gallery_html,
    sample_thumbnail,
)
from biomedica_kit.analysis.panel import ANY, FilterPanel
from biomedica_kit.tables import query
from biomedica_kit.tables.connect import connect

if TYPE_CHECKING:
    import plotly.graph_objects as go
    import polars as pl

__all__ = ["Explorer", "Filters", "LinkedChart", "open_dataset"]


def open_dataset(dataset: str | os.PathLike) -> Any:
    """A query connection with the curation ``tags`` view (exports stale metadata first)."""
    con = connect(dataset)
    curation.attach(con, dataset)
    return con


@dataclass
class Explorer:
    """A filterable, curatable gallery of a dataset's samples (ipywidgets; snapshot HTML when
    headless).

    Display it in a notebook (last expression of a cell). Changing a filter re-queries the
    metadata and redraws the page; ``◀`` / ``▶`` page through the matches. Each card has
    accept / reject buttons and opens a detail pane (large image, note, tags). ``view`` opens
    a saved view instead of ``filters``. ``snapshot_pages`` pages of cards go into the static
    snapshot that headless runs and reports show.
    """

    dataset: str | os.PathLike
    filters: Filters = field(default_factory=Filters)
    page_size: int = 12
    view: str | None = None
    snapshot_pages: int = 3

    def __post_init__(self) -> None:
        import ipywidgets as w

        self.con = open_dataset(self.dataset)
        self.store = curation.TagStore(self.dataset)
        self.facets = facets(self.con)
        if self.view:
            self.filters = saved_views.load_view(self.dataset, self.view).filters
        self.page = 0
        self.panel = FilterPanel(self.con, self.facets, self.filters, self._on_filter)
        self.filters = self.panel.filters
        self._prev = w.Button(description="◀", layout=w.Layout(width="40px"))
        self._next = w.Button(description="▶", layout=w.Layout(width="40px"))
        self._prev.on_click(lambda _: self._turn(-1))
        self._next.on_click(lambda _: self._turn(+1))
        self._status, self._where, self._note = w.HTML(), w.HTML(), w.HTML()
        self._cards = w.GridBox(layout=w.Layout(
            grid_template_columns="repeat(auto-fill, minmax(300px, 1fr))", grid_gap="14px"))
        self._detail = w.VBox(layout=w.Layout(display="none"))
        self._views = _ViewsBar(self)
        self._bulk = _BulkBar(self)
        empty = self.facets.total == 0
        self.widget = w.VBox([w.HTML(GALLERY_CSS)] + ([w.HTML(
            f'<p class="bk-empty">{html.escape(EMPTY_DATASET)}</p>')] if empty else [
            self.panel.widget, self._views.widget, self._bulk.widget,
            w.HBox([self._prev, self._next, self._status]), self._where, self._note,
            self._detail, self._cards]))
        self.refresh()

    # ------------------------------------------------------------------------- state

    @property
    def matches(self) -> int:
        """How many samples match the current filters."""
        return count(self.con, self.filters)

    def rows(self, limit: int | None = None, offset: int | None = None) -> list[dict[str, Any]]:
        """The samples on the current page (or ``limit`` from ``offset``)."""
        return search(self.con, self.filters, limit=limit or self.page_size,
                      offset=self.page * self.page_size if offset is None else offset)

    def table(self, limit: int = 50) -> pl.DataFrame:
        """The first ``limit`` matches as a table."""
        return matches_table(self.con, self.filters, limit=limit)

    @property
    def where(self) -> str:
        """The predicate of the current filters (for ``biomedica subset --where``)."""
        return self.filters.where(self.con)

    def html(self) -> str:
        """The static snapshot: heading, predicate and ``snapshot_pages`` pages of cards."""
        if self.facets.total == 0:
            return gallery_html(self.dataset, [], empty=EMPTY_DATASET)
        rows = self.rows(limit=self.page_size * max(1, self.snapshot_pages), offset=0)
        where = f"<div class='bk-head'>predicate: <code>{html.escape(self.where)}</code></div>"
        return where + gallery_html(self.dataset, rows, heading=self._heading(len(rows)),
                                    page_size=self.page_size, store=self.store)

    def set_filters(self, **changes: Any) -> None:
        """Change filters from code (names of :class:`Filters`); the controls follow."""
        self.panel.set(replace(self.filters, **changes))

    def save_view(self, name: str, description: str = "") -> saved_views.View:
        """Save the current filters as view ``name`` (``DATASET/views/<name>.json``)."""
        v = saved_views.save_view(self.dataset, name, self.filters, description=description,
                                  con=self.con)
        self._views.reload(selected=name)
        return v

    def load_view(self, name: str) -> None:
        """Show saved view ``name``."""
        self.panel.set(saved_views.load_view(self.dataset, name).filters)

    def tag_matches(self, tag: str) -> int:
        """Tag every sample matching the current filters (bulk tagging); returns how many
        samples got the tag."""
        n = self.store.tag_where(self.con, self.where, tag)
        self._refresh_tags()
        return n

    def untag_matches(self, tag: str) -> int:
        """Remove ``tag`` from every sample matching the current filters."""
        keys = [r[0] for r in self.con.execute(
            f"SELECT key FROM figures WHERE ({self.where})").fetchall()]
        n = self.store.untag(keys, tag, origin=f"bulk: {self.where}")
        self._refresh_tags()
        return n

    def decide(self, key: str, decision: str | None) -> None:
        """Accept (``"accept"``), reject (``"reject"``) or undecide (None) one sample."""
        self.store.decide([key], decision, origin="card")
        curation.attach(self.con, self.dataset)
        self.refresh()

    # ------------------------------------------------------------------------ charts

    def chart(self, by: str = "year") -> LinkedChart:
        """A bar chart of the matches per ``by`` (``year``, ``license_category``,
        ``figure_kind``, ``article_type`` or ``journal``) whose bars filter the gallery:
        click a bar (or box-select several) to keep only those samples. It counts under the
        current filters other than its own when made (re-run the cell to recount: redrawing
        a shown FigureWidget from Python left the browser's chart empty). A plotly
        FigureWidget: the clicks need a live Jupyter frontend; static pages show the counts
        as a table."""
        import plotly.graph_objects as go

        if by not in _CHART_FILTERS:
            raise ValueError(f"by must be one of {list(_CHART_FILTERS)}, not {by!r}")
        # The counts go into the constructor: changes made before the widget is shown are
        # sent as messages that no frontend view receives.
        xs, ys = self._chart_counts(by)
        fig = go.FigureWidget(go.Bar(x=xs, y=ys, marker_color="#3d5a98", name="samples"))
        fig.update_layout(template="plotly_white", height=300, dragmode="select",
                          margin={"l": 50, "r": 20, "t": 40, "b": 40}, meta={"chart": f"by_{by}"},
                          title={"text": f"Matches per {by} (click or select to filter)",
                                 "x": 0.01},
                          xaxis={"type": "category", "title": by}, yaxis={"title": "samples"})
        bar = fig.data[0]
        bar.on_click(lambda _trace, points, _state: self._chart_pick(by, points.xs))
        bar.on_selection(lambda _trace, points, _state: self._chart_pick(by, points.xs))
        return LinkedChart(by, fig)

    def _chart_pick(self, by: str, xs: Sequence[Any]) -> None:
        if not xs:
            return
        values = [str(x) for x in xs]
        if by == "year":
            years = [int(v) for v in values if v != UNKNOWN]
            if years:
                self.set_filters(years=(min(years), max(years)),
                                 years_unknown=UNKNOWN in values)
            return
        name = _CHART_FILTERS[by]
        self.set_filters(**{name: values[0] if name == "journal" else tuple(values)})

    def _chart_counts(self, by: str) -> tuple[list[str], list[int]]:
        """Matches per value of ``by`` under every filter but ``by``'s own (40 at most)."""
        if not query.has_column(self.con, by):
            return [], []
        loose = replace(self.filters, **{_CHART_FILTERS[by]: _CLEAR[_CHART_FILTERS[by]]})
        order = "1" if by == "year" else "2 DESC, 1"
        rows = self.con.execute(
            f"SELECT coalesce({query.quote_ident(by)}::VARCHAR, ?), count(*) FROM figures "
            f"WHERE ({loose.where(self.con)}) GROUP BY 1 ORDER BY {order} LIMIT 40",
            [UNKNOWN]).fetchall()
        return [r[0] for r in rows], [r[1] for r in rows]

    # ------------------------------------------------------------------------ redraw

    def refresh(self) -> None:
        """Re-run the query and redraw status, predicate and cards."""
        if self.facets.total == 0:
            return
        try:
            n = self.matches
        except FilterError as exc:
            self._status.value = f"<b style='color:#b00020'>{html.escape(str(exc))}</b>"
            return
        last = max(0, (n - 1) // self.page_size)
        self.page = min(self.page, last)
        self._prev.disabled = self.page == 0
        self._next.disabled = self.page >= last
        self._status.value = f"<b>{html.escape(self._heading(n))}</b>"
        self._where.value = f"<code>{html.escape(self.where)}</code>"
        left_out = count_unknown(self.con, self.filters)
        self._note.value = "".join(
            f"<i>{v:,} samples without {'a year' if k == 'years' else 'a size'} are left out "
            f"(tick “include unknown” to keep them).</i> " for k, v in left_out.items() if v)
        self._draw_cards(self.rows())
        self._bulk.update(n)

    def _draw_cards(self, rows: list[dict[str, Any]]) -> None:
        import ipywidgets as w

        if not rows:
            self._cards.children = [w.HTML('<p class="bk-empty">No sample matches these '
                                           'filters.</p>')]
            return
        keys = [r["key"] for r in rows]
        dec, tg, nt = (self.store.decisions(keys), self.store.tags_of(keys),
                       self.store.notes(keys))
        self._cards.children = [
            _card_widget(self, r, dec.get(r["key"]), tg.get(r["key"], ()), nt.get(r["key"]))
            for r in rows]

    def _refresh_tags(self) -> None:
        """After a tag change: the ``tags`` view, the tag filter's choices, the page."""
        curation.attach(self.con, self.dataset)
        self.facets = replace(self.facets, tags=tag_values(self.con))
        box = self.panel.tags
        box.allowed_tags = sorted(set(box.allowed_tags) | set(self.facets.tags))
        self.refresh()

    def _heading(self, n: int | None = None) -> str:
        n = self.matches if n is None else n
        first = self.page * self.page_size
        shown = f"{first + 1}–{min(n, first + self.page_size)} of " if n else ""
        return f"{shown}{n:,} matching samples ({self.filters.describe()})"

    def _on_filter(self, filters: Filters) -> None:
        self.filters = filters
        self.page = 0
        self.refresh()

    def _turn(self, step: int) -> None:
        self.page = max(0, self.page + step)
        self.refresh()

    def open_detail(self, row: dict[str, Any]) -> None:
        """Show one sample in the detail pane: large image, caption, note and tags."""
        self._detail.children = _detail_children(self, row)
        self._detail.layout.display = None

    def close_detail(self) -> None:
        """Hide the detail pane."""
        self._detail.children = []
        self._detail.layout.display = "none"

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        # Live frontends render the widget; static renderers (nbconvert, GitHub) fall back to
        # the snapshot of the current page.
        bundle = self.widget._repr_mimebundle_(**kwargs) or {}
        bundle["text/html"] = self.html()
        bundle["text/plain"] = (f"Explorer: {EMPTY_DATASET}" if self.facets.total == 0
                                else f"Explorer: {self._heading()}")
        return bundle


@dataclass
class LinkedChart:
    """A chart from :meth:`Explorer.chart`: ``figure`` is the live FigureWidget; static
    renderers get its counts as a table."""

    by: str
    figure: go.FigureWidget

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        import polars as pl

        from biomedica_kit.analysis.display import table_html

        bar = self.figure.data[0]
        counts = pl.DataFrame({self.by: [str(x) for x in bar.x or ()],
                               "samples": list(bar.y or ())},
                              schema={self.by: pl.String, "samples": pl.Int64})
        bundle = self.figure._repr_mimebundle_(**kwargs) or {}
        bundle["text/html"] = table_html(counts, caption=f"matches per {self.by} (the "
                                                         "interactive chart needs Jupyter)")
        bundle["text/plain"] = f"LinkedChart({self.by}): {counts.height} bars"
        return bundle


#: Chart dimension -> the Filters field its bars set.
_CHART_FILTERS = {"year": "years", "license_category": "licences", "figure_kind": "kinds",
                  "article_type": "article_types", "journal": "journal"}
_CLEAR: dict[str, Any] = {"years": None, "licences": (), "kinds": (), "article_types": (),
                          "journal": None}


def _card_widget(ex: Explorer, row: dict[str, Any], decision: str | None,
                 tags: Sequence[str], note: str | None) -> Any:
    """One live card: the card HTML and its accept / reject / details buttons."""
    import ipywidgets as w

    key = row["key"]
    accept = w.Button(description="accept", icon="check", tooltip="accept this sample",
                      button_style="success" if decision == "accept" else "",
                      layout=w.Layout(width="auto"))
    reject = w.Button(description="reject", icon="times", tooltip="reject this sample",
                      button_style="danger" if decision == "reject" else "",
                      layout=w.Layout(width="auto"))
    detail = w.Button(description="details", icon="search-plus",
                      tooltip="large image, note and tags", layout=w.Layout(width="auto"))
    accept.on_click(lambda _: ex.decide(key, None if decision == "accept" else "accept"))
    reject.on_click(lambda _: ex.decide(key, None if decision == "reject" else "reject"))
    detail.on_click(lambda _: ex.open_detail(row))
    body = w.HTML(card_html(ex.dataset, row, decision=decision, tags=tags, note=note))
    card = w.VBox([body, w.HBox([accept, reject, detail])])
    card.add_class("bk-card-widget")
    card.key = key
    return card


def _detail_children(ex: Explorer, row: dict[str, Any]) -> list[Any]:
    import ipywidgets as w

    e = html.escape
    key = row["key"]
    try:
        mime, b64 = sample_thumbnail(ex.dataset, row, ZOOM_SIDE)
        img = (f'<img src="data:{mime};base64,{b64}" style="max-width:100%;max-height:80vh;'
               f'object-fit:contain;background:#f4f6fa" alt="{e(key)}">')
    except (OSError, ValueError) as exc:
        img = f"<p>image unavailable: {e(str(exc))}</p>"
    info = (f"<div class='bk-head'><b>{e(row.get('figure_label') or key)}</b> · "
            f"{article_links(row) or e(key)} · <code>{e(key)}</code></div>{img}"
            f"<p style='font:13px system-ui'>{e(row.get('caption') or '')}</p>")
    note = w.Textarea(value=ex.store.notes([key]).get(key, ""), placeholder="note",
                      layout=w.Layout(width="60%", height="70px"))
    tags = w.TagsInput(value=ex.store.tags_of([key]).get(key, []),
                       allowed_tags=sorted(set(ex.facets.tags)), allow_duplicates=False)
    new_tag = w.Text(placeholder="new tag", layout=w.Layout(width="160px"))
    save = w.Button(description="save note and tags", button_style="primary", icon="save")
    close = w.Button(description="close", icon="times")

    def on_save(_: Any) -> None:
        ex.store.note(key, note.value, origin="card")
        wanted = set(tags.value) | ({new_tag.value.strip()} if new_tag.value.strip() else set())
        have = set(ex.store.tags_of([key]).get(key, []))
        for t in sorted(wanted - have):
            ex.store.tag([key], t, origin="card")
        for t in sorted(have - wanted):
            ex.store.untag([key], t, origin="card")
        ex._refresh_tags()
        ex.close_detail()

    save.on_click(on_save)
    close.on_click(lambda _: ex.close_detail())
    return [w.HTML(info), note, w.HBox([tags, new_tag]), w.HBox([save, close])]


class _ViewsBar:
    """Saved views: pick one to load it, or name and save the current filters."""

    def __init__(self, ex: Explorer) -> None:
        import ipywidgets as w

        self.ex = ex
        self.pick = w.Dropdown(description="view", options=[], layout=w.Layout(width="300px"),
                               style={"description_width": "90px"})
        self.name = w.Text(placeholder="name for the current filters",
                           layout=w.Layout(width="240px"))
        self.save = w.Button(description="save view", icon="bookmark")
        self.delete = w.Button(description="delete", icon="trash")
        self.message = w.HTML()
        self.save.on_click(lambda _: self._save())
        self.delete.on_click(lambda _: self._delete())
        self.pick.observe(self._load, names="value")
        self.widget = w.VBox([w.HBox([self.pick, self.name, self.save, self.delete]),
                              self.message])
        self.reload(selected=ex.view)

    def reload(self, selected: str | None = None) -> None:
        """Re-read the dataset's views into the picker."""
        self._quiet = True
        self.pick.options = [ANY, *saved_views.list_views(self.ex.dataset)]
        self.pick.value = selected if selected in self.pick.options else ANY
        self._quiet = False

    def _load(self, change: Any) -> None:
        if not self._quiet and change["new"] not in (None, ANY):
            self.ex.load_view(change["new"])
            self.message.value = f"<i>view {html.escape(change['new'])} loaded</i>"

    def _save(self) -> None:
        try:
            name = self.name.value.strip()
            self.ex.save_view(name)
            path = saved_views.view_path(self.ex.dataset, name).resolve()
            self.message.value = f"<i>saved {html.escape(str(path))}</i>"
        except (ValueError, OSError) as exc:
            self.message.value = f"<b style='color:#b00020'>{html.escape(str(exc))}</b>"

    def _delete(self) -> None:
        if self.pick.value not in (None, ANY):
            saved_views.delete_view(self.ex.dataset, self.pick.value)
            self.message.value = f"<i>view {html.escape(self.pick.value)} deleted</i>"
            self.reload()


class _BulkBar:
    """Bulk tagging of everything the current filters match."""

    def __init__(self, ex: Explorer) -> None:
        import ipywidgets as w

        self.ex = ex
        self.tag = w.Text(placeholder="tag", description="bulk", layout=w.Layout(width="300px"),
                          style={"description_width": "90px"})
        self.add = w.Button(description="tag all matches", icon="tag",
                            layout=w.Layout(width="auto"))
        self.remove = w.Button(description="untag all matches", icon="eraser",
                               layout=w.Layout(width="auto"))
        self.message = w.HTML()
        self.add.on_click(lambda _: self._do(ex.tag_matches, "tagged"))
        self.remove.on_click(lambda _: self._do(ex.untag_matches, "untagged"))
        self.widget = w.VBox([w.HBox([self.tag, self.add, self.remove]), self.message])

    def update(self, n: int) -> None:
        """Say how many samples a bulk action would touch."""
        self.add.description = f"tag all {n:,} matches"
        self.remove.description = f"untag all {n:,} matches"

    def _do(self, action: Callable[[str], int], verb: str) -> None:
        tag = self.tag.value.strip()
        if not tag:
            self.message.value = "<i>type a tag first</i>"
            return
        n = action(tag)
        s = self.ex.store.summary()
        self.message.value = (f"<i>{verb} {n:,} samples “{html.escape(tag)}” · decisions: "
                              f"{s['accepted']:,} accepted, {s['rejected']:,} rejected; "
                              f"saved in {html.escape(str(curation.tags_path(self.ex.dataset)))}"
                              f"</i>")
