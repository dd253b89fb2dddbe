"""The subset builder (ipywidgets): choose samples with the explorer's filters, preview them,
and export them as a new dataset in the background with a progress bar and a cancel button.

Output folders are absolute or resolved against the dataset's parent folder (never the
kernel's working directory), shown in full, and never overwritten
(:func:`biomedica_kit.analysis.jobs.resolve_out`).
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from biomedica_kit.analysis import views as saved_views
from biomedica_kit.analysis.explore import open_dataset
from biomedica_kit.analysis.filters import UNKNOWN, Filters, count, facets, search
from biomedica_kit.analysis.gallery import EMPTY_DATASET, GALLERY_CSS, gallery_html
from biomedica_kit.analysis.panel import FilterPanel
from biomedica_kit.tables import query

if TYPE_CHECKING:
    from biomedica_kit.analysis.jobs import JobState, SubsetJob
    from biomedica_kit.tables.subset import SubsetSummary

__all__ = ["SubsetBuilder", "summary_text", "verify_text"]


@dataclass
class SubsetBuilder:
    """Choose samples with the explorer's filters and export them as a new dataset.

    The preview shows the predicate, the number of matching samples per licence category and
    the first few matches. **Export subset** runs :func:`biomedica_kit.tables.subset.subset`
    in the background (:class:`biomedica_kit.analysis.jobs.SubsetJob`) with a progress bar and
    a cancel button; :meth:`export` does the same synchronously from code (headless runs).
    Output folders are absolute or resolved against the dataset's parent folder, shown in
    full, and never overwritten.
    """

    dataset: str | os.PathLike
    filters: Filters = field(default_factory=Filters)
    out: str | os.PathLike | None = None
    preview_size: int = 6
    view: str | None = None

    def __post_init__(self) -> None:
        import ipywidgets as w

        self.con = open_dataset(self.dataset)
        self.facets = facets(self.con)
        if self.view:
            self.filters = saved_views.load_view(self.dataset, self.view).filters
        self.panel = FilterPanel(self.con, self.facets, self.filters, self._on_filter)
        self.filters = self.panel.filters
        self.result: SubsetSummary | None = None
        self.job: SubsetJob | None = None
        self._out = w.Text(value=str(self.out or ""), description="export to",
                           placeholder="new folder (relative: beside the dataset)",
                           layout=w.Layout(width="60%"))
        self._resolved = w.HTML()
        self._button = w.Button(description="Export subset", button_style="primary",
                                icon="download")
        self._cancel = w.Button(description="Cancel", icon="stop", disabled=True)
        self._progress = w.FloatProgress(min=0, max=1, value=0, description="progress",
                                         layout=w.Layout(width="60%", visibility="hidden"))
        self._preview, self._message = w.HTML(), w.HTML()
        self._out.observe(lambda _: self._show_target(), names="value")
        self._button.on_click(lambda _: self.start_export())
        self._cancel.on_click(lambda _: self.job and self.job.cancel())
        self.widget = w.VBox([w.HTML(GALLERY_CSS)] + ([w.HTML(
            f'<p class="bk-empty">{html.escape(EMPTY_DATASET)}</p>')]
            if self.facets.total == 0 else [
            self.panel.widget, w.HBox([self._out, self._button, self._cancel]),
            self._resolved, self._progress, self._message, self._preview]))
        self._show_target()
        self._preview.value = self.preview_html()

    @property
    def where(self) -> str:
        """The predicate the current filters select."""
        return self.filters.where(self.con)

    def counts(self) -> dict[str, int]:
        """Matching samples per licence category (the subsets the export will write)."""
        if not query.has_column(self.con, "license_category"):
            return {"(no licence column)": count(self.con, self.filters)} \
                if self.facets.total else {}
        rows = self.con.execute(
            f"SELECT coalesce(license_category, ?), count(*) FROM figures WHERE ({self.where}) "
            f"GROUP BY 1 ORDER BY 1", [UNKNOWN]).fetchall()
        return {str(k): v for k, v in rows}

    def preview_html(self) -> str:
        """Predicate, per-licence counts and a few matching cards, as static HTML."""
        if self.facets.total == 0:
            return gallery_html(self.dataset, [], empty=EMPTY_DATASET)
        counts = self.counts()
        total = sum(counts.values())
        by = ", ".join(f"{k}: {v:,}" for k, v in counts.items()) or "none"
        head = (f"<div class='bk-head'><b>{total:,} of {self.facets.total:,} samples selected"
                f"</b> ({html.escape(by)})<br>predicate: <code>{html.escape(self.where)}"
                f"</code></div>")
        rows = search(self.con, self.filters, limit=self.preview_size)
        return head + gallery_html(self.dataset, rows, page_size=self.preview_size)

    def target(self, out: str | os.PathLike | None = None) -> Path:
        """The absolute folder an export would write (see :func:`jobs.resolve_out`)."""
        from biomedica_kit.analysis.jobs import resolve_out

        chosen = out or self.out or self._out.value
        if not chosen:
            raise ValueError("no output folder: pass out= or fill in 'export to'")
        return resolve_out(self.dataset, chosen)

    def export(self, where: str | None = None,
               out: str | os.PathLike | None = None) -> SubsetSummary:
        """Write the subset now: ``where`` (default: the current filters' predicate) into
        ``out`` (default: the builder's ``out``). Returns the subset's summary."""
        from biomedica_kit.tables.subset import subset

        self.result = subset(self.dataset, where or self.where, self.target(out))
        return self.result

    def start_export(self, out: str | os.PathLike | None = None) -> SubsetJob | None:
        """Start exporting the current selection in the background (what the button does);
        returns the job, or None when the target is refused (the reason is shown)."""
        from biomedica_kit.analysis.jobs import SubsetJob, selection_bytes

        try:
            target = self.target(out or self._out.value or None)
        except (ValueError, OSError) as exc:
            self._message.value = f"<p style='color:#b00020'>{html.escape(str(exc))}</p>"
            return None
        where = self.where
        self._button.disabled, self._cancel.disabled = True, False
        self._progress.value, self._progress.layout.visibility = 0, "visible"
        self._progress.bar_style = "info"
        self._message.value = f"<p>exporting to <code>{html.escape(str(target))}</code>…</p>"
        self.job = SubsetJob(self.dataset, where, target,
                             expected_bytes=selection_bytes(self.con, where),
                             on_update=self._on_job)
        return self.job

    def _on_job(self, state: JobState) -> None:
        self._progress.value = state.fraction
        if state.status == "running":
            return
        self._button.disabled, self._cancel.disabled = False, True
        if state.status == "done" and state.summary is not None:
            self.result = state.summary
            self._progress.bar_style = "success"
            self._message.value = f"<p>{html.escape(summary_text(state.summary))}</p>"
        else:
            self._progress.bar_style = "danger" if state.status == "failed" else "warning"
            self._message.value = (f"<p style='color:#b00020'>{html.escape(state.status)}: "
                                   f"{html.escape(state.message)}</p>")

    def _show_target(self) -> None:
        try:
            self._resolved.value = (f"<i>will write <code>{html.escape(str(self.target()))}"
                                    f"</code></i>")
        except (ValueError, OSError) as exc:
            self._resolved.value = f"<i style='color:#b00020'>{html.escape(str(exc))}</i>"

    def _on_filter(self, filters: Filters) -> None:
        self.filters = filters
        self._preview.value = self.preview_html()

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        bundle = self.widget._repr_mimebundle_(**kwargs) or {}
        bundle["text/html"] = self.preview_html()
        bundle["text/plain"] = (
            f"SubsetBuilder: {EMPTY_DATASET}" if self.facets.total == 0 else
            f"SubsetBuilder: {sum(self.counts().values())} samples selected by {self.where}")
        return bundle


def summary_text(s: SubsetSummary) -> str:
    """One line describing an exported subset (with its absolute path)."""
    by = ", ".join(f"{k}={v}" for k, v in s.samples_by_subset.items())
    return (f"wrote {s.samples} samples ({by}) from {s.articles} articles in {s.shards} "
            f"shards to {Path(s.out).resolve()} (version {s.dataset_version}, "
            f"{s.seconds:.1f} s)")


def verify_text(dataset: str | os.PathLike) -> str:
    """``biomedica verify``'s verdict on a dataset, as one line (errors listed)."""
    from biomedica_kit.dataset.verify import verify

    res = verify(Path(dataset))
    head = (f"{'OK' if res.ok else 'FAILED'}: {res.shards} shards, {res.samples} samples, "
            f"{len(res.errors)} errors")
    return "\n".join([head, *res.errors])
