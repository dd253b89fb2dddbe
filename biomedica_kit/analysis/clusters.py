"""Notebook ``05_clusters``: the 2-D map of a cluster run and a gallery to curate proposals.

- :func:`map_frame` / :func:`map_figure`: the run's stored map (``map.parquet``) joined with
  each sample's cluster, its current label, licence and caption; a plotly scatter coloured by
  ``cluster``, ``label`` or ``license``, captions on hover.
- :class:`ClusterMap`: that figure as a widget with a thumbnail of the point under the mouse.
- :class:`ClusterGallery`: one cluster at a time: montage, stats, exemplar captions, the
  proposal with its scores and evidence, and Accept / Change / Reject buttons that record an
  expert decision into the label table (:func:`biomedica_kit.labels.table.decide`).
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from biomedica_kit.cluster.run import latest_run, run_dir
from biomedica_kit.labels.proposals import proposal_rows
from biomedica_kit.labels.table import Decision, decide, read_labels
from biomedica_kit.labels.taxonomy import load_taxonomy
from biomedica_kit.tables.export import META_DIR

if TYPE_CHECKING:
    import polars as pl

__all__ = ["COLOR_BY", "ClusterGallery", "ClusterMap", "decisions_summary", "map_figure",
           "map_frame", "proposal_html", "proposals_frame", "resolve_run"]

COLOR_BY = ("cluster", "label", "license")


def resolve_run(dataset: str | os.PathLike[str], run: str | None = None) -> str:
    """``run``, or the newest finished run of the dataset."""
    name = run or latest_run(dataset)
    if name is None:
        raise FileNotFoundError(f"{dataset}: no cluster run yet; run `biomedica cluster`")
    return name


def map_frame(dataset: str | os.PathLike[str], run: str | None = None) -> pl.DataFrame:
    """The map's points: key, x, y, cluster, label (primary / secondary), license, caption."""
    import polars as pl

    root = Path(dataset)
    run = resolve_run(root, run)
    points = pl.read_parquet(run_dir(root, run) / "map.parquet")
    fig = pl.read_parquet(root / META_DIR / "figures.parquet",
                          columns=["key", "license_category", "caption"])
    labels = read_labels(root).select("key", "primary_label", "secondary_label",
                                      "label_source")
    return (points.join(fig, on="key", how="left").join(labels, on="key", how="left")
            .with_columns(label=pl.when(pl.col("primary_label").is_null())
                          .then(pl.lit("(no label)"))
                          .otherwise(pl.col("primary_label") + " / "
                                     + pl.col("secondary_label").fill_null("-")),
                          license=pl.col("license_category").fill_null("other"))
            .sort("key"))


def map_figure(dataset: str | os.PathLike[str], run: str | None = None,
               color: str = "cluster") -> Any:
    """A plotly scatter of the run's map coloured by ``cluster``, ``label`` or ``license``
    (``layout.meta.chart`` = ``cluster_map``)."""
    import plotly.graph_objects as go

    if color not in COLOR_BY:
        raise ValueError(f"color must be one of {COLOR_BY}")
    df = map_frame(dataset, run)
    fig = go.Figure()
    groups = df.with_columns(group=df[color].cast(str)).partition_by("group", as_dict=True)
    for (name,), part in sorted(groups.items(), key=lambda kv: _order(kv[0][0])):
        fig.add_trace(go.Scattergl(
            x=part["x"].to_list(), y=part["y"].to_list(), mode="markers", name=str(name),
            marker={"size": 7, "opacity": 0.8},
            customdata=[[k, c, lab, (cap or "")[:160]] for k, c, lab, cap in zip(
                part["key"], part["cluster"], part["label"], part["caption"], strict=True)],
            hovertemplate="cluster %{customdata[1]}<br>%{customdata[2]}<br>"
                          "%{customdata[3]}<extra>%{customdata[0]}</extra>"))
    method = df["method"][0] if len(df) else "map"
    fig.update_layout(title=f"{len(df)} samples, map by {method}, coloured by {color}",
                      meta={"chart": "cluster_map", "color": color}, height=520,
                      legend={"title": color}, xaxis={"visible": False},
                      yaxis={"visible": False})
    return fig


def _order(name: Any) -> tuple[int, Any]:
    s = str(name)
    return (0, int(s)) if s.isdigit() else (1, s)


def proposals_frame(dataset: str | os.PathLike[str], run: str | None = None) -> pl.DataFrame:
    """One row per cluster: size, proposal, scores, top terms."""
    import polars as pl

    root = Path(dataset)
    run = resolve_run(root, run)
    stats = pl.read_parquet(run_dir(root, run) / "clusters.parquet",
                            columns=["cluster", "size", "top_terms"])
    props = pl.read_parquet(run_dir(root, run) / "proposals.parquet").select(
        "cluster", "primary_label", "secondary_label", "panel_type", "score",
        "score_zero_shot", "score_caption", "score_keywords")
    return stats.join(props, on="cluster", how="left").with_columns(
        pl.col("top_terms").list.head(6).list.join(", ")).sort("cluster")


def proposal_html(proposal: dict[str, Any]) -> str:
    """A proposal with its scores, alternatives and evidence, as HTML."""
    esc = html.escape

    def score(v: Any) -> str:
        return "-" if v is None else f"{v:.2f}"

    ev = proposal["evidence"]
    alts = "".join(
        f"<li>{esc(a['primary_label'])} / {esc(a['secondary_label'])}: {score(a['score'])} "
        f"(zero-shot {score(a['score_zero_shot'])}, caption {score(a['score_caption'])}, "
        f"keywords {score(a['score_keywords'])})</li>" for a in proposal["alternatives"])
    kws = "; ".join(f"{esc(lab)}: " + ", ".join(f"{esc(k)} x{n}" for k, n in hits.items())
                    for lab, hits in ev.get("keywords", {}).items()) or "none"
    return (f"<div class='bk-proposal'><b>Proposal:</b> {esc(proposal['primary_label'])} / "
            f"{esc(proposal['secondary_label'])}, panel {esc(proposal['panel_type'])}, score "
            f"{score(proposal['score'])}<ol>{alts}</ol><div>keywords: {kws}</div>"
            f"<div>captions sampled: {ev.get('captions_sampled')}, multi-panel share "
            f"{ev.get('panel_share')}, scores used: {', '.join(ev.get('scores_used', []))}"
            f"</div><div style='color:#4a5366'>{esc(proposal['model_version'])}</div></div>")


class ClusterMap:
    """The map as a widget: a plotly FigureWidget and the thumbnail of the hovered point."""

    def __init__(self, dataset: str | os.PathLike[str], run: str | None = None,
                 color: str = "cluster") -> None:
        import ipywidgets as w
        import plotly.graph_objects as go
        import polars as pl

        self.dataset = Path(dataset)
        self.run = resolve_run(dataset, run)
        self.rows = {r["key"]: r for r in pl.read_parquet(
            self.dataset / META_DIR / "figures.parquet",
            columns=["key", "shard", "image_offset", "image_length"]).iter_rows(named=True)}
        self.figure = go.FigureWidget(map_figure(dataset, self.run, color))
        self.thumb = w.HTML("<i>hover over a point to see its image</i>")
        for trace in self.figure.data:
            trace.on_hover(self._hover)
        self.widget = w.HBox([self.figure, self.thumb])

    def _hover(self, trace: Any, points: Any, _state: Any) -> None:
        if points.point_inds:
            self.show(trace.customdata[points.point_inds[0]][0])

    def show(self, key: str) -> None:
        """Show the thumbnail of sample ``key``."""
        from biomedica_kit.analysis.gallery import sample_thumbnail

        mime, data = sample_thumbnail(self.dataset, self.rows[key], 220)
        self.thumb.value = f"<img src='data:{mime};base64,{data}'><div>{html.escape(key)}</div>"

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


class ClusterGallery:
    """Browse a run's clusters and record accept / change / reject into the label table."""

    def __init__(self, dataset: str | os.PathLike[str], run: str | None = None, *,
                 taxonomy: str | os.PathLike[str] | None = None, by: str | None = None
                 ) -> None:
        import ipywidgets as w
        import polars as pl

        self.dataset = Path(dataset)
        self.run = resolve_run(dataset, run)
        self.taxonomy = taxonomy
        self.by = by
        out = run_dir(self.dataset, self.run)
        self.proposals = {p["cluster"]: p for p in proposal_rows(self.dataset, self.run)}
        self.stats = {r["cluster"]: r for r in
                      pl.read_parquet(out / "clusters.parquet").iter_rows(named=True)}
        ex = pl.read_parquet(out / "exemplars.parquet").filter(pl.col("kind") == "centroid")
        caps = dict(pl.read_parquet(self.dataset / META_DIR / "figures.parquet",
                                    columns=["key", "caption"]).iter_rows())
        self.captions = {c: [caps.get(k, "") for k in part.sort("rank")["key"]]
                         for (c,), part in ex.partition_by("cluster", as_dict=True).items()}
        tax = load_taxonomy(taxonomy)
        self.picker = w.Dropdown(options=sorted(self.stats), description="cluster")
        self.primary = w.Dropdown(options=list(tax.tree), description="primary")
        self.secondary = w.Dropdown(options=tax.tree[self.primary.value],
                                    description="secondary")
        self.primary.observe(lambda ch: setattr(self.secondary, "options",
                                                tax.tree[ch["new"]]), names="value")
        self.montage = w.Image(format="jpeg", width=420)
        self.info = w.HTML()
        self.status = w.HTML()
        buttons = []
        for action in ("accept", "change", "reject"):
            b = w.Button(description=action.capitalize())
            b.on_click(lambda _b, a=action: self.record(a))
            buttons.append(b)
        self.picker.observe(lambda ch: self.show(ch["new"]), names="value")
        self.widget = w.VBox([self.picker, w.HBox([self.montage, self.info]),
                              w.HBox([self.primary, self.secondary]), w.HBox(buttons),
                              self.status])
        self.show(self.picker.value)

    def show(self, cluster: int) -> None:
        """Display one cluster: montage, stats, exemplar captions, proposal and evidence."""
        s = self.stats[cluster]
        if s.get("montage"):
            self.montage.value = (run_dir(self.dataset, self.run) / s["montage"]).read_bytes()
        caps = "".join(f"<li>{html.escape(c[:220])}</li>" for c in self.captions.get(
            cluster, [])[:5])
        prop = self.proposals.get(cluster)
        self.info.value = (
            f"<b>cluster {cluster}</b>: {s['size']} samples; licences "
            f"{html.escape(s['licenses'])}; years {s['year_min']}-{s['year_max']}; terms "
            f"{html.escape(', '.join(s['top_terms'][:8]))}<ol>{caps}</ol>"
            + (proposal_html(prop) if prop else "<i>no proposal</i>"))

    def record(self, action: str) -> str:
        """Record ``action`` (accept / change / reject) for the shown cluster; the new label
        version."""
        cluster = int(self.picker.value)
        decision = Decision(cluster, action, self.primary.value if action == "change" else None,
                            self.secondary.value if action == "change" else None, by=self.by)
        version = decide(self.dataset, self.run, [decision], taxonomy=self.taxonomy)
        self.status.value = (f"cluster {cluster}: {action} recorded as label version "
                             f"{html.escape(version)}")
        return version

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


def decisions_summary(dataset: str | os.PathLike[str]) -> pl.DataFrame:
    """Samples per label source and primary label in the newest label version."""
    return read_labels(dataset).group_by("label_source", "primary_label").len().sort(
        "label_source", "primary_label")

