"""Evaluation results on disk, ``DATASET/eval/<name>/``, and the tables and charts shown of them.

An evaluation (:func:`biomedica_train.evaluate.evaluate`) writes three files, each atomically,
``results.parquet`` last (so its presence means the evaluation finished):

- ``results.md``: the Markdown tables, models side by side as columns;
- ``config.json``: the models (label, architecture, weights, ``model_version``, what a
  checkpoint recorded, whether it overlaps the split), the split (name, which part, digest of
  the split file, its ``dataset_version``), the dataset version, the label version and sources,
  the taxonomy, the classes and prompt templates, sample counts and warnings;
- ``results.parquet``: one row per number, long format (:data:`RESULT_COLUMNS`):
  ``model``, ``model_version``, ``task``, ``metric``, ``group_by``, ``group``, ``value``, ``n``.

Tasks (:data:`TASKS`) and their metrics: ``retrieval_i2t`` / ``retrieval_t2i`` (image->text,
text->image) with ``recall@1``, ``recall@5``, ``recall@10``; ``zeroshot_primary`` /
``zeroshot_secondary`` with ``top1``, ``top5``, ``balanced_accuracy``. ``group_by`` is
``all`` (group ``all``) for the whole split; ``license_category`` and ``primary_label`` break
retrieval down by the query sample's licence and label (``(unknown)``, ``(unlabelled)`` for
none); ``class`` breaks zero-shot down by true class (``top1``, ``top5``). ``n`` counts the
queries (samples) behind each value.

:func:`read_results` / :func:`read_config` read an evaluation back (the newest by default),
:func:`side_by_side` pivots the overall rows to one column per model, and the chart builders
(plotly; each figure carries ``layout.meta.chart`` as the library's charts do) draw them for
``notebooks/07_eval.ipynb``.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from biomedica_kit.base.atomic import atomic_write_bytes, write_parquet_atomic

if TYPE_CHECKING:
    import plotly.graph_objects as go
    import polars as pl

    from biomedica_kit.analysis.charts import Missing
    from biomedica_kit.analysis.display import Table

__all__ = ["EVAL_DIR", "METRICS", "RESULT_COLUMNS", "TASKS", "UNKNOWN", "UNLABELLED",
           "EvalNotFound", "about", "eval_dir", "eval_names", "licence_chart", "markdown_table",
           "read_config", "read_results", "recall_chart", "render_markdown", "side_by_side",
           "side_by_side_table", "write_results", "zero_shot_chart"]

EVAL_DIR = "eval"
RESULT_COLUMNS = ("model", "model_version", "task", "metric", "group_by", "group", "value", "n")
TASKS = {"retrieval_i2t": "image->text retrieval", "retrieval_t2i": "text->image retrieval",
         "zeroshot_primary": "zero-shot, primary labels",
         "zeroshot_secondary": "zero-shot, secondary labels"}
METRICS = ("recall@1", "recall@5", "recall@10", "top1", "top5", "balanced_accuracy")
UNKNOWN = "(unknown)"
UNLABELLED = "(unlabelled)"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_RESULTS, _CONFIG, _MARKDOWN = "results.parquet", "config.json", "results.md"


class EvalNotFound(FileNotFoundError):
    """No (finished) evaluation where one was asked for."""


def eval_dir(dataset: str | os.PathLike[str], name: str) -> Path:
    """``DATASET/eval/<name>`` (the name is checked: letters, digits, ``_.-``)."""
    if not _NAME.match(name):
        raise ValueError(f"bad evaluation name {name!r}: letters, digits, '_', '.', '-' only")
    return Path(dataset) / EVAL_DIR / name


def eval_names(dataset: str | os.PathLike[str]) -> list[str]:
    """Finished evaluations of the dataset, oldest first (by their recorded time)."""
    root = Path(dataset) / EVAL_DIR
    found = []
    for d in root.glob("*"):
        if (d / _RESULTS).is_file() and (d / _CONFIG).is_file():
            found.append((str(_load_json(d / _CONFIG).get("created_at", "")), d.name))
    return [n for _, n in sorted(found)]


def _load_json(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text(encoding="utf-8")))


def _folder(dataset: str | os.PathLike[str], name: str | None) -> Path:
    """The evaluation folder: ``dataset`` itself when it holds results, else the named (or
    newest) evaluation of the dataset."""
    p = Path(dataset)
    if name is None and (p / _RESULTS).is_file():
        return p
    if name is None:
        names = eval_names(p)
        if not names:
            raise EvalNotFound(f"no evaluation in {p / EVAL_DIR}: run `biomedica evaluate "
                               f"{p} --model MODEL` first")
        name = names[-1]
    d = eval_dir(p, name)
    if not (d / _RESULTS).is_file():
        raise EvalNotFound(f"no finished evaluation {name!r} in {p / EVAL_DIR}")
    return d


def read_results(dataset: str | os.PathLike[str], name: str | None = None) -> pl.DataFrame:
    """The long-format results of an evaluation (default: the newest; ``dataset`` may also be
    an evaluation folder, e.g. one written with ``--out``)."""
    import polars as pl

    return pl.read_parquet(_folder(dataset, name) / _RESULTS)


def read_config(dataset: str | os.PathLike[str], name: str | None = None) -> dict[str, Any]:
    """What an evaluation recorded (``config.json``; see module doc)."""
    return _load_json(_folder(dataset, name) / _CONFIG)


def write_results(folder: str | os.PathLike[str], results: pl.DataFrame,
                  config: dict[str, Any], markdown: str) -> Path:
    """Write the three files atomically, ``results.parquet`` last; returns the folder."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / _MARKDOWN, markdown.encode("utf-8"))
    atomic_write_bytes(out / _CONFIG, (json.dumps(config, indent=1, ensure_ascii=False)
                                       + "\n").encode("utf-8"))
    write_parquet_atomic(results.select(RESULT_COLUMNS).to_arrow(), out / _RESULTS)
    return out


# ----------------------------------------------------------------------------------- tables


def _models(results: pl.DataFrame) -> list[str]:
    """Model labels in the order they were evaluated (first appearance)."""
    return list(dict.fromkeys(results.get_column("model").to_list()))


def _ordered(df: pl.DataFrame) -> pl.DataFrame:
    import polars as pl

    tasks, metrics = list(TASKS), list(METRICS)
    return df.with_columns(
        pl.col("task").map_elements(lambda t: tasks.index(t) if t in tasks else 99,
                                    return_dtype=pl.Int64).alias("_t"),
        pl.col("metric").map_elements(lambda m: metrics.index(m) if m in metrics else 99,
                                      return_dtype=pl.Int64).alias("_m"),
    ).sort(["_t", "_m"]).drop("_t", "_m")


def side_by_side(results: pl.DataFrame, group_by: str = "all",
                 tasks: tuple[str, ...] | None = None) -> pl.DataFrame:
    """One row per task and metric (and group, unless ``group_by`` is ``all``), one column
    per model, and ``n`` (the samples behind the first model's value)."""
    import polars as pl

    rows = results.filter(pl.col("group_by") == group_by)
    if tasks is not None:
        rows = rows.filter(pl.col("task").is_in(list(tasks)))
    models = _models(results)
    index = ["task", "metric"] if group_by == "all" else ["task", "group", "metric"]
    if rows.height == 0:
        return pl.DataFrame(schema={**{c: pl.String for c in index},
                                    **{m: pl.Float64 for m in models}, "n": pl.Int64})
    wide = rows.pivot(on="model", index=index, values="value", aggregate_function="first")
    counts = (rows.filter(pl.col("model") == next(m for m in models
                                                  if m in set(rows["model"])))
              .select([*index, "n"]))
    wide = wide.join(counts, on=index, how="left")
    for m in models:
        if m not in wide.columns:
            wide = wide.with_columns(pl.lit(None, pl.Float64).alias(m))
    out = _ordered(wide.select([*index, *models, "n"]))
    if group_by != "all":
        out = out.sort(["task", "group"], maintain_order=True)
    return out


def about(config: dict[str, Any]) -> Table:
    """The evaluated models as a table: label, ``model_version``, image size, device, and
    whether the checkpoint trained on the evaluated split (allowed by the caller)."""
    import polars as pl

    from biomedica_kit.analysis.display import Table

    split = config.get("split", {})
    labels = config.get("labels", {})
    samples = config.get("samples", {})
    df = pl.DataFrame([{"model": m["label"], "model_version": m["model_version"],
                        "image px": m.get("image_size"), "device": m.get("device"),
                        "trained on this split": bool(m.get("leakage"))}
                       for m in config.get("models", [])],
                      schema={"model": pl.String, "model_version": pl.String,
                              "image px": pl.Int64, "device": pl.String,
                              "trained on this split": pl.Boolean})
    caption = (f"evaluation {config.get('name')}: split {split.get('name')}/"
               f"{split.get('split')}, {samples.get('retrieval', 0)} samples for retrieval, "
               f"{samples.get('zeroshot_primary', 0)} / {samples.get('zeroshot_secondary', 0)}"
               f" with a primary / secondary label ({', '.join(labels.get('sources', []))}, "
               f"label version {labels.get('version')}); dataset version "
               f"{config.get('dataset_version')}")
    return Table(df, caption=caption)


def side_by_side_table(results: pl.DataFrame, group_by: str = "all",
                       caption: str = "") -> Table:
    """:func:`side_by_side` as a formatted notebook table (values as percentages)."""
    from biomedica_kit.analysis.display import Table

    df = side_by_side(results, group_by)
    models = _models(results)
    return Table(df, formats={m: "percent" for m in models}, caption=caption)


def _cell(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v).replace("|", "\\|")


def markdown_table(df: pl.DataFrame) -> str:
    """A DataFrame as a GitHub Markdown table (floats to three decimals, missing as ``-``)."""
    head = "| " + " | ".join(c.replace("|", "\\|") for c in df.columns) + " |"
    rule = "| " + " | ".join("---" for _ in df.columns) + " |"
    body = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in df.iter_rows()]
    return "\n".join([head, rule, *body])


def render_markdown(results: pl.DataFrame, config: dict[str, Any]) -> str:
    """``results.md``: what was evaluated, then the tables (overall, by licence, by label,
    per class)."""
    split = config.get("split", {})
    labels = config.get("labels", {})
    lines = [f"# Evaluation `{config.get('name', '')}`", "",
             f"- dataset `{config.get('dataset', '')}`, version "
             f"`{config.get('dataset_version', '')}`",
             f"- split `{split.get('name')}` / `{split.get('split')}` (file digest "
             f"`{str(split.get('digest', ''))[:16]}`, made from version "
             f"`{split.get('dataset_version')}`)",
             f"- labels: version `{labels.get('version')}`, sources "
             f"{', '.join(labels.get('sources', []))}; taxonomy `{labels.get('taxonomy')}`"]
    for m in config.get("models", []):
        lines.append(f"- model **{m['label']}**: `{m['model_version']}`"
                     + (" — **trained on this split (overlap allowed by the caller)**"
                        if m.get("leakage") else ""))
    for w in config.get("warnings", []):
        lines.append(f"- warning: {w}")
    sections = [("Overall", "all"), ("Retrieval by licence", "license_category"),
                ("Retrieval by primary label", "primary_label"),
                ("Zero-shot by class", "class")]
    for title, group_by in sections:
        df = side_by_side(results, group_by)
        if df.height:
            lines += ["", f"## {title}", "", markdown_table(df)]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------- charts


def _bars(results: pl.DataFrame, rows: pl.DataFrame, x: list[str], key: Any, chart: str,
          title: str, yaxis: str) -> go.Figure:
    """Grouped bars: one trace per model over the categories ``x`` (``key(row)`` names a
    row's category)."""
    import plotly.graph_objects as go

    from biomedica_kit.analysis.charts import TEMPLATE

    fig = go.Figure()
    for model in _models(results):
        values = {key(r): r["value"] for r in rows.filter(rows["model"] == model)
                  .iter_rows(named=True)}
        ys = [values.get(c) for c in x]
        fig.add_trace(go.Bar(x=x, y=ys, name=model,
                             text=[f"{v:.2f}" if v is not None else "" for v in ys],
                             textposition="auto"))
    fig.update_layout(template=TEMPLATE, barmode="group", title={"text": title, "x": 0.01},
                      meta={"chart": chart}, yaxis={"title": yaxis, "range": [0, 1.05]},
                      margin={"l": 60, "r": 30, "t": 70, "b": 80},
                      legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 1,
                              "xanchor": "right"})
    return fig


def _short(task: str) -> str:
    return {"retrieval_i2t": "image→text", "retrieval_t2i": "text→image",
            "zeroshot_primary": "primary", "zeroshot_secondary": "secondary"}.get(task, task)


def recall_chart(results: pl.DataFrame) -> go.Figure | Missing:
    """Recall@1/5/10 in both directions, one bar group per model (chart ``recall``)."""
    import polars as pl

    from biomedica_kit.analysis.charts import Missing

    rows = results.filter((pl.col("group_by") == "all")
                          & pl.col("task").str.starts_with("retrieval"))
    if rows.height == 0:
        return Missing("recall", "This evaluation has no retrieval results.")
    x = [f"{_short(t)} {m}" for t in ("retrieval_i2t", "retrieval_t2i")
         for m in ("recall@1", "recall@5", "recall@10")]
    return _bars(results, rows, x, lambda r: f"{_short(r['task'])} {r['metric']}", "recall",
                 "Retrieval recall@k on the held-out split", "recall")


def zero_shot_chart(results: pl.DataFrame) -> go.Figure | Missing:
    """Zero-shot top-1 / top-5 / balanced accuracy per model (chart ``zero_shot``)."""
    import polars as pl

    from biomedica_kit.analysis.charts import Missing

    rows = results.filter((pl.col("group_by") == "all")
                          & pl.col("task").str.starts_with("zeroshot"))
    if rows.height == 0:
        return Missing("zero_shot", "No sample of the evaluated split has a label of the "
                                    "chosen sources, so there is no zero-shot result.")
    x = [f"{_short(t)} {m}" for t in ("zeroshot_primary", "zeroshot_secondary")
         for m in ("top1", "top5", "balanced_accuracy")]
    return _bars(results, rows, x, lambda r: f"{_short(r['task'])} {r['metric']}",
                 "zero_shot", "Zero-shot classification on the reviewed taxonomy labels",
                 "accuracy")


def licence_chart(results: pl.DataFrame, metric: str = "recall@5") -> go.Figure | Missing:
    """Retrieval ``metric`` per licence category and direction, per model (chart
    ``by_licence``)."""
    import polars as pl

    from biomedica_kit.analysis.charts import Missing

    rows = results.filter((pl.col("group_by") == "license_category")
                          & (pl.col("metric") == metric))
    if rows.height == 0:
        return Missing("by_licence", f"This evaluation has no {metric} by licence.")
    groups = sorted(set(rows.get_column("group").to_list()))
    x = [f"{g} {_short(t)}" for g in groups for t in ("retrieval_i2t", "retrieval_t2i")]
    return _bars(results, rows, x, lambda r: f"{r['group']} {_short(r['task'])}",
                 "by_licence", f"Retrieval {metric} by licence category", metric)
